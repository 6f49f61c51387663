"""Every ``group=option`` that README.md and docs/ name exists as a config (a documented command
must not fail at Hydra's option list), and README stays short."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GROUPS = ("phase", "env", "algo", "experiment", "trainer", "collector", "logger", "budget", "grid", "debug", "paths")
OPTION = re.compile(r"(?<![\w.+/])(" + "|".join(GROUPS) + r")=([A-Za-z0-9_]+)")
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_option_the_docs_name_exists(doc):
    missing = sorted({f"{g}={o}" for g, o in OPTION.findall(doc.read_text())
                      if o not in ("null", "none") and not (ROOT / "configs" / g / f"{o}.yaml").is_file()})
    assert not missing, f"{doc.name} names options that do not exist: {missing}"


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
