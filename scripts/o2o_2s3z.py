#!/usr/bin/env python
"""Issue 17: offline-to-online on 2s3z at 300k env steps, 3 seeds: run (resumable) and report.

    python scripts/o2o_2s3z.py run                # run or continue the whole sweep, two workers
    python scripts/o2o_2s3z.py report             # JSON, figures and the docs/results.md section
    python scripts/o2o_2s3z.py diagnose           # the diagnosis runs (after the main sweep), two workers
    python scripts/o2o_2s3z.py stats              # IQM, bootstrap intervals, P(improvement), marl-eval JSON

``run`` starts ``--workers`` processes (one torch thread each; two fill a 2-core machine).
Each goes through the sweep's stages in order, each a Hydra multirun of ``phase=pipeline``
with ``budget=300k`` (``configs/budget/300k.yaml``), so that 2s3z medium is complete first:

1. ``grid=o2o_2s3z`` on 2s3z medium: OVMSE, QMIX (scratch), MACQL, Switch-CQL, MACal-QL x
   seeds 0-2 (seeds outermost);
2. ``grid=o2o_2s3z_ablations``: OVM only, SE only on 2s3z medium, seeds 0-2;
3. ``grid=table2``: OVMSE on 2s3z medium with mixing ratios 0.1 and 0.3, seeds 0-2;
4. ``grid=o2o_2s3z`` on 2s3z medium-replay.

The workers share the cells through the pipeline's locks (``pipeline.wait_for_shared=false``:
a cell whose offline pretraining another worker is making is passed over and taken on the
next pass), so each worker passes over the grids until every cell is finished. A killed
sweep resumes with the same command: finished stages are skipped, a killed online run
continues from its last resume point. Everything lives under ``outputs/sweeps/300k``
(``--root``); each worker logs to ``<root>/worker<k>.log``.

``diagnose`` runs the experiments that tell apart why fine-tuning falls short of the paper,
the same way (``<root>/diagnosis-worker<k>.log``):

1. ``grid=o2o_2s3z_switch``: OVMSE's first 16k env steps, evaluated every 2k, with the
   offline Adam state restored or fresh and ε starting at 1.0 or 0.05 (what makes the
   greedy policy fall right after the switch?);
2. ``grid=o2o_2s3z_lambda``: OVMSE with λ_memory annealed 1.0 -> 0.05 over 100k env steps
   (does the offline memory hold the policy back?);
3. ``grid=o2o_2s3z_one_step``: QMIX from scratch with one-step targets (TD(λ = 0)), the
   targets OVMSE learns from on 2s3z (do they alone overestimate on our simulator?);
4. ``grid=o2o_2s3z_no_memory``: OVM only with the memory taken out (MACQL's TD + CQL loss with
   one-step targets, no offline data in the batches, ε-greedy, 100k env steps): does OVM
   only run away through its memory or through one-step targets from the CQL-pretrained
   start? Then ``grid=o2o_2s3z_no_offline_data``: MACQL (TD(λ)) with no offline data in the
   batches, 100k env steps (the target or the offline share?); then
   ``grid=o2o_2s3z_se_no_memory``: OVMSE with the memory taken out (SE only with one-step
   targets, 100k env steps): under sequential exploration, the memory or the one-step targets?
5. ``grid=o2o_2s3z_memory_target``: OVMSE with the memory compared with the TD(λ) target
   instead of the one-step one (with λ_memory = 1 Eq. 5 keeps no TD(λ) term: does learning
   from one-step targets hold OVMSE back?);
6. ``grid=o2o_2s3z_exploration``: OVMSE and OVM only with ε starting at 0.2 and 0.05, 100k
   env steps (does restarting exploration at ε = 1 cause the drop?);
7. each O2O method fine-tuning, for 50k env steps, the policy QMIX from scratch learnt
   online (its best evaluation, win rate >= 0.9), made an O2O start by
   ``ovmse.training.o2o_start`` with the medium dataset (do the methods unlearn a good
   policy that no offline pretraining made?): ``<root>/diagnosis/qmix_start/<algo>/seed<k>``.
   OVM only (the memory, ε-greedy) and SE only (sequential exploration, no memory) run the
   same way: OVMSE differs from the baselines in both, and these two tell which one keeps
   the policy.
8. when Switch-CQL's medium-replay seed-1 run ends below a 0.5 win rate (the fourteenth
   session's stall: every O2O method from that pretraining stays near 0), Switch-CQL from the
   same start for 150k env steps with one setting at a time moved to QMIX from scratch's (no
   offline data, gradient clip 10, a fresh Adam state), with all three (then only the start
   differs from QMIX from scratch), and with another online seed (``STALL_ARMS``):
   ``<root>/diagnosis/stalled_start/<arm>/seed<k>``; and Switch-CQL and OVMSE from the best
   evaluation of the pretrainings (``BEST_START_ARMS``: the early-stopped start; seed 1's plain
   one, and the CQL α 1.0 ones of seeds 1, 0 and 2, with MACQL too).
   Then ``grid=o2o_2s3z_stronger_cql``:
   medium-replay pretrained with CQL α 1.0 (20x the paper's), fine-tuned by Switch-CQL and
   OVMSE for 150k env steps (does a start that overestimates less unstall them?); and
   ``grid=o2o_2s3z_replay_lambda``: OVMSE on medium-replay with λ_memory annealed 1.0 -> 0.05
   over 100k env steps (does the memory of an overestimating offline value keep it from winning?).
   Seed 1 of both first.

Stages 2-6 run seed 0 of each grid first, then the other seeds, so that a session cut
short has one seed of every cause.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

BUDGET = "300k"
# (grid, overrides): the multiruns a worker runs, in order.
STAGES = (("o2o_2s3z", ("hydra.sweeper.params.experiment=2s3z_medium",)), ("o2o_2s3z_ablations", ()), ("table2", ()),
          ("o2o_2s3z", ("hydra.sweeper.params.experiment=2s3z_medium_replay",)))
GRIDS = tuple(dict.fromkeys(grid for grid, _ in STAGES))
SEEDS = (0, 1, 2)
MAIN_ALGOS = ("ovmse", "qmix", "macql", "switch_cql", "macalql")
# Cells of each grid as (task, run name) under <root>/online/; QMIX from scratch serves both tasks.
CELLS = (
    [(t, a) for t in ("2s3z_medium", "2s3z_medium_replay") for a in MAIN_ALGOS if a != "qmix"] + [("2s3z", "qmix")]
    + [("2s3z_medium", a) for a in ("ovm_only", "se_only")]
    + [("2s3z_medium", f"ovmse+algo.online.mixing_ratio={r}") for r in ("0.1", "0.3")]
)
# Seed 0 of every cause first, then seeds 1-2: one seed of each tells the causes apart sooner
# than three seeds of the first (docs/results.md).
DIAGNOSIS_GRIDS = ("o2o_2s3z_lambda", "o2o_2s3z_one_step", "o2o_2s3z_no_memory", "o2o_2s3z_no_offline_data",
                   "o2o_2s3z_se_no_memory", "o2o_2s3z_memory_target", "o2o_2s3z_exploration")
# Medium-replay's (after the stalled-start runs): its start pretrained with CQL α 1.0, and OVMSE
# with λ_memory annealed; seed 1, where every O2O method stalled, first.
REPLAY_GRIDS = ("o2o_2s3z_stronger_cql", "o2o_2s3z_replay_lambda")
DIAGNOSIS_STAGES = (("o2o_2s3z_switch", ()), *((g, ("hydra.sweeper.params.seed=0",)) for g in DIAGNOSIS_GRIDS),
                    *((g, ("hydra.sweeper.params.seed=1",)) for g in REPLAY_GRIDS),
                    *((g, ()) for g in REPLAY_GRIDS + DIAGNOSIS_GRIDS))
DIAGNOSIS_CELLS = (
    [("2s3z_medium", f"ovmse+algo.epsilon_start={e},algo.online.restore_optimizer={r},env_steps=16000")
     for r in ("True", "False") for e in ("1.0", "0.05")]  # as Hydra's sweeper spells booleans
    + [("2s3z_medium", f"{a}+algo.epsilon_start={e},env_steps=100000") for a in ("ovmse", "ovm_only") for e in ("0.2", "0.05")]
    + [("2s3z_medium", "ovmse+algo.online.lambda_memory_anneal_steps=100000,algo.online.lambda_memory_end=0.05")]
    + [("2s3z_medium", "ovmse+algo.online.ovm_target=td_lambda")]
    + [("2s3z", "qmix+algo.td_lambda=0.0")]
    + [("2s3z_medium", "macql+algo.online.mixing_ratio=0.0,algo.online.td_lambda=0.0,env_steps=100000")]
    + [("2s3z_medium", "macql+algo.online.mixing_ratio=0.0,env_steps=100000")]
    + [("2s3z_medium", "se_only+algo.online.td_lambda=0.0,env_steps=100000")]
    + [("2s3z_medium_replay", f"{a}+algo.offline.alpha=1.0,env_steps=150000") for a in ("switch_cql", "ovmse")]
    + [("2s3z_medium_replay", "ovmse+algo.online.lambda_memory_anneal_steps=100000,algo.online.lambda_memory_end=0.05")]
)
# The four O2O methods, then the two ablations that split OVMSE's memory from its exploration.
QMIX_START_ALGOS = ("ovmse", "switch_cql", "macql", "macalql", "ovm_only", "se_only")
QMIX_START_MIN_WIN_RATE = 0.9
QMIX_START_OVERRIDES = ("experiment=2s3z_medium", "env_steps=50000", "eval.interval_env_steps=5000", "eval.episodes=128",
                        "eval.num_envs=128", "final_eval.episodes=640", "final_eval.num_envs=128",
                        "unlearning_probe.episodes=32", "unlearning_probe.every_env_steps=5000",
                        "checkpoint.every_env_steps=25000", "checkpoint.keep_replay=false",
                        "trainer.progress_refresh_rate=0")
# Medium-replay's stalled start (docs/results.md, fourteenth session): from seed 1's plain
# pretraining OVMSE, Switch-CQL and MACQL all end near a 0 win rate at 300k while QMIX from
# scratch reaches 0.99. Switch-CQL learns online with TD(λ) as QMIX does; from the same start it
# runs again with one setting at a time moved to QMIX from scratch's, then with all of them (only
# the start's weights differ from QMIX then), and once with another online seed (the start or
# chance?). 150k env steps: the seed-0 runs and QMIX leave a 0 win rate within 100k.
STALL_SEED = 1
STALL_MAX_FINAL_WIN_RATE = 0.5
STALL_ENV_STEPS = 150_000
STALL_ARMS = {
    "other_online_seed": ("seed=11",),
    "no_offline_data": ("algo.online.mixing_ratio=0.0",),
    "grad_clip_10": ("algo.online.grad_norm_clip=10.0",),
    "fresh_adam": ("algo.online.restore_optimizer=false",),
    # All three: the settings QMIX from scratch ran with in this experiment (configs/algo/qmix.yaml
    # with the experiment's update ratio and target period, which every algorithm shares), on
    # top of the pretrained weights.
    "qmix_settings": ("algo.online.mixing_ratio=0.0", "algo.online.grad_norm_clip=10.0",
                      "algo.online.restore_optimizer=false"),
}
# Early-stopped starts: the medium-replay pretrainings' greedy win rate peaks near update 500 and
# falls by their end (update 1556) while their values run away; the best evaluation's checkpoint
# (best.ckpt) made an O2O start (ovmse.training.o2o_start), fine-tuned for 150k env steps.
# arm: (the online run whose pretraining's best.ckpt is the start, the start's file name ({seed}:
# the seed), algorithm, seeds). The α 1.0 starts on every seed: OVMSE against Switch-CQL and MACQL
# from a start whose values are near its returns, the comparison the paper makes, on medium-replay.
STRONGER_CQL_RUN = "switch_cql+algo.offline.alpha=1.0,env_steps=150000"
BEST_START_ARMS = {"best_start": ("switch_cql", "best_alpha_0.05_seed{seed}", "switch_cql", (STALL_SEED,)),
                   "best_start_alpha_1": (STRONGER_CQL_RUN, "best_alpha_1_seed{seed}", "switch_cql", (1, 0, 2)),
                   "best_start_alpha_1_ovmse": (STRONGER_CQL_RUN, "best_alpha_1_seed{seed}", "ovmse", (1, 0, 2)),
                   "best_start_alpha_1_macql": (STRONGER_CQL_RUN, "best_alpha_1_seed{seed}", "macql", (1, 0, 2))}
STALL_OVERRIDES = ("experiment=2s3z_medium_replay", "algo=switch_cql", f"env_steps={STALL_ENV_STEPS}",
                   "eval.interval_env_steps=10000", "eval.episodes=128", "eval.num_envs=128", "final_eval.episodes=640",
                   "final_eval.num_envs=128", "unlearning_probe.episodes=32", "unlearning_probe.every_env_steps=10000",
                   "checkpoint.every_env_steps=50000", "checkpoint.keep_replay=false",
                   "trainer.progress_refresh_rate=0")
IDLE_WAIT_SECONDS = 120
# The experiment's sets: the budget's collect command (pipeline.collect: seed 1, 2M env steps)
# run at this commit. Another commit can make other sets (docs/datasets.md); this one makes
# these again, to the byte, so that the runs of a new machine pool with the recorded ones.
DATASET_COMMIT = "8a418d0"
DATASET_TRANSITIONS = {"medium": 305_838, "medium_replay": 29_741}
# Their episodes' SHA-256 (``python -m ovmse.datasets digest``): equal on two collections at
# that commit on one machine (docs/datasets.md); another device or thread count may differ.
DATASET_SHA256 = {"medium": "14f2f6575ae94875d05d86ed03f09b054434801c50479aba3872068e67e1d147",
                  "medium_replay": "72be724b44f75d9e14803e573b17ad704ecd219c6614569e898ac7f340d40950"}
RECORDED_CELLS = "recorded_cells.txt"


def best_start_runs() -> list[tuple[str, int]]:
    """(arm, seed) of every early-stopped-start run, in the order the workers take them."""
    return [(arm, seed) for arm, (_, _, _, seeds) in BEST_START_ARMS.items() for seed in seeds]


def sweep_root(args) -> Path:
    return Path(args.root).resolve() if args.root else ROOT / "outputs" / "sweeps" / BUDGET


def missing_cells(root: Path, cells=CELLS) -> list[str]:
    return [f"{task}/{name}/seed{s}" for task, name in cells for s in SEEDS
            if not (root / "online" / task / name / f"seed{s}" / "online_summary.json").is_file()]


def ensure_datasets(args, root: Path) -> None:
    """Make the 2s3z sets missing under ``--data-root`` with the code of :data:`DATASET_COMMIT`
    (a git worktree under ``<root>/code/``), then check that each is the experiment's (its
    episodes' digest): a sweep on another set starts over, as none of its runs would pool with the
    recorded ones (``--any-set`` goes on, in a sweep root of its own)."""
    from ovmse.datasets.format import content_digest  # noqa: PLC0415
    from ovmse.envs import get_map  # noqa: PLC0415

    data_root = Path(args.data_root).resolve()  # the collect run's working directory is the worktree
    missing = [q for q in DATASET_TRANSITIONS if not (data_root / "2s3z" / q / "dataset.json").is_file()]
    if missing:
        code = root / "code" / DATASET_COMMIT
        if not (code / "train.py").is_file():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(code), DATASET_COMMIT], check=True)
        collect = yaml.safe_load((ROOT / "configs" / "budget" / f"{BUDGET}.yaml").read_text())["pipeline"]["collect"]
        seed, run_dir = collect["seed"], root / "collect" / f"2s3z_seed{collect['seed']}-{DATASET_COMMIT}"
        cmd = [sys.executable, str(code / "train.py"), f"num_threads={args.threads}", f"device={args.device}",
               f"data_root={data_root}", "phase=collect", "algo=qmix", "env=2s3z", f"seed={seed}",
               f"qualities=[{','.join(DATASET_TRANSITIONS)}]", f"env_steps={collect['env_steps']}",
               f"hydra.run.dir={run_dir}"]
        print(f"2s3z {', '.join(missing)} missing under {data_root}: collecting at {DATASET_COMMIT}:", " ".join(cmd),
              flush=True)
        if subprocess.run(cmd, cwd=code).returncode != 0:
            raise SystemExit(f"collecting the 2s3z sets at {DATASET_COMMIT} failed: the error is above")
    for quality, transitions in DATASET_TRANSITIONS.items():
        where = data_root / "2s3z" / quality
        found = json.loads((where / "dataset.json").read_text())["transitions"]
        if not args.any_set and content_digest(where, get_map("2s3z")) != DATASET_SHA256[quality]:
            raise SystemExit(
                f"{where} ({found:,} transitions) is not the experiment's set ({transitions:,} transitions, made at "
                f"{DATASET_COMMIT}, SHA-256 {DATASET_SHA256[quality][:12]}): runs on it would not pool with the recorded "
                "ones. Move it away to collect the experiment's set, or pass --any-set to go on with it in a sweep "
                "root of its own (--root)")


def made_here() -> set[str]:
    """Cells that this root makes even when an earlier root finished them: the diagnosis starts
    from their checkpoints (QMIX from scratch: the qmix-start runs; medium-replay seed 1's
    Switch-CQL runs: the stalled-start runs), which only this root can hold."""
    return ({f"2s3z/qmix/seed{s}" for s in SEEDS}
            | {f"2s3z_medium_replay/{run}/seed{seed}" for run, _, _, seeds in BEST_START_ARMS.values()
               for seed in seeds})


def write_recorded_cells(root: Path, data_root: Path) -> Path:
    """``<root>/recorded_cells.txt``: the cells finished in earlier sweep roots (the result files)
    on the sets under ``data_root`` (QMIX from scratch reads none), which the pipeline passes over
    (``pipeline.skip_cells_file``); a run on another set is not listed, so it is made here. QMIX
    from scratch itself is not listed either, nor the other runs the diagnosis starts from
    (:func:`made_here`)."""
    from ovmse.datasets.loading import metadata_identity  # noqa: PLC0415

    sets = {}
    for quality in DATASET_TRANSITIONS:
        meta = data_root / "2s3z" / quality / "dataset.json"
        sets[f"2s3z_{quality}"] = metadata_identity(meta.parent, json.loads(meta.read_text())) if meta.is_file() else None
    listed = sorted(cell for cell, runs in recorded_runs().items() if cell not in made_here()
                    and any(on_root_set(cell.split("/")[1], label, sets.get(cell.split("/")[0])) for _, label in runs))
    path = root / RECORDED_CELLS
    draft = path.with_name(f".{path.name}.{uuid.uuid4().hex}")  # workers on several hosts may share pids
    draft.write_text(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')}, scripts/o2o_2s3z.py: runs finished in earlier sweep "
                     f"roots on this root's sets (benchmarks/results/o2o_2s3z*.json); the pipeline passes over them\n"
                     + "".join(f"{cell}\n" for cell in listed))
    draft.replace(path)
    return path


def recorded_runs(results: Path | None = None) -> dict[str, list[tuple[str, str | None]]]:
    """``{"<task>/<run name>/seed<k>": [(result file, dataset set), ...]}`` of the finished runs
    in the result files (``benchmarks/results/o2o_2s3z*.json``; the set as
    :func:`o2o_2s3z_stats.set_of` names it): a new machine starts without the sweep outputs, so
    ``status`` tells a run that was never made from one whose outputs are gone, and one made on
    another set than the sweep root's (to redo there)."""
    from o2o_2s3z_stats import merged_runs, record_files  # noqa: PLC0415

    recorded: dict[str, list[tuple[str, str | None]]] = {}
    for path in (record_files() if results is None else record_files(results)):
        if path.is_file():
            for r in merged_runs([path]):
                if r.get("status") == "finished" and r.get("path"):
                    recorded.setdefault(r["path"].removeprefix("online/"), []).append((path.name, r["set"]))
    return recorded


