"""Every loss file's ``Examples:`` block runs as written (issue 18: losses document themselves
with runnable examples, as TorchRL's do)."""

import doctest
import inspect
import importlib
import pkgutil

import pytest

import ovmse.losses

MODULES = sorted(m.name for m in pkgutil.iter_modules(ovmse.losses.__path__) if not m.name.startswith("_"))


@pytest.mark.parametrize("name", MODULES)
def test_the_loss_files_examples_run(name):
    module = importlib.import_module(f"ovmse.losses.{name}")
    assert "Examples:" in inspect.getsource(module), f"ovmse/losses/{name}.py has no Examples: block"
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
