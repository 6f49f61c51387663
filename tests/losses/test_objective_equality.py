"""The learner computes, from checkpoints written before the objective was restructured (issue
18), the same losses, logged metrics and gradients on a fixed batch: one case per objective the
algorithms use (TD only, MACQL, CFCQL with its behaviour net, OVM with the one-step and the
TD(λ) memory target, Cal-QL, Switch-CQL). ``tests/losses/objective_golden.pt`` was written by
``python tests/objective_cases.py`` before that change; regenerate it only on purpose."""

import pytest
import torch

import objective_cases as cases
from ovmse.training.checkpoint_compat import STATE_PREFIXES
from ovmse.training.qmix_module import load_qmix_checkpoint

GOLDEN = torch.load(cases.GOLDEN, weights_only=True)


@pytest.fixture(scope="module")
def batch():
    b = cases.batch()
    assert cases.batch_digest(b) == pytest.approx(GOLDEN["batch_digest"], rel=1e-12), (
        "the fixed batch itself changed (simulator or dataset code): the golden values no longer apply")
    return b


@pytest.mark.parametrize("name", sorted(cases.CASES))
def test_same_losses_metrics_and_gradients_from_the_old_checkpoints(name, batch, tmp_path):
    entry = GOLDEN["cases"][name]
    torch.save(cases.unpack(entry["checkpoint"]), tmp_path / "old.ckpt")
    module = load_qmix_checkpoint(str(tmp_path / "old.ckpt"))
    assert module.env_steps == (cases.ENV_STEPS if cases.CASES[name][1] is not None else 0)
    got = cases.step(module, batch)
    assert got["loss"] == pytest.approx(entry["loss"], rel=1e-5, abs=1e-7)
    assert got["metrics"].keys() == entry["metrics"].keys()
    for key, value in entry["metrics"].items():
        assert got["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    expected = {_current_name(k): v for k, v in entry["grads"].items()}
    assert got["grads"].keys() == expected.keys()
    for key, value in expected.items():
        assert got["grads"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def _current_name(name: str) -> str:
    """A parameter's name in today's module (the losses moved under ``objective.``)."""
    for old, new in STATE_PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return name