def pinned_set(root: Path, task: str) -> dict | None:
    """The identity of the set the sweep root pinned for ``task`` (``<map>_<quality>``); None
    before a cell of it ran."""
    from ovmse.sweeps.cells import dataset_pin  # noqa: PLC0415

    map_name, _, quality = task.partition("_")
    pin = dataset_pin(root, map_name, quality)
    return json.loads(pin.read_text()) if quality and pin.is_file() else None


def on_set(label: str | None, pinned: dict) -> bool | None:
    """Whether a record's set is the pinned one: by label when the record names its set, by the
    pretrainings' update count (what the pinned set makes at this budget) when it does not;
    None when neither tells."""
    from o2o_2s3z_stats import set_label, unrecorded_updates  # noqa: PLC0415

    from ovmse.phases.offline import offline_updates  # noqa: PLC0415

    if label is None or label == "not recorded":
        return None
    updates = unrecorded_updates(label)
    if updates is None:
        return label == set_label(pinned)
    timesteps, batch = offline_budget()
    return updates == offline_updates(0, timesteps, batch, int(pinned["episodes"]), int(pinned["transitions"]))


def from_scratch(run_name: str) -> bool:
    """QMIX from scratch (and its variants): a run that reads no dataset."""
    return run_name.split("+")[0] == "qmix"


