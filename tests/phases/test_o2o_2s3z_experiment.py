"""Issue 17's experiment: the sweep's cells are the grids' cells, the offline budget in dataset
timesteps, and the report's numbers and verdicts on a hand-written sweep root."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from ovmse.phases.offline import offline_updates
from ovmse.phases.pipeline import make_cell
from ovmse.sweeps import forwarded_overrides, variant_of

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import o2o_2s3z  # noqa: E402
import o2o_2s3z_report as report_script  # noqa: E402


def test_the_sweeps_cells_are_the_grids_cells(tmp_path, compose_cfg):
    """scripts/o2o_2s3z.py decides when the sweep is done from CELLS: they must be the run
    directories the pipeline makes for the three grids."""
    made = set()
    for grid, stage_overrides in o2o_2s3z.STAGES + o2o_2s3z.DIAGNOSIS_STAGES:
        params = yaml.safe_load((ROOT / "configs" / "grid" / f"{grid}.yaml").read_text())["hydra"]["sweeper"]["params"]
        for override in stage_overrides:  # hydra.sweeper.params.<key>=<values>
            key, _, values = override.removeprefix("hydra.sweeper.params.").partition("=")
            params[key] = values
        # The job overrides as Hydra's basic sweeper spells them (true -> True).
        parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
        for (job,) in BasicSweeper.split_arguments(parsed, 1):
            overrides = ["phase=pipeline", f"budget={o2o_2s3z.BUDGET}", f"pipeline.root={tmp_path}", *job]
            cell = make_cell(compose_cfg(*overrides), variant_and := forwarded_overrides(overrides))
            assert variant_of(variant_and) == cell.variant
            made.add(str(cell.online_dir.relative_to(tmp_path / "online")))
    cells = o2o_2s3z.CELLS + o2o_2s3z.DIAGNOSIS_CELLS
    assert made == {f"{task}/{name}/seed{s}" for task, name in cells for s in o2o_2s3z.SEEDS}
    assert set(o2o_2s3z.missing_cells(tmp_path, cells)) == made
    done = tmp_path / "online" / "2s3z" / "qmix" / "seed1"
    done.mkdir(parents=True)
    (done / "online_summary.json").write_text("{}")
    assert set(o2o_2s3z.missing_cells(tmp_path, cells)) == made - {"2s3z/qmix/seed1"}


def test_offline_budget_in_dataset_timesteps():
    # Our 2s3z medium set: 5000 episodes, mean length 58.0 -> 59 filled rows each (CFCQL counts
    # the last observation's row too): ceil(10.05M / (128 * 59.0)) = 1331.
    assert offline_updates(10_000, 10_050_000, 128, 5000, 5000 * 58) == 1331
    assert offline_updates(10_000, None, 128, 5000, 290_000) == 10_000
    assert offline_updates(10_000, 128 * 59, 128, 5000, 5000 * 58) == 1  # exactly one batch of rows
    assert offline_updates(10_000, 128 * 59 + 1, 128, 5000, 5000 * 58) == 2
    with pytest.raises(ValueError, match="dataset_timesteps must be >= 1"):
        offline_updates(10_000, 0, 128, 5000, 290_000)


# ------------------------------------------------------------------------------- the report

def _write_run(root, task, name, seed, evals, *, final=None, ckpt=None, probes=()):
    run = root / "online" / task / name / f"seed{seed}"
    run.mkdir(parents=True)
    columns = ["env_steps", "eval/win_rate", "eval/return", "eval/probe_q_tot", "eval/probe_mc_return",
               "eval/final_win_rate"]
    with open(run / "metrics.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows({"env_steps": s, "eval/win_rate": w, "eval/return": r} for s, w, r in evals)
        writer.writerows({"env_steps": s, "eval/probe_q_tot": q, "eval/probe_mc_return": 5.0} for s, q in probes)
        if final is not None:  # the final test never enters a curve
            writer.writerow({"env_steps": evals[-1][0], "eval/win_rate": 0.0, "eval/return": 0.0,
                             "eval/final_win_rate": final})
    if final is not None:
        (run / "online_summary.json").write_text(json.dumps({
            "env_steps": evals[-1][0], "ckpt": ckpt, "wall_seconds": 1200.0, "eval/final_win_rate": final,
            "eval/final_return": 20.0 * final, "eval/final_episodes": 640}))


# Evaluations fire just past their marks, as in real runs (50,176 belongs to "50k", 300,032 to the end).
OVMSE = [(8_704, 0.5, 15.0), (30_208, 0.4, 12.0), (50_176, 0.6, 11.0), (60_160, 0.85, 18.0), (200_192, 1.0, 19.0),
         (300_032, 1.0, 20.0)]
MACQL = [(8_000, 0.5, 15.0), (30_000, 0.0, 5.0), (200_000, 0.8, 18.0), (300_000, 0.9, 19.0)]
MACALQL = [(8_000, 0.5, 15.0), (40_000, 0.1, 9.0), (300_000, 0.7, 17.0)]
QMIX = [(8_000, 0.0, 3.0), (100_000, 0.2, 8.0), (300_000, 0.85, 19.0)]


@pytest.fixture
def swept(tmp_path):
    root = tmp_path / "sweep"
    offline = root / "offline" / "2s3z_medium" / "seed0-abc"
    offline.mkdir(parents=True)
    (offline / "offline_summary.json").write_text(json.dumps(
        {"eval/win_rate": 0.5, "eval/return": 15.0, "updates": 1355, "wall_seconds": 1500.0}))
    ckpt = f"/elsewhere/offline/2s3z_medium/{offline.name}/checkpoints/last.ckpt"  # a moved root still matches
    for seed in range(3):
        _write_run(root, "2s3z_medium", "ovmse", seed, OVMSE, final=0.95 + 0.01 * seed, ckpt=ckpt,
                   probes=[(8_000, 6.0), (100_000, 7.0)])
        _write_run(root, "2s3z_medium", "macql", seed, MACQL, final=0.9, ckpt=ckpt, probes=[(8_000, 6.0), (100_000, 4.0)])
        _write_run(root, "2s3z_medium", "macalql", seed, MACALQL, final=0.6, ckpt=ckpt)
        _write_run(root, "2s3z", "qmix", seed, QMIX, final=0.92)
    for seed in range(2):
        _write_run(root, "2s3z_medium", "switch_cql", seed, MACQL, final=0.9, ckpt=ckpt)
    _write_run(root, "2s3z_medium", "switch_cql", 2, MACQL[:2])  # still running: no summary
    # A run the pipeline resumed: its summary's wall-clock is its last process's only.
    (root / "online" / "2s3z_medium" / "macalql" / "seed2" / "pipeline.json").write_text(
        json.dumps({"stages": [{"stage": "online", "status": "resumed"}]}))
    # Diagnosis: ε starting at 0.2 (100k env steps), and MACQL fine-tuning QMIX's own policy.
    for seed, low in enumerate((14.0, 10.0)):
        _write_run(root, "2s3z_medium", "ovmse+algo.epsilon_start=0.2,env_steps=100000", seed,
                   [(8_000, 0.5, 15.0), (40_000, 0.6, low), (100_000, 0.9, 19.0)], final=0.9, ckpt=ckpt)
    qmix_start = root / "diagnosis" / "qmix_start"
    _write_run(qmix_start, "x", "macql", 0, [(8_000, 0.95, 20.0), (30_000, 0.2, 12.0), (50_000, 0.5, 16.0)], final=0.55,
               ckpt="start.ckpt")
    for path in (qmix_start / "online" / "x").iterdir():
        path.rename(qmix_start / path.name)
    return root


def test_report_records_tables_and_verdicts(swept, tmp_path):
    doc, out_json = tmp_path / "docs" / "results.md", tmp_path / "o2o.json"
    records = report_script.report(swept, doc=doc, out_json=out_json, recorded=[])
    by = {(r["task"], r["algorithm"], r["seed"]): r for r in json.loads(out_json.read_text())["runs"]}
    assert len(by) == len(records) == 3 * 3 + 3 + 3 + 2  # QMIX under the tasks that have runs; 2 diagnosis runs
    ovmse = by[("2s3z_medium", "ovmse", 1)]
    assert ovmse["status"] == "finished" and ovmse["final_win_rate"] == pytest.approx(0.96)
    assert ovmse["drop"] == pytest.approx(15.0 - 11.0)  # the 50,176 evaluation is in, the 60k one is not
    assert ovmse["steps_to_0.8"] == 60_160 and ovmse["return_at_200k"] == pytest.approx(19.0)
    assert ovmse["mean_win_rate"] == pytest.approx((0.5 + 0.4 + 0.6 + 0.85 + 1.0 + 1.0) / 6)
    assert ovmse["offline_return"] == 15.0 and ovmse["probe"]["q_tot"] == [6.0, 7.0]
    assert by[("2s3z_medium", "macalql", 0)]["steps_to_0.8"] is None
    assert "drop" not in by[("2s3z_medium", "qmix", 0)]  # from scratch: no offline policy to drop from
    running = by[("2s3z_medium", "switch_cql", 2)]
    assert running["status"] == "unfinished" and running["env_steps_reached"] == 30_000
    assert "final_win_rate" not in running
    text = doc.read_text()
    assert report_script.BEGIN in text and report_script.END in text
    assert "| OVMSE | 3 of 3 | **0.960** (0.950, 0.960, 0.970) |" in text
    assert "| Switch-CQL | 2 of 3 (+1 unfinished) |" in text
    assert "| 20 min (1 resumed left out) |" in next(line for line in text.splitlines() if line.startswith("| MACal-QL"))
    # Claim 2 holds: OVMSE 60k; MACQL 200k (140k later), MACal-QL never, QMIX 300k.
    assert ("*OVMSE reaches a 0.8 win rate at least 100k env steps before MACQL, MACal-QL and QMIX* (median env "
            "steps to 0.8 over seeds; a seed that never reaches it counts as beyond 300k): **agrees**") in text
    # Claims that need Switch-CQL's third seed wait for it.
    assert "*OVMSE drops least right after the switch* (median over seeds of the offline policy's return minus the " \
           "lowest evaluation return in the first 50k env steps): **pending**" in text
    assert "*Figure 1, OVMSE's Q_tot on the offline policy's trajectories falls least* (median over seeds of the " \
           "first probe Q_tot minus the lowest later one): **pending**" in text
    # Diagnosis tables: the ε = 1.0 row is OVMSE's 300k runs read at 100k (no evaluation at 100k: the one before).
    assert "| decentralised SE (OVMSE) | 1.0 | 3 | 4.00 (4.00, 4.00, 4.00) | 0.850 (0.850, 0.850, 0.850) |" in text
    assert "| decentralised SE (OVMSE) | 0.2 | 2 | 3.00 (1.00, 5.00) | 0.900 (0.900, 0.900) |" in text
    assert ("| MACQL | ε-greedy | TD(λ) + CQL, offline share 0.3 | 1 | 0.950 (0.950) | 0.200 (0.200) | "
            "0.550 (0.550) |") in text
    for name in ("o2o_2s3z_curves.png", "o2o_2s3z_ablations.png", "o2o_2s3z_unlearning.png"):
        assert (doc.parent / "img" / name).stat().st_size > 1000


def test_no_memory_table_reads_every_run_over_its_first_100k(tmp_path):
    """OVM only (a 300k run) and the same run without its memory (100k) are compared over the
    first 100k env steps: the Q_tot - Monte-Carlo gap of OVM only's later rows stays out."""
    def run(name, seed, gaps, reached):
        path = tmp_path / "online" / "2s3z_medium" / name / f"seed{seed}"
        path.mkdir(parents=True)
        with open(path / "metrics.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, ["env_steps", "train/q_minus_mc_return"])
            writer.writeheader()
            writer.writerows({"env_steps": s, "train/q_minus_mc_return": g} for s, g in gaps)
        steps = [s for s in (10_000, 50_000, 100_000, 300_000) if s <= reached]
        curve = {"env_steps": steps, "win_rate": [0.5, 0.1, 0.2, 0.0][:len(steps)]}
        return {"task": "2s3z_medium", "algorithm": name, "seed": seed, "env_steps_reached": reached, "drop": 7.0,
                "curve": curve, "path": str(path.relative_to(tmp_path)),
                "values": {"first_100k": report_script.run_values(path, until=report_script.EXPLORATION_STEPS)}}

    records = [run("ovm_only", 0, [(40_000, 1.0), (60_000, 5.0), (90_000, 7.0), (200_000, 12.0)], 300_000),
               run(report_script.NO_MEMORY, 0, [(60_000, 1.0), (100_000, 2.0)], 100_000),
               run(report_script.NO_MEMORY, 1, [(60_000, 3.0)], 60_000),  # not at 100k yet: left out
               run(report_script.SE_NO_MEMORY, 2, [(60_000, 4.0), (80_000, 6.0)], 100_000)]
    table = report_script.no_memory_table(records)
    se_no_memory = next(line for line in table.splitlines() if line.startswith("| OVMSE without the memory"))
    assert "| decentralised SE | one-step TD + CQL α 0.05 | 1 |" in se_no_memory
    assert se_no_memory.endswith("| 5.00 (5.00) |")
    ovm = next(line for line in table.splitlines() if line.startswith("| OVM only |"))
    assert ovm.endswith("| 1 | 7.00 (7.00) | 0.200 (0.200) | 0.267 (0.267) | 6.00 (6.00) |")
    no_memory = next(line for line in table.splitlines() if line.startswith("| OVM only without the memory"))
    assert no_memory.endswith("| 1 | 7.00 (7.00) | 0.200 (0.200) | 0.267 (0.267) | 1.50 (1.50) |")
    assert "MACQL" not in table and "| SE only |" not in table  # no MACQL or SE only run: no row
    assert "| ε-greedy | one-step TD + CQL α 0.05 | 1 |" in no_memory


def test_steps_to_08_need_the_next_evaluation_to_hold_it():
    """A run that starts above 0.8 and collapses after the switch (MACal-QL calibrated, seed 0:
    0.81 at 4.6k, 0.04 at 10k) has not reached 0.8 there; a single 128-battle spike is not either."""
    steps = np.array([4_608, 10_000, 170_000, 180_000, 190_000, 200_000, 300_000])
    assert report_script.steps_to(steps, np.array([0.81, 0.04, 0.91, 0.79, 0.84, 0.88, 0.95]), 0.8) == 190_000
    assert report_script.steps_to(steps, np.array([0.81, 0.04, 0.91, 0.84, 0.7, 0.7, 0.7]), 0.8) == 170_000
    assert report_script.steps_to(steps, np.array([0.81, 0.0, 0.0, 0.0, 0.0, 0.0, 0.85]), 0.8) == 300_000  # the end
    assert report_script.steps_to(steps, np.array([0.81, 0.0, 0.0, 0.0, 0.0, 0.0, 0.7]), 0.8) is None
    assert report_script.steps_to(steps, np.array([0.81, 0.0, 0.0, 0.0, 0.0, 0.0, 0.7]), 0.8, hold=1) == 4_608


def test_claims_turn_on_the_numbers(swept, tmp_path):
    records = report_script.report(swept, doc=tmp_path / "r.md", out_json=tmp_path / "o.json", recorded=[])
    for r in records:  # MACQL now reaches 0.8 at 100k: 40k behind OVMSE, not 100k
        if r["algorithm"] == "macql":
            r["steps_to_0.8"] = 100_000
    text = "\n".join(report_script.claims(records, 300_000))
    assert "QMIX* (median env steps to 0.8 over seeds; a seed that never reaches it counts as beyond 300k): " \
           "**does not agree**" in text
    # With Switch-CQL's third seed finished, the drop claim is decided: OVMSE 4.0 vs 10.0 (MACQL, Switch-CQL) and
    # MACal-QL's 15 - 9 = 6.0.
    records.append({**next(r for r in records if r["algorithm"] == "switch_cql" and r["status"] == "finished"),
                    "seed": 2})
    text = "\n".join(report_script.claims(records, 300_000))
    assert "lowest evaluation return in the first 50k env steps): **agrees**. OVMSE 4.00, Switch-CQL 10.00, " \
           "MACQL 10.00, MACal-QL 6.00." in text
    assert "first probe Q_tot minus the lowest later one): **agrees**. OVMSE 0.00, Switch-CQL —, MACQL 2.00." in text


def test_qmix_start_runs_wait_for_qmix_and_leave_out_a_seed_that_never_passed_09(tmp_path):
    for seed, best in ((1, 0.5), (2, 0.95)):
        run = tmp_path / "online" / "2s3z" / "qmix" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "online_summary.json").write_text(json.dumps({"eval/best_win_rate": best}))
    args = type("Args", (), {"data_root": str(tmp_path / "data")})()
    missing = o2o_2s3z.missing_qmix_start(tmp_path)
    # Seed 0 waits for its QMIX run, seed 1 has no policy past the dip, seed 2 is ready.
    assert {m.rsplit("/", 1)[1] for m in missing} == {"seed0", "seed2"} and len(missing) == 2 * 6
    assert {m.split("/")[2] for m in missing} == {"ovmse", "switch_cql", "macql", "macalql", "ovm_only", "se_only"}
    assert o2o_2s3z.qmix_start_checkpoint(args, tmp_path, 0) is None
    assert o2o_2s3z.qmix_start_checkpoint(args, tmp_path, 1) is None


