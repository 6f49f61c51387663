"""``python -m ovmse.report SWEEP_ROOT [--out DIR]``: write the sweep's report (default
``SWEEP_ROOT/report``), print report.md's path and our Table 1.

A root that does not exist or holds no online runs prints one ``error: ...`` line on stderr
and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

from .document import write_report
from .runs import ReportError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovmse.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="sweep root holding online/<task>/<run>/seed<k>/ (e.g. outputs/sweeps/short)")
    parser.add_argument("--out", help="output directory (default: ROOT/report)")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.root, args.out)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report)
    print((report.parent / "table1.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
