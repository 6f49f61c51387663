"""Distributed env workers: TorchRL's ``DistributedCollector`` over torch.distributed (gloo).

What is tested: ONE machine. The learner (this pytest process) and 2 worker processes talk
over localhost TCP with the gloo backend,

* with workers started by the learner (TorchRL's ``"mp"`` launcher), and
* with workers started as separate commands (``scripts/distributed_collection.py worker``,
  the ``"submitit_delayed"`` path one uses with srun / ssh on other machines),

checking that batches have a fixed ``[workers x envs, steps]`` layout, are contiguous per env
and assemble into complete episodes, that every batch is collected with the weights and ε
the learner had when it asked for it, and that the workers exit cleanly.

What is NOT tested: several machines, real network interfaces or firewalls, SLURM /
submitit (not installed), GPUs / NCCL, learner DDP combined with distributed workers.
"""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ovmse.collection import EpisodeReplayBuffer
from ovmse.envs import get_map
from ovmse.nets import RNNAgent, agent_inputs
from ovmse.collection.distributed import DistributedEnvWorkers

pytestmark = pytest.mark.slow  # spawns train.py / notebook / worker processes (pytest -m 'not slow' skips)

ROOT = Path(__file__).resolve().parents[2]
W, ENVS, STEPS = 2, 4, 16


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agent() -> RNNAgent:
    torch.manual_seed(0)
    spec = get_map("3m")
    return RNNAgent(spec.obs_dim + spec.n_actions + spec.n_agents, spec.n_actions, 64)


def _q_error(agent: RNNAgent, batch) -> float:
    """Largest gap between the Q-values the workers computed and the learner agent's now."""
    with torch.no_grad():
        q, _ = agent(agent_inputs(batch.get(("agents", "observation")), batch.get(("agents", "last_action")),
                                  agent.n_actions), batch.get(("agents", "hidden")))
    return (q - batch.get(("agents", "action_value"))).abs().max().item()


def _exercise(workers: DistributedEnvWorkers, agent: RNNAgent, n_batches: int) -> None:
    previous, episodes = None, []
    for i in range(n_batches):
        epsilon = 1.0 if i % 2 == 0 else 0.0
        workers.set_epsilon(epsilon)
        if i:  # a "learner update" between batches: the next batch must use the new weights
            with torch.no_grad():
                for p in agent.parameters():
                    p.add_(0.05 * torch.randn_like(p))
        batch = workers.next_batch()
        assert tuple(batch.batch_size) == (W * ENVS, STEPS)
        assert _q_error(agent, batch) < 1e-5, "workers did not act with the learner's current weights"
        explored = batch.get(("agents", "explored")).float().mean().item()
        assert explored == 0.0 if epsilon == 0.0 else explored > 0.5, (epsilon, explored)
        if previous is not None:  # contiguous per env index: a batch continues where the last one stopped
            running = ~previous.get(("next", "done"))[:, -1, 0]
            assert torch.equal(batch.get(("agents", "observation"))[running, 0],
                               previous.get(("next", "agents", "observation"))[running, -1])
        out = workers.episodes(batch)
        if out is not None:
            episodes.append(out)
        previous = batch.clone()
    assert episodes, "no complete episode"
    eps = torch.cat(episodes, 0)
    limit = get_map("3m").episode_limit
    assert tuple(eps.batch_size[1:]) == (limit + 1,)
    lengths = eps.get("filled").squeeze(-1).sum(-1) - 1
    assert bool((lengths >= 1).all()) and bool((lengths <= limit).all())
    last = (lengths - 1).clamp(min=0)
    rows = torch.arange(eps.shape[0])
    ended = eps.get("terminated")[rows, last, 0] | eps.get("truncated")[rows, last, 0]
    assert bool(ended.all())


def test_mp_launcher_on_localhost():
    agent = _agent()
    replay = EpisodeReplayBuffer(capacity=64)
    workers = DistributedEnvWorkers(agent, "3m", num_workers=W, envs_per_worker=ENVS, steps_per_env=STEPS,
                                    replay=replay, epsilon=1.0, seed=0, launcher="mp", tcp_port=_free_port())
    try:
        _exercise(workers, agent, n_batches=4)
        stats = workers.collect(env_steps=0)  # the OnlineCollection-style entry point
        assert stats["env_steps"] == W * ENVS * STEPS
        assert len(replay) == stats["episodes"]
        # The two workers run different battles (own seeds and ε generators).
        actions = workers.next_batch().get(("agents", "action"))
        assert not torch.equal(actions[:ENVS], actions[ENVS:])
    finally:
        workers.close()
    assert [job.exitcode for job in workers.collector.jobs] == [0] * W


def test_workers_started_by_hand_on_localhost():
    port = _free_port()
    procs = [
        subprocess.Popen([sys.executable, "scripts/distributed_collection.py", "worker", "--rank", str(rank),
                          "--world-size", str(W + 1), "--master-addr", "127.0.0.1", "--master-port", str(port)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(1, W + 1)
    ]
    try:
        agent = _agent()
        workers = DistributedEnvWorkers(agent, "3m", num_workers=W, envs_per_worker=ENVS, steps_per_env=STEPS,
                                        epsilon=1.0, seed=0, launcher="submitit_delayed", tcp_port=port)
        try:
            _exercise(workers, agent, n_batches=3)
        finally:
            workers.close()
        for proc in procs:
            out, _ = proc.communicate(timeout=120)  # a loaded 2-core machine is slow to tear down
            assert proc.returncode == 0, out[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def test_online_phase_with_distributed_env_workers(tmp_path, run_train):
    """train.py selects the torch.distributed env workers from the config (one machine, 2
    workers started by the learner, localhost TCP): a tiny online run completes."""
    import json

    # debug=tiny (configs/debug/tiny/online.yaml) with 512 env steps, 128 per update in calls of 32 steps per battle.
    proc = run_train("phase=online", "env=3m", "debug=tiny", "env_steps=512", "algo.steps_per_env=32",
                     "algo.env_steps_per_update=128", "algo.target_update_interval=8", "eval.interval_env_steps=512",
                     "log_every_env_steps=128", "collector.num_workers=2", "collector.distributed.enabled=true",
                     f"hydra.run.dir={tmp_path}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "online_summary.json").read_text())
    assert summary["env_steps"] >= 512 and summary["updates"] >= 1
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_distributed_env_workers_refuse_ddp(tmp_path, run_train):
    proc = run_train("phase=online", "env=3m", "trainer=ddp", "collector.num_workers=2",
                     "collector.distributed.enabled=true", f"hydra.run.dir={tmp_path}", timeout=300)
    assert proc.returncode != 0 and "cannot be combined with trainer=ddp" in proc.stderr
