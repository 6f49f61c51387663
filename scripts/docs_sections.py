"""Marked sections of the docs that the experiment scripts rewrite in place."""

from __future__ import annotations

from pathlib import Path


def replace_section(doc: Path, begin: str, end: str, body: str, heading: str | None = None) -> None:
    """Write ``begin``, ``body`` and ``end`` over the section between those markers in ``doc``,
    or append them (under ``heading``, when given) if ``doc`` has no such section yet."""
    block = "\n".join([begin, body, end])
    old = doc.read_text() if doc.exists() else "# Results\n\nLearning results of the algorithms on the embedded simulator.\n"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + (f"{heading}\n\n" if heading else "") + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(new)
    print(f"wrote {doc}")