def on_root_set(run_name: str, label: str | None, pinned: dict | None) -> bool:
    """Whether a recorded run (its set's ``label``, :func:`o2o_2s3z_stats.set_of`) belongs with a
    sweep root whose set for the run's task is ``pinned`` (None: none yet): QMIX from scratch
    always, a fine-tuning run when :func:`on_set` says so. The one test of the worker's skip list
    and the report's merge."""
    return from_scratch(run_name) or (pinned is not None and bool(on_set(label, pinned)))


@functools.cache
def offline_budget() -> tuple[int, int]:
    """(dataset timesteps, batch size) of this budget's offline pretrainings, from the configs."""
    budget = yaml.safe_load((ROOT / "configs" / "budget" / f"{BUDGET}.yaml").read_text())
    timesteps = next(int(o.split("=", 1)[1]) for o in budget["pipeline"]["offline"]["overrides"]
                     if o.startswith("dataset_timesteps="))
    return timesteps, int(yaml.safe_load((ROOT / "configs" / "algo" / "o2o.yaml").read_text())["offline"]["batch_size"])


def recorded_note(root: Path, cell: str, recorded: dict) -> str:
    if cell not in recorded:
        return ""
    pinned = pinned_set(root, cell.split("/", 1)[0])
    files = ", ".join(dict.fromkeys(file for file, _ in recorded[cell]))
    if pinned is not None:
        matches = [on_set(label, pinned) for _, label in recorded[cell]]
        if not any(matches) and False in matches:
            other = next(label for (_, label), m in zip(recorded[cell], matches) if m is False)
            return f"   [recorded in {files}, on another set ({other}) than this root's: redo it here]"
    return f"   [recorded in {files}]"


