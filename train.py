"""Entry point: ``python train.py phase=<phase> env=<map> [key=value ...]``.

Hydra composes ``configs/train.yaml`` with one option from each config group
(``phase``, ``env``, ``paths``), creates the run directory
``outputs/<phase>/runs/<date>_<time>/`` (the composed config in ``.hydra/``, the
values used in ``config_resolved.yaml``)
and hands the config to the phase registered under its name
(:mod:`ovmse.phases`). Examples::

    python train.py phase=rollout env=2s3z
    python train.py phase=rollout env=MMM policy=scripted n_battles=512
    python train.py --cfg job            # print the composed config
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

# configs/paths/default.yaml roots every output at the directory of this file.
os.environ.setdefault("OVMSE_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from ovmse.phases import run_phase

    # Hydra keeps the config as composed (with ${...}) in .hydra/config.yaml;
    # save the values this run actually used next to it.
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    run_phase(cfg)


if __name__ == "__main__":
    main()
