"""Entry point: ``python train.py phase=<phase> env=<map> [key=value ...]``.

Hydra composes ``configs/train.yaml`` with one option from each config group
(``phase``, ``env``, ``paths``), creates the run directory
``outputs/<phase>/runs/<map>_<algo>[_<dataset>]_s<seed>_<date>_<time>_<pid>/`` (the composed config in ``.hydra/``, the
values used in ``config_resolved.yaml``)
and hands the config to the phase registered under its name
(:mod:`ovmse.phases`). Examples::

    python train.py phase=rollout env=2s3z
    python train.py phase=rollout env=MMM policy=scripted n_battles=512
    python train.py --cfg job            # print the composed config
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# This checkout's code, whatever copy of the package is installed: train.py in a git worktree
# (a sweep's pinned commit) runs that worktree's src/ and data_modules/, the code its runs record.
sys.path[:0] = [str(Path(__file__).resolve().parent / "src"), str(Path(__file__).resolve().parent)]

import hydra
from omegaconf import DictConfig, OmegaConf

# configs/paths/default.yaml roots every output at the directory of this file.
os.environ.setdefault("OVMSE_ROOT", str(Path(__file__).resolve().parent))


def _run_dir(resume, default: str) -> str:
    """``hydra.run.dir``: the resumed run's own directory with ``resume=...``, else ``default``.
    A ``resume`` that does not exist is refused here, before Hydra would create it."""
    if not resume:
        return default
    path = Path(str(resume))
    if not path.exists():  # resume= set in a config file; the command line is checked before Hydra
        raise ValueError(_missing_resume(str(resume)))
    return str(path.parents[1] if path.is_file() else path)


def _missing_resume(value: str) -> str:
    return f"resume={value!r}: no such run directory or checkpoint"


def _hydra_subdir(resume, now: str) -> str:
    """``hydra.output_subdir``: ``.hydra`` for a new run, ``.hydra-resume/<time>`` for a resume
    (which must not overwrite the run's own record, least of all when it is refused)."""
    return ".hydra" if not resume else f".hydra-resume/{now}"


def _run_name(task, map_name, algo, dataset, seed, policy=None) -> str:
    """What a run is, for its directory name: ``<map>_<algo>[_<dataset>]_s<seed>`` (the dataset of
    an offline run; a fine-tuning run's is its checkpoint's; a rollout names its policy)."""
    parts = [str(map_name or ""), str((policy if task == "rollout" else algo) or "")]
    if task == "offline" and dataset:
        parts.append(Path(str(dataset)).name)
    parts.append(f"s{seed}")
    return "_".join(p for p in parts if p)


OmegaConf.register_new_resolver("run_dir", _run_dir, replace=True)
OmegaConf.register_new_resolver("run_name", _run_name, replace=True)
OmegaConf.register_new_resolver("pid", os.getpid, replace=True)
OmegaConf.register_new_resolver("hydra_subdir", _hydra_subdir, replace=True)


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from ovmse.phases import run_phase

    # Hydra keeps the config as composed (with ${...}) in .hydra/config.yaml;
    # save the values this run actually used next to it.
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from ovmse.datasets import DatasetError
    from ovmse.sweeps import StageError
    from ovmse.sweeps.locks import StageLock
    from ovmse.training.checkpointing import NonFiniteWeightsError
    from ovmse.training.guards import NonFiniteLossError

    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # One run per directory at a time: a second one (same hydra.run.dir, or resume= of a run
    # that is still going) would mix its files into the first's. A killed holder's lock is stale.
    # DDP ranks > 0 are relaunched into the same directory by Lightning: rank 0 holds it for all.
    rank = max(int(os.environ.get(k, 0) or 0) for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))
    lock = StageLock(out / ".run.lock")
    if rank == 0 and not lock.try_acquire():
        print(f"error: the run directory {out} is in use by another run ({lock.holder()}, host and pid): wait for it "
              "to end, or pass another hydra.run.dir", file=sys.stderr)
        sys.exit(2)
    try:
        if not cfg.get("resume"):  # a resume's config is written once it is accepted (phases/online.py)
            (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        run_phase(cfg)
    except (ValueError, OSError, DatasetError, NonFiniteLossError, NonFiniteWeightsError, StageError) as err:
        # Bad input (config, checkpoint, dataset, paths), a full disk and diverged training: one clear
        # paragraph and a non-zero exit; OVMSE_TRACEBACK=1 shows where it came from.
        if os.environ.get("OVMSE_TRACEBACK"):
            raise
        print(f"error: {err}", file=sys.stderr)
        if not cfg.get("resume") and rank == 0:
            lock.release()
            _remove_if_only_records(out, Path(cfg.paths.log_dir))
        sys.exit(2)
    except SIGTERMException:
        # Lightning stops training at a SIGTERM by raising a SystemExit without a code: exit 0,
        # which a sweep would take for a finished run. Say so and exit as a killed process does.
        print(f"error: stopped by SIGTERM before the run finished ({out}); an online run continues with "
              f"resume={out}, other phases start again", file=sys.stderr)
        sys.exit(128 + 15)
    finally:
        lock.release()


# What Hydra and main() write before a phase starts; a directory holding nothing else is no run.
RECORDS = {".hydra", "config_resolved.yaml", "train.log", ".run.lock"}


def _remove_if_only_records(out: Path, log_dir: Path) -> None:
    """A run refused for bad input leaves no directory behind when it wrote nothing of its own,
    nor the folders Hydra made for it (``outputs/<phase>/runs/``) when they hold nothing else;
    nothing above ``log_dir`` is touched."""
    if not (out.is_dir() and {p.name for p in out.iterdir()} <= RECORDS):
        return
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    log_dir = log_dir.resolve()
    for parent in out.resolve().parents:
        if parent == log_dir or log_dir not in parent.parents:
            break
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break


def _run_dir_problem(value: str, resuming: bool) -> str | None:
    """Why ``hydra.run.dir=value`` cannot take a new run (None: it can), found before Hydra
    writes its record there: a live run holds it, or it holds a run already (which Hydra's
    record of the new one would replace, and whose checkpoints, replay chunks and metrics the
    new one would mix with its own), or it cannot be created."""
    from ovmse.sweeps.locks import lock_is_stale

    lock = Path(value) / ".run.lock"
    holder = lock.read_text().strip() if lock.is_file() else ""
    if holder and not lock_is_stale(holder):
        return (f"the run directory {value} is in use by another run ({holder}, host and pid): wait for it to end, "
                "or pass another hydra.run.dir")
    record = next((p for p in (Path(value) / ".hydra" / "config.yaml", Path(value) / "config_resolved.yaml")
                   if p.is_file()), None)
    if record is not None and not resuming:
        return (f"hydra.run.dir={value!r} holds a run already ({record.relative_to(value)}): continue an online run "
                f"with resume={value}, or pass a new directory (move the old one away to start it again)")
    try:
        Path(value).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"hydra.run.dir={value!r} cannot be created ({err.strerror}); pass a run directory you can write to"
    return None


def _given_values(argv: list[str]) -> dict[str, str]:
    """``key -> value`` of the command line's plain overrides as Hydra reads them: quotes
    removed (a sweep's variant directories hold ``=`` and ``,``, so the pipeline passes their
    paths quoted), ``+``/``++`` dropped, null as ``""``. Sweeps (``a,b`` under ``-m``) and
    overrides Hydra's grammar refuses are left out: Hydra reports those itself."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    given: dict[str, str] = {}
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            (override,) = parser.parse_overrides([arg])
        except Exception:  # noqa: BLE001  a grammar error: Hydra's own message names it
            continue
        if override.is_sweep_override():
            continue
        value = override.value()
        given[override.key_or_group] = "" if value is None else str(value)
    return given


def _check_paths_before_hydra(argv: list[str], given: dict[str, str]) -> None:
    """Hydra makes the run directory before ``main`` runs, so a bad ``resume=`` or
    ``hydra.run.dir=`` would end in its traceback (or create a directory): refuse them here,
    in one line with exit 2. ``given``: :func:`_given_values` of ``argv``."""
    resume, run_dir = given.get("resume", ""), given.get("hydra.run.dir", "")
    # DDP ranks > 0 are started by Lightning into the run directory rank 0 made.
    relaunched = any(int(os.environ.get(k, 0) or 0) > 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))
    problem = None
    if resume and not Path(resume).exists():
        problem = _missing_resume(resume)
    elif run_dir and "-m" not in argv and "--multirun" not in argv and not relaunched:
        problem = _run_dir_problem(run_dir, bool(resume))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)


def _env_from_checkpoint(argv: list[str], given: dict[str, str]) -> list[str]:
    """``phase=online ckpt=...`` without ``env=`` (or an experiment preset, which names its map)
    fine-tunes on the checkpoint's map, not train.yaml's default: ``argv`` plus ``env=<map>``.
    An ``env=`` that disagrees with the checkpoint stays an error (the online phase says so).
    ``given``: :func:`_given_values` of ``argv``."""
    ckpt = given.get("ckpt", "")
    if (given.get("phase") != "online" or not ckpt or "env" in given or "experiment" in given
            or "-m" in argv or "--multirun" in argv or not Path(ckpt).is_file()):
        return argv
    import torch

    try:
        hparams = torch.load(ckpt, map_location="cpu", weights_only=True).get("hyper_parameters") or {}
    except Exception:  # noqa: BLE001  not a checkpoint: the online phase names what is wrong with it
        return argv
    if not hparams.get("map_name"):
        return argv
    print(f"env={hparams['map_name']}: the map {ckpt} was trained on", file=sys.stderr)
    return [*argv, f"env={hparams['map_name']}"]


if __name__ == "__main__":
    given = _given_values(sys.argv[1:])  # parsed once for both checks
    _check_paths_before_hydra(sys.argv[1:], given)
    sys.argv[1:] = _env_from_checkpoint(sys.argv[1:], given)
    main()