def qmix_start_dir(root: Path, algo: str, seed: int) -> Path:
    return root / "diagnosis" / "qmix_start" / algo / f"seed{seed}"


def qmix_best_win_rate(root: Path, seed: int) -> float | None:
    """Best evaluation win rate of QMIX (scratch) seed ``seed``; None while that run is unfinished."""
    summary = root / "online" / "2s3z" / "qmix" / f"seed{seed}" / "online_summary.json"
    return float(json.loads(summary.read_text())["eval/best_win_rate"]) if summary.is_file() else None


def missing_qmix_start(root: Path) -> list[str]:
    """The qmix-start runs still to do; a QMIX seed that never passed 0.9 has none to do."""
    return [f"diagnosis/qmix_start/{a}/seed{s}" for s in SEEDS for a in QMIX_START_ALGOS
            if not (qmix_start_dir(root, a, s) / "online_summary.json").is_file()
            and (qmix_best_win_rate(root, s) or 1.0) >= QMIX_START_MIN_WIN_RATE]


def qmix_start_checkpoint(args, root: Path, seed: int) -> Path | None:
    """The O2O start made from QMIX (scratch) seed ``seed``'s best evaluation; None while that
    run is unfinished or when its best win rate is below 0.9 (no policy past the dip)."""
    from ovmse.training.o2o_start import o2o_start_checkpoint

    qmix = root / "online" / "2s3z" / "qmix" / f"seed{seed}"
    best = qmix_best_win_rate(root, seed)
    if best is None:
        print(f"[qmix_start] seed {seed}: waiting for {qmix} to finish", flush=True)
        return None
    if best < QMIX_START_MIN_WIN_RATE:
        print(f"[qmix_start] seed {seed}: QMIX's best evaluation win rate {best:.3f} < {QMIX_START_MIN_WIN_RATE}: no "
              "policy past its dip to fine-tune; seed left out", flush=True)
        return None
    start = root / "diagnosis" / "qmix_start" / "start" / f"seed{seed}.ckpt"
    if not start.is_file():
        o2o_start_checkpoint(qmix / "checkpoints" / "best.ckpt", start, Path(args.data_root) / "2s3z" / "medium")
    return start


