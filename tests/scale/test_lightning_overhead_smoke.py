"""Smoke test of benchmarks/lightning_overhead.py with tiny settings (numbers are not checked)."""

import json

import torch

from simtools import load_script


def test_lightning_overhead_quick(tmp_path):
    bench = load_script("benchmarks/lightning_overhead.py")
    threads = torch.get_num_threads()
    try:
        rc = bench.main(["--quick", "--map", "3m", "--threads", "1", "--out-dir", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"lightning_overhead.{ext}").stat().st_size > 0
    result = json.loads((tmp_path / "lightning_overhead.json").read_text())
    # The plain loop's inline loss is the same math as QMixTDLoss.
    assert result["update"]["loss_check"]["ok"], result["update"]["loss_check"]
    for part, field in (("update", "ms_per_update"), ("online", "env_steps_per_second")):
        for path in ("lightning", "plain"):
            runs = result[part]["runs"][path]
            assert len(runs) == 1 and runs[0][field] > 0
    online = result["online"]["runs"]
    assert online["lightning"][0]["env_steps"] >= result["args"]["env_steps"]
    assert online["plain"][0]["env_steps"] >= result["args"]["env_steps"]
    assert "Lightning/TorchRL overhead:" in result["check"]["text"]
