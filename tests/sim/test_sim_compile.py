"""``compile_step=True`` (torch.compile of each env step's physics and features) plays the same battles as eager."""

import torch
import torch._dynamo

from ovmse.envs import make_env


def test_compiled_physics_plays_the_same_battles_as_eager():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # graphs compiled by earlier tests of the session
    envs = [make_env("3m", 3, seed=5, substeps=2, compile_step=c) for c in (False, True)]
    tds = [env.reset() for env in envs]
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        mask = tds[0]["agents", "action_mask"]
        torch.testing.assert_close(tds[1]["agents", "action_mask"], mask)
        scores = torch.rand(mask.shape, generator=g) * mask  # a random available action per agent
        action = scores.argmax(-1)
        outs = []
        for env, td in zip(envs, tds):
            td = td.clone()
            td["agents", "action"] = action
            outs.append(env.step(td))
        for key in (("agents", "observation"), "state", "reward", "done", "terminated"):
            torch.testing.assert_close(outs[1]["next", *((key,) if isinstance(key, str) else key)],
                                       outs[0]["next", *((key,) if isinstance(key, str) else key)],
                                       rtol=1e-5, atol=1e-5, msg=f"step {step}: {key}")
        tds = [env.step_mdp(out) for env, out in zip(envs, outs)]
    # One graph for the step (orders, physics, rewards, features), one for the features after a
    # reset, at the one batch size: no recompilation per step.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
