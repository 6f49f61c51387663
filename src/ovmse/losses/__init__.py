"""Target construction for value-based MARL losses."""

from ovmse.losses.td_lambda import td_lambda_targets

__all__ = ["td_lambda_targets"]