def test_the_budget_collects_the_documented_datasets():
    """The sweep makes the 2s3z datasets its results were measured on: the seed of
    docs/datasets.md's collect command (another seed makes other sets)."""
    import re

    root = Path(__file__).resolve().parents[2]
    budget = yaml.safe_load((root / "configs" / "budget" / "300k.yaml").read_text())
    command = re.search(r"python train.py phase=collect env=2s3z seed=(\d+)", (root / "docs" / "datasets.md").read_text())
    assert command is not None, "docs/datasets.md lost the 2s3z collect command"
    assert budget["pipeline"]["collect"]["seed"] == int(command.group(1))


def test_report_refuses_to_lose_finished_runs_of_the_last_report(swept, tmp_path):
    """A sweep root that lost outputs (a new machine) must not overwrite the report that holds them."""
    import shutil

    root = tmp_path / "root"
    shutil.copytree(swept, root)
    out_json, doc = tmp_path / "o2o.json", tmp_path / "results.md"
    report_script.report(root, doc=doc, out_json=out_json, recorded=[])
    before = out_json.read_text()
    shutil.rmtree(root / "online" / "2s3z_medium" / "macql" / "seed1")
    with pytest.raises(SystemExit, match=r"1 finished runs .*online/2s3z_medium/macql/seed1.*--out-json benchmarks/"
                                         r"results/o2o_2s3z\.part-\d{4}-\d\d-\d\d\.json.*--allow-dropping"):
        report_script.report(root, doc=doc, out_json=out_json, recorded=[])
    assert out_json.read_text() == before
    records = report_script.report(root, doc=doc, out_json=out_json, allow_dropping=True, recorded=[])
    assert "online/2s3z_medium/macql/seed1" not in {r["path"] for r in records}


