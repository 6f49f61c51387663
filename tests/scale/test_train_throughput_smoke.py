"""Smoke test of benchmarks/train_throughput.py (old path in a git worktree vs this checkout) with
tiny settings; the numbers are not checked, the mechanics are: both trees are measured, each
from its own sources, and the report is written."""

import json
import subprocess
from pathlib import Path

import pytest

from simtools import load_script

pytestmark = pytest.mark.slow  # spawns train.py / notebook / worker processes (pytest -m 'not slow' skips)

ROOT = Path(__file__).resolve().parents[2]


def test_train_throughput_quick_old_vs_new(tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout: the benchmark's old path is a git worktree")
    bench = load_script("benchmarks/train_throughput.py")
    # HEAD as the "old" path: present in any clone, shallow ones included.
    assert bench.main(["--quick", "--baseline", "HEAD", "--parts", "update,collect", "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "train_throughput.json").read_text())
    for key in ("old_1", "new_1", "old_2", "new_2"):
        run = result["update"][key][0]
        assert run["ms_per_update"] > 0 and run["roofline_ms"] > 0 and run["flops"] > run["matmul_flops"] * 0.5
    # The GRU's sigmoid/tanh are replayed alone too (the old tree's worker is this checkout's script).
    assert all(result["update"][k][0]["transcendental_ops"] > 0 for k in ("old_1", "new_1"))
    old_src = result["collect"]["old_4x8"][0]["sources"]["ovmse"]
    new_src = result["collect"]["new_4x8"][0]["sources"]["ovmse"]
    assert old_src != new_src and new_src.startswith(str(ROOT / "src"))
    frozen = result["collect"]["new_frozen_sim_4x8"][0]
    assert frozen["frozen_sim"] and frozen["ms_per_step_call"] > 0
    report = (tmp_path / "train_throughput.md").read_text()
    assert "## One QMIX update" in report and "new faster in" in report and "matmul + transcendental" in report
    listed = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "throughput-" not in listed  # the worktree is removed
    # --merge: a later run of one part keeps the others and says which run measured which
    before = result["update"]
    assert bench.main(["--quick", "--baseline", "HEAD", "--parts", "cql", "--merge", "--out-dir", str(tmp_path)]) == 0
    merged = json.loads((tmp_path / "train_throughput.json").read_text())
    assert merged["update"] == before and "cql" in merged and set(merged["provenance"]) == {"update", "collect", "cql"}
    text = (tmp_path / "train_throughput.md").read_text()
    assert "## One QMIX update" in text and "## One update with the CQL terms" in text
    other = {**merged, "args": {**merged["args"], "batch_size": 16}}
    with pytest.raises(SystemExit, match="not comparable"):
        bench.merged(tmp_path / "train_throughput.json", other, ["cql"])


def test_gru_step_costs_writes_every_kernel(tmp_path):
    bench = load_script("benchmarks/gru_step_costs.py")
    assert bench.main(["--rows", "32", "--loops", "3", "--repeats", "2", "--no-compile", "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gru_step_costs.json").read_text())
    assert set(result["us"]) >= {"mul", "sigmoid", "tanh", "tanh as 2*sigmoid(2a)-1", "gate math, eager"}
    assert all(us > 0 for us in result["us"].values()) and result["compile_s"] is None
    assert "| tanh |" in (tmp_path / "gru_step_costs.md").read_text()