def run_fine_tuning(args, name: str, run: Path, start: Path, overrides: list[str]) -> None:
    """One diagnosis fine-tuning run from the O2O checkpoint ``start`` into ``run``, unless it is
    finished or another worker holds it; a killed one resumes from its last checkpoint."""
    from ovmse.sweeps import StageLock, run_stage
    from ovmse.sweeps.cells import path_override
    from ovmse.sweeps.stages import set_aside, train_command

    lock = StageLock(run.parent / f".{run.name}.lock")
    if (run / "online_summary.json").is_file() or not lock.try_acquire():
        return
    try:
        resume = (run / "checkpoints" / "last.ckpt").is_file()
        if run.exists() and not resume:
            set_aside(run)
        overrides = ["phase=online", path_override("ckpt", start), f"num_threads={args.threads}",
                     f"device={args.device}", path_override("data_root", args.data_root), *overrides,
                     path_override("hydra.run.dir", run)] + ([path_override("resume", run)] if resume else [])
        run_stage(name, train_command(ROOT, overrides), run)
    finally:
        lock.release()


def run_qmix_start(args, root: Path) -> None:
    """The qmix-start fine-tuning runs this worker can take now (others are skipped)."""
    for seed in SEEDS:
        start = qmix_start_checkpoint(args, root, seed)
        if start is None:
            continue
        for algo in QMIX_START_ALGOS:
            run_fine_tuning(args, f"qmix_start {algo} seed {seed}", qmix_start_dir(root, algo, seed), start,
                            [f"algo={algo}", f"seed={seed}", *QMIX_START_OVERRIDES])


