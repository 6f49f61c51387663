"""The sweep report (``python -m ovmse.report``) on a hand-written sweep root whose expected
medians, quartiles, means and steps are worked out by hand below."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ovmse.report import write_report
from ovmse.report.__main__ import main
from ovmse.report.curves import align, initial_drop, median_iqr, value_at
from ovmse.report.runs import load_online_run, split_run_name, split_task

COLUMNS = ["env_steps", "step", "eval/win_rate", "eval/return", "eval/probe_q_tot", "eval/probe_q_tot_greedy",
           "eval/probe_mc_return", "eval/final_win_rate", "eval/final_return", "train/loss"]


def write_run(root, task, run_name, seed, *, final=None, evals=(), probes=(), env_steps=10_000, ratio=0.0,
              ckpt="offline/last.ckpt", wall_seconds=600.0):
    """One online seed directory. ``evals``: (step, win rate, return); ``probes``: (step, q_tot,
    mc return); ``final``: the final test win rate, None for a run without a summary."""
    run = root / "online" / task / run_name / f"seed{seed}"
    run.mkdir(parents=True)
    rows = [{"env_steps": 100, "train/loss": 1.0}]
    rows += [{"env_steps": s, "eval/win_rate": w, "eval/return": r} for s, w, r in evals]
    rows += [{"env_steps": s, "eval/probe_q_tot": q, "eval/probe_q_tot_greedy": q, "eval/probe_mc_return": mc}
             for s, q, mc in probes]
    if final is not None:
        # The final 640-battle test: its win rate and return must never enter a curve.
        rows.append({"env_steps": env_steps, "eval/win_rate": 99.0, "eval/return": 999.0,
                     "eval/final_win_rate": final, "eval/final_return": 999.0})
        summary = {"algo": run_name.partition("+")[0], "seed": seed, "ckpt": ckpt, "env_steps": env_steps,
                   "wall_seconds": wall_seconds, "settings": {"mixing_ratio": ratio},
                   "eval/final_win_rate": final, "eval/final_return": 20 * final, "eval/final_episodes": 640.0}
        (run / "online_summary.json").write_text(json.dumps(summary))
    with open(run / "metrics.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, COLUMNS)
        writer.writeheader()
        writer.writerows({**row, "step": row["env_steps"]} for row in rows)
    return run


def curve(returns, steps=(1_000, 2_000, 10_000)):
    """Evaluations at 1k, 2k (both within 20% of a 10k budget) and 10k env steps."""
    return [(s, 0.0, r) for s, r in zip(steps, returns)]


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    # Table 1, 2s3z_medium: OVMSE 0.2, 0.4, 0.6, 1.0 -> median 0.5, quartiles 0.35 and 0.7;
    # QMIX 0.1, 0.3, 0.2 -> median 0.2, quartiles 0.15 and 0.25.
    # Returns at the 10k budget (Table 2, ratio 0.0): 10, 12, 11, 11; initial drops 1, 0, 0, 0.
    for seed, (final, returns) in enumerate([(0.2, (11, 10, 10)), (0.4, (11, 11, 12)), (0.6, (11, 11, 11)),
                                             (1.0, (11, 11, 11))]):
        probes = [(2_000, 5.0, 4.0), (10_000, 3.0, 4.0)] if seed < 2 else []  # Figure 1 needs some
        write_run(root, "2s3z_medium", "ovmse", seed, final=final, evals=curve(returns), probes=probes)
    for seed, final in enumerate([0.1, 0.3, 0.2]):
        write_run(root, "2s3z_medium", "qmix", seed, final=final, evals=curve((5, 6, 7)), ckpt=None)
    write_run(root, "2s3z_medium", "ovmse", 4, evals=curve((1, 1, 1)))  # unfinished: no summary
    bad = write_run(root, "2s3z_medium", "ovmse", 5, final=0.0, evals=curve((1, 1, 1)))
    (bad / "online_summary.json").write_text("{not json")
    # Table 2 variants, grouped by the ratio recorded in the summary, not by the name's spelling.
    for name, seed, last_return, ratio in [("mixing_ratio=0.1", 0, 14, 0.1), ("mixing_ratio=0.1", 1, 18, 0.1),
                                           ("mixing_ratio=0.3", 0, 9, 0.3), ("mixing_ratio=.30", 1, 13, 0.3)]:
        write_run(root, "2s3z_medium", f"ovmse+algo.online.{name}", seed, final=0.0,
                  evals=curve((9, 9, last_return)), ratio=ratio)
    write_run(root, "2s3z_medium", "ovmse+algo.online.cql_alpha=0.5", 0, final=1.0, evals=curve((9, 9, 9)))
    # A second task, which comes first in the paper's order; its budget passes 200k.
    write_run(root, "6h_vs_8z_medium_replay", "ovmse", 0, final=0.3, env_steps=250_000,
              evals=[(2_000, 0.0, 8.0), (199_000, 0.0, 15.0), (201_000, 0.0, 16.0), (250_000, 0.0, 17.0)])
    write_run(root, "6h_vs_8z_medium_replay", "switch_cql", 0, final=0.6, env_steps=250_000,
              evals=[(2_000, 0.0, 8.0), (20_000, 0.0, 2.0), (250_000, 0.0, 17.0)])
    # Offline: 30 min; collect: no wall time recorded, 1 h between its first and last file.
    offline = root / "offline" / "2s3z_medium" / "macql_seed0"
    offline.mkdir(parents=True)
    (offline / "offline_summary.json").write_text(json.dumps({"updates": 2000, "wall_seconds": 1800.0}))
    collect = root / "collect" / "2s3z_seed0"
    collect.mkdir(parents=True)
    (collect / "config_resolved.yaml").write_text("seed: 0\n")
    (collect / "collect_summary.json").write_text("{}")
    os.utime(collect / "config_resolved.yaml", (1_000, 1_000))
    os.utime(collect / "collect_summary.json", (4_600, 4_600))
    return root


def test_names_split_on_dataset_suffix_and_plus():
    assert split_task("5m_vs_6m_medium_replay") == ("5m_vs_6m", "medium_replay")
    assert split_task("6h_vs_8z_medium") == ("6h_vs_8z", "medium")
    assert split_task("3m_mixed") == ("3m", "mixed")
    assert split_run_name("ovmse+algo.online.mixing_ratio=0.1") == ("ovmse", "algo.online.mixing_ratio=0.1")
    assert split_run_name("switch_cql") == ("switch_cql", None)


def test_median_and_quartiles_by_hand():
    assert np.allclose(median_iqr([1.0, 0.2, 0.6, 0.4]), (0.5, 0.35, 0.7))
    assert np.allclose(median_iqr([0.1, 0.3, 0.2]), (0.2, 0.15, 0.25))


def test_align_uneven_steps_on_the_shared_range():
    grid, values = align([(np.array([0.0, 10, 20, 30]), np.array([0.0, 1, 2, 3])),
                          (np.array([5.0, 15, 25]), np.array([10.0, 20, 30]))])
    assert grid.tolist() == [5, 10, 15, 20, 25]
    assert np.allclose(values, [[0.5, 1, 1.5, 2, 2.5], [10, 15, 20, 25, 30]])
    grid, values = align([(np.array([0.0, 1]), np.array([0.0, 1])), (np.array([2.0, 3]), np.array([0.0, 1]))])
    assert grid.size == 0  # no step range in common: nothing is extrapolated


def test_value_at_and_initial_drop():
    steps, returns = np.array([2_000.0, 5_000, 10_000, 20_000]), np.array([12.0, 8, 6, 3])
    assert value_at(steps, returns, 10_000) == (10_000, 6.0)
    assert value_at(steps, returns, 1_000) is None
    assert initial_drop(steps, returns, budget=50_000) == 6.0  # 3 at 20k is past 20% of 50k
    # A short budget still looks at the first 5000 env steps; a reference replaces the first return.
    assert initial_drop(steps, returns, budget=10_000) == 4.0
    assert initial_drop(steps, returns, budget=10_000, reference=7.0) == -1.0


def test_table1_cells_unfinished_and_unreadable_runs(sweep, tmp_path):
    report = write_report(sweep, tmp_path / "out")
    numbers = json.loads((tmp_path / "out" / "report.json").read_text())
    cells = numbers["table1"]["cells"]
    assert numbers["table1"]["tasks"] == ["6h_vs_8z_medium_replay", "2s3z_medium"]
    # Variants, the unfinished seed 4 and the unreadable seed 5 stay out of Table 1.
    assert cells["2s3z_medium"]["ovmse"]["seeds"] == {"0": 0.2, "1": 0.4, "2": 0.6, "3": 1.0}
    assert cells["2s3z_medium"]["macalql"] is None
    table = (tmp_path / "out" / "table1.md").read_text()
    assert "| 2s3z_medium | **0.500** [0.35, 0.70] (n=4) | — | — | — | 0.200 [0.15, 0.25] (n=3) |" in table
    assert "| 6h_vs_8z_medium_replay | 0.300 [0.30, 0.30] (n=1) | **0.600** [0.60, 0.60] (n=1) |" in table
    assert "| 6h_vs_8z_medium_replay | **0.713** | 0.509 | 0.116 | 0.130 | 0.320 |" in table  # the paper's
    # The companion table of final returns (20 x the win rate here): OVMSE 4, 8, 12, 20.
    assert "| 2s3z_medium | **10.00** [7.0, 14.0] (n=4) | — | — | — | 4.00 [3.0, 5.0] (n=3) |" in table
    text = report.read_text()
    assert "- unfinished: `online/2s3z_medium/ovmse/seed4`: no online_summary.json (running or stopped)" in text
    assert "- unreadable: `online/2s3z_medium/ovmse/seed5`:" in text and "not valid JSON" in text
    # An unfinished run keeps its evaluations so far (a sweep's progress), outside every table.
    running = load_online_run(sweep / "online" / "2s3z_medium" / "ovmse" / "seed4")
    assert running.status == "unfinished" and running.curves["eval/win_rate"][0].tolist() == [1_000, 2_000, 10_000]
    assert "| 2s3z_medium | ovmse | 4 | 1 | 1 |" in text
    assert "- collect: 1 h 00 min (1 finished runs)" in text
    assert "- offline: 0 h 30 min (1 finished runs)" in text
    assert "- online: 2 h 20 min (14 finished runs)" in text  # 14 × 600 s


def test_table2_groups_variants_by_recorded_mixing_ratio(sweep, tmp_path):
    write_report(sweep, tmp_path / "out")
    table2 = json.loads((tmp_path / "out" / "report.json").read_text())["table2"]
    groups = table2["tasks"]["2s3z_medium"]
    # Seeds' returns at the 10k budget: 0.0 -> 10, 12, 11, 11; 0.1 -> 14, 18; 0.3 -> 9, 13.
    assert groups["0.0"]["n"] == 4 and groups["0.0"]["mean"] == pytest.approx(11.0)
    assert groups["0.0"]["std"] == pytest.approx(np.std([10, 12, 11, 11]))
    assert (groups["0.1"]["mean"], groups["0.1"]["std"], groups["0.1"]["n"]) == pytest.approx((16.0, 2.0, 2))
    assert (groups["0.3"]["mean"], groups["0.3"]["std"], groups["0.3"]["n"]) == pytest.approx((11.0, 2.0, 2))
    assert [why for _, why in table2["excluded"]] == ["its variant changes more than the mixing ratio"]
    # One mixing ratio is no ablation: 6h_vs_8z's OVMSE run is not in the table.
    assert "6h_vs_8z_medium_replay" not in table2["tasks"]
    text = (tmp_path / "out" / "table2.md").read_text()
    assert "| 2s3z_medium | ours | 11.00 ± 0.71 (n=4) | 16.00 ± 2.00 (n=2) | 11.00 ± 2.00 (n=2) |" in text
    assert "| 2s3z_medium | paper | 19.58 | 19.64 | 18.41 |" in text
    assert "- 2s3z_medium: evaluations at 10,000 env steps (the budget: runs are shorter than 200k)." in text


def test_table2_reads_the_last_evaluation_at_or_before_200k(tmp_path):
    root = tmp_path / "sweep"
    evals = [(2_000, 0.0, 8.0), (199_000, 0.0, 15.0), (201_000, 0.0, 16.0), (250_000, 0.0, 17.0)]
    write_run(root, "6h_vs_8z_medium", "ovmse", 0, final=0.3, env_steps=250_000, evals=evals)
    write_run(root, "6h_vs_8z_medium", "ovmse+algo.online.mixing_ratio=0.3", 0, final=0.3, env_steps=250_000,
              evals=evals, ratio=0.3)
    write_report(root, tmp_path / "out")
    table2 = json.loads((tmp_path / "out" / "report.json").read_text())["table2"]
    assert table2["tasks"]["6h_vs_8z_medium"]["0.0"]["seeds"]["0"] == {"step": 199_000, "return": 15.0,
                                                                      "limit": 200_000}
    text = (tmp_path / "out" / "table2.md").read_text()
    assert "- 6h_vs_8z_medium: evaluations at 199,000 env steps (all runs reach 200k)." in text


def test_claims(sweep, tmp_path):
    write_report(sweep, tmp_path / "out")
    claims = {c["id"]: c for c in json.loads((tmp_path / "out" / "report.json").read_text())["claims"]}
    # (a) OVMSE best on 2s3z_medium (0.5 vs QMIX 0.2), not on 6h_vs_8z (0.3 vs Switch-CQL 0.6).
    assert (claims["a"]["values"]["k"], claims["a"]["values"]["n"], claims["a"]["verdict"]) == (1, 2, "does not hold")
    assert "5 of 6" in claims["a"]["paper"]
    assert claims["b"]["verdict"] == "holds" and list(claims["b"]["values"]) == ["2s3z_medium"]
    # (c) Early window of a 10k budget: the first 5000 env steps (evaluations at 1k and 2k). No
    # offline summary at the recorded checkpoint: the first evaluation is the reference.
    # OVMSE: 11 - 10, 0, 0, 0 (2s3z) and 0 (6h: 8 then 15) -> mean 0.2;
    # Switch-CQL: 8 - 2 = 6 (20k is within 20% of 250k); QMIX: left out.
    drops = claims["c"]["values"]
    assert drops["ovmse"]["mean_drop"] == pytest.approx(0.2) and drops["switch_cql"]["mean_drop"] == 6.0
    assert "qmix" not in drops and claims["c"]["verdict"] == "holds"
    assert claims["d"]["verdict"] == "holds"  # min(11, 16) >= 11
    # (e) OVMSE's probes (seeds 0, 1): 5 then 3 -> falls 2 and 2; no other algorithm has one.
    assert claims["e"]["values"] == {"ovmse": {"mean_fall": 2.0, "falls": [2.0, 2.0]}}
    assert claims["e"]["verdict"] == "no data"


def test_figures_are_png_files_linked_from_the_report(sweep, tmp_path):
    report = write_report(sweep, tmp_path / "out")
    text = report.read_text()
    for name in ("figure1_unlearning.png", "figure2_win_rate.png", "figure3_return.png"):
        data = (tmp_path / "out" / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5_000
        assert f"]({name})" in text


def test_cli_prints_report_path_and_table1(sweep, capsys):
    assert main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == str(sweep / "report" / "report.md")
    assert "**0.500** [0.35, 0.70] (n=4)" in printed


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: None])
@pytest.mark.slow
def test_cli_error_on_empty_or_missing_root(tmp_path, make):
    root = tmp_path / "root"
    make(root)
    result = subprocess.run([sys.executable, "-m", "ovmse.report", str(root)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(root) in lines[0]
    assert "online/<map>_<dataset>/<algo>[+variant]/seed<k>/" in lines[0]


def test_a_dataset_free_run_counts_for_every_task_of_its_map_once_in_compute(tmp_path):
    root = tmp_path / "sweep"
    for task in ("3s5z_medium", "3s5z_medium_replay"):
        write_run(root, task, "ovmse", 0, final=0.5, evals=curve((1, 1, 1)))
    # QMIX from scratch, as the pipeline lays it out: once per map.
    write_run(root, "3s5z", "qmix", 0, final=0.25, evals=curve((1, 1, 1)), ckpt=None, wall_seconds=100.0)
    # A restarted run's set-aside directory is not a run.
    (root / "online" / "3s5z" / "qmix" / "seed0.incomplete-20261122-030000").mkdir()
    write_report(root, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    cells = report["table1"]["cells"]
    assert cells["3s5z_medium"]["qmix"]["median"] == 0.25
    assert cells["3s5z_medium_replay"]["qmix"]["median"] == 0.25
    assert report["compute"]["online"]["finished"] == 3
    assert report["compute"]["online"]["seconds"] == 600.0 * 2 + 100.0
    assert report["compute"]["online"]["split"] == 0  # summaries from before wall_seconds_by_part
    assert not any("incomplete" in str(r) for r in report["runs"])


def test_compute_says_where_the_online_time_went(tmp_path):
    root = tmp_path / "sweep"
    for seed, parts in enumerate(({"collect": 10.0, "evaluate": 20.0, "updates_and_rest": 70.0},
                                  {"collect": 30.0, "evaluate": 0.0, "updates_and_rest": 70.0})):
        run = write_run(root, "3s5z_medium", "ovmse", seed, final=0.5, evals=curve((1, 1, 1)), wall_seconds=100.0)
        summary = json.loads((run / "online_summary.json").read_text())
        (run / "online_summary.json").write_text(json.dumps({**summary, "wall_seconds_by_part": parts}))
    write_run(root, "3s5z_medium", "ovmse", 2, final=0.5, evals=curve((1, 1, 1)))  # no split: not counted
    report = write_report(root, tmp_path / "out")
    compute = json.loads((tmp_path / "out" / "report.json").read_text())["compute"]["online"]
    assert compute["split"] == 2
    assert compute["by_part"] == {"collect": 40.0, "evaluate": 20.0, "updates_and_rest": 140.0}
    assert "where the time of the 2 runs that split it went: updates and rest 70%, collect 20%, evaluate 10%" \
        in report.read_text()


def test_the_drop_is_measured_from_the_offline_policys_return(tmp_path):
    root = tmp_path / "sweep"
    offline = root / "offline" / "2s3z_medium" / "seed0-abc"
    offline.mkdir(parents=True)
    (offline / "offline_summary.json").write_text(json.dumps({"eval/return": 12.0, "wall_seconds": 1.0,
                                                             "updates": 300}))
    # The checkpoint path recorded on another machine: found under this root by its name.
    ckpt = "/elsewhere/offline/2s3z_medium/seed0-abc/checkpoints/last.ckpt"
    write_run(root, "2s3z_medium", "ovmse", 0, final=0.1, evals=curve((9, 7, 13)), ckpt=ckpt)
    write_run(root, "2s3z_medium", "switch_cql", 0, final=0.1, evals=curve((9, 3, 13)), ckpt=ckpt)
    write_report(root, tmp_path / "out")
    claims = {c["id"]: c for c in json.loads((tmp_path / "out" / "report.json").read_text())["claims"]}
    assert claims["c"]["values"]["ovmse"]["drops"] == [5.0]  # 12 - 7
    assert claims["c"]["values"]["switch_cql"]["drops"] == [9.0]  # 12 - 3
    assert claims["c"]["verdict"] == "holds"


def test_field_statistics_of_table1_and_marl_eval_json(sweep, tmp_path):
    """IQM/median with intervals from 3 seeds on, P(OVMSE > X) by hand, marl-eval JSON of the runs."""
    write_report(sweep, tmp_path / "out")
    stats = json.loads((tmp_path / "out" / "report.json").read_text())["table1_statistics"]
    ovmse, qmix = stats["2s3z_medium"]["ovmse"], stats["2s3z_medium"]["qmix"]
    # OVMSE 0.2, 0.4, 0.6, 1.0: IQM cuts one run from each end -> mean(0.4, 0.6) = 0.5.
    assert ovmse["n"] == 4 and ovmse["iqm"] == pytest.approx(0.5) and ovmse["median"] == pytest.approx(0.5)
    lo, hi = ovmse["iqm_ci"]
    assert 0.2 <= lo <= 0.5 <= hi <= 1.0
    # QMIX 0.1, 0.3, 0.2: OVMSE's 0.4, 0.6, 1.0 beat all three; its 0.2 beats 0.1, ties 0.2 (half),
    # loses to 0.3 -> (3 + 3 + 3 + 1.5) / 12.
    assert qmix["p_better"] == pytest.approx(10.5 / 12) and "p_better" not in ovmse
    # One seed: numbers, no interval, no probability of improvement.
    single = stats["6h_vs_8z_medium_replay"]["switch_cql"]
    assert single["n"] == 1 and "iqm_ci" not in single and "p_better" not in single
    table = (tmp_path / "out" / "table1.md").read_text()
    assert "| 2s3z_medium | QMIX | 3 | 0.200 [" in table and "| 0.88 [" in table
    assert "(no interval: 1 seeds)" in table
    marl = json.loads((tmp_path / "out" / "marl_eval.json").read_text())["smac"]
    runs = marl["2s3z_medium"]["ovmse"]
    assert sorted(runs) == ["run_0", "run_1", "run_2", "run_3"]  # finished variant-free runs only
    assert runs["run_3"]["absolute_metrics"]["win_rate"] == [1.0]
    assert [runs["run_0"][f"step_{i}"]["step_count"] for i in range(3)] == [1_000, 2_000, 10_000]
