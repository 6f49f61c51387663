"""Report of a sweep: the paper's Table 1, Table 2 and Figures 1-3 from our runs, with the
paper's own numbers beside them and its claims checked (``python -m ovmse.report ROOT``).

Modules: :mod:`.runs` (run directories to records), :mod:`.curves` (seed alignment and
statistics), :mod:`.tables`, :mod:`.claims`, :mod:`.figures`, :mod:`.paper` (the paper's
numbers), :mod:`.document` (writes everything).
"""

from .document import write_report
from .runs import ReportError

__all__ = ["ReportError", "write_report"]