def test_stats_from_the_records_alone(swept, tmp_path):
    """python scripts/o2o_2s3z.py stats reads the report's JSON only (no sweep outputs needed)."""
    import o2o_2s3z_stats as stats_script

    out_json = tmp_path / "o2o.json"
    report_script.report(swept, doc=tmp_path / "r.md", out_json=out_json, recorded=[])
    doc = tmp_path / "docs" / "results.md"
    result = stats_script.main([out_json], out_dir=tmp_path, doc=doc, reps=200)
    # The only set of the records (QMIX from scratch reads none).
    assert result["current_set"] == {"2s3z_medium": "not recorded (pretrainings of 1355 updates)"}
    assert result["tasks"] == result["pooled"]
    medium = result["tasks"]["2s3z_medium"]
    assert medium["ovmse"]["final_win_rate"] == [0.95, 0.96, 0.97] and medium["ovmse"]["iqm"] == pytest.approx(0.96)
    assert medium["macql"]["p_ovmse_better"] == 1.0  # 0.95-0.97 against 0.9 on every pair
    assert "p_ovmse_better" not in medium["ovmse+algo.epsilon_start=0.2,env_steps=100000"]  # another budget
    text = doc.read_text()
    assert "| macalql | 3 | 0.600, 0.600, 0.600 |" in text and "(no interval: 2 seeds)" in text  # switch_cql: 2 done
    marl = json.loads((tmp_path / "o2o_2s3z_marl_eval.json").read_text())
    assert set(marl["smac_sim"]["2s3z_medium"]["ovmse"]) == {"run_0", "run_1", "run_2"}


def test_stats_merge_record_files_each_run_once(tmp_path):
    import o2o_2s3z_stats as stats_script

    run = {"task": "2s3z_medium", "algorithm": "ovmse", "seed": 1, "status": "finished", "final_win_rate": 0.5}
    (tmp_path / "a.json").write_text(json.dumps({"runs": [run]}))
    (tmp_path / "b.json").write_text(json.dumps({"runs": [{**run, "final_win_rate": 0.9}, {**run, "seed": 2}]}))
    runs = stats_script.merged_runs([tmp_path / "a.json", tmp_path / "b.json"])
    assert [(r["seed"], r["final_win_rate"]) for r in runs] == [(1, 0.5), (2, 0.5)]


