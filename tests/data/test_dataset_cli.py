"""`python -m ovmse.datasets` (inspect / validate / import-cfcql) and the Table 8 / Figure 5 helpers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from tensordict import TensorDict

from ovmse.datasets import EpisodeDatasetWriter, load_dataset
from ovmse.datasets.__main__ import main
from ovmse.datasets.inspection import format_table8, plot_return_distribution, table8_row
from ovmse.datasets.recording import record_episodes
from ovmse.envs import get_map

ROOT = Path(__file__).resolve().parents[2]
N_EPISODES = 20


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ovmse.datasets", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    with EpisodeDatasetWriter(root / "3m" / "medium", get_map("3m"), N_EPISODES, quality="medium") as w:
        record_episodes(w, None, num_envs=10, seed=0)
        w.close(behaviour={"policy": "random"})
    return root


@pytest.fixture(scope="module")
def good(data_root) -> Path:
    return data_root / "3m" / "medium"


@pytest.fixture
def copy_of(good, tmp_path):
    """A fresh copy of the good dataset, to be damaged by a test."""
    dst = tmp_path / "3m" / "medium"
    shutil.copytree(good, dst)
    return dst


def independent_stats(path: Path) -> dict[str, float]:
    """Returns/lengths/wins straight from the stored arrays: episode e has L = filled.sum() - 1
    transitions, rows 0..L-1."""
    td = TensorDict.load_memmap(path / "episodes")
    filled = td["filled"].squeeze(-1).numpy()
    reward = td["reward"].squeeze(-1).numpy().astype(np.float64)
    won = td["info", "battle_won"].squeeze(-1).numpy()
    lengths = filled.sum(-1) - 1
    returns = np.array([reward[e, :L].sum() for e, L in enumerate(lengths)])
    wins = np.array([won[e, :L].any() for e, L in enumerate(lengths)])
    return {"episodes": len(lengths), "transitions": int(lengths.sum()), "return_min": returns.min(),
            "return_mean": returns.mean(), "return_max": returns.max(), "win_rate": wins.mean(),
            "episode_length_mean": lengths.mean(), "returns": returns}


def test_table8_row_matches_stored_episodes(good):
    ds = load_dataset(good)
    row = table8_row(ds)
    ref = independent_stats(good)
    assert row["dataset"] == "3m/medium"
    assert row["episodes"] == ref["episodes"] == N_EPISODES
    assert row["transitions"] == ref["transitions"]
    for k in ("return_min", "return_mean", "return_max", "win_rate", "episode_length_mean"):
        assert row[k] == pytest.approx(ref[k], rel=1e-6, abs=1e-9), k
    summary, returns = ds.stats()
    assert np.allclose(returns.numpy(), ref["returns"])
    assert {k: row[k] for k in summary if k in row} == pytest.approx({k: summary[k] for k in summary if k in row})


def test_inspect_prints_table8_row(good, capsys):
    assert main(["inspect", str(good)]) == 0
    out = capsys.readouterr().out
    ref = independent_stats(good)
    lines = out.strip().splitlines()
    assert "Return min / avg / max" in lines[0] and set(lines[1]) <= {"-", " "}
    row = next(line for line in lines if line.startswith("3m/medium"))
    returns = f"{ref['return_min']:.2f} / {ref['return_mean']:.2f} / {ref['return_max']:.2f}"
    assert row.split() == ["3m/medium", str(N_EPISODES), str(ref["transitions"]), *returns.split(),
                           f"{ref['win_rate']:.2f}", f"{ref['episode_length_mean']:.1f}"]
    # Same as dataset.stats() through format_table8.
    assert format_table8([table8_row(load_dataset(good))]) in out


def test_inspect_markdown_and_plot(good, tmp_path, capsys):
    png = tmp_path / "figs" / "fig5.png"
    assert main(["inspect", str(good), str(good), "--markdown", "--validate", "structure", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 4  # header, rule, two rows
    assert all(line.endswith("|") for line in table)
    assert table[0].replace(" ", "").startswith("|Dataset|Episodes|Transitions|Returnmin/avg/max|")
    assert set(table[1].replace("|", "").replace(" ", "")) <= {"-", ":"}
    assert table[2].split("|")[1].strip() == "3m/medium"
    assert png.is_file() and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(png) in out


def test_plot_return_distribution_figure(good, tmp_path):
    ds = load_dataset(good)
    fig = plot_return_distribution([ds], bins=10, overlay=False, path=tmp_path / "one.png")
    (ax,) = fig.axes
    assert ax.get_xlabel() == "episode return" and ax.get_ylabel() == "density"
    assert ax.get_legend_handles_labels()[1] == [f"3m/medium ({N_EPISODES} episodes)"]
    assert len(ax.patches) == 1  # one stepfilled histogram per dataset
    fig2 = plot_return_distribution({"a": [1.0, 2.0, 2.0], "b": [3.0]}, path=tmp_path / "two.png")
    assert fig2.axes[0].get_legend_handles_labels()[1] == ["a (3 episodes)", "b (1 episodes)"]
    assert (tmp_path / "one.png").stat().st_size > 0 and (tmp_path / "two.png").stat().st_size > 0


def test_validate_ok(good, capsys):
    assert main(["validate", str(good)]) == 0
    ref = independent_stats(good)
    digest = json.loads((good / "dataset.json").read_text())["content_sha256"]
    assert capsys.readouterr().out.strip() == (f"OK {good}: {N_EPISODES} episodes, {ref['transitions']} transitions, "
                                               f"SHA-256 {digest[:12]} as recorded")


def test_validate_refuses_episodes_changed_after_writing(good, copy_of, capsys):
    """A value changed in place (sizes and every per-episode rule intact): only the digest can
    tell, and validate names both digests; digest prints what it finds against the record."""
    td = TensorDict.load_memmap(copy_of / "episodes")
    td["reward"][0, 0, 0] += 0.5  # a plausible reward, written through to the memmap file
    del td
    recorded = json.loads((copy_of / "dataset.json").read_text())["content_sha256"]
    assert main(["validate", str(copy_of)]) == 2
    err = capsys.readouterr().err
    assert f"dataset {copy_of}: the episodes' SHA-256 is " in err and f"dataset.json records {recorded}" in err
    assert main(["digest", str(good), str(copy_of)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"{recorded}  {good}  (as recorded)"
    assert lines[1].endswith(f"{copy_of}  (dataset.json records {recorded})") and not lines[1].startswith(recorded)
    # A set written before digests were recorded: validated, its digest printed as found.
    meta = json.loads((good / "dataset.json").read_text())
    shutil.rmtree(copy_of)
    shutil.copytree(good, copy_of)
    (copy_of / "dataset.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "content_sha256"}))
    assert main(["validate", str(copy_of)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"SHA-256 {recorded[:12]} (none recorded)")


def test_validate_missing_metadata_exits_2(good, copy_of, capsys):
    (copy_of / "dataset.json").unlink()
    assert main(["validate", str(good), str(copy_of)]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith(f"OK {good}:")  # the good one is still reported
    assert "dataset.json is missing" in captured.err and str(copy_of) in captured.err


@pytest.mark.slow
def test_validate_nan_reward_exits_2_without_traceback(copy_of, capsys):
    td = TensorDict.load_memmap(copy_of / "episodes")
    td["reward"][3, 1, 0] = float("nan")  # writes through to the memmap file
    del td
    message = f"dataset {copy_of}: field reward: expected finite values, found nan at episode 3, step 1"
    # The real command line: exit status 2, the message, no traceback.
    proc = cli("validate", str(copy_of))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {message}"
    assert "OK" not in proc.stdout
    # inspect validates fully by default, so it refuses the dataset too.
    assert main(["inspect", str(copy_of)]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_import_cfcql_missing_file_exits_2(tmp_path, capsys):
    # Whether or not the importer (and h5py) is installed: one clean message, status 2.
    assert main(["import-cfcql", str(tmp_path / "3m_medium.h5"), "--data-root", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()


def test_import_cfcql_passes_arguments_and_prints_row(good, tmp_path, monkeypatch, capsys):
    calls = []

    def fake_import(h5_path, out_dir=None, *, map_name=None, quality=None, data_root="data", overwrite=False):
        calls.append((h5_path, out_dir, map_name, quality, data_root, overwrite))
        return good

    monkeypatch.setitem(sys.modules, "ovmse.datasets.cfcql", types.SimpleNamespace(import_cfcql=fake_import))
    h5 = tmp_path / "x.h5"
    assert main(["import-cfcql", str(h5), "--map", "3m", "--quality", "medium", "--data-root", "dr",
                 "--overwrite"]) == 0
    assert calls == [(h5, None, "3m", "medium", "dr", True)]
    out = capsys.readouterr().out
    assert str(good) in out and "3m/medium" in out and "Return min / avg / max" in out

    def exists(*args, **kwargs):
        raise FileExistsError("Dataset directory data/3m/medium already exists")

    monkeypatch.setitem(sys.modules, "ovmse.datasets.cfcql", types.SimpleNamespace(import_cfcql=exists))
    assert main(["import-cfcql", str(h5), "--out", str(tmp_path / "o")]) == 2
    assert "already exists" in capsys.readouterr().err
