"""notebooks/inspect.ipynb runs top to bottom headless on a tiny real offline -> online (OVMSE) run.

The artefacts are made here, in tmp dirs: a 16-battle random-policy dataset on 3m, 4 offline
updates on it, and 256 env steps of OVMSE fine-tuning with the unlearning probe measured every
64 env steps. The phases run in-process (the same ``run_phase`` that ``train.py`` calls), which
spares two interpreter start-ups; the notebook then runs in its own kernel with the
``OVMSE_INSPECT_*`` environment variables pointing at them.
"""

import csv
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from simtools import random_dataset

pytestmark = pytest.mark.slow  # spawns train.py / notebook / worker processes (pytest -m 'not slow' skips)

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "inspect.ipynb"
# debug=tiny (configs/debug/tiny.yaml) without TensorBoard events.
QUIET = ["debug=tiny", "logger.tensorboard=false"]


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory, compose_cfg):
    from ovmse.phases import run_phase

    def run(*overrides: str) -> dict:
        return run_phase(compose_cfg(*overrides, *QUIET))

    base = tmp_path_factory.mktemp("inspect")
    dataset = random_dataset(base / "data" / "3m" / "medium", episodes=16)
    offline = base / "offline"
    run("phase=offline", "env=3m", "algo=ovmse", f"dataset={dataset}", "steps=4", "eval.interval_updates=4",
        "eval.episodes=4", "eval.num_envs=4", f"paths.output_dir={offline}")
    online = base / "online"
    run("phase=online", "env=3m", "algo=ovmse", f"ckpt={offline / 'checkpoints' / 'last.ckpt'}", "env_steps=256",
        "algo.batch_size=4", "algo.buffer_size=32", "eval.interval_env_steps=128", "eval.episodes=4", "eval.num_envs=4",
        "final_eval.episodes=4", "final_eval.num_envs=4", "unlearning_probe.episodes=4",
        "unlearning_probe.every_env_steps=64", f"paths.output_dir={online}")
    return {"dataset": dataset, "offline": offline, "online": online}


def point_at(monkeypatch, run_dir: Path, ckpt: Path, dataset: Path) -> None:
    """Set the notebook's inputs (inherited by the kernel)."""
    monkeypatch.setenv("OVMSE_INSPECT_RUN", str(run_dir))
    monkeypatch.setenv("OVMSE_INSPECT_CKPT", str(ckpt))
    monkeypatch.setenv("OVMSE_INSPECT_DATASET", str(dataset))


def execute(nb, cwd: Path):
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def stream_text(outputs) -> str:
    return "".join(o.get("text", "") for o in outputs if o.output_type == "stream")


def probe_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("eval/probe_q_tot")]


def test_inspect_notebook_executes_on_a_fine_tuning_run(artefacts, tmp_path, monkeypatch):
    from ovmse.datasets import load_dataset
    from ovmse.datasets.inspection import format_table8, table8_row

    online, dataset = artefacts["online"], artefacts["dataset"]
    point_at(monkeypatch, online, online / "checkpoints" / "last.ckpt", dataset)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "store the notebook without outputs"
    outputs = execute(nb, tmp_path)
    assert not [o for o in outputs if o.output_type == "error"]
    text = stream_text(outputs)

    assert f"checkpoint: {(online / 'checkpoints' / 'last.ckpt').resolve()}" in text
    assert "map 3m: 3 agents" in text and "algo ovmse, phase online" in text
    assert "progress: 256 env steps" in text and "(after offline: {'updates': 4" in text
    assert "validation (full): OK" in text
    assert format_table8([table8_row(load_dataset(dataset))]) in text  # the Table 8 row
    assert "ovmse on 3m (seed 0): 256 env steps" in text and "final test: win rate" in text
    n_probe = len(probe_rows(online))
    assert n_probe >= 2  # the fixture's run did measure the probe
    assert f"unlearning probe: {n_probe} measurements" in text
    assert "no unlearning probe" not in text
    battle = [line for line in text.splitlines() if line.startswith("greedy battle: ")]
    assert len(battle) == 1 and battle[0].split()[2] in ("won,", "lost,", "timeout,"), battle
    # Return histogram, learning curves, unlearning curve, battle frames.
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4, f"expected 4 figures, got {len(images)}"


def test_unlearning_cell_says_so_when_the_run_has_no_probe(artefacts, tmp_path, monkeypatch):
    """A run without probe rows (QMIX from scratch) gets a note, not an error or an empty plot."""
    run_dir = tmp_path / "no_probe"
    run_dir.mkdir()
    with (artefacts["online"] / "metrics.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        fields = [k for k in reader.fieldnames if not k.startswith("eval/probe_")]
        rows = list(reader)
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(r for r in rows if any(r.get(k) for k in fields if k not in ("env_steps", "step")))
    shutil.copy(artefacts["online"] / "online_summary.json", run_dir)
    point_at(monkeypatch, run_dir, artefacts["online"] / "checkpoints" / "last.ckpt", artefacts["dataset"])

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Only the cells the curves need: parameters, learning curves, unlearning curve.
    nb.cells = [c for c in nb.cells if c.get("id") in ("parameters", "learning-curves", "unlearning-curve")]
    assert len(nb.cells) == 3, "cell ids of inspect.ipynb changed"
    outputs = execute(nb, tmp_path)
    assert not [o for o in outputs if o.output_type == "error"]
    text = stream_text(outputs)
    assert "no unlearning probe in this run" in text
    assert "unlearning probe:" not in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1  # the learning curves only


def test_a_missing_input_names_its_environment_variable(artefacts, tmp_path, monkeypatch):
    missing = tmp_path / "no_such_run"
    point_at(monkeypatch, missing, artefacts["online"] / "checkpoints" / "last.ckpt", artefacts["dataset"])
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells = [c for c in nb.cells if c.get("id") == "parameters"]
    with pytest.raises(CellExecutionError, match=re.escape(f"OVMSE_INSPECT_RUN={missing}: ") + ".*does not exist"):
        execute(nb, tmp_path)