def test_stats_keep_runs_on_two_datasets_apart(tmp_path):
    """Seeds pretrained on two "medium" sets (the data collected again on a new machine): the
    headline statistics use the newest set only, the pooled ones take each seed once, preferring
    it; a record from before datasets were recorded is told apart by its pretrainings' updates."""
    import o2o_2s3z_stats as stats_script

    curve = {"env_steps": [10_000 * (i + 1) for i in range(30)], "win_rate": [0.5] * 30}
    run = {"task": "2s3z_medium", "status": "finished", "offline_win_rate": 0.6, "curve": curve}
    new_set = {"name": "2s3z/medium", "episodes": 5000, "transitions": 305838, "created": "2026-12-04T10:20:16"}
    old = {"offline": {"offline/2s3z_medium/seed0-c9": {"task": "2s3z_medium", "updates": 1355}},
           "runs": [{**run, "algorithm": a, "seed": seed, "final_win_rate": 0.1 * seed + (0.05 if a == "macql" else 0)}
                    for a in ("ovmse", "macql") for seed in (0, 1)]}
    new = {"offline": {"offline/2s3z_medium/seed1-f3": {"task": "2s3z_medium", "updates": 1263, "dataset": new_set}},
           "runs": [{**run, "algorithm": a, "seed": seed, "dataset": new_set, "final_win_rate": 0.9 - 0.1 * seed}
                    for a in ("ovmse", "macql") for seed in (1, 2)]
           + [{**run, "algorithm": "qmix", "seed": 0, "offline_win_rate": None, "final_win_rate": 0.99}]}
    # Another task has a set of its own, made earlier: it is that task's current set.
    replay_set = {**new_set, "name": "2s3z/medium_replay", "transitions": 29741, "created": "2026-12-04T10:17:51"}
    new["runs"].append({**run, "task": "2s3z_medium_replay", "algorithm": "ovmse", "seed": 0, "dataset": replay_set,
                        "final_win_rate": 0.4})
    for name, data in (("o2o_2s3z.json", old), ("o2o_2s3z.part-b.json", new)):
        (tmp_path / name).write_text(json.dumps(data))
    doc = tmp_path / "docs" / "results.md"
    result = stats_script.main([tmp_path / "o2o_2s3z.json", tmp_path / "o2o_2s3z.part-b.json"], out_dir=tmp_path,
                               doc=doc, reps=100)
    assert result["current_set"]["2s3z_medium"] == "305,838 transitions, made 2026-12-04T10:20:16"
    current, pooled = result["tasks"]["2s3z_medium"], result["pooled"]["2s3z_medium"]
    assert current["ovmse"]["seeds"] == [1, 2] and current["ovmse"]["final_win_rate"] == [0.8, 0.7]
    assert current["qmix"]["final_win_rate"] == [0.99]  # reads no dataset: in both
    assert result["current_set"]["2s3z_medium_replay"] == "29,741 transitions, made 2026-12-04T10:17:51"
    assert result["tasks"]["2s3z_medium_replay"]["ovmse"]["final_win_rate"] == [0.4]
    # Seed 1 ran on both sets: the pooled statistics take it once, from the current set.
    assert pooled["ovmse"]["seeds"] == [0, 1, 2] and pooled["ovmse"]["final_win_rate"] == [0.0, 0.8, 0.7]
    assert pooled["ovmse"]["sets"][0] == "not recorded (pretrainings of 1355 updates)"
    text = doc.read_text()
    assert "| ovmse | 3 | 0.000 (C), 0.800 (B), 0.700 (B) |" in text
    assert ("Sets: A: 29,741 transitions, made 2026-12-04T10:17:51; B: 305,838 transitions, made 2026-12-04T10:20:16; "
            "C: not recorded (pretrainings of 1355 updates).") in text
    # A record naming no dataset whose file's pretrainings differ in length cannot be placed.
    old["offline"]["offline/2s3z_medium/seed1-x"] = {"task": "2s3z_medium", "updates": 1263}
    (tmp_path / "o2o_2s3z.json").write_text(json.dumps(old))
    with pytest.raises(SystemExit, match=r"ovmse seed 0: the record names no dataset .* \[1263, 1355\] updates"):
        stats_script.merged_runs([tmp_path / "o2o_2s3z.json"])


@pytest.mark.parametrize("algo, seed, recorded", [("macql", 1, "f3d5493b"), ("switch_cql", 2, "a4199e2f"),
                                                  ("ovmse", 0, "c92904eb")])
def test_the_recorded_pretrainings_keep_their_identity(compose_cfg, algo, seed, recorded):
    """The offline pretrainings of benchmarks/results/o2o_2s3z*.json (their directories are
    seed<k>-<hash>): config keys added later that do not act on 2s3z's MACQL pretraining (CFCQL's
    behaviour-net settings) must not change the hash, or a sweep would redo them and refuse its
    finished online runs."""
    cfg = compose_cfg("phase=pipeline", "experiment=2s3z_medium", f"algo={algo}", "budget=300k", f"seed={seed}",
                      "pipeline.root=/tmp/unused")
    cell = make_cell(cfg, ["experiment=2s3z_medium", f"algo={algo}", f"seed={seed}", "num_threads=1"])
    assert cell.offline_hash == recorded
    # Where the behaviour net exists, its settings are part of what the pretraining is.
    cfcql = compose_cfg("phase=pipeline", "experiment=2s3z_medium", f"algo={algo}", "budget=300k", f"seed={seed}",
                        "algo.offline.cql=cfcql", "algo.offline.behaviour_patience=5", "pipeline.root=/tmp/unused")
    other = compose_cfg("phase=pipeline", "experiment=2s3z_medium", f"algo={algo}", "budget=300k", f"seed={seed}",
                        "algo.offline.cql=cfcql", "pipeline.root=/tmp/unused")
    assert make_cell(cfcql, []).offline_hash != make_cell(other, []).offline_hash


@pytest.mark.parametrize("seed, shared", [(1, "f3d5493b"), (2, "a4199e2f")])
def test_macalql_pretrains_calibrated_on_its_own(compose_cfg, seed, shared):
    """Cal-QL calibrates its pretraining (Nakamoto et al. 2023, Algorithm 1): MACal-QL's offline
    objective has the Monte-Carlo bound, so it cannot share the plain CQL pretraining of OVMSE,
    MACQL and Switch-CQL; ``algo.offline.calibrated=false`` (the runs made before 2026-12-04)
    finds that shared one again."""
    from ovmse.phases.objective import resolve_objective

    def cfg(algo, *extra):
        return compose_cfg("phase=pipeline", "experiment=2s3z_medium", f"algo={algo}", "budget=300k", f"seed={seed}",
                           "pipeline.root=/tmp/unused", *extra)

    calibrated, plain = cfg("macalql"), cfg("macalql", "algo.offline.calibrated=false")
    assert resolve_objective(calibrated, "2s3z", "medium").cql.calibrated
    assert not resolve_objective(plain, "2s3z", "medium").cql.calibrated
    assert not resolve_objective(cfg("macql"), "2s3z", "medium").cql.calibrated
    assert make_cell(plain, []).offline_hash == make_cell(cfg("macql"), []).offline_hash == shared
    assert make_cell(calibrated, []).offline_hash != shared
    # The variant is named by its override, so its runs do not mix with the calibrated ones.
    assert make_cell(plain, ["algo.offline.calibrated=false"]).variant == "algo.offline.calibrated=false"


def test_a_calibrated_pretraining_needs_a_cql_term(compose_cfg):
    from ovmse.phases.objective import resolve_objective

    cfg = compose_cfg("phase=offline", "env=3m", "algo=macalql", "algo.offline.cql=null")
    with pytest.raises(ValueError, match=r"algo.offline.calibrated=true .* algo.offline.cql is null on 3m"):
        resolve_objective(cfg, "3m", "medium")