def stall_online_seed(arm: str) -> int:
    seeds = [int(o.split("=", 1)[1]) for o in STALL_ARMS.get(arm, ()) if o.startswith("seed=")]
    return seeds[0] if seeds else STALL_SEED


def stalled_start_dir(root: Path, arm: str, seed: int | None = None) -> Path:
    """A stalled-start arm's run: ``seed`` for an early-stopped start (its pretraining's seed and
    the online one), else the arm's online seed."""
    return root / "diagnosis" / "stalled_start" / arm / f"seed{stall_online_seed(arm) if seed is None else seed}"


def stalled_run(root: Path) -> Path:
    return root / "online" / "2s3z_medium_replay" / "switch_cql" / f"seed{STALL_SEED}"


def _in_root(root: Path, ckpt: str, named_in: Path) -> Path:
    """The checkpoint ``ckpt`` a run names, under ``root`` if the root moved since the run."""
    path = Path(ckpt)
    if not path.is_file() and "offline" in path.parts:
        last = len(path.parts) - 1 - path.parts[::-1].index("offline")  # the old root's own path may hold one
        path = root.joinpath(*path.parts[last:])
    if not path.is_file():
        raise SystemExit(f"{named_in} names the checkpoint {ckpt}, which is gone (also under {root})")
    return path


