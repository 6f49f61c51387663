"""Greedy evaluation of a checkpoint: ``python evaluate.py ckpt=PATH episodes=640``.

Plays ``episodes`` battles on the map the checkpoint was trained on, with the
masked-greedy policy, and prints one JSON object as the last line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# This checkout's code, whatever copy of the package is installed: train.py in a git worktree
# (a sweep's pinned commit) runs that worktree's src/ and data_modules/, the code its runs record.
sys.path[:0] = [str(Path(__file__).resolve().parent / "src"), str(Path(__file__).resolve().parent)]

import hydra
import torch
from omegaconf import DictConfig


@hydra.main(config_path="configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from omegaconf import OmegaConf

    from ovmse.phases.checks import check_settings
    from ovmse.training.evaluation import GreedyEvaluator
    from ovmse.training.qmix_module import load_qmix_checkpoint
    from ovmse.training.threads import check_threads

    try:
        if OmegaConf.is_missing(cfg, "ckpt"):
            raise ValueError("pass the checkpoint to evaluate: python evaluate.py ckpt=<run dir>/checkpoints/last.ckpt")
        check_settings(cfg)  # seed, device, episodes, num_envs
        threads = check_threads(cfg.num_threads, "num_threads")
        if threads is not None:
            torch.set_num_threads(threads)
        module = load_qmix_checkpoint(str(cfg.ckpt), map_location=str(cfg.device))
    except (ValueError, OSError) as err:  # bad settings, not a checkpoint, a tampered one, a missing file
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    module.eval().to(cfg.device)
    hp = module.hparams
    from ovmse.phases.fine_tuning import check_offline_run_finished

    try:
        check_offline_run_finished(module, str(cfg.ckpt))
        finished = True
    except ValueError:  # an evaluation snapshot of a killed offline run: not the policy the run would end with
        finished = False
        record = module.offline_run or {}
        print(f"note: {cfg.ckpt} is from an offline run that did not finish ({record.get('updates', module.updates)} "
              f"of {record.get('planned_updates', '?')} updates)", file=sys.stderr)
    num_envs = min(int(cfg.num_envs), int(cfg.episodes))
    evaluator = GreedyEvaluator(module.agent, hp.map_name, num_envs, seed=int(cfg.seed), device=cfg.device)
    stats = evaluator.run(int(cfg.episodes))
    result = {
        "map": hp.map_name,
        "ckpt": str(cfg.ckpt),
        "env_steps_trained": module.env_steps,
        "offline_run_finished": finished,
        "episodes": stats.battles,
        "win_rate": stats.win_rate,
        "return_mean": stats.mean_return,
        "return_std": stats.std_return,
        "episode_length_mean": stats.mean_length,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
