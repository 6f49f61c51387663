"""Phase "pipeline": one cell of the paper's grid, end to end, skipping what is done.

``python train.py -m phase=pipeline grid=table1`` runs, for every (algorithm, task, seed):

1. the datasets of the map, when missing under ``data_root`` (``phase=collect``);
2. the offline pretraining, shared by every fine-tuning algorithm of the task and seed whose
   offline settings are equal (MACal-QL's calibrated one is its own)
   (``phase=offline``; not for QMIX from scratch);
3. online fine-tuning with the final 640-battle test (``phase=online``), resumed from its
   last resume point when an earlier sweep was killed in it.

A stage that finished (its dataset, ``offline_summary.json`` or ``online_summary.json`` is
there) is not run again, so re-running a sweep completes it. Several sweep processes may work
on one grid at once: a cell being trained by another process is skipped, a shared stage is
waited for (:mod:`ovmse.sweeps.locks`). Each stage is a ``python train.py`` process with the
cell's own overrides and the budget's (``configs/budget/``); its command is recorded in
``pipeline.json`` of this job and of the online run.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import datetime
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from ovmse.datasets import dataset_dir
from ovmse.datasets.loading import metadata_identity
from ovmse.envs import get_map
from ovmse.sweeps.cells import (
    PAPER_DATASETS,
    Cell,
    config_hash,
    forwarded_overrides,
    merge_overrides,
    offline_identity,
    override_group,
    override_key,
    path_override,
    read_cell_list,
    variant_of,
)
from ovmse.sweeps.locks import StageLock
from ovmse.sweeps.stages import StageError, run_stage, set_aside, train_command

from .common import write_json
from .fine_tuning import check_same_set, is_fine_tuning

_COLLECT_FORWARD = ("env", "device", "num_threads", "collect_threads", "malloc_keep_freed", "trainer", "logger", "paths",
                    "data_root", "collector")
# Collect takes no experiment preset: a dataset is the map's (docs/datasets.md), not the first task's.
_OFFLINE_FORWARD = ("experiment", *_COLLECT_FORWARD, "algo", "dataset")
# Overrides that may differ between a finished run and the sweep that finds it.
_RUN_SETTINGS = ("resume", "hydra", "device", "num_threads", "collect_threads", "malloc_keep_freed", "trainer", "logger",
                 "paths", "data_root", "checkpoint")


class _Busy(Exception):
    """A shared stage is held by another sweep process (``pipeline.wait_for_shared=false``)."""

    def __init__(self, stage: str, holder: str | None, where: Path):
        super().__init__(stage)
        self.stage, self.holder, self.where = stage, holder, where


# The file each stage writes last: without it the stage did not finish, whatever its exit status.
STAGE_SUMMARIES = {"collect": "collect_summary.json", "offline": "offline_summary.json",
                   "online": "online_summary.json"}


def _final_metrics(summary: Path) -> dict:
    result = json.loads(summary.read_text())
    return {k: float(v) for k, v in result.items() if k.startswith("eval/") and isinstance(v, (int, float))}


def _task_overrides() -> list[str]:
    """The overrides this job was composed with (a sweep's choices included)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        raise ValueError("phase=pipeline runs from python train.py: it hands the job's overrides (experiment, "
                         "algo, ...) on to each stage's command")
    return list(HydraConfig.get().overrides.task)


def parallel_jobs(launcher, cpu_count: int) -> int:
    """How many sweep jobs Hydra's launcher runs at once: ``n_jobs`` of a parallel launcher
    (joblib's convention: -1 is every core, -2 all but one), 1 for the basic launcher."""
    n_jobs = launcher.get("n_jobs") if launcher is not None else None
    if n_jobs is None:
        return 1
    n_jobs = int(n_jobs)
    if n_jobs == 0:
        raise ValueError("hydra.launcher.n_jobs=0: give the number of cells to run at once (-1: one per core)")
    return max(1, n_jobs if n_jobs > 0 else cpu_count + 1 + n_jobs)


def threads_per_job(overrides: list[str], launcher, cpu_count: int) -> list[str]:
    """``num_threads=<cores / parallel jobs>`` for the stages when the launcher runs several
    cells at once and the command set no ``num_threads``: each stage would otherwise use every
    core, and two jobs on two cores would each run two threads (``[]`` when nothing to add)."""
    jobs = parallel_jobs(launcher, cpu_count)
    if jobs == 1 or any(override_key(o) == "num_threads" for o in overrides):
        return []
    return [f"num_threads={max(1, cpu_count // jobs)}"]


def _only(overrides: list[str], keys: tuple[str, ...]) -> list[str]:
    return [o for o in overrides if override_group(o) in keys]


def make_cell(cfg: DictConfig, overrides: list[str]) -> Cell:
    spec = get_map(cfg.env.map_name)
    dataset = str(cfg.get("dataset") or "")
    if not dataset or "/" in dataset:
        raise ValueError(f"dataset={dataset or None!r}: phase=pipeline needs a dataset quality "
                         f"({', '.join(PAPER_DATASETS)}, expert, mixed), e.g. experiment=2s3z_medium")
    fine_tuning = is_fine_tuning(cfg.algo)
    offline_seed = int(cfg.pipeline.offline.seed)
    offline_hash = ""
    if fine_tuning:
        algo = OmegaConf.to_container(cfg.algo, resolve=True)
        env = OmegaConf.to_container(cfg.env, resolve=True)
        offline_hash = config_hash(offline_identity(algo, env, dataset, offline_seed,
                                                    list(cfg.pipeline.offline.overrides)))
    return Cell(root=Path(str(cfg.pipeline.root)).resolve(), map_name=spec.name, dataset=dataset,
                algo=str(cfg.algo.name), seed=int(cfg.seed), fine_tuning=fine_tuning,
                variant=variant_of(overrides), offline_seed=offline_seed, offline_hash=offline_hash)


class Pipeline:
    """The stages of one cell; ``run()`` does what is missing and returns the cell's metrics."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.overrides = forwarded_overrides(_task_overrides())
        self.overrides += self._threads_per_job()
        self.cell = make_cell(cfg, self.overrides)
        self.root_dir = Path(str(cfg.paths.root_dir))
        self.data_root = Path(str(cfg.data_root)).resolve()
        self.stages: list[dict] = []
        self.skip_list = self._skip_cells_file()  # read before any stage: a bad path stops every cell

    def _threads_per_job(self) -> list[str]:
        from hydra.core.hydra_config import HydraConfig

        launcher, cores = HydraConfig.get().get("launcher"), os.cpu_count() or 1
        added = threads_per_job(self.overrides, launcher, cores)
        if added:
            print(f"[pipeline] {added[0]} for each stage: the launcher runs {parallel_jobs(launcher, cores)} cells "
                  "at once", flush=True)
        return added

    def _record(self, name: str, status: str, stage_dir: Path, command: list[str] | None = None,
                wall: float | None = None) -> None:
        self.stages.append({"stage": name, "status": status, "dir": str(stage_dir),
                            "command": command[1:] if command else None, "wall_seconds": wall})
        if command is None:
            print(f"[pipeline] {name}: {status} ({stage_dir})", flush=True)

    def _run(self, name: str, overrides: list[str], stage_dir: Path, status: str = "ran") -> None:
        command = train_command(self.root_dir, overrides + [path_override("hydra.run.dir", stage_dir)])
        wall = run_stage(name, command, stage_dir, leaves=stage_dir / STAGE_SUMMARIES[name])
        self._record(name, status, stage_dir, command, wall)

    def _shared_lock(self, stage: str, path: Path, where: Path) -> StageLock:
        """The lock of a stage that cells share: waited for, or, with
        ``pipeline.wait_for_shared=false``, the cell is skipped (:class:`_Busy`) while another
        process holds it."""
        lock = StageLock(path)
        if self.cfg.pipeline.wait_for_shared:
            lock.acquire(on_wait=lambda who: print(f"[pipeline] {stage} {where}: being made by {who}; waiting",
                                                   flush=True))
        elif not lock.try_acquire():
            raise _Busy(stage, lock.holder(), where)
        return lock

    # -- stage 1: datasets -------------------------------------------------------------------
    def _dataset_ready(self, quality: str) -> bool:
        return (dataset_dir(self.data_root, self.cell.map_name, quality) / "dataset.json").is_file()

    def ensure_dataset(self) -> None:
        """Make the cell's dataset when missing, then hold it to the set the sweep root pinned
        (:meth:`pin_dataset`)."""
        self._make_dataset()
        self.pin_dataset(dataset_dir(self.data_root, self.cell.map_name, self.cell.dataset))

    def pin_dataset(self, where: Path) -> None:
        """The first cell of a sweep root to use a dataset pins its identity
        (``<root>/datasets/<map>/<quality>.json``); a later cell finding another set under
        ``data_root`` (the data lost and collected again, another machine's copy) is refused,
        so that no statistic pools seeds pretrained or fine-tuned on two sets."""
        pin = self.cell.dataset_pin
        found = metadata_identity(where)
        if not pin.is_file():
            pin.parent.mkdir(parents=True, exist_ok=True)
            draft = pin.with_name(f".{pin.name}.{uuid.uuid4().hex}")  # hosts sharing the root may share pids
            draft.write_text(json.dumps(found, indent=1) + "\n")
            try:
                os.link(draft, pin)  # whole and exclusive: of two processes pinning at once, one does
                print(f"[pipeline] dataset {where}: pinned for this sweep root ({pin})", flush=True)
                return
            except FileExistsError:
                pass  # another process pinned it first: compare with its pin
            finally:
                draft.unlink(missing_ok=True)
        check_same_set(json.loads(pin.read_text()), found, what=f"dataset {where}",
                       remedy=f"This sweep root's runs used the set pinned in {pin}: point data_root at it, or give "
                              "this set a sweep root of its own (pipeline.root=...)")

    def check_pretraining_set(self, stage_dir: Path) -> None:
        """A finished pretraining serves this cell only if it read the set the sweep root pinned
        (its ``hparams.yaml`` records it): a root whose data was collected again after its
        pretrainings pins the new set, and OVMSE, which mixes no offline data in on 2s3z, would
        not notice at fine-tuning."""
        pin = self.cell.dataset_pin
        hparams = stage_dir / "hparams.yaml"
        if not (pin.is_file() and hparams.is_file()):
            return
        recorded = (yaml.safe_load(hparams.read_text()) or {}).get("dataset") or {}
        check_same_set(recorded, json.loads(pin.read_text()), what=f"the set this sweep root pinned ({pin})",
                       remedy=f"The pretraining {stage_dir} read the set its hparams.yaml records: point data_root "
                              "at that set with a sweep root of its own, or move the pretraining away to redo it")

    def _make_dataset(self) -> None:
        cell, quality = self.cell, self.cell.dataset
        where = dataset_dir(self.data_root, cell.map_name, quality)
        if self._dataset_ready(quality):
            return self._record("dataset", "present", where)
        if quality not in PAPER_DATASETS:
            raise FileNotFoundError(f"dataset {where} is missing; the pipeline makes the paper's "
                                    f"{' and '.join(PAPER_DATASETS)} datasets only: make it with python train.py "
                                    f"phase=collect env={cell.map_name} qualities=[medium,expert,{quality}]")
        lock = self._shared_lock("dataset", self.data_root / cell.map_name / ".collect.lock", where)
        try:
            missing = [q for q in PAPER_DATASETS if not self._dataset_ready(q)]
            if not missing:
                return self._record("dataset", "made by another process", where)
            pc = self.cfg.pipeline.collect
            stage_dir = cell.collect_dir(int(pc.seed))
            if stage_dir.exists():
                if len(missing) < len(PAPER_DATASETS):
                    # A killed collection wrote some datasets: the next one keeps them and makes the
                    # rest, medium from the checkpoint in this directory that medium_replay names.
                    stage_dir = stage_dir.with_name(f"{stage_dir.name}.rerun-{datetime.now():%Y%m%d-%H%M%S}")
                else:
                    set_aside(stage_dir)
            overrides = merge_overrides(
                _only(self.overrides, _COLLECT_FORWARD),
                ["phase=collect", "algo=qmix", f"env={cell.map_name}", f"seed={int(pc.seed)}",
                 f"qualities=[{','.join(PAPER_DATASETS)}]", path_override("data_root", self.data_root),
                 f"env_steps={int(pc.env_steps)}"],
                list(pc.overrides))
            self._run("collect", overrides, stage_dir)
        finally:
            lock.release()

    # -- stage 2: offline pretraining --------------------------------------------------------
    def ensure_offline(self) -> Path:
        cell = self.cell
        stage_dir = cell.offline_dir
        ckpt = stage_dir / "checkpoints" / "last.ckpt"
        done = stage_dir / "offline_summary.json"
        if done.is_file():
            self.check_pretraining_set(stage_dir)
            self._record("offline", "done before", stage_dir)
            return ckpt
        lock = self._shared_lock("offline", cell.lock_path(stage_dir), stage_dir)
        try:
            if done.is_file():
                self.check_pretraining_set(stage_dir)
                self._record("offline", "made by another process", stage_dir)
                return ckpt
            if stage_dir.exists():
                set_aside(stage_dir)
            overrides = merge_overrides(
                _only(self.overrides, _OFFLINE_FORWARD),
                ["phase=offline", f"seed={cell.offline_seed}", f"dataset={cell.dataset}",
                 path_override("data_root", self.data_root)],
                list(self.cfg.pipeline.offline.overrides))
            self._run("offline", overrides, stage_dir)
            return ckpt
        finally:
            lock.release()

    # -- stage 3: online fine-tuning and the final test --------------------------------------
    def run_online(self, ckpt: Path | None) -> None:
        """Train the cell's online run (resumed when an earlier sweep left a resume point)."""
        cell = self.cell
        stage_dir = cell.online_dir
        resume = (stage_dir / "checkpoints" / "last.ckpt").is_file()
        if stage_dir.exists() and not resume:
            set_aside(stage_dir)
        overrides = self.online_overrides(ckpt) + ([path_override("resume", stage_dir)] if resume else [])
        self._run("online", overrides, stage_dir, status="resumed" if resume else "ran")
        write_json(stage_dir / "pipeline.json", self.describe())

    def online_overrides(self, ckpt: Path | None) -> list[str]:
        """The online stage's command: the budget's overrides, then the cell's own, which win
        (a grid may give one cell a shorter ``env_steps``: a variant of its own), then what
        the pipeline sets."""
        return merge_overrides(
            list(self.cfg.pipeline.online.overrides),
            [o for o in self.overrides if override_key(o) != "resume"],
            ["phase=online", f"seed={self.cell.seed}", path_override("data_root", self.data_root)],
            [path_override("ckpt", ckpt)] if ckpt is not None else [])

    def check_done_run(self, ckpt: Path | None) -> None:
        """A finished run counts as this cell's only if it was made with this cell's command
        (run settings aside): the directory names the cell, not the budget."""
        recorded = self.cell.online_dir / ".hydra" / "overrides.yaml"
        if not recorded.is_file():
            return
        # A run from scratch serves every task of its map: the experiment presets of one map
        # differ only in their dataset, which such a run does not use.
        ignored = _RUN_SETTINGS if self.cell.fine_tuning else _RUN_SETTINGS + ("experiment", "dataset")

        def relevant(overrides) -> set[str]:
            return {str(o) for o in overrides if override_group(str(o)) not in ignored}

        made, wanted = relevant(OmegaConf.load(recorded)), relevant(self.online_overrides(ckpt))
        if made != wanted:
            raise ValueError(
                f"{self.cell.online_dir} is a finished run of other settings than this sweep's (only in the run: "
                f"{sorted(made - wanted)}; only in the sweep: {sorted(wanted - made)}); give the sweep another "
                "pipeline.name, or move that run away to redo it")

    def _skip_cells_file(self) -> Path | None:
        """``pipeline.skip_cells_file``: the path of the list of cells finished in another sweep
        root whose results are recorded (a new machine starts without the old root's outputs);
        None when unset. A missing file is a bad setting (``ValueError``)."""
        listed = self.cfg.pipeline.get("skip_cells_file")
        if listed is None:
            return None
        if not Path(str(listed)).is_file():
            raise ValueError(f"pipeline.skip_cells_file={listed!r}: no such file (a list of cells, one "
                             "'<task>/<run name>/seed<k>' per line)")
        return Path(str(listed))

    def describe(self) -> dict:
        c = self.cell
        return {"task": c.task, "algo": c.algo, "variant": c.variant, "seed": c.seed, "root": str(c.root),
                "overrides": self.overrides, "stages": self.stages, "pid": os.getpid()}

    def run(self) -> dict:
        """Do the cell's missing stages; the final test's metrics, or ``pipeline/skipped`` when
        another process holds the cell or (``pipeline.wait_for_shared=false``) a stage it needs."""
        cell = self.cell
        summary = cell.online_dir / "online_summary.json"
        if summary.is_file():
            self.check_done_run(cell.offline_dir / "checkpoints" / "last.ckpt" if cell.fine_tuning else None)
            self._record("online", "done before", cell.online_dir)
            return _final_metrics(summary)
        if self.skip_list is not None and cell.online_key in read_cell_list(self.skip_list):
            self._record("online", f"finished in another sweep root (listed in {self.skip_list}): skipped",
                         cell.online_dir)
            return {"pipeline/skipped": 1.0}
        # The cell is claimed before its shared stages, so that a second sweep process moves on
        # to another cell instead of queueing behind this one.
        lock = StageLock(cell.lock_path(cell.online_dir))
        if not lock.try_acquire():
            self._record("online", f"being trained by {lock.holder()}: skipped", cell.online_dir)
            return {"pipeline/skipped": 1.0}
        try:
            ckpt = None
            if cell.fine_tuning:
                self.ensure_dataset()
                ckpt = self.ensure_offline()
            self.run_online(ckpt)
        except _Busy as busy:
            self._record(busy.stage, f"being made by {busy.holder}: cell skipped for now", busy.where)
            return {"pipeline/skipped": 1.0}
        finally:
            lock.release()
        return _final_metrics(summary)


def run(cfg: DictConfig) -> dict:
    pipeline = Pipeline(cfg)
    c = pipeline.cell
    print(f"[pipeline] cell {c.task} {c.run_name} seed {c.seed} (sweep root {c.root})", flush=True)
    start = time.perf_counter()
    out = Path(cfg.paths.output_dir)
    try:
        metrics = pipeline.run()
    except (StageError, ValueError) as err:
        write_json(out / "pipeline.json", {**pipeline.describe(), "error": str(err)})
        if not cfg.pipeline.keep_going:
            raise
        print(f"[pipeline] error: {err}\n[pipeline] pipeline.keep_going=true: going on with the next cell", flush=True)
        return {"pipeline/failed": 1.0}
    write_json(out / "pipeline.json", {**pipeline.describe(), "wall_seconds": time.perf_counter() - start})
    if "eval/final_win_rate" in metrics:
        print("\n".join(cell_summary(pipeline, metrics)), flush=True)
    return metrics


def _win_rate(summary: dict, key: str, battles_key: str) -> str:
    return f"{summary[key]:.3f} over {int(summary.get(battles_key, 0))} battles"


def cell_summary(pipeline: Pipeline, metrics: dict) -> list[str]:
    """What a finished cell reached (``metrics``: its final test's ``eval/`` values) and where its
    files are, for the end of a sweep job: the online run's final test and the offline policy's
    last greedy evaluation, each with its number of battles, the checkpoints, the TensorBoard and
    report commands."""
    c = pipeline.cell
    lines = [f"[pipeline] {c.task} {c.run_name} seed {c.seed}: final win rate "
             f"{_win_rate(metrics, 'eval/final_win_rate', 'eval/final_episodes')}, "
             f"return {metrics.get('eval/final_return', float('nan')):.2f}"]
    offline_summary = c.offline_dir / "offline_summary.json"
    if c.fine_tuning and offline_summary.is_file():
        offline = json.loads(offline_summary.read_text())
        lines.append(f"[pipeline]   offline policy (last evaluation of the pretraining): win rate "
                     f"{_win_rate(offline, 'eval/win_rate', 'eval/episodes')}; "
                     f"checkpoint {c.offline_dir / 'checkpoints' / 'last.ckpt'}")
        dataset = dataset_dir(pipeline.data_root, c.map_name, c.dataset)
        lines.append(f"[pipeline]   dataset {dataset}")
    lines.append(f"[pipeline]   online run {c.online_dir} (checkpoints/, metrics.csv, online_summary.json)")
    lines.append(f"[pipeline]   curves: tensorboard --logdir {c.root}; tables and figures: "
                 f"python -m ovmse.report {c.root}")
    return lines
