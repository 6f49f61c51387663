"""``resume=<run dir>``: continue a killed online run from its last resume point.

The command is the run's own command plus ``resume=<run dir>`` (or the path of its
``checkpoints/last.ckpt``, Lightning's ``ckpt_path`` convention); the run directory is reused
(``hydra.run.dir`` follows ``resume``, see ``train.py``). Only settings that do not change what
is being trained may differ from the stored config: the budget ``env_steps`` (to extend a run),
device and threads, logging, evaluation and checkpoint frequency, and for a fine-tuning run
``algo.offline`` (read by the offline phase only; the run's objective is in its checkpoint).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Top-level keys a resumed run may change; everything else must equal the stored config.
CHANGEABLE = ("env_steps", "device", "num_threads", "collect_threads", "malloc_keep_freed", "resume", "paths", "trainer",
              "logger", "checkpoint", "log_every_env_steps", "eval", "final_eval", "hydra")
# Read by the offline phase only: a fine-tuning run's objective (CQL variant, CFCQL's behaviour
# net) comes from its checkpoint (phases/objective.online_objective), so these neither change
# what a resumed run trains nor may a key added to them later (algo.offline.behaviour_training,
# sixth session) stop runs made before it from resuming.
OFFLINE_ONLY = ("algo.offline.",)


def resume_checkpoint(cfg: DictConfig) -> Path | None:
    """The ``last.ckpt`` that ``cfg.resume`` names (a run directory or the file), or None."""
    resume = cfg.get("resume")
    if not resume:
        return None
    from ovmse.training.ddp import is_ddp

    from .common import trainer_settings

    dist = (cfg.get("collector") or {}).get("distributed") or {}
    if is_ddp(trainer_settings(cfg.get("trainer"))) or dist.get("enabled", False):
        raise ValueError("resume= continues single-process runs; a trainer=ddp run or distributed env workers keep "
                         "one replay buffer per process, which resume does not restore")
    path = Path(str(resume))
    if path.is_file() and path.name != "last.ckpt":
        raise ValueError(f"resume={str(resume)!r}: resume takes a run directory or its checkpoints/last.ckpt (the "
                         f"resume point); {path.name} is not one (fine-tune from it with ckpt= instead)")
    ckpt = path if path.is_file() else path / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        if not path.exists():
            raise FileNotFoundError(f"resume={str(resume)!r}: no such run directory or checkpoint")
        raise FileNotFoundError(
            f"resume={str(resume)!r}: {ckpt} does not exist; the run was stopped before its first resume point "
            "(written every checkpoint.every_env_steps env steps and after every evaluation): start it again "
            "without resume")
    check_resume_point(ckpt)
    return ckpt


def check_resume_point(ckpt: Path) -> None:
    """Refuse, before anything is written, a ``last.ckpt`` that cannot be resumed: one that is no
    resume point (an offline run's, or from before resume points existed) or whose replay
    chunks are gone (``checkpoint.keep_replay=false`` deletes them when a run finishes)."""
    import torch

    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    resume = raw.get("resume") if isinstance(raw, dict) else None
    if resume is None:
        raise ValueError(f"{ckpt} is not a resume point (no replay manifest): resume= continues an online run from "
                         "its own last.ckpt; fine-tune from an offline checkpoint with ckpt= instead")
    missing = [name for name in resume["replay"]["chunks"] if not (ckpt.parent / "replay" / name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{ckpt}: {len(missing)} of the {len(resume['replay']['chunks'])} replay chunks it names are missing from "
            f"{ckpt.parent / 'replay'} (e.g. {missing[0]}); a finished run with checkpoint.keep_replay=false keeps "
            "none, so it cannot be extended; nothing in the run was changed")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def check_resume_config(stored: dict | None, cfg: DictConfig) -> None:
    """Refuse to resume with settings that differ from the run's own (listing each difference)."""
    if stored is None:
        raise ValueError("the resume checkpoint holds no run config: it was not written by phase=online")
    from ovmse.training.ddp import is_ddp

    from .common import trainer_settings

    # "trainer" may change on resume (accelerator, progress bar), but not to or from DDP: a DDP
    # run's ranks each held a replay buffer, and its resume point names rank 0's only.
    if is_ddp(trainer_settings(stored.get("trainer"))) or (
            (stored.get("collector") or {}).get("distributed") or {}).get("enabled"):
        raise ValueError("resume: this run was trained with trainer=ddp or distributed env workers, whose ranks each "
                         "held a replay buffer; resume restores single-process runs only (start it again, or "
                         "fine-tune from its checkpoint with ckpt=)")
    current = OmegaConf.to_container(cfg, resolve=True)
    fine_tunes = bool(stored.get("ckpt"))

    def compared(flat: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in flat.items() if k.split(".")[0] not in CHANGEABLE
                and not (fine_tunes and k.startswith(OFFLINE_ONLY))}

    a, b = compared(_flat(stored)), compared(_flat(current))
    diffs = [f"{k}: run {a.get(k, '<unset>')!r}, now {b.get(k, '<unset>')!r}"
             for k in sorted(set(a) | set(b)) if a.get(k, "<unset>") != b.get(k, "<unset>")]
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise ValueError(
            f"resume: the command differs from the run's own settings ({shown}). Resume with the run's "
            "command plus resume=<run dir>; only env_steps, device, threads, logging, eval and checkpoint "
            "settings may change")


def check_not_finished(module, cfg: DictConfig, run_dir: Path) -> None:
    """Refuse to resume a run that has finished (its ``online_summary.json`` written at
    ``env_steps`` or more): resuming it would make one more update and overwrite its final test."""
    reached, budget = int(module.env_steps), int(cfg.env_steps)
    if (Path(run_dir) / "online_summary.json").is_file() and reached >= budget:
        raise ValueError(f"resume={str(cfg.resume)!r}: the run is finished ({reached:,} env steps, env_steps={budget:,}) "
                         "and nothing in it was changed; pass a larger env_steps to extend it")


def set_aside_summary(module, run_dir: Path) -> Path | None:
    """A finished run being extended (resumed with a larger ``env_steps``) is unfinished again:
    its ``online_summary.json`` moves to ``online_summary.at-<env steps>.json`` (kept), so that
    a kill during the extension cannot leave the old final test looking like the new one's."""
    summary = Path(run_dir) / "online_summary.json"
    if not summary.is_file():
        return None
    kept = summary.with_name(f"online_summary.at-{int(module.env_steps)}.json")
    os.replace(summary, kept)
    print(f"extending a finished run: its summary moved to {kept.name}", flush=True)
    return kept