def test_status_tells_recorded_runs_from_runs_never_made(tmp_path):
    """A new machine has no sweep outputs: runs finished in an earlier root are in the result files."""
    run = {"task": "2s3z_medium", "algorithm": "macql", "seed": 0, "status": "finished",
           "path": "online/2s3z_medium/macql/seed0"}
    (tmp_path / "o2o_2s3z.json").write_text(json.dumps({"runs": [run, {**run, "seed": 1, "status": "running",
                                                                        "path": "online/2s3z_medium/macql/seed1"}]}))
    (tmp_path / "o2o_2s3z.part-x.json").write_text(json.dumps({"runs": [{**run, "seed": 2,
                                                                          "path": "online/2s3z_medium/macql/seed2"}]}))
    recorded = o2o_2s3z.recorded_runs(tmp_path)
    assert recorded == {"2s3z_medium/macql/seed0": [("o2o_2s3z.json", "not recorded")],
                        "2s3z_medium/macql/seed2": [("o2o_2s3z.part-x.json", "not recorded")]}
    # A run made on another set than the one the sweep root pinned is to be redone there.
    root, cell = tmp_path / "root", "2s3z_medium/macql/seed0"
    old_set = ("o2o_2s3z.json", "not recorded (pretrainings of 1355 updates)")
    recorded[cell] = [old_set]
    assert o2o_2s3z.recorded_note(root, cell, recorded) == "   [recorded in o2o_2s3z.json]"  # no pin yet
    (root / "datasets" / "2s3z").mkdir(parents=True)
    (root / "datasets" / "2s3z" / "medium.json").write_text(json.dumps(
        {"episodes": 5000, "transitions": 305838, "created": "2026-12-04T10:20:16"}))
    assert o2o_2s3z.recorded_note(root, cell, recorded) == (
        "   [recorded in o2o_2s3z.json, on another set (not recorded (pretrainings of 1355 updates)) than this "
        "root's: redo it here]")
    # The pinned set makes 1263 updates at this budget: an unrecorded set of 1263 is it.
    recorded[cell] = [("o2o_2s3z.json", "not recorded (pretrainings of 1263 updates)")]
    assert o2o_2s3z.recorded_note(root, cell, recorded) == "   [recorded in o2o_2s3z.json]"
    # Redone on the pinned set in a later file: nothing to redo.
    recorded[cell] = [old_set, ("o2o_2s3z.part-y.json", "305,838 transitions, made 2026-12-04T10:20:16")]
    assert o2o_2s3z.recorded_note(root, cell, recorded) == "   [recorded in o2o_2s3z.json, o2o_2s3z.part-y.json]"


def test_a_set_collected_again_at_its_commit_pools_with_the_first(tmp_path):
    """The sweep outputs lost with a machine, the set collected again at the commit that made it
    (docs/datasets.md: the same episodes): the new root's seeds join the recorded ones; a set of
    the same size collected at another commit does not."""
    import o2o_2s3z_stats as stats_script

    curve = {"env_steps": [10_000 * (i + 1) for i in range(30)], "win_rate": [0.5] * 30}
    run = {"task": "2s3z_medium", "status": "finished", "offline_win_rate": 0.6, "curve": curve, "algorithm": "macql"}
    first = {"name": "2s3z/medium", "episodes": 5000, "transitions": 305838, "created": "2026-12-04T10:20:16",
             "git_commit": "8a418d0"}
    again = {**first, "created": "2026-12-05T06:57:01", "content_sha256": "14f2" + "0" * 60}
    other = {**again, "git_commit": "dcd8715", "created": "2026-12-04T09:00:00"}  # made before: not the current set
    assert stats_script.set_label(first) == stats_script.set_label(again) == "305,838 transitions, collected at 8a418d0"
    assert stats_script.set_label(other) != stats_script.set_label(first)
    files = {"o2o_2s3z.part-a.json": [{**run, "seed": s, "dataset": first, "final_win_rate": 0.9} for s in (1, 2)],
             "o2o_2s3z.part-b.json": [{**run, "seed": 0, "dataset": again, "final_win_rate": 0.8},
                                      {**run, "seed": 3, "dataset": other, "final_win_rate": 0.1}]}
    for name, runs in files.items():
        (tmp_path / name).write_text(json.dumps({"offline": {}, "runs": runs}))
    result = stats_script.main([tmp_path / name for name in files], out_dir=tmp_path, doc=tmp_path / "results.md",
                               reps=100)
    assert result["current_set"]["2s3z_medium"] == "305,838 transitions, collected at 8a418d0"
    assert result["tasks"]["2s3z_medium"]["macql"]["seeds"] == [0, 1, 2]  # seed 3's set is another one


def _dataset(where: Path, transitions: int, git_commit: str = o2o_2s3z.DATASET_COMMIT) -> None:
    where.mkdir(parents=True)
    (where / "dataset.json").write_text(json.dumps({"name": f"2s3z/{where.name}", "episodes": 5000,
                                                    "transitions": transitions, "created": "2026-12-05T06:57:01",
                                                    "code_version": {"git_commit": git_commit}}))


def test_a_new_machine_collects_the_experiments_sets_at_their_commit(tmp_path, monkeypatch):
    """``run`` on a machine without data collects both 2s3z sets with the code of the commit that
    made the recorded ones (a worktree, made once), the budget's collect settings, into the data
    root as given (relative to where ``run`` is called); a set whose episodes' digest is not the
    experiment's stops it, naming the set, unless --any-set."""
    import argparse

    import ovmse.datasets.format as dataset_format

    calls = []

    def fake_run(cmd, cwd=None, check=False):
        calls.append((list(map(str, cmd)), cwd))
        if cmd[:2] == ["git", "-C"]:
            (Path(cmd[-2]) / "train.py").parent.mkdir(parents=True)
            (Path(cmd[-2]) / "train.py").write_text("")
        if "phase=collect" in cmd:  # the collect run writes the sets
            data_root = Path(next(c for c in cmd if c.startswith("data_root=")).split("=", 1)[1])
            assert data_root.is_absolute()  # the run's working directory is the worktree
            for quality, transitions in o2o_2s3z.DATASET_TRANSITIONS.items():
                if not (data_root / "2s3z" / quality).exists():  # as phase=collect: the sets present are kept
                    _dataset(data_root / "2s3z" / quality, transitions)
        return argparse.Namespace(returncode=0)

    def fake_digest(where, spec):  # the experiment's digest where the set has the experiment's size
        quality = Path(where).name
        found = json.loads((Path(where) / "dataset.json").read_text())["transitions"]
        return o2o_2s3z.DATASET_SHA256[quality] if found == o2o_2s3z.DATASET_TRANSITIONS[quality] else "0" * 64

    monkeypatch.setattr(o2o_2s3z.subprocess, "run", fake_run)
    monkeypatch.setattr(dataset_format, "content_digest", fake_digest)
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(data_root="data", threads=1, device="cpu", any_set=False)
    o2o_2s3z.ensure_datasets(args, tmp_path / "root")
    (git, _), (collect, cwd) = calls
    code = tmp_path / "root" / "code" / o2o_2s3z.DATASET_COMMIT
    assert git[-4:] == ["add", "--detach", str(code), o2o_2s3z.DATASET_COMMIT]
    assert collect[1] == str(code / "train.py") and cwd == code
    budget = yaml.safe_load((ROOT / "configs" / "budget" / "300k.yaml").read_text())["pipeline"]["collect"]
    assert {"phase=collect", "env=2s3z", "algo=qmix", f"seed={budget['seed']}", f"env_steps={budget['env_steps']}",
            "qualities=[medium,medium_replay]", f"data_root={tmp_path / 'data'}"} <= set(collect)
    calls.clear()
    o2o_2s3z.ensure_datasets(args, tmp_path / "root")  # present: nothing run
    assert calls == []
    import shutil

    shutil.rmtree(tmp_path / "data" / "2s3z" / "medium_replay")
    o2o_2s3z.ensure_datasets(args, tmp_path / "root")  # one set missing: collected, the worktree reused
    assert [cmd[1] for cmd, _ in calls] == [str(code / "train.py")]
    meta = tmp_path / "data" / "2s3z" / "medium" / "dataset.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "transitions": 306404}))
    with pytest.raises(SystemExit, match=r"2s3z/medium \(306,404 transitions\) is not the experiment's set \(305,838 "
                                         r"transitions, made at 8a418d0, SHA-256 14f2f6575ae9\)"):
        o2o_2s3z.ensure_datasets(args, tmp_path / "root")
    o2o_2s3z.ensure_datasets(argparse.Namespace(**{**vars(args), "any_set": True}), tmp_path / "root")


