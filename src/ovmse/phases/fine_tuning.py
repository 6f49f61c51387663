"""What ``phase=online`` needs to fine-tune an offline checkpoint (the O2O algorithms).

Every offline-to-online algorithm is a config (``configs/algo/<name>.yaml``) whose ``online:``
block sets the online objective and data; one training loop serves them all:

============  ==========  =====================  ============  ======================
algo          OVM loss    exploration            online CQL    mixing ratio
============  ==========  =====================  ============  ======================
ovmse         yes         decentralised SE       Table 5       Table 4
macql         no          ε-greedy               offline α     Table 4
macalql       no          ε-greedy               offline α,    Table 4
                                                 calibrated
switch_cql    no          ε-greedy               0             Table 4
ovm_only      yes         ε-greedy               as ovmse      as ovmse
se_only       no          decentralised SE       as ovmse      as ovmse
============  ==========  =====================  ============  ======================

(``algo.exploration=sequential`` selects centralised SE for any of them.)
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ovmse.datasets import OfflineDataset, load_dataset, resolve_dataset
from ovmse.training import QMixModule
from ovmse.training.checkpointing import finished_run_beside
from ovmse.training.qmix_module import load_qmix_checkpoint
from ovmse.training.update_ratio import UpdateRatio

from .settings import per_map, per_task

O2O_ALGOS = ("ovmse", "macql", "macalql", "switch_cql", "ovm_only", "se_only")


def is_fine_tuning(algo: DictConfig) -> bool:
    """True for the offline-to-online algorithms (those with an ``online:`` block)."""
    return "online" in algo


def dataset_quality(name: str | None) -> str | None:
    """``medium`` for ``2s3z/medium``, ``data/2s3z/medium`` or ``medium`` (the task-table key)."""
    if not name:
        return None
    return Path(str(name).rstrip("/")).name


def online_settings(cfg: DictConfig, map_name: str, dataset: str | None) -> dict[str, Any]:
    """The resolved online settings of ``cfg.algo`` for ``map_name`` and dataset quality
    ``dataset`` (per-task tables, see :mod:`ovmse.phases.settings`)."""
    algo = cfg.algo
    s: dict[str, Any] = {
        "exploration": str(algo.exploration),
        "epsilon_start": float(algo.epsilon_start),
        "epsilon_end": float(algo.epsilon_end),
        "epsilon_anneal_steps": int(per_map(algo.epsilon_anneal_steps, map_name, "algo.epsilon_anneal_steps")),
        "target_update_interval": int(per_map(algo.target_update_interval, map_name, "algo.target_update_interval")),
        "grad_norm_clip": float(per_map(algo.grad_norm_clip, map_name, "algo.grad_norm_clip")),
        "batch_size": int(algo.batch_size),
        "sample_with_replacement": bool(algo.sample_with_replacement),
        "mixing_ratio": 0.0,
        "update_ratio": asdict(UpdateRatio.from_settings(
            per_map(algo.get("episodes_per_update"), map_name, "algo.episodes_per_update"),
            per_map(algo.get("env_steps_per_update"), map_name, "algo.env_steps_per_update"))),
    }
    if not is_fine_tuning(algo):
        return s
    on = algo.online

    def look(key: str) -> Any:
        return per_task(on[key], map_name, dataset, f"algo.online.{key}")

    cql_alpha = look("cql_alpha")
    # None (or a task's null entry): the TD(λ) the checkpoint was pretrained with (online_objective fills it in).
    td_lambda = look("td_lambda") if "td_lambda" in on else None
    s.update(
        mixing_ratio=float(look("mixing_ratio")),
        # "offline": the checkpoint's own weight, filled in by online_objective().
        cql_alpha=cql_alpha if cql_alpha == "offline" else float(cql_alpha),
        cql_calibrated=bool(look("cql_calibrated")),
        ovm=bool(look("ovm")),
        lambda_memory_start=float(look("lambda_memory_start")),
        lambda_memory_end=float(look("lambda_memory_end")),
        lambda_memory_anneal_steps=int(look("lambda_memory_anneal_steps")),
        grad_norm_clip=float(look("grad_norm_clip")),
        ovm_target=str(look("ovm_target")),
        restore_optimizer=bool(look("restore_optimizer")),
        td_lambda=None if td_lambda is None else float(td_lambda),
    )
    if not 0.0 <= s["mixing_ratio"] <= 1.0:
        raise ValueError(f"algo.online.mixing_ratio must be in [0, 1], got {s['mixing_ratio']}")
    return s


def load_checkpoint_for_map(path: str, spec) -> QMixModule:
    """The checkpoint ``path`` as a module, checked against the map ``spec`` it will be trained
    on (map and every network dimension)."""
    map_name = spec.name
    p = Path(str(path))
    if not p.is_file():
        raise FileNotFoundError(f"ckpt={str(path)!r}: no such file (phase=offline writes "
                                "<run dir>/checkpoints/last.ckpt)")
    module = load_qmix_checkpoint(str(p))
    check_offline_run_finished(module, str(path))
    hp = module.hparams
    found = {k: hp.get(k) for k in ("map_name", "obs_dim", "state_dim", "n_agents", "n_actions")}
    expected = {"map_name": map_name, "obs_dim": spec.obs_dim, "state_dim": spec.state_dim,
                "n_agents": spec.n_agents, "n_actions": spec.n_actions}
    if found != expected:
        diff = ", ".join(f"{k}: checkpoint {found[k]!r}, env {expected[k]!r}" for k in expected if found[k] != expected[k])
        raise ValueError(f"ckpt={str(path)!r} does not fit env={map_name} ({diff}); fine-tune on the map the "
                         "checkpoint was trained on, or pass that map's checkpoint")
    return module


def check_offline_run_finished(module: QMixModule, path: str) -> None:
    """Refuse a checkpoint of an offline run that did not finish: a killed run leaves the
    snapshots it wrote at its evaluations (``last.ckpt``, ``best.ckpt``). A snapshot whose run
    did finish (the ``last.ckpt`` beside it says so; e.g. its ``best.ckpt``) is accepted.
    Checkpoints from before this record: an offline run's checkpoint without the frozen
    offline target, which only the end of the run adds, is unfinished."""
    if offline_run_finished(module) or finished_run_beside(path):
        return
    record = module.offline_run or {}
    updates, planned = record.get("updates", module.updates), record.get("planned_updates")
    got = f"{updates} of {planned} updates" if planned is not None else f"{updates} updates, no frozen offline target"
    raise ValueError(f"ckpt={path!r} is from an offline run that did not finish ({got}): it was written at an "
                     "evaluation of a run that was stopped. Finish the offline run (run its phase=offline command "
                     "again) and fine-tune from the checkpoint it writes at the end")


def offline_run_finished(module: QMixModule) -> bool:
    """Whether the run that wrote ``module``'s checkpoint had finished when it wrote it (always
    true of checkpoints that no offline run wrote)."""
    if module.offline_run is not None:
        return bool(module.offline_run.get("finished"))
    phase = (module.run_config or {}).get("task_name")  # the phase that wrote it
    return phase != "offline" or module.settings.keeps_offline_target


def checkpoint_dataset(module: QMixModule) -> dict:
    """The dataset identity the offline run recorded (``{}`` when there is none)."""
    return dict(module.hparams.get("dataset") or {})


def resolve_fine_tuning_dataset(cfg: DictConfig, module: QMixModule, map_name: str) -> tuple[str | None, str | None]:
    """``(quality, source)`` of the offline dataset of this fine-tuning run: ``cfg.dataset`` when
    set (a quality under ``data_root/<map>/`` or a directory), else the checkpoint's own
    (its path). ``source`` is resolved only if data is mixed in (:func:`load_mixing_dataset`).

    A ``cfg.dataset`` naming another dataset than the one the checkpoint was trained on is
    refused: the task tables (mixing ratio, λ, ...) and the mixed-in data would not match the
    pretrained values."""
    trained_on = checkpoint_dataset(module)
    trained_quality = dataset_quality(trained_on.get("name"))
    wanted = cfg.get("dataset")
    if wanted:
        name = str(wanted)
        quality = dataset_quality(name)
        if trained_quality and quality != trained_quality:
            raise ValueError(
                f"dataset={name!r} but ckpt={cfg.ckpt!r} was pretrained on {trained_on.get('name')!r}: pass the "
                f"checkpoint pretrained on {quality!r} (or the experiment preset of its dataset)")
        return quality, name
    return trained_quality, trained_on.get("path")


def load_mixing_dataset(cfg: DictConfig, source: str | None, map_name: str, device,
                        pretrained_on: dict | None = None) -> OfflineDataset:
    """The offline dataset mixed into online batches (validated in full, like the offline phase);
    refused when it is another set than ``pretrained_on`` (the checkpoint's ``hparams.dataset``,
    :func:`check_same_set`)."""
    if source is None:
        raise ValueError("the mixing ratio is > 0 but the checkpoint names no dataset: pass dataset=<quality or "
                         "directory> (the dataset it was pretrained on)")
    path = resolve_dataset(source, cfg.data_root, map_name)
    if not path.is_dir():
        raise FileNotFoundError(f"offline dataset {str(path)!r} (to mix into online batches) does not exist: "
                                "pass dataset=<quality or directory>, or regenerate it with phase=collect")
    dataset = load_dataset(path, map_name=map_name, validate="full", device=device)
    check_same_set(pretrained_on or {}, dataset.identity(), what=f"the offline data to mix in ({path})")
    return dataset


# What tells two sets of one name apart: the same collect command at another commit makes
# another "medium" set (docs/results.md, eighth session), at the same commit on one machine the
# same one (docs/datasets.md: 2s3z medium made again on a new machine). So a set is its counts, the
# commit that collected it and, for sets written since it existed, its episodes' digest; when
# it was made (`created`) is not compared.
SET_FIELDS = ("episodes", "transitions", "git_commit", "content_sha256")


def check_same_set(recorded: dict, found: dict, what: str,
                   remedy: str = "Point data_root (or dataset=) at the set recorded, or pretrain again on this one") -> None:
    """Refuse ``found`` (a dataset's :meth:`~ovmse.datasets.OfflineDataset.identity`) where it
    differs from ``recorded`` in a field both hold (:data:`SET_FIELDS`): values pretrained on one
    set and fine-tuned on another measure neither. A record from before a field existed is not
    compared on it."""
    differs = {k: (recorded[k], found[k]) for k in SET_FIELDS
               if recorded.get(k) is not None and found.get(k) is not None and recorded[k] != found[k]}
    if differs:
        detail = ", ".join(f"{k} {was!r} vs {now!r}" for k, (was, now) in differs.items())
        raise ValueError(
            f"{what} is another set than {recorded.get('name') or 'the dataset'} recorded ({detail}; recorded vs "
            f"found): two collections of one protocol make different sets. {remedy}")
