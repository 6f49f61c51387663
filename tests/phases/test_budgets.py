"""Every budget's stage overrides compose with the phase they are for: a typo in a budget (a key
the phase does not have) would otherwise fail only when a sweep reaches that stage."""

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from ovmse.phases.checks import check_settings

BUDGETS = sorted((Path(__file__).resolve().parents[2] / "configs" / "budget").glob("*.yaml"))
STAGES = {"collect": ["algo=qmix"], "offline": ["algo=ovmse", "dataset=medium"], "online": ["algo=ovmse"]}


@pytest.mark.parametrize("budget", BUDGETS, ids=lambda p: p.stem)
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_of_a_budget_composes_with_its_phase(compose_cfg, budget, stage):
    pipeline = compose_cfg("phase=pipeline", "env=3m", "dataset=medium", "algo=ovmse", f"budget={budget.stem}").pipeline
    overrides = list(pipeline[stage].get("overrides") or [])
    if stage == "collect":
        overrides.append(f"env_steps={int(pipeline.collect.env_steps)}")
    cfg = compose_cfg(f"phase={stage}", "env=3m", *STAGES[stage], *overrides)
    check_settings(cfg)
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if not value.startswith("["):
            assert OmegaConf.select(cfg, key) == yaml.safe_load(value), f"{budget.stem}: {override}"
