"""The simulator notebook runs top to bottom headless."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # spawns train.py / notebook / worker processes (pytest -m 'not slow' skips)

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "simulator.ipynb"


def test_simulator_notebook_executes(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    # The rendering cell produced an image.
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the notebook rendered no battle"


DATASETS_NOTEBOOK = NOTEBOOK.parent / "datasets.ipynb"


def test_datasets_notebook_executes(tmp_path, monkeypatch):
    from ovmse.datasets import EpisodeDatasetWriter, load_dataset
    from ovmse.datasets.inspection import format_table8, table8_row
    from ovmse.datasets.recording import record_episodes
    from ovmse.envs import get_map

    # A tiny dataset of our own, so the run does not depend on what data/ holds.
    path = tmp_path / "data" / "3m" / "medium"
    with EpisodeDatasetWriter(path, get_map("3m"), 16, quality="medium") as writer:
        record_episodes(writer, None, num_envs=16, seed=1)
        writer.close(behaviour={"policy": "random"})
    monkeypatch.setenv("OVMSE_DATASETS", str(path))  # inherited by the kernel

    nb = nbformat.read(DATASETS_NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "store the notebook without outputs"
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert format_table8([table8_row(load_dataset(path))]) in text  # the Table 8 rows
    assert "DEMO" not in text  # the given dataset, not the random-policy demo
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1, "the notebook plotted no return distribution (Figure 5)"