def test_the_worker_passes_over_recorded_cells(tmp_path, monkeypatch):
    """The worker hands the pipeline its skip list and counts the listed cells as done: with every
    missing cell recorded it runs no grid at all."""
    import argparse

    listed = tmp_path / o2o_2s3z.RECORDED_CELLS
    args = argparse.Namespace(root=str(tmp_path), data_root=str(tmp_path / "data"), part="main", worker=0, threads=1,
                              device="cpu")
    assert f"pipeline.skip_cells_file={listed}" in o2o_2s3z.grid_command(args, "o2o_2s3z", (), tmp_path)
    everything = [f"{task}/{name}/seed{s}" for task, name in o2o_2s3z.CELLS for s in o2o_2s3z.SEEDS]

    def write(root, data_root):
        listed.write_text("".join(f"{cell}\n" for cell in everything))
        return listed

    monkeypatch.setattr(o2o_2s3z, "write_recorded_cells", write)
    monkeypatch.setattr(o2o_2s3z.subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a}"))
    o2o_2s3z.worker(args)  # returns: nothing missing


def test_the_cells_recorded_on_this_roots_sets_are_passed_over(tmp_path, monkeypatch):
    """The runs the result files hold on the sets under data_root (and QMIX from scratch) go to
    the pipeline's skip list; a run on another set is made again."""
    recorded = {"2s3z_medium/macql/seed1": [("b.json", "305,838 transitions, collected at 8a418d0")],
                "2s3z_medium/macql/seed0": [("a.json", "not recorded (pretrainings of 1355 updates)")],
                "2s3z_medium/ovmse/seed0": [("a.json", "not recorded (pretrainings of 1355 updates)"),
                                            ("b.json", "305,838 transitions, made 2026-12-04T10:20:16")],
                "2s3z/qmix/seed0": [("a.json", None)],
                "2s3z/qmix+algo.td_lambda=0.0/seed1": [("a.json", None)],
                "2s3z_medium/se_only/seed2": [("a.json", "not recorded (pretrainings of 1263 updates)")],
                "2s3z_medium_replay/macql/seed0": [("b.json", "29,741 transitions, collected at 8a418d0")]}
    monkeypatch.setattr(o2o_2s3z, "recorded_runs", lambda: recorded)
    _dataset(tmp_path / "data" / "2s3z" / "medium", 305838)
    listed = o2o_2s3z.write_recorded_cells(tmp_path, tmp_path / "data")
    from ovmse.sweeps.cells import read_cell_list

    # ovmse seed 0's second record names the set by its creation time alone: not this one's label;
    # se_only seed 2's names none, and its pretrainings made the 1263 updates this set makes. QMIX
    # from scratch is made again: the qmix-start diagnosis needs its checkpoints.
    assert read_cell_list(listed) == {"2s3z_medium/macql/seed1", "2s3z/qmix+algo.td_lambda=0.0/seed1",
                                      "2s3z_medium/se_only/seed2"}  # no medium-replay set here


def test_report_completes_a_new_root_with_the_runs_recorded_on_its_set(swept, tmp_path):
    """A new machine's sweep root (its set pinned) has some runs; the runs of earlier roots on that
    set are in the result files: the tables and verdicts take both, the JSON only the root's. A
    recorded finished run replaces the root's unfinished one of the same cell (the worker passes
    over recorded cells); one on another set, or one the root finished itself, is not taken."""
    pin = {"name": "2s3z/medium", "episodes": 5000, "transitions": 305838, "created": "2026-12-05T06:57:01",
           "git_commit": "8a418d0"}
    (swept / "datasets" / "2s3z").mkdir(parents=True)
    (swept / "datasets" / "2s3z" / "medium.json").write_text(json.dumps(pin))
    recorded_set = {**pin, "created": "2026-12-04T10:20:16"}  # the same set collected earlier
    curve = {"env_steps": [50_176.0, 300_032.0], "win_rate": [0.3, 0.5], "return": [10.0, 15.0]}
    base = {"task": "2s3z_medium", "status": "finished", "dataset": recorded_set, "curve": curve, "mean_win_rate": 0.4,
            "steps_to_0.8": None, "drop": 5.0, "final_return": 15.0, "final_battles": 640, "wall_seconds": 600.0,
            "resumed": False, "offline_win_rate": 0.6, "offline_return": 17.0}
    runs = [{**base, "algorithm": "switch_cql", "seed": 2, "path": "online/2s3z_medium/switch_cql/seed2",
             "final_win_rate": 0.5},  # unfinished in the root: the recorded one is shown
            {**base, "algorithm": "ovm_only", "seed": 1, "path": "online/2s3z_medium/ovm_only/seed1",
             "final_win_rate": 0.05},
            {**base, "algorithm": "ovm_only", "seed": 2, "path": "online/2s3z_medium/ovm_only/seed2",
             "final_win_rate": 0.07, "dataset": {**recorded_set, "git_commit": "dcd8715"}},  # another set
            {**base, "algorithm": "macql", "seed": 0, "path": "online/2s3z_medium/macql/seed0",
             "final_win_rate": 0.1},  # the root finished it: the root's wins
            {**{k: v for k, v in base.items() if k != "dataset"}, "algorithm": "ovm_only", "seed": 3,
             "path": "online/2s3z_medium/ovm_only/seed3", "final_win_rate": 0.07}]
    offline = {"offline/2s3z_medium/seed1-f3": {"task": "2s3z_medium", "win_rate": 0.65, "return": 17.8,
                                                "updates": 1263, "wall_seconds": 1500.0, "dataset": recorded_set},
               "offline/2s3z_medium/seed2-zz": {"task": "2s3z_medium", "win_rate": 0.1, "return": 9.0,
                                                "updates": 1355, "wall_seconds": 1500.0,
                                                "dataset": {**recorded_set, "transitions": 284872}}}
    earlier = tmp_path / "o2o_2s3z.part-earlier.json"
    earlier.write_text(json.dumps({"offline": offline, "runs": runs}))
    older = tmp_path / "o2o_2s3z.part-older.json"  # a record naming no set, and its file's pretrainings
    older.write_text(json.dumps({"offline": {"offline/2s3z_medium/seed3-u": {
        "task": "2s3z_medium", "win_rate": 0.6, "return": 17.0, "updates": 1263, "wall_seconds": 900.0}},
        "runs": [runs[-1]]}))
    runs = runs[:-1]
    earlier.write_text(json.dumps({"offline": offline, "runs": runs}))
    doc, out_json = tmp_path / "results.md", tmp_path / "o2o.json"
    records = report_script.report(swept, doc=doc, out_json=out_json, recorded=[earlier, older])
    assert all("recorded_in" not in r for r in records)
    assert {r["path"] for r in json.loads(out_json.read_text())["runs"]} == {r["path"] for r in records}
    text = doc.read_text()
    assert "| Switch-CQL | 3 of 3 | **0.900** (0.900, 0.900, 0.500) |" in text
    assert "| MACQL | 3 of 3 | **0.900** (0.900, 0.900, 0.900) |" in text
    assert "| seed1-f3 (recorded) | plain | 305,838, 8a418d0, 2026-12-04T10:20:16 | 1263 |" in text
    assert "seed2-zz" not in text
    assert ("With 3 finished runs and 2 pretrainings (marked `recorded`) of earlier sweep roots on this root's sets"
            in text and "`o2o_2s3z.part-earlier.json`: 2s3z_medium Switch-CQL seed 2; 2s3z_medium OVM only seed 1. "
            "`o2o_2s3z.part-older.json`: 2s3z_medium OVM only seed 3." in text)
    # A record from before the report kept its set, told by its pretrainings' update count (1263:
    # what the pinned set makes at this budget): taken, as the worker's skip list takes it.
    assert "| OVM only | 2 of 3 | **0.060** (0.050, 0.070) |" in text
    assert "| seed3-u (recorded) | plain | not recorded | 1263 |" in text
    # One file for the whole experiment: the JSON holds the recorded runs and pretrainings too, and
    # a later report from the root alone does not count them as lost (their files keep them).
    report_script.report(swept, doc=doc, out_json=out_json, recorded=[earlier, older], with_recorded=True)
    written = json.loads(out_json.read_text())
    by_path = {r["path"]: r for r in written["runs"]}
    assert by_path["online/2s3z_medium/switch_cql/seed2"]["recorded_in"] == "o2o_2s3z.part-earlier.json"
    assert by_path["online/2s3z_medium/ovm_only/seed3"]["recorded_in"] == "o2o_2s3z.part-older.json"
    assert "online/2s3z_medium/ovm_only/seed2" not in by_path  # another set
    assert {r["path"] for r in records} <= set(by_path)
    assert {"offline/2s3z_medium/seed1-f3", "offline/2s3z_medium/seed3-u"} <= set(written["offline"])
    assert report_script.dropped_runs(out_json, records) == []
    report_script.report(swept, doc=doc, out_json=out_json, recorded=[])
    # Not once the file that recorded them is gone: then the report would lose them.
    report_script.report(swept, doc=doc, out_json=out_json, recorded=[earlier, older], with_recorded=True)
    older.unlink()
    assert report_script.dropped_runs(out_json, records) == ["online/2s3z_medium/ovm_only/seed3"]


