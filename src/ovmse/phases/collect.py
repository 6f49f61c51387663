"""Phase "collect": generate offline datasets (paper Appendix B).

``python train.py phase=collect env=2s3z`` trains QMIX from scratch (the online phase's
machinery) until ``level.consecutive`` greedy evaluations in a row (each of at least
``level.min_eval_episodes`` battles) lie in ``medium.win_rate``; it then saves
``checkpoints/medium.ckpt`` and writes

* ``medium``: ``episodes`` battles of that policy acting greedily;
* ``medium_replay``: the run's replay buffer at that moment, oldest episode first;

and, when ``expert`` / ``mixed`` are among ``qualities``, trains on until
``expert.win_rate`` for ``expert`` (greedy episodes of that policy) and ``mixed`` (a seeded
random half of the medium episodes followed by a random half of the expert ones).
Each dataset's ``dataset.json`` records the behaviour policy (how it was chosen, its
evaluation win rate, env steps trained, and ``evaluations``: every greedy evaluation of
the collecting run), the resolved config and the code version.

A rerun after a kill keeps the qualities already written and makes only the missing ones
(:func:`rerun_plan`): ``mixed`` from the datasets on disk, ``medium`` from the checkpoint
that made ``medium_replay``, ``expert`` by training again. ``medium_replay`` is the buffer of
the run that made ``medium`` and is never remade apart from it. ``overwrite=true`` remakes all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ovmse.datasets import QUALITIES, EpisodeDatasetWriter, dataset_dir, load_dataset
from ovmse.datasets.format import METADATA_FILE
from ovmse.datasets.inspection import format_table8, table8_row
from ovmse.datasets.recording import record_episodes
from ovmse.datasets.writer import check_writable_dir
from ovmse.envs import get_map
from ovmse.training.checkpointing import atomic_save_checkpoint
from ovmse.training.qmix_module import load_qmix_checkpoint
from ovmse.training.ddp import is_ddp
from ovmse.training.milestones import WinRateMilestone, WinRateMilestoneCallback

from .common import env_options, resolve_device, trainer_settings, write_json
from .online import build_online_run

CHUNK = 500


def _qualities(cfg: DictConfig) -> list[str]:
    qualities = list(cfg.qualities)
    unknown = [q for q in qualities if q not in QUALITIES]
    if unknown or not qualities:
        raise ValueError(f"qualities={qualities}: choose from {', '.join(QUALITIES)}")
    if "mixed" in qualities and not {"medium", "expert"} <= set(qualities):
        raise ValueError("qualities: 'mixed' is made of the medium and expert datasets; list both too")
    return qualities


# medium_replay's behaviour keys that describe the buffer, not the policy.
REPLAY_ONLY_KEYS = ("policy", "buffer_size", "episodes_collected", "checkpoint")


def rerun_plan(targets: dict[str, Path], overwrite: bool) -> tuple[dict[str, Path], Path | None, set[str]]:
    """What a run must make when some of its datasets exist: ``(kept, medium_checkpoint,
    levels)``. ``kept`` are the finished datasets it keeps (none with ``overwrite``);
    ``medium_checkpoint`` is the policy to record a missing ``medium`` from when its
    ``medium_replay`` is kept; ``levels`` are the levels it must train to ("medium", "expert").
    Refuses when every dataset exists, or when a missing one cannot be made to match the kept.

    A dataset directory exists only once complete (the writer renames it into place), so a
    kill leaves the datasets written before it and no half of one."""
    qualities = set(targets)
    kept = {} if overwrite else {q: p for q, p in targets.items() if p.exists()}
    if kept and set(kept) == qualities:
        raise FileExistsError(f"datasets already exist: {', '.join(str(p) for p in kept.values())}; pass "
                              "overwrite=true to replace them or data_root=... to write elsewhere")
    for quality, path in kept.items():
        try:
            load_dataset(path, validate="structure", in_memory=False)
        except Exception as err:  # noqa: BLE001 - whatever is wrong, the user decides what to do with it
            raise ValueError(f"{path}: kept as {quality}, but it does not load ({err}); move it away, or pass "
                             "overwrite=true to remake every quality") from None
    missing = qualities - set(kept)
    medium_checkpoint = None
    if "medium_replay" in missing and "medium" in kept:
        raise FileExistsError(
            f"{targets['medium_replay']} is missing but {kept['medium']} exists: medium_replay is the replay buffer "
            "of the run that made medium, and cannot be remade apart from it; pass overwrite=true to recollect both, "
            "or leave medium_replay out of qualities")
    if "medium" in missing and "medium_replay" in kept:
        behaviour = load_dataset(kept["medium_replay"], validate="structure", in_memory=False).metadata.get(
            "behaviour", {})
        medium_checkpoint = Path(str(behaviour.get("checkpoint", "")))
        if not behaviour.get("checkpoint") or not medium_checkpoint.is_file():
            raise FileNotFoundError(
                f"{targets['medium']} is missing: it must be recorded by the policy that made {kept['medium_replay']}, "
                f"whose checkpoint ({behaviour.get('checkpoint') or 'not named in its dataset.json'}) is gone; pass "
                "overwrite=true to recollect both")
    levels = set()
    if "medium_replay" in missing:
        levels.add("medium")
    if "expert" in missing:
        levels.add("expert")
    return kept, medium_checkpoint, levels


def _band(cfg_band, name: str) -> tuple[float, float]:
    band = list(cfg_band)
    if len(band) != 2:
        raise ValueError(f"{name}.win_rate must be [low, high], got {band}")
    return float(band[0]), float(band[1])


def run(cfg: DictConfig) -> dict:
    if cfg.get("ckpt"):
        raise ValueError(f"ckpt={cfg.ckpt!r}: phase=collect trains its behaviour policy from scratch; leave ckpt unset")
    if is_ddp(trainer_settings(cfg.trainer)):
        raise ValueError("phase=collect writes datasets from one process; use trainer=default (trainer=ddp is for "
                         "phase=online)")
    spec = get_map(cfg.env.map_name)
    qualities = _qualities(cfg)
    n = int(cfg.episodes)
    if n < 1:
        raise ValueError(f"episodes must be >= 1, got {n}")
    check_writable_dir(cfg.data_root)
    targets = {q: dataset_dir(cfg.data_root, spec.name, q) for q in qualities}
    kept, medium_checkpoint, levels = rerun_plan(targets, bool(cfg.overwrite))
    for quality, path in kept.items():
        print(f"collect: kept {path} (written before; only the missing qualities are made)")
    out = Path(cfg.paths.output_dir)
    generator = OmegaConf.to_container(cfg, resolve=True)
    device = resolve_device(str(cfg.device))
    written: dict[str, Path] = dict(kept)
    trained_here: list[Path] = []  # datasets of this run's policies: they get its evaluations

    def write(quality: str, count: int, fill, behaviour: dict, trained: bool = True) -> None:
        with EpisodeDatasetWriter(targets[quality], spec, count, quality=quality, overwrite=bool(cfg.overwrite)) as w:
            fill(w)
            written[quality] = w.close(behaviour=behaviour, generator=generator)
        if trained:
            trained_here.append(written[quality])
        print(f"collect: wrote {written[quality]} ({count} episodes)")

    def record_greedy(module, seed_offset: int):
        def fill(w: EpisodeDatasetWriter) -> None:
            record_episodes(w, module.agent, num_envs=int(cfg.record.num_envs), seed=int(cfg.seed) + seed_offset,
                            device=device, env_options=env_options(cfg.env))
        return fill

    if medium_checkpoint is not None:  # medium_replay is kept: record medium from its policy
        replay_behaviour = load_dataset(kept["medium_replay"], validate="structure", in_memory=False).metadata[
            "behaviour"]
        module = load_qmix_checkpoint(str(medium_checkpoint), map_location=str(device))
        write("medium", n, record_greedy(module, 20_000),
              {"policy": "QMIX trained from scratch to the medium level, acting greedily",
               "checkpoint": str(medium_checkpoint), "recorded_after": f"a rerun beside the kept {kept['medium_replay']}",
               **{k: v for k, v in replay_behaviour.items() if k not in REPLAY_ONLY_KEYS}}, trained=False)

    def policy_info(level: str, info: dict, ckpt: Path) -> dict:
        return {"policy": f"QMIX trained from scratch to the {level} level, acting greedily",
                "checkpoint": str(ckpt), **_behaviour(info)}

    def reached(level: str, trainer, module, info: dict) -> Path:
        """Checkpoint the policy of a level and say so; returns the checkpoint path."""
        ckpt = out / "checkpoints" / f"{level}.ckpt"
        atomic_save_checkpoint(trainer, ckpt)
        print(f"collect: {level} level at {module.env_steps} env steps "
              f"(greedy win rate {info.get('eval/win_rate', float('nan')):.3f} over {int(info.get('eval/episodes', 0))} "
              f"battles, reason: {info['reason']})")
        return ckpt

    def at_medium(trainer, module, info: dict) -> None:
        ckpt = reached("medium", trainer, module, info)
        if "medium_replay" in qualities and "medium_replay" not in kept:
            replay = run_parts.replay
            order = replay.oldest_first_indices()

            def fill(w: EpisodeDatasetWriter) -> None:
                for start in range(0, len(order), CHUNK):
                    w.append(replay.get(order[start : start + CHUNK]))

            behaviour = {"policy": "replay buffer of the QMIX run (epsilon-greedy exploration) when it reached "
                                   "the medium level", "buffer_size": replay.capacity,
                         "episodes_collected": replay.episodes_added, "checkpoint": str(ckpt), **_behaviour(info)}
            write("medium_replay", len(replay), fill, behaviour)
        if "medium" in qualities and "medium" not in written:
            write("medium", n, record_greedy(module, 20_000), policy_info("medium", info, ckpt))

    def write_mixed() -> None:
        write("mixed", n, _mixed_fill(written["medium"], written["expert"], n, int(cfg.seed)),
              {"policy": f"{n // 2} episodes of {written['medium']} and {n - n // 2} of {written['expert']}, "
                         "drawn at random without replacement"},
              trained=written["medium"] in trained_here and written["expert"] in trained_here)

    def at_expert(trainer, module, info: dict) -> None:
        ckpt = reached("expert", trainer, module, info)
        write("expert", n, record_greedy(module, 30_000), policy_info("expert", info, ckpt))
        if "mixed" in qualities and "mixed" not in kept:
            write_mixed()

    # A kept medium (or medium_replay) needs no medium level: train only to what is missing.
    if "medium" in qualities and "medium" not in written and "medium_replay" not in qualities:
        levels.add("medium")
    milestones = []
    if "medium" in levels:
        milestones.append(WinRateMilestone("medium", *_band(cfg.medium.win_rate, "medium"), at_medium))
    if "expert" in levels:
        milestones.append(WinRateMilestone("expert", *_band(cfg.expert.win_rate, "expert"), at_expert))
    history, done, env_steps = [], {}, 0
    if milestones:
        milestone_cb = WinRateMilestoneCallback(milestones, consecutive=int(cfg.level.consecutive),
                                                min_episodes=int(cfg.level.min_eval_episodes))
        run_parts = build_online_run(cfg, extra_callbacks=[milestone_cb], resumable=False)
        run_parts.trainer.fit(run_parts.module, datamodule=run_parts.data)
        history, done, env_steps = milestone_cb.history, milestone_cb.done, run_parts.module.env_steps
    elif "mixed" in qualities and "mixed" not in written:  # medium and expert are on disk
        write_mixed()
    for path in trained_here:  # the evaluations after a level was taken, too
        _set_evaluations(path, history)

    rows = [table8_row(load_dataset(written[q], map_name=spec.name, validate="full", in_memory=False))
            for q in qualities]
    print(format_table8(rows))
    summary = {"datasets": {q: str(p) for q, p in written.items()}, "kept": {q: str(p) for q, p in kept.items()},
               "levels": done, "table8": rows, "env_steps": env_steps, "evaluations": history}
    write_json(out / "collect_summary.json", summary)
    return {f"dataset/{r['dataset']}/return_mean": r["return_mean"] for r in rows}


def _behaviour(info: dict) -> dict:
    """A milestone's info as dataset.json's ``behaviour``: ``taken_at_env_steps`` is the step
    of the evaluation that completed the level; ``evaluations`` every evaluation so far."""
    rest = {k: v for k, v in info.items() if k != "history"}
    return {**rest, "taken_at_env_steps": info["env_steps"], "evaluations": info["history"]}


def _set_evaluations(path: Path, history: list[dict]) -> None:
    """Replace ``behaviour.evaluations`` in a written dataset's dataset.json by the whole run's
    history (atomic: written beside it, then renamed over it)."""
    meta_path = Path(path) / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    meta.setdefault("behaviour", {})["evaluations"] = history
    tmp = meta_path.with_name(f"{METADATA_FILE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    os.replace(tmp, meta_path)


def _mixed_fill(medium: Path, expert: Path, n: int, seed: int):
    def fill(w: EpisodeDatasetWriter) -> None:
        g = torch.Generator().manual_seed(seed + 40_000)
        for path, count in ((medium, n // 2), (expert, n - n // 2)):
            source = load_dataset(path, validate="structure", in_memory=False)
            if len(source) < count:
                raise ValueError(f"mixed: {path} holds {len(source)} episodes, needs {count}")
            pick = torch.randperm(len(source), generator=g)[:count].sort().values
            for start in range(0, count, CHUNK):
                w.append(source.episodes[pick[start : start + CHUNK]])
    return fill
