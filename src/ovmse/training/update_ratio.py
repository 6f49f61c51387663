"""The update-to-data ratio of online training, apart from how collection steps the env.

PyMARL2 (``run.py``) plays ``batch_size_run`` battles to the end, then makes one update: one
update per ``batch_size_run`` completed episodes (8; the paper's Table 3 sets 2 on 2s3z and
3s5z). We collect ``env.num_envs x algo.steps_per_env`` env steps per call, cutting episodes
between calls, because many battles per call are much cheaper per env step. The ratio is kept
by counting data: every collected unit (completed episode, or env step) adds credit, every
update spends ``every`` of it, and collection runs only while the credit cannot pay for the next
update. A call that brings enough for several updates is followed by that many updates.
"""

from __future__ import annotations

from dataclasses import dataclass

UNITS = ("episodes", "env_steps")


@dataclass(frozen=True)
class UpdateRatio:
    """One update per ``every`` collected ``unit`` (``"episodes"`` or ``"env_steps"``)."""

    unit: str
    every: int

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"update ratio unit must be one of {', '.join(UNITS)}, got {self.unit!r}")
        if isinstance(self.every, bool) or int(self.every) != self.every or self.every < 1:
            raise ValueError(f"algo.{self.unit}_per_update must be an integer >= 1, got {self.every!r}")

    @classmethod
    def from_settings(cls, episodes_per_update, env_steps_per_update) -> "UpdateRatio":
        """``algo.env_steps_per_update`` when set, else ``algo.episodes_per_update``."""
        if env_steps_per_update is not None:
            return cls("env_steps", env_steps_per_update)
        if episodes_per_update is None:
            raise ValueError("set algo.episodes_per_update (PyMARL2: 8) or algo.env_steps_per_update")
        return cls("episodes", episodes_per_update)

    def describe(self) -> str:
        return f"one update per {self.every} {self.unit.replace('_', ' ')}"
