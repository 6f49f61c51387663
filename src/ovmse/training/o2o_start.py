"""An online-trained QMIX checkpoint as the start of offline-to-online fine-tuning.

The diagnosis of issue 17 fine-tunes a policy that QMIX learnt online (past its early dip,
win rate ≥ 0.9) with each O2O method: if the methods unlearn it too, the cause is in the
online phase, not in the offline pretraining. ``o2o_start_checkpoint(src, dst, dataset)``
writes a copy of ``src`` that ``phase=online ckpt=<dst> algo=<any O2O algorithm>`` takes
as it takes the offline phase's ``last.ckpt``:

- the target networks and Q_tot-offline (``frozen_agent`` / ``frozen_mixer``) are the
  checkpoint's agent and mixer, the policy that was evaluated: the offline phase likewise
  refreshes its target once more at the end before freezing it;
- the CQL loss the O2O algorithms keep online (``cql``, ``cql_alpha``: MACQL with α 0.05, the
  paper's 2s3z setting, unless told otherwise); it has no parameters of its own;
- the identity of ``dataset``, which the online phase mixes into batches and whose task
  table (map + quality) sets the per-algorithm values;
- the Adam state and the counters, as they are (the switch online keeps the counters as
  ``offline_progress`` and restarts them at 0).

    python -m ovmse.training.o2o_start <qmix run>/checkpoints/best.ckpt <out>.ckpt --dataset data/2s3z/medium

An offline run's ``best.ckpt`` (its best greedy evaluation, saved without a frozen target) is
made a start the same way, if that run finished (the ``last.ckpt`` beside it says so): the
early-stopped start of issue 17's stalled-start diagnosis. Its ``offline_run`` record then reads
finished, with ``snapshot_of_finished_run`` and the update it was taken at.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

import torch

from ovmse.datasets import load_dataset
from ovmse.losses.objective import CQLSettings, ObjectiveSettings
from ovmse.training.checkpoint_compat import upgrade_checkpoint
from ovmse.training.checkpointing import finished_run_beside

# (prefix in the new state dict, prefix it is copied from)
_COPIES = (("objective.td.target_agent.", "agent."), ("objective.td.target_mixer.", "mixer."),
           ("objective.frozen_agent.", "agent."), ("objective.frozen_mixer.", "mixer."), ("objective.cql.mixer.", "mixer."))


def o2o_start_checkpoint(src: str | Path, dst: str | Path, dataset: str | Path, *, cql: str = "macql",
                         cql_alpha: float = 0.05, cql_samples: int = 100, cql_sampling: str = "available") -> Path:
    """Write ``dst``: the QMIX checkpoint ``src`` with a frozen offline target, a CQL loss and
    the identity of ``dataset`` (a dataset directory of the checkpoint's map). Returns ``dst``."""
    src, dst = Path(src), Path(dst)
    raw = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(raw, dict) or "state_dict" not in raw or "hyper_parameters" not in raw:
        raise ValueError(f"{src}: not a QMIX checkpoint (expected 'state_dict' and 'hyper_parameters' entries)")
    upgrade_checkpoint(raw)
    hparams = dict(raw["hyper_parameters"])
    objective = ObjectiveSettings.from_dict(hparams["objective"])
    if objective.keeps_offline_target:
        raise ValueError(f"{src} already holds a frozen offline target (an offline run's last.ckpt or a fine-tuning "
                         "run): fine-tune it directly")
    if cql != "macql":
        # CFCQL needs a behaviour-cloning network trained on the dataset, which an online run does not have.
        raise ValueError(f"cql={cql!r}: only macql can be added to an online-trained checkpoint")
    record = raw.get("offline_run")
    if record is not None and not record.get("finished"):
        # An offline run's snapshot (its best.ckpt): a start only if that run finished; the
        # start says where in it the snapshot was taken.
        if not finished_run_beside(src):
            raise ValueError(f"{src}: a snapshot of an offline run that did not finish ({record.get('updates')} of "
                             f"{record.get('planned_updates')} updates; no finished last.ckpt beside it): finish the "
                             "run first")
        raw["offline_run"] = {**record, "finished": True, "snapshot_of_finished_run": True}
    data = load_dataset(dataset, map_name=hparams.get("map_name"), validate="structure")
    state = dict(raw["state_dict"])
    for new, old in _COPIES:
        copied = {new + k[len(old):]: v.clone() for k, v in state.items() if k.startswith(old)}
        if not copied:
            raise ValueError(f"{src}: the state dict has no {old}* entries; is it a QMixModule checkpoint?")
        state.update(copied)
    objective = replace(objective, cql=CQLSettings(variant=cql, alpha=float(cql_alpha), samples=int(cql_samples),
                                                   sampling=cql_sampling), keeps_offline_target=True)
    hparams.update(objective=objective.to_dict(), dataset=data.identity())
    raw["state_dict"], raw["hyper_parameters"] = state, hparams
    raw["o2o_start_from"] = {"checkpoint": str(src.resolve()), "progress": dict(raw.get("progress") or {})}
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.partial-{os.getpid()}")
    torch.save(raw, tmp)
    os.replace(tmp, dst)
    return dst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="an online QMIX checkpoint (e.g. <run>/checkpoints/best.ckpt)")
    parser.add_argument("dst", help="the checkpoint to write")
    parser.add_argument("--dataset", required=True, help="dataset directory of the map (mixed into online batches)")
    parser.add_argument("--cql-alpha", type=float, default=0.05)
    parser.add_argument("--cql-samples", type=int, default=100)
    args = parser.parse_args(argv)
    out = o2o_start_checkpoint(args.src, args.dst, args.dataset, cql_alpha=args.cql_alpha, cql_samples=args.cql_samples)
    print(f"wrote {out}: fine-tune it with python train.py phase=online ckpt={out} algo=<ovmse|macql|...>")


if __name__ == "__main__":
    main()
