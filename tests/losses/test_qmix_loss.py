"""QMixTDLoss: shapes, padding invariance, one-step targets by hand, double Q, learning, targets."""

import torch
from tensordict import TensorDict

from ovmse.losses import QMixTDLoss, q_tot_taken, target_values, transition_mask
from ovmse.losses.qmix_values import make_target, unroll_agent_q
from ovmse.nets.agent import RNNAgent, agent_inputs
from ovmse.nets.mixer import QMixer

B, T, N, A, OBS, S = 4, 6, 3, 5, 7, 9
G = 0.99
# (len, terminated at the last transition?): full non-terminal (limit at the last column),
# short terminal, full terminal, short non-terminal (limit before the last column).
EPISODES = [(6, False), (3, True), (6, True), (2, False)]


def make_nets(seed: int = 0):
    torch.manual_seed(seed)
    agent = RNNAgent(OBS + A + N, A, hidden_dim=16)
    mixer = QMixer(S, N, embed_dim=8, hypernet_embed=16)
    return agent, mixer


def make_batch(seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(B, T + 1, N, OBS, generator=g)
    state = torch.randn(B, T + 1, S, generator=g)
    reward = torch.randn(B, T + 1, 1, generator=g)
    filled = torch.zeros(B, T + 1, 1, dtype=torch.bool)
    terminated = torch.zeros(B, T + 1, 1)
    truncated = torch.zeros(B, T + 1, 1)
    avail = torch.rand(B, T + 1, N, A, generator=g) < 0.5
    avail[..., 0] = True  # no-op always available on real rows
    action = torch.zeros(B, T + 1, N, dtype=torch.long)
    for b, (length, term) in enumerate(EPISODES):
        filled[b, : length + 1] = True
        avail[b, length + 1 :] = False  # padding: no action available
        (terminated if term else truncated)[b, length - 1] = 1.0
        noise = torch.rand(length, N, A, generator=g) + 1.0
        action[b, :length] = (noise * avail[b, :length]).argmax(-1)
    reward = reward * filled
    return TensorDict(
        {
            "agents": TensorDict(
                {"observation": obs, "action_mask": avail, "action": action}, batch_size=[B, T + 1]
            ),
            "state": state,
            "reward": reward,
            "terminated": terminated,
            "truncated": truncated,
            "filled": filled,
        },
        batch_size=[B, T + 1],
    )


def make_loss(td_lambda: float = 0.6, same_targets: bool = True) -> QMixTDLoss:
    agent, mixer = make_nets(0)
    if same_targets:
        return QMixTDLoss.from_online(agent, mixer, gamma=G, td_lambda=td_lambda)
    t_agent, t_mixer = make_nets(1)
    for p in list(t_agent.parameters()) + list(t_mixer.parameters()):
        p.requires_grad_(False)
    return QMixTDLoss(agent, mixer, t_agent, t_mixer, gamma=G, td_lambda=td_lambda)


def hand_unroll(agent, batch):
    """Step-by-step agent Q [B, T+1, N, A], written independently of unroll_agent_q."""
    obs, act = batch["agents", "observation"], batch["agents", "action"]
    h = torch.zeros(B, N, agent.hidden_dim)
    qs = []
    for t in range(T + 1):
        last = torch.full((B, N), -1, dtype=torch.long) if t == 0 else act[:, t - 1]
        q, h = agent(agent_inputs(obs[:, t], last, A), h)
        qs.append(q)
    return torch.stack(qs, 1)


def test_shapes_and_finite_loss():
    loss_mod, batch = make_loss(), make_batch()
    out = loss_mod(batch)
    assert out["loss"].shape == () and torch.isfinite(out["loss"])
    assert out["loss"].requires_grad
    for k in ("td_error_abs_mean", "q_taken_mean", "target_mean", "mask_fraction"):
        assert out[k].shape == () and torch.isfinite(out[k]) and not out[k].requires_grad
    mask, term = transition_mask(batch)
    assert mask.shape == term.shape == (B, T, 1)
    lengths = torch.tensor([length for length, _ in EPISODES], dtype=mask.dtype)
    torch.testing.assert_close(mask.sum((1, 2)), lengths)
    assert abs(out["mask_fraction"].item() - lengths.sum().item() / (B * T)) < 1e-6
    q = q_tot_taken(loss_mod.agent, loss_mod.mixer, batch)
    assert q.shape == (B, T, 1)
    v = target_values(unroll_agent_q(loss_mod.agent, batch), loss_mod.target_agent, loss_mod.target_mixer, batch)
    assert v.shape == (B, T + 1, 1) and not v.requires_grad
    assert (v[~batch["filled"]] == 0).all()


def test_padding_does_not_influence_loss():
    loss_mod, batch = make_loss(), make_batch()
    ref = loss_mod(batch)
    pad = ~batch["filled"].squeeze(-1)  # [B, T+1]
    g = torch.Generator().manual_seed(123)
    noisy = batch.clone()
    obs = noisy["agents", "observation"]
    obs[pad] = 100.0 * torch.randn(obs[pad].shape, generator=g)
    act = noisy["agents", "action"]
    act[pad] = torch.randint(0, A, act[pad].shape, generator=g)
    msk = noisy["agents", "action_mask"]
    msk[pad] = torch.rand(msk[pad].shape, generator=g) < 0.5
    noisy["reward"][pad] = 1e3 * torch.randn(noisy["reward"][pad].shape, generator=g)
    noisy["state"][pad] = 10.0 * torch.randn(noisy["state"][pad].shape, generator=g)
    noisy["terminated"][pad] = 1.0
    assert not torch.equal(noisy["agents", "observation"], batch["agents", "observation"])
    out = loss_mod(noisy)
    for k in ("loss", "td_error_abs_mean", "q_taken_mean", "target_mean", "mask_fraction"):
        assert torch.equal(out[k], ref[k]), k


def test_lambda_zero_matches_hand_rolled_one_step_target():
    loss_mod, batch = make_loss(td_lambda=0.0, same_targets=False), make_batch()
    agent_q = unroll_agent_q(loss_mod.agent, batch)
    y, mask = loss_mod.targets(batch, agent_q)
    with torch.no_grad():
        q_on = hand_unroll(loss_mod.agent, batch)
        q_tg = hand_unroll(loss_mod.target_agent, batch)
    avail = batch["agents", "action_mask"]
    checked = 0
    for b, (length, term) in enumerate(EPISODES):
        for t in range(length):
            s = t + 1
            a_star = q_on[b, s].masked_fill(~avail[b, s], -1e9).argmax(-1)  # [N]
            qn = q_tg[b, s].gather(-1, a_star[:, None]).squeeze(-1)
            with torch.no_grad():
                v = loss_mod.target_mixer(qn[None], batch["state"][b, s][None]).squeeze()
            done = 1.0 if (term and t == length - 1) else 0.0
            expected = batch["reward"][b, t, 0] + G * (1.0 - done) * v
            torch.testing.assert_close(y[b, t, 0], expected, rtol=1e-5, atol=1e-5)
            assert mask[b, t, 0] == 1.0
            checked += 1
        assert (mask[b, length:] == 0).all() and (y[b, length:] == 0).all()
    assert checked == sum(length for length, _ in EPISODES)
    # The loss's Q_tot of the dataset actions agrees with the hand-rolled unroll too.
    chosen = q_on[:, :T].gather(-1, batch["agents", "action"][:, :T, :, None]).squeeze(-1)
    q_tot = loss_mod.mixer(chosen, batch["state"][:, :T])
    valid = mask.bool()
    torch.testing.assert_close(q_tot_taken(loss_mod.agent, loss_mod.mixer, batch)[valid], q_tot[valid])


def test_early_non_terminal_end_bootstraps_like_last_column():
    # Episode 3 ends (limit, not terminated) at t=1 in a T=6 buffer; the same episode in a
    # buffer of exactly its length (PyMARL2 layout) must get the same TD(λ) targets.
    loss_mod, batch = make_loss(td_lambda=0.6, same_targets=False), make_batch()
    length = EPISODES[3][0]
    y_full, _ = loss_mod.targets(batch, unroll_agent_q(loss_mod.agent, batch))
    short = batch[3:4, : length + 1].clone()
    y_short, m_short = loss_mod.targets(short, unroll_agent_q(loss_mod.agent, short))
    assert m_short.all()
    torch.testing.assert_close(y_full[3:4, :length], y_short)


def test_adam_steps_reduce_loss_and_targets_get_no_grad():
    loss_mod, batch = make_loss(same_targets=False), make_batch()
    opt = torch.optim.Adam(loss_mod.online_parameters(), lr=3e-3)
    first = None
    for i in range(30):
        out = loss_mod(batch)
        opt.zero_grad()
        out["loss"].backward()
        if i == 0:
            first = out["loss"].item()
            for net in (loss_mod.agent, loss_mod.mixer):
                grads = [p.grad for p in net.parameters()]
                assert all(gr is not None for gr in grads)
                assert sum(gr.abs().sum() for gr in grads) > 0
            for net in (loss_mod.target_agent, loss_mod.target_mixer):
                assert all(p.grad is None and not p.requires_grad for p in net.parameters())
        torch.nn.utils.clip_grad_norm_(loss_mod.online_parameters(), 10.0)
        opt.step()
    assert loss_mod(batch)["loss"].item() < 0.5 * first


def test_double_q_uses_online_argmax_with_target_values():
    loss_mod, batch = make_loss(same_targets=False), make_batch()
    with torch.no_grad():
        q_on = hand_unroll(loss_mod.agent, batch)
        q_tg = hand_unroll(loss_mod.target_agent, batch)
    avail = batch["agents", "action_mask"]
    filled = batch["filled"].squeeze(-1)
    v, a_star = target_values(
        q_on, loss_mod.target_agent, loss_mod.target_mixer, batch, double_q=True, return_actions=True
    )
    on_arg = q_on.masked_fill(~avail, -1e9).argmax(-1)
    tg_arg = q_tg.masked_fill(~avail, -1e9).argmax(-1)
    f = filled.unsqueeze(-1).expand_as(on_arg)
    assert torch.equal(a_star[f], on_arg[f])
    assert (on_arg != tg_arg)[f].any(), "test setup: online and target argmax should differ somewhere"
    with torch.no_grad():
        expect = loss_mod.target_mixer(q_tg.gather(-1, on_arg[..., None]).squeeze(-1), batch["state"])
        plain = loss_mod.target_mixer(q_tg.gather(-1, tg_arg[..., None]).squeeze(-1), batch["state"])
    torch.testing.assert_close(v[filled], expect[filled])
    v_plain = target_values(None, loss_mod.target_agent, loss_mod.target_mixer, batch, double_q=False)
    torch.testing.assert_close(v_plain[filled], plain[filled])
    assert not torch.allclose(v[filled], v_plain[filled])


def test_hard_update_targets_and_make_target():
    loss_mod = make_loss(same_targets=False)
    pairs = [(loss_mod.agent, loss_mod.target_agent), (loss_mod.mixer, loss_mod.target_mixer)]
    assert any(not torch.equal(p, q) for o, t in pairs for p, q in zip(o.parameters(), t.parameters()))
    loss_mod.hard_update_targets()
    for online, target in pairs:
        for (n1, p), (n2, q) in zip(online.named_parameters(), target.named_parameters()):
            assert n1 == n2 and torch.equal(p, q) and p.data_ptr() != q.data_ptr()
            assert p.requires_grad and not q.requires_grad
    # Later online updates do not leak into the targets (no shared storage).
    with torch.no_grad():
        next(loss_mod.agent.parameters()).add_(1.0)
    assert not torch.equal(next(loss_mod.agent.parameters()), next(loss_mod.target_agent.parameters()))
    frozen = make_target(loss_mod.mixer)
    assert all(not p.requires_grad for p in frozen.parameters())
