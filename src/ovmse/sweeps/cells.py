"""Where each stage of one grid cell lives, and which command line makes it.

A *cell* is one (algorithm, task, seed) of a sweep, a task being ``<map>_<dataset>``. Its
stages, under the sweep root (``pipeline.root``):

* ``collect/<map>_seed<s>/``: ``phase=collect`` run that wrote the datasets (only when a
  dataset the cell needs is missing under ``data_root``);
* ``offline/<task>/seed<s>-<hash>/``: ``phase=offline`` pretraining, shared by every
  fine-tuning algorithm whose offline settings are equal (``hash`` covers them);
* ``online/<task>/<algo>[+<variant>]/seed<s>/``: ``phase=online`` fine-tuning and the final
  640-battle test (``online_summary.json``). QMIX from scratch does not depend on the dataset,
  so its runs live under ``online/<map>/qmix/`` and serve every task of the map.

A stage's command is ``python train.py`` with the cell's own overrides (as the sweep gave
them), the budget's overrides for the stage and ``hydra.run.dir=<stage dir>``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

# Overrides that name the cell itself (they are in every stage's command, not in the variant).
IDENTITY_KEYS = ("experiment", "algo", "env", "dataset", "seed")
# Overrides that change how a run is executed or measured, not what it learns: forwarded
# to the stages, left out of the run's name.
OPERATIONAL_KEYS = ("device", "num_threads", "collect_threads", "malloc_keep_freed", "trainer", "logger", "paths",
                    "data_root", "collector", "eval", "checkpoint", "log_every_env_steps", "final_eval",
                    "unlearning_probe")
# Overrides for the pipeline itself, never forwarded.
PIPELINE_KEYS = ("phase", "grid", "budget", "pipeline", "hydra", "task_name")
# Algo keys the offline phase does not read: algorithms that differ only in these share one
# offline pretraining.
ONLINE_ONLY_ALGO_KEYS = ("name", "online", "exploration", "epsilon_start", "epsilon_end", "epsilon_anneal_steps",
                         "steps_per_env", "buffer_size", "batch_size", "target_update_interval",
                         "episodes_per_update", "env_steps_per_update")
PAPER_DATASETS = ("medium", "medium_replay")
# algo.offline keys that only CFCQL's behaviour net reads (configs/algo/o2o.yaml).
BEHAVIOUR_KEYS = ("behaviour_training", "behaviour_patience", "behaviour_max_updates")
# algo.offline keys added after pretrainings were recorded, each with the value that does what
# those pretrainings did: at that value a key stays out of the identity, so they keep their hash.
ADDED_OFFLINE_KEYS = {"calibrated": False}


def override_key(override: str) -> str:
    """``algo.online.mixing_ratio`` for ``+algo.online.mixing_ratio=0.1`` (also ``++``, ``~``)."""
    return override.split("=", 1)[0].lstrip("+~")


def override_group(override: str) -> str:
    """The top-level config key or group an override sets: ``algo`` for ``algo.lr=...``,
    ``algo=ovmse`` and ``+algo@x=...``."""
    return override_key(override).split(".", 1)[0].split("@", 1)[0]


def forwarded_overrides(task_overrides: Iterable[str]) -> list[str]:
    """The sweep job's overrides that its stages get too (without the pipeline's own)."""
    return [o for o in task_overrides if override_group(o) not in PIPELINE_KEYS]


def variant_of(overrides: Iterable[str]) -> str:
    """``algo.online.mixing_ratio=0.1`` for a run whose learning differs from its algo's
    defaults by that override: the overrides that are neither identity nor operational,
    sorted and joined with ``,``; empty for the algorithm as configured."""
    # ``algo=ovmse`` names the cell, ``algo.lr=...`` changes what it learns: identity keys
    # match whole, the others by their top-level group.
    chosen = [o for o in overrides if override_key(o) not in IDENTITY_KEYS
              and override_group(o) not in OPERATIONAL_KEYS + PIPELINE_KEYS]
    return ",".join(sorted(o.lstrip("+") for o in chosen))


def read_cell_list(path: Path) -> set[str]:
    """The cells of a ``pipeline.skip_cells_file``: one ``<task>/<run name>/seed<k>`` per line
    (``#`` starts a comment)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {line for line in lines if line}


def path_override(key: str, path: str | Path) -> str:
    """``key=path`` for a Hydra command line, the path quoted when it holds characters Hydra's
    override grammar gives a meaning (a variant's run directory has ``=`` and ``,``)."""
    text = str(path)
    if re.search(r"[^\w/.\-+:@~]", text):
        text = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"{key}={text}"


def merge_overrides(*groups: Iterable[str]) -> list[str]:
    """One override per key, a later group winning (Hydra refuses a key given twice)."""
    merged: dict[str, str] = {}
    for group in groups:
        for o in group:
            merged[override_key(o)] = o
    return list(merged.values())


def config_hash(payload: Mapping[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def offline_identity(algo: Mapping[str, Any], env: Mapping[str, Any], dataset: str, seed: int,
                     stage_overrides: Iterable[str]) -> dict[str, Any]:
    """What an offline pretraining depends on: the algo's offline-relevant settings, the env
    (battle rules; not how many run at once), dataset, seed and the budget's overrides."""
    algo = {k: v for k, v in algo.items() if k not in ONLINE_ONLY_ALGO_KEYS}
    offline = algo.get("offline")
    if isinstance(offline, Mapping) and not _trains_a_behaviour_net(offline, env.get("map_name")):
        # Read by CFCQL's behaviour net only: where there is none they change nothing, and the
        # pretrainings made before these keys existed keep their identity (and directories).
        offline = algo["offline"] = {k: v for k, v in offline.items() if k not in BEHAVIOUR_KEYS}
    if isinstance(offline, Mapping):
        algo["offline"] = {k: v for k, v in offline.items()
                           if not (k in ADDED_OFFLINE_KEYS and v == ADDED_OFFLINE_KEYS[k])}
    return {"algo": algo, "env": {k: v for k, v in env.items() if k != "num_envs"},
            "dataset": dataset, "seed": int(seed), "overrides": sorted(stage_overrides)}


def _trains_a_behaviour_net(offline: Mapping[str, Any], map_name: str | None) -> bool:
    from ovmse.phases.settings import per_map

    cql = per_map(offline.get("cql"), map_name, "algo.offline.cql")
    return cql == "cfcql" and float(offline.get("cfcql_temperature") or 0.0) > 0


def dataset_pin(root: Path, map_name: str, quality: str) -> Path:
    """Where a sweep root pins the identity of a dataset its cells use (phases/pipeline.py)."""
    return root / "datasets" / map_name / f"{quality}.json"


@dataclass(frozen=True)
class Cell:
    """One (algorithm, task, seed) of a sweep and the directories of its stages."""

    root: Path
    map_name: str
    dataset: str
    algo: str
    seed: int
    fine_tuning: bool
    variant: str = ""
    offline_seed: int = 0
    offline_hash: str = field(default="", compare=False)

    @property
    def task(self) -> str:
        return f"{self.map_name}_{self.dataset}"

    @property
    def run_name(self) -> str:
        return f"{self.algo}+{self.variant}" if self.variant else self.algo

    @property
    def online_dir(self) -> Path:
        # From scratch the dataset plays no part: one run per map serves both of its tasks.
        task = self.task if self.fine_tuning else self.map_name
        return self.root / "online" / task / self.run_name / f"seed{self.seed}"

    @property
    def online_key(self) -> str:
        """``<task>/<run name>/seed<k>``: the online run's directory under ``<root>/online/``, as
        result records and ``pipeline.skip_cells_file`` name a cell."""
        return self.online_dir.relative_to(self.root / "online").as_posix()

    @property
    def offline_dir(self) -> Path:
        return self.root / "offline" / self.task / f"seed{self.offline_seed}-{self.offline_hash}"

    def collect_dir(self, seed: int) -> Path:
        return self.root / "collect" / f"{self.map_name}_seed{seed}"

    @property
    def dataset_pin(self) -> Path:
        return dataset_pin(self.root, self.map_name, self.dataset)

    def lock_path(self, stage_dir: Path) -> Path:
        return stage_dir.parent / f".{stage_dir.name}.lock"