def stalled(root: Path) -> bool | None:
    """Whether Switch-CQL's medium-replay seed-1 run ended below a 0.5 win rate; None while unfinished."""
    summary = stalled_run(root) / "online_summary.json"
    if not summary.is_file():
        return None
    return float(json.loads(summary.read_text())["eval/final_win_rate"]) < STALL_MAX_FINAL_WIN_RATE


def stalled_start_checkpoint(root: Path) -> Path | None:
    """The pretraining Switch-CQL's medium-replay seed-1 run fine-tuned, when that run is
    finished and ended below a 0.5 win rate; None otherwise (nothing stalled, or not yet known)."""
    if not stalled(root):
        return None
    summary = stalled_run(root) / "online_summary.json"
    return _in_root(root, json.loads(summary.read_text())["ckpt"], summary)


def best_start_checkpoint(args, root: Path, arm: str, seed: int = STALL_SEED) -> Path | None:
    """The O2O start made from the best evaluation of the pretraining that the arm's source run
    (medium-replay, ``seed``) fine-tuned; None until that run has started."""
    from ovmse.training.o2o_start import o2o_start_checkpoint

    source, name, _, _ = BEST_START_ARMS[arm]
    name = name.format(seed=seed)
    config = root / "online" / "2s3z_medium_replay" / source / f"seed{seed}" / "config_resolved.yaml"
    if not config.is_file():
        print(f"[stalled_start] {arm}: waiting for {config.parent} to start", flush=True)
        return None
    best = _in_root(root, yaml.safe_load(config.read_text())["ckpt"], config).with_name("best.ckpt")
    if not best.is_file():
        raise SystemExit(f"{best}: no best.ckpt beside the pretraining {config} names (its evaluations save it)")
    start = root / "diagnosis" / "stalled_start" / "start" / f"{name}.ckpt"
    if not start.is_file():
        import torch

        alpha = torch.load(best, map_location="cpu", weights_only=True)["hyper_parameters"]["objective"]["cql"]["alpha"]
        o2o_start_checkpoint(best, start, Path(args.data_root) / "2s3z" / "medium_replay", cql_alpha=alpha)
    return start


def missing_stalled_start(root: Path) -> list[str]:
    """The stalled-start runs still to do: none while Switch-CQL's seed-1 run is unfinished or
    when it did not stall."""
    if stalled(root) is False:
        return []
    runs = [stalled_start_dir(root, arm) for arm in STALL_ARMS]
    runs += [stalled_start_dir(root, arm, seed) for arm, seed in best_start_runs()]
    return [str(run.relative_to(root)) for run in runs if not (run / "online_summary.json").is_file()]


def run_stalled_start(args, root: Path) -> None:
    """The stalled-start runs this worker can take now."""
    from ovmse.sweeps.cells import merge_overrides

    start = stalled_start_checkpoint(root)
    if start is None:
        print(f"[stalled_start] {stalled_run(root)} unfinished or not stalled: nothing to run", flush=True)
        return
    for arm, overrides in STALL_ARMS.items():
        run_fine_tuning(args, f"stalled_start {arm}", stalled_start_dir(root, arm), start,
                        merge_overrides(STALL_OVERRIDES, [f"seed={STALL_SEED}"], overrides))
    for arm, seed in best_start_runs():
        run = stalled_start_dir(root, arm, seed)
        if (run / "online_summary.json").is_file() or (best := best_start_checkpoint(args, root, arm, seed)) is None:
            continue
        run_fine_tuning(args, f"stalled_start {arm} seed {seed}", run, best,
                        merge_overrides(STALL_OVERRIDES, [f"seed={seed}", f"algo={BEST_START_ARMS[arm][2]}"]))


def grid_command(args, grid: str, overrides: tuple[str, ...], root: Path) -> list[str]:
    return [sys.executable, "train.py", "-m", "phase=pipeline", f"grid={grid}", *overrides, f"budget={BUDGET}",
            f"num_threads={args.threads}", f"device={args.device}", f"data_root={args.data_root}",
            f"pipeline.root={root}", "pipeline.wait_for_shared=false", f"pipeline.skip_cells_file={root / RECORDED_CELLS}",
            f"hydra.sweep.dir={root}/multiruns/{grid}/{time.strftime('%Y-%m-%d_%H-%M-%S')}-{args.worker}"]