def test_report_records_the_dataset_each_pretraining_read(swept, tmp_path):
    """Two sweeps of the same protocol can hold different "medium" sets: each run's record and the
    offline table name the one its pretraining read (from the pretraining's hparams.yaml)."""
    offline = swept / "offline" / "2s3z_medium" / "seed0-abc"
    (offline / "hparams.yaml").write_text(yaml.safe_dump({"dataset": {
        "name": "2s3z/medium", "episodes": 5000, "transitions": 305838, "created": "2026-12-04T10:20:16",
        "git_commit": "8a418d0", "path": "/somewhere"}}))
    doc, out_json = tmp_path / "results.md", tmp_path / "o2o.json"
    report_script.report(swept, doc=doc, out_json=out_json, recorded=[])
    by = {(r["task"], r["algorithm"], r["seed"]): r for r in json.loads(out_json.read_text())["runs"]}
    assert by[("2s3z_medium", "ovmse", 1)]["dataset"] == {"name": "2s3z/medium", "episodes": 5000,
                                                         "transitions": 305838, "created": "2026-12-04T10:20:16",
                                                         "git_commit": "8a418d0", "content_sha256": None}
    assert by[("2s3z_medium", "qmix", 0)].get("dataset") is None  # from scratch: no dataset
    assert "| seed0-abc | plain | 305,838, 8a418d0, 2026-12-04T10:20:16 | 1355 |" in doc.read_text()
    # A pretraining that recorded no dataset says so instead of guessing.
    (offline / "hparams.yaml").write_text("lr: 0.001\n")
    report_script.report(swept, doc=doc, out_json=out_json, recorded=[])
    assert "| seed0-abc | plain | not recorded | 1355 |" in doc.read_text()


def test_qmix_start_table_reads_training_values_after_the_first_10k(tmp_path):
    """A 50k qmix-start run has no rows after the main runs' 50k window: its Q_tot minus
    Monte-Carlo return and the memory's share are read after 10k env steps instead, and the
    table says each method's exploration and loss."""
    root = tmp_path / "sweep"
    qmix_start = root / "diagnosis" / "qmix_start"
    _write_run(qmix_start, "x", "ovm_only", 0, [(8_000, 0.95, 20.0), (30_000, 0.0, 5.0), (50_000, 0.0, 6.0)],
               final=0.0, ckpt="start.ckpt")
    run = qmix_start / "ovm_only" / "seed0"
    (qmix_start / "online" / "x" / "ovm_only").rename(run.parent)
    with open(run / "metrics.csv", "a", newline="") as file:
        writer = csv.writer(file)
        # env_steps, eval columns (empty), then the training values appended as extra fields
        for steps, gap, active in ((5_000, 100.0, 0.9), (20_000, 4.0, 0.02), (40_000, 5.0, 0.04)):
            writer.writerow([steps, "", "", "", "", "", gap, active])
    text = (run / "metrics.csv").read_text().splitlines()
    text[0] += ",train/q_minus_mc_return,train/ovm_active_fraction"
    (run / "metrics.csv").write_text("\n".join(text) + "\n")
    records = report_script.qmix_start_records(root, 300_000)
    assert [r["algorithm"] for r in records] == ["ovm_only"]
    table = report_script.qmix_start_table(records)
    assert ("| OVM only | ε-greedy | OVM, λ_memory 1 + CQL | 1 | 0.950 (0.950) | 0.000 (0.000) | 0.000 (0.000) | "
            "4.50 (4.50) | 0.030 (0.030) |") in table


def test_every_qmix_start_method_the_runner_runs_has_a_row_in_the_table():
    """The runner's list and the report's descriptions are kept in two scripts: a method run but not
    described would be left out of the table without a word."""
    assert set(o2o_2s3z.QMIX_START_ALGOS) == set(report_script.QMIX_START_METHODS)


def _stalled_switch_cql(root, final, ckpt):
    _write_run(root, "2s3z_medium_replay", "switch_cql", 1, [(10_000, 0.0, 5.0), (300_000, final, 6.0)], final=final,
               ckpt=str(ckpt))


def test_stalled_start_runs_only_when_switch_cqls_seed_1_stalled(tmp_path):
    root = tmp_path / "sweep"
    # Not known yet: every arm is still to do, and nothing can start.
    arms = len(o2o_2s3z.STALL_ARMS) + len(o2o_2s3z.best_start_runs())
    assert len(o2o_2s3z.missing_stalled_start(root)) == arms
    assert o2o_2s3z.stalled_start_checkpoint(root) is None
    # The run learnt: nothing to diagnose.
    start = root / "offline" / "2s3z_medium_replay" / "seed1-abc" / "checkpoints" / "last.ckpt"
    _stalled_switch_cql(root, 0.9, "/machine/before/offline/2s3z_medium_replay/seed1-abc/checkpoints/last.ckpt")
    assert o2o_2s3z.missing_stalled_start(root) == []
    assert o2o_2s3z.stalled_start_checkpoint(root) is None


def test_stalled_start_finds_its_checkpoint_in_a_moved_root_and_names_a_lost_one(tmp_path):
    root = tmp_path / "sweep"
    _stalled_switch_cql(root, 0.0, "/machine/before/offline/2s3z_medium_replay/seed1-abc/checkpoints/last.ckpt")
    with pytest.raises(SystemExit, match="seed1-abc"):
        o2o_2s3z.stalled_start_checkpoint(root)
    start = root / "offline" / "2s3z_medium_replay" / "seed1-abc" / "checkpoints" / "last.ckpt"
    start.parent.mkdir(parents=True)
    start.write_bytes(b"x")
    assert o2o_2s3z.stalled_start_checkpoint(root) == start
    missing = o2o_2s3z.missing_stalled_start(root)
    assert "diagnosis/stalled_start/other_online_seed/seed11" in missing
    assert {"diagnosis/stalled_start/qmix_settings/seed1", "diagnosis/stalled_start/best_start/seed1"} <= set(missing)
    assert len(missing) == len(o2o_2s3z.STALL_ARMS) + len(o2o_2s3z.best_start_runs())
    assert {"diagnosis/stalled_start/best_start_alpha_1_ovmse/seed0",
            "diagnosis/stalled_start/best_start_alpha_1/seed2"} <= set(missing)
    # An early-stopped start waits for its source run to start (its config names the pretraining).
    args = type("Args", (), {"data_root": str(tmp_path / "data")})()
    assert o2o_2s3z.best_start_checkpoint(args, root, "best_start_alpha_1") is None
    assert o2o_2s3z.best_start_checkpoint(args, root, "best_start_alpha_1", seed=2) is None


