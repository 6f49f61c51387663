"""Is real SMAC usable here? Checks for oxwhirl's ``smac``, StarCraft II and the SMAC maps,
each failing with a message that says what to install; and the default game factory."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from ..maps import get_map
from .errors import StarCraftUnavailableError

DOCS = "docs/starcraft.md"
SMAC_PIP = "pip install git+https://github.com/oxwhirl/smac.git"
SC2_LINUX_URL = "https://blzdistsc2-a.akamaihd.net/Linux/SC2.4.10.zip"
SMAC_MAPS_URL = "https://github.com/oxwhirl/smac/releases/download/v0.1-beta1/SMAC_Maps.zip"


def default_sc2_path() -> Path:
    """Where pysc2 looks for StarCraft II when ``SC2PATH`` is not set."""
    if sys.platform.startswith("win"):
        return Path("C:/Program Files (x86)/StarCraft II")
    if sys.platform == "darwin":
        return Path("/Applications/StarCraft II")
    return Path("~/StarCraftII").expanduser()


def sc2_path() -> Path:
    """``$SC2PATH`` (expanded) or the platform default."""
    env = os.environ.get("SC2PATH")
    return Path(env).expanduser() if env else default_sc2_path()


def _sc2_install_hint() -> str:
    return (
        "Install StarCraft II 4.10 for Linux (Blizzard's headless build, about 4 GB unpacked):\n"
        f"    wget {SC2_LINUX_URL}\n"
        "    unzip -P iagreetotheeula SC2.4.10.zip -d ~    # creates ~/StarCraftII\n"
        "    export SC2PATH=~/StarCraftII                   # only needed for another location\n"
        f"then the SMAC maps (below). Full steps: {DOCS}."
    )


def _maps_install_hint(path: Path) -> str:
    return (
        "Install the SMAC maps into the game's Maps folder:\n"
        f"    wget {SMAC_MAPS_URL}\n"
        f"    mkdir -p '{path / 'Maps'}' && unzip SMAC_Maps.zip -d '{path / 'Maps'}'\n"
        f"(or copy smac/env/starcraft2/maps/SMAC_Maps from a clone of oxwhirl/smac). See {DOCS}."
    )


def _check_smac_package() -> None:
    """(a) smac importable, (b) it is oxwhirl's SMAC (has ``smac.env.StarCraft2Env``)."""
    try:
        smac = importlib.import_module("smac")
    except ModuleNotFoundError as err:
        if err.name == "smac":
            raise StarCraftUnavailableError(
                "The starcraft backend needs oxwhirl's SMAC (StarCraft Multi-Agent Challenge), and the "
                f"'smac' package is not installed. Install it with:\n    {SMAC_PIP}\n"
                "(not `pip install smac`: PyPI's 'smac' is SMAC3, an unrelated hyperparameter optimiser). "
                f"StarCraft II 4.10 and the SMAC maps are needed too; see {DOCS}."
            ) from None
        raise StarCraftUnavailableError(
            f"`import smac` failed: {err}. If this 'smac' is PyPI's SMAC3 (hyperparameter optimisation), "
            f"uninstall it (`pip uninstall smac`); the starcraft backend needs oxwhirl's SMAC:\n    {SMAC_PIP}\n"
            f"See {DOCS}."
        ) from err
    except Exception as err:  # noqa: BLE001 - report any import-time failure with the fix
        raise StarCraftUnavailableError(
            f"`import smac` failed with {type(err).__name__}: {err}. Reinstall oxwhirl's SMAC:\n    {SMAC_PIP}\n"
            f"See {DOCS}."
        ) from err
    where = getattr(smac, "__file__", None) or "?"
    version = getattr(smac, "__version__", None)
    found = f"the installed 'smac' ({'version ' + str(version) + ', ' if version else ''}at {where})"
    wrong_package = (
        f"{found} has no smac.env.StarCraft2Env: it is SMAC3, the hyperparameter-optimisation package "
        "from PyPI, not oxwhirl's StarCraft Multi-Agent Challenge (both install a module named 'smac'). "
        f"Fix:\n    pip uninstall -y smac\n    {SMAC_PIP}\nSee {DOCS}."
    )
    try:
        smac_env = importlib.import_module("smac.env")
    except ModuleNotFoundError as err:
        if err.name in ("smac.env", "smac"):
            raise StarCraftUnavailableError(wrong_package) from None
        raise StarCraftUnavailableError(
            f"oxwhirl's smac is installed but `import smac.env` failed: a dependency is missing ({err}). "
            f"Reinstall it with its dependencies (pysc2, s2clientprotocol, protobuf<3.21):\n    {SMAC_PIP}\n"
            f"See {DOCS}."
        ) from err
    except Exception as err:  # noqa: BLE001
        raise StarCraftUnavailableError(
            f"`import smac.env` failed with {type(err).__name__}: {err}. Reinstall oxwhirl's SMAC with its "
            f"pinned dependencies (protobuf<3.21):\n    {SMAC_PIP}\nSee {DOCS}."
        ) from err
    if not hasattr(smac_env, "StarCraft2Env"):
        raise StarCraftUnavailableError(wrong_package)


def check_starcraft_available(map_name: str | None = None) -> Path:
    """Fail fast, with the fix, when the real-SMAC backend cannot run; return the SC2 folder.

    Checks in order: (a) ``smac`` importable; (b) it is oxwhirl's SMAC, not PyPI's SMAC3;
    (c) StarCraft II at ``$SC2PATH`` or the default location (``~/StarCraftII`` on Linux), i.e.
    a ``Versions/Base*`` game build there; (d) ``Maps/SMAC_Maps/<map_name>.SC2Map`` (when a map is
    given; the name must be one of our maps). Raises :class:`StarCraftUnavailableError`.
    """
    if map_name is not None:
        get_map(map_name)  # unknown map -> ValueError listing the maps
    _check_smac_package()
    path = sc2_path()
    where = (
        f"SC2PATH={os.environ['SC2PATH']!r}" if os.environ.get("SC2PATH")
        else f"SC2PATH is not set and the default location {path}"
    )
    if not path.is_dir():
        raise StarCraftUnavailableError(
            f"StarCraft II not found: {where} does not exist.\n{_sc2_install_hint()}"
        )
    versions = path / "Versions"
    if not versions.is_dir() or not any(p.name.startswith("Base") for p in versions.iterdir()):
        raise StarCraftUnavailableError(
            f"StarCraft II not found: {where} has no game build ({versions}/Base*/ is missing).\n"
            f"{_sc2_install_hint()}"
        )
    if map_name is not None:
        candidates = [path / d / "SMAC_Maps" / f"{map_name}.SC2Map" for d in ("Maps", "maps")]
        if not any(c.is_file() for c in candidates):
            raise StarCraftUnavailableError(
                f"SMAC map {map_name!r} not found: {candidates[0]} is missing (StarCraft II itself is at "
                f"{path}).\n{_maps_install_hint(path)}"
            )
    return path


def default_game(map_name: str, seed: int | None = None, **smac_kwargs: Any) -> Any:
    """``smac.env.StarCraft2Env(map_name=..., seed=..., **smac_kwargs)`` (no game launched yet)."""
    try:  # pysc2 reads absl flags (--sc2_run_config); outside an absl app they are unparsed.
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
    except Exception:  # noqa: BLE001 - absl missing or already fine: smac's import will tell
        pass
    from smac.env import StarCraft2Env

    return StarCraft2Env(map_name=map_name, seed=seed, **smac_kwargs)