def worker(args) -> None:
    """One worker: passes over the grids until no cell is missing."""
    root = sweep_root(args)
    from ovmse.sweeps.cells import read_cell_list  # noqa: PLC0415

    diagnosis = args.part == "diagnosis"
    stages, cells = (DIAGNOSIS_STAGES, DIAGNOSIS_CELLS) if diagnosis else (STAGES, CELLS)
    recorded = read_cell_list(write_recorded_cells(root, Path(args.data_root)))

    def missing() -> list[str]:
        todo = [c for c in missing_cells(root, cells) if c not in recorded]
        return todo + (missing_qmix_start(root) + missing_stalled_start(root) if diagnosis else [])

    while todo := missing():
        print(f"[worker {args.worker}] {time.strftime('%H:%M:%S')} pass: {len(todo)} runs missing", flush=True)
        if diagnosis:
            run_qmix_start(args, root)
            run_stalled_start(args, root)
        for grid, overrides in stages:
            cmd = grid_command(args, grid, overrides, root)
            print("[worker] run:", " ".join(cmd[1:]), flush=True)
            if subprocess.run(cmd, cwd=ROOT).returncode != 0:
                raise SystemExit(f"[worker {args.worker}] grid={grid} failed: the error is above; fix it and run "
                                 "the same command again (finished stages are kept)")
        if missing() == todo:
            # Nothing finished in this pass: every missing run is held by the other worker (or
            # waits for a run it needs).
            print(f"[worker {args.worker}] nothing to take now; next pass in {IDLE_WAIT_SECONDS} s", flush=True)
            time.sleep(IDLE_WAIT_SECONDS)
    print(f"[worker {args.worker}] every run is finished", flush=True)


def run(args, part: str = "main") -> None:
    root = sweep_root(args)
    root.mkdir(parents=True, exist_ok=True)
    ensure_datasets(args, root)
    procs = []
    for k in range(args.workers):
        name = f"worker{k}.log" if part == "main" else f"diagnosis-worker{k}.log"
        log = open(root / name, "a")
        cmd = [sys.executable, __file__, "worker", f"--worker={k}", f"--part={part}", f"--threads={args.threads}",
               f"--device={args.device}", f"--data-root={args.data_root}", f"--root={root}"]
        procs.append((subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), root / name))
        print(f"worker {k}: pid {procs[-1][0].pid}, log {procs[-1][1]}", flush=True)
        time.sleep(20)  # the first worker claims its first cell before the second looks
    failed = [str(log) for proc, log in procs if proc.wait() != 0]
    if failed:
        raise SystemExit(f"workers failed, see {', '.join(failed)}")
    print(f"every cell finished; report: python scripts/o2o_2s3z.py report --root {root}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("run", "diagnose", "worker", "report", "stats", "status"))
    parser.add_argument("--part", choices=("main", "diagnosis"), default="main", help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help="sweep root (default outputs/sweeps/300k)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-root", default=str(ROOT / "data"))
    parser.add_argument("--out-json", default=None, help="report: write the records here instead of "
                        "benchmarks/results/o2o_2s3z.json (e.g. a partial sweep root, to look at)")
    parser.add_argument("--doc", default=None, help="report: write the section into this markdown file "
                        "(with its figures under img/ beside it) instead of docs/results.md")
    parser.add_argument("--any-set", action="store_true",
                        help=f"run: go on with 2s3z sets other than the experiment's (made at {DATASET_COMMIT})")
    parser.add_argument("--allow-dropping", action="store_true",
                        help="report: write even if the last report holds finished runs this root lacks")
    parser.add_argument("--with-recorded", action="store_true",
                        help="report: the JSON holds every run the section reads, those recorded in other result "
                        "files included (marked recorded_in): one file for the whole experiment")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args)
    elif args.command == "diagnose":
        run(args, "diagnosis")
    elif args.command == "worker":
        worker(args)
    elif args.command == "status":
        root = sweep_root(args)
        recorded = recorded_runs()
        for title, total, missing in (
                ("main sweep", len(CELLS) * len(SEEDS), missing_cells(root)),
                ("diagnosis", (len(DIAGNOSIS_CELLS) + len(QMIX_START_ALGOS)) * len(SEEDS) + len(STALL_ARMS)
                 + len(best_start_runs()),
                 missing_cells(root, DIAGNOSIS_CELLS) + missing_qmix_start(root) + missing_stalled_start(root))):
            gone = [m for m in missing if m in recorded]
            print(f"{title}: {total - len(missing)} of {total} runs finished under {root}; missing"
                  + (f" ({len(gone)} of them finished in an earlier sweep root: recorded, outputs gone)" if gone else "")
                  + ":")
            print("\n".join(f"  {m}{recorded_note(root, m, recorded)}" for m in missing))
    elif args.command == "stats":
        from o2o_2s3z_stats import main as stats  # noqa: PLC0415

        stats()
    else:
        from o2o_2s3z_report import report  # noqa: PLC0415  (matplotlib only when reporting)

        where = {"out_json": Path(args.out_json)} if args.out_json else {}
        where.update({"doc": Path(args.doc)} if args.doc else {})
        report(sweep_root(args), allow_dropping=args.allow_dropping, with_recorded=args.with_recorded, **where)


if __name__ == "__main__":
    main()