def test_stalled_start_table_reads_the_references_over_150k_and_each_arm(tmp_path):
    root = tmp_path / "sweep"
    _stalled_switch_cql(root, 0.0, "start.ckpt")
    _write_run(root, "2s3z", "qmix", 1, [(10_000, 0.0, 3.0), (150_144, 0.9, 19.0), (300_032, 1.0, 20.0)], final=0.99)
    stalled = root / "diagnosis" / "stalled_start"
    _write_run(stalled, "x", "no_offline_data", 1, [(10_000, 0.0, 5.0), (100_000, 0.6, 15.0), (150_016, 0.5, 14.0)],
               final=0.45, ckpt="start.ckpt")
    _write_run(stalled, "x", "fresh_adam", 1, [(10_000, 0.0, 5.0), (40_000, 0.1, 6.0)])  # still running
    for path in (stalled / "online" / "x").iterdir():
        path.rename(stalled / path.name)
    arms = report_script.stalled_start_records(root, 300_000)
    assert sorted(r["algorithm"] for r in arms) == ["fresh_adam", "no_offline_data"]
    records = [report_script.run_record(r, root, {}, 300_000)
               for r in report_script.by_task(report_script.load_online_runs(root)) if r.task in report_script.TASKS]
    table = report_script.stalled_start_table(records, arms, root)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()[2:]}
    # The 300k runs are read at 150k, their 640-battle finals (at 300k) left out.
    # Its last evaluation up to 150k is at 10k.
    assert "| 1 | — | 0.000 | 0.000 | 5.00 | — | — |" in rows["Switch-CQL, the stalled run (main sweep)"]
    assert "| 1 | — | 0.900 | 0.900 | 19.00 | — | — |" in rows["QMIX from scratch (main sweep)"]
    assert "| offline share 0.5 -> 0 | 1 | — | 0.600 | 0.500 | 14.00 | 0.450 | — |" in rows["no_offline_data"]
    assert "| 1 | — | 0.100 | — | — | — | — |" in rows["fresh_adam (running)"]


def test_the_stalled_start_arms_the_runner_runs_are_the_tables_rows():
    assert set(o2o_2s3z.STALL_ARMS) | set(o2o_2s3z.BEST_START_ARMS) == set(report_script.STALL_ARM_CHANGES)
    assert set(o2o_2s3z.BEST_START_ARMS) == set(report_script.BEST_START_ARM_NAMES)
    multi_seed = {arm for arm, (_, _, _, seeds) in o2o_2s3z.BEST_START_ARMS.items() if len(seeds) > 1}
    assert multi_seed <= {name for name, _, _ in report_script.REPLAY_ROWS}
    assert o2o_2s3z.STALL_SEED == report_script.STALL_SEED
    assert o2o_2s3z.STRONGER_CQL_RUN == report_script.STRONGER_CQL["switch_cql"]


def test_replay_table_puts_each_seeds_values_in_its_place(tmp_path):
    """Medium-replay's diagnosis rows: per-seed cells follow the seeds column, so an unfinished
    seed shows a dash in its place instead of shifting the others."""
    root = tmp_path / "sweep"
    stronger = report_script.STRONGER_CQL["ovmse"]
    _write_run(root, "2s3z_medium_replay", stronger, 0, [(10_000, 0.0, 5.0), (150_016, 0.7, 16.0)], final=0.75,
               probes=[(10_000, 6.5)])
    _write_run(root, "2s3z_medium_replay", stronger, 1, [(10_000, 0.1, 5.0), (60_000, 0.2, 8.0)],  # running
               probes=[(10_000, 9.0)])
    records = [report_script.run_record(r, root, {}, 300_000)
               for r in report_script.by_task(report_script.load_online_runs(root)) if r.task in report_script.TASKS]
    table = report_script.replay_table(records)
    row = next(line for line in table.splitlines() if line.startswith("| OVMSE, 150k |"))
    # probe Q_tot minus its Monte-Carlo return (5.0): 1.5 and 4.0; best up to 150k: 0.7 and 0.2
    assert ("| CQL α 1.0 | 0, 1 (1 done) | — / —, — / — | 2.75 (1.50, 4.00) | 0.450 (0.700, 0.200) | "
            "0.750 (0.750, —) |") in row
    assert "OVMSE (main sweep)" not in table  # no such runs: no row


def test_the_runs_the_stalled_start_starts_from_are_made_here(tmp_path, monkeypatch):
    """Switch-CQL's medium-replay seed 1 (and its CQL α 1.0 variant) are what the stalled-start
    runs start from: like QMIX from scratch they are made in this root even when an earlier root
    finished them, else the diagnosis worker would wait for them forever."""
    label = "29,741 transitions, collected at 8a418d0"
    recorded = {f"2s3z_medium_replay/{name}/seed{s}": [("b.json", label)]
                for name in ("switch_cql", o2o_2s3z.STRONGER_CQL_RUN, "macql") for s in (0, 1)}
    monkeypatch.setattr(o2o_2s3z, "recorded_runs", lambda: recorded)
    _dataset(tmp_path / "data" / "2s3z" / "medium_replay", 29741)
    from ovmse.sweeps.cells import read_cell_list

    listed = read_cell_list(o2o_2s3z.write_recorded_cells(tmp_path, tmp_path / "data"))
    # The CQL α 1.0 runs of every seed start early-stopped arms (seed 0 here); the plain one seed 1's only.
    assert listed == set(recorded) - {"2s3z_medium_replay/switch_cql/seed1",
                                      f"2s3z_medium_replay/{o2o_2s3z.STRONGER_CQL_RUN}/seed1",
                                      f"2s3z_medium_replay/{o2o_2s3z.STRONGER_CQL_RUN}/seed0"}


def test_offline_table_shows_where_a_pretraining_peaked(tmp_path):
    """A medium-replay pretraining can peak long before its end: its row gives the best
    evaluation (the first of equal ones, the one best.ckpt holds) next to the last, and the CQL
    weight when it is not the paper's."""
    root = tmp_path / "sweep"
    run = root / "offline" / "2s3z_medium_replay" / "seed1-abc"
    run.mkdir(parents=True)
    (run / "offline_summary.json").write_text(json.dumps(
        {"eval/win_rate": 0.02, "eval/return": 10.0, "updates": 1556, "wall_seconds": 1200.0, "cql_alpha": 1.0}))
    with open(run / "metrics.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, ["updates", "eval/win_rate", "eval/return", "train/loss"])
        writer.writeheader()
        writer.writerows([{"updates": 250, "eval/win_rate": 0.1, "eval/return": 12.0},
                          {"updates": 300, "train/loss": 1.0},
                          {"updates": 500, "eval/win_rate": 0.9, "eval/return": 19.0},
                          {"updates": 750, "eval/win_rate": 0.9, "eval/return": 18.0},
                          {"updates": 1556, "eval/win_rate": 0.02, "eval/return": 10.0}])
    levels = report_script.offline_levels(root)
    name = "offline/2s3z_medium_replay/seed1-abc"
    row = report_script._offline_row(name, levels[name])
    assert "| seed1-abc | plain, α 1 |" in row and "| 1556 | 0.020 | 10.00 | 0.900, 19.00 (500) | 20 min |" in row
