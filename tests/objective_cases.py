"""The learner's objectives on a fixed batch, as checkpoints + expected losses and gradients.

``python tests/objective_cases.py`` writes ``tests/losses/objective_golden.pt`` with the code as it
is; ``tests/losses/test_objective_equality.py`` checks that the code as it is now loads those
checkpoints and computes the same losses, metrics and gradients. Written before the objective
was restructured (issue 18), so that the restructuring provably changes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "losses" / "objective_golden.pt"
EPISODES, SEED = 8, 11

# Constructor settings (tiny nets) and the online objective set by configure_fine_tuning, if any.
CASES = {
    "qmix_td": ({}, None),
    "macql_offline": ({"cql": "macql", "cql_alpha": 0.5}, None),
    "cfcql_behaviour_offline": ({"cql": "cfcql", "cql_alpha": 0.5, "cfcql_temperature": 1.0}, None),
    "ovmse_online": ({"cql": "macql", "cql_alpha": 0.05, "frozen_offline_target": True},
                     {"cql_alpha": 0.0, "ovm": True, "ovm_target": "one_step", "lambda_memory_start": 1.0,
                      "lambda_memory_end": 0.05, "lambda_memory_anneal_steps": 1000}),
    "ovm_td_lambda_macalql_online": ({"cql": "macql", "cql_alpha": 0.05, "frozen_offline_target": True},
                                     {"cql_alpha": 0.5, "cql_calibrated": True, "ovm": True,
                                      "ovm_target": "td_lambda"}),
    "macalql_cfcql_online": ({"cql": "cfcql", "cql_alpha": 0.5, "cfcql_temperature": 0.5,
                              "frozen_offline_target": True}, {"cql_alpha": 0.5, "cql_calibrated": True}),
    "switch_cql_online": ({"cql": "macql", "cql_alpha": 0.05, "frozen_offline_target": True}, {"cql_alpha": 0.0}),
}
ENV_STEPS = 400  # progress at the step (λ_memory is annealed over env steps)


def batch():
    """8 random-play 3m episodes; one made a time-limit end (bootstrapped, not terminated)."""
    sys.path.insert(0, str(HERE))
    import tempfile

    from simtools import random_dataset

    from ovmse.datasets import load_dataset, trim_to_filled

    with tempfile.TemporaryDirectory() as tmp:
        path = random_dataset(Path(tmp) / "3m" / "medium", episodes=EPISODES, seed=SEED)
        eps = load_dataset(path, map_name="3m").episodes[:].clone()
    lengths = eps["filled"].squeeze(-1).sum(1) - 1
    e = int(lengths.argmax())
    eps["terminated"][e, int(lengths[e]) - 1] = False
    eps["truncated"][e, int(lengths[e]) - 1] = True
    return trim_to_filled(eps)


def batch_digest(b) -> list[float]:
    return [float(b[k].double().sum()) for k in sorted(b.keys(include_nested=True, leaves_only=True), key=str)]


def digest(t: torch.Tensor) -> torch.Tensor:
    """sum, sum of squares and a fixed random projection: any change of a value shows."""
    t = t.detach().double().flatten()
    w = torch.randn(t.numel(), generator=torch.Generator().manual_seed(t.numel()), dtype=torch.float64)
    return torch.stack([t.sum(), t.pow(2).sum(), (t * w).sum()])


def make_module(kwargs: dict, online: dict | None):
    """The case's module; its settings are written in the flat form the module took before
    issue 18 (``cql``, ``cql_alpha``, ...), read through :func:`legacy_objective`."""
    from ovmse.envs import get_map
    from ovmse.phases.objective import online_objective
    from ovmse.training import QMixModule
    from ovmse.training.checkpoint_compat import legacy_objective

    torch.manual_seed(0)
    spec = get_map("3m")
    m = QMixModule(obs_dim=spec.obs_dim, state_dim=spec.state_dim, n_agents=spec.n_agents, n_actions=spec.n_actions,
                   map_name="3m", hidden_dim=8, mixing_embed_dim=4, hypernet_embed=8,
                   objective=legacy_objective({"cql_samples": 5, "cql_sampling": "available", **kwargs}))
    with torch.no_grad():  # distinct online, target and frozen nets: a swapped one would show
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    if online is not None:
        settings = {"cql_calibrated": False, "ovm": False, "ovm_target": "one_step", "lambda_memory_start": 1.0,
                    "lambda_memory_end": 1.0, "lambda_memory_anneal_steps": 0, **online}
        m.configure_fine_tuning(online_objective(settings, m.settings))
        m.env_steps = ENV_STEPS
    return m


def checkpoint_of(m) -> dict:
    """The module's checkpoint entries, its weights packed into one tensor (a file of hundreds
    of tiny tensors is mostly headers): :func:`unpack` gives the checkpoint back."""
    state = m.state_dict()
    ckpt = {"packed_state": torch.cat([v.detach().float().flatten() for v in state.values()]),
            "layout": [(k, list(v.shape)) for k, v in state.items()], "hyper_parameters": dict(m.hparams)}
    m.on_save_checkpoint(ckpt)
    return ckpt


def unpack(entry: dict) -> dict:
    """A checkpoint as :func:`~ovmse.training.qmix_module.load_qmix_checkpoint` reads it."""
    ckpt = {k: v for k, v in entry.items() if k not in ("packed_state", "layout")}
    state, start = {}, 0
    for key, shape in entry["layout"]:
        n = int(torch.Size(shape).numel())
        state[key] = entry["packed_state"][start:start + n].reshape(shape).clone()
        start += n
    ckpt["state_dict"] = state
    return ckpt


def step(m, b) -> dict:
    """One training step from a fixed RNG state: loss, logged metrics and gradient digests."""
    m.zero_grad()
    torch.manual_seed(5)
    loss = m.training_step(b, 0)
    loss.backward()
    return {"loss": float(loss.detach()),
            "metrics": {k: float(torch.as_tensor(v).detach()) for k, v in m.latest_train_metrics.items()},
            "grads": {n: digest(p.grad).tolist() for n, p in m.named_parameters() if p.grad is not None}}


def main() -> None:
    b = batch()
    out = {"batch_digest": batch_digest(b), "cases": {}}
    for name, (kwargs, online) in CASES.items():
        m = make_module(kwargs, online)
        out["cases"][name] = {"checkpoint": checkpoint_of(m), **step(m, b)}
    GOLDEN.parent.mkdir(exist_ok=True)
    torch.save(out, GOLDEN)
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
