"""Turn a collector's flat ``[B_envs, frames]`` batches into complete, padded episodes.

Output: episodes in the layout of :mod:`ovmse.collection.layout` (PyMARL ``EpisodeBatch``),
batch dims ``[E, T_max + 1]``; row ``t = len`` takes the ``"next"`` entries of the last
transition (the final observation, state and mask).

A battle stopped by the episode limit has ``truncated=True, terminated=False`` at its last
transition (the env sets them that way; they are copied, not recomputed).

An episode whose last transition has ``("next", "info", "episode_lost")`` True (the starcraft
backend's game crashed mid-battle and was restarted) is dropped, never emitted, and counted in
``episodes_lost``. Batches without that key (older envs) are handled as before.

Cost: everything inside a batch is tensor ops except a Python loop over env indices that
have an episode boundary (or a pending partial episode) in the batch -- ``O(B + episodes)``
small ``torch.cat`` / slice-assign calls per batch, negligible next to stepping the env.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase

from ovmse.collection import layout
from ovmse.collection.layout import NestedKey

# Per-step observations (row t <- step t, the collector's keys are the layout's).
_OBS_KEYS: tuple[NestedKey, ...] = (layout.OBSERVATION, layout.ACTION_MASK, layout.STATE)
# (layout key, source key in the collector data) for the transition taken at step t.
_TRANSITION_KEYS: tuple[tuple[NestedKey, NestedKey], ...] = (
    (layout.ACTION, ("agents", "action")),
    (layout.REWARD, ("next", "reward")),
    (layout.TERMINATED, ("next", "terminated")),
    (layout.TRUNCATED, ("next", "truncated")),
    (layout.BATTLE_WON, ("next", "info", "battle_won")),
)
# Marks an episode cut short by a game crash (starcraft backend); such episodes are dropped.
LOST_KEY: tuple[str, ...] = ("next", "info", "episode_lost")


def _nxt(key: NestedKey) -> tuple[str, ...]:
    return ("next", *((key,) if isinstance(key, str) else key))


class EpisodeAssembler:
    """Collects steps per env index and emits only complete episodes.

    The stream of batches fed to :meth:`add` must be contiguous in time for every env index
    and must start at an episode start (a freshly reset env, which is how collectors start).
    Partial episodes cut by the end of a batch are kept and continued by the next call.

    Args:
        episode_limit: T_max; an episode longer than this raises (it would mean the stream is
            not contiguous or the env does not truncate).
        done_key: the end-of-episode flag in ``"next"`` (``"done"`` = terminated | truncated).
    """

    def __init__(self, episode_limit: int, *, done_key: NestedKey = "done") -> None:
        if episode_limit < 1:
            raise ValueError(f"episode_limit must be >= 1, got {episode_limit}")
        self.episode_limit = int(episode_limit)
        self.done_key = done_key
        self._pending: dict[int, list[TensorDictBase]] = {}
        self._pending_len: dict[int, int] = {}
        self.episodes_emitted = 0
        # Episodes dropped because their last transition had ("next", "info", "episode_lost").
        self.episodes_lost = 0
        # Env index of each episode returned by the latest ``add`` (same order).
        self.last_env_indices: list[int] = []

    @property
    def pending_steps(self) -> dict[int, int]:
        """Env index -> number of steps held for its unfinished episode."""
        return {b: n for b, n in self._pending_len.items() if n > 0}

    def reset(self) -> None:
        """Drop every partial episode (call after resetting the env outside the collector)."""
        self._pending.clear()
        self._pending_len.clear()

    def _select(self, data: TensorDictBase) -> TensorDictBase:
        keys = [k for k in _OBS_KEYS] + [_nxt(k) for k in _OBS_KEYS] + [src for _, src in _TRANSITION_KEYS]
        return data.select(*keys)

    def add(self, batch: TensorDictBase) -> TensorDict | None:
        """Consume a collector batch ``[B, F]`` (or ``[F]`` for a single env) and return the
        episodes it completed as a TensorDict ``[E, T_max + 1]``, or ``None`` if none ended.
        """
        if batch.batch_dims == 1:
            batch = batch.unsqueeze(0)
        if batch.batch_dims != 2:
            raise ValueError(f"expected a [B, frames] batch, got batch_size {tuple(batch.batch_size)}")
        data = self._select(batch)
        done = batch.get(_nxt(self.done_key)).reshape(batch.shape).bool().cpu()  # [B, F]
        lost = batch.get(LOST_KEY, None)
        lost = None if lost is None else lost.reshape(batch.shape).bool().cpu()  # [B, F]
        finished: list[TensorDictBase] = []  # each [len] for one complete episode
        self.last_env_indices = []
        for b in range(batch.shape[0]):
            ends = done[b].nonzero().flatten().tolist()
            start = 0
            for end in ends:
                seg = data[b, start : end + 1]
                parts = self._pending.pop(b, [])
                self._pending_len.pop(b, None)
                ep = torch.cat(parts + [seg], 0) if parts else seg
                if ep.shape[0] > self.episode_limit:
                    raise RuntimeError(
                        f"env {b}: episode of {ep.shape[0]} steps exceeds the limit {self.episode_limit}; "
                        "the batch stream is not contiguous or did not start at a reset"
                    )
                start = end + 1
                if lost is not None and bool(lost[b, end]):
                    self.episodes_lost += 1
                    continue
                finished.append(ep)
                self.last_env_indices.append(b)
            if start < batch.shape[1]:
                seg = data[b, start:]
                self._pending.setdefault(b, []).append(seg.clone())
                n = self._pending_len.get(b, 0) + seg.shape[0]
                if n > self.episode_limit:
                    raise RuntimeError(
                        f"env {b}: {n} steps without an episode end exceed the limit {self.episode_limit}"
                    )
                self._pending_len[b] = n
        if not finished:
            return None
        self.episodes_emitted += len(finished)
        return self._pad(finished, batch)

    def _pad(self, episodes: list[TensorDictBase], like: TensorDictBase) -> TensorDict:
        E, T1 = len(episodes), self.episode_limit + 1
        device = like.device if like.device is not None else episodes[0].get(layout.OBSERVATION).device
        out = TensorDict({}, batch_size=(E, T1), device=device)
        lengths = torch.tensor([ep.shape[0] for ep in episodes])
        # Allocate zero-padded buffers from the first episode's leaves.
        ref = episodes[0]
        for key in _OBS_KEYS:
            v = ref.get(key)
            out.set(key, torch.zeros((E, T1, *v.shape[1:]), dtype=v.dtype, device=v.device))
        for key, src in _TRANSITION_KEYS:
            v = ref.get(src)
            out.set(key, torch.zeros((E, T1, *v.shape[1:]), dtype=v.dtype, device=v.device))
        # Episodes of equal length could be stacked; a loop of slice-assigns is simple and cheap.
        for e, ep in enumerate(episodes):
            n = ep.shape[0]
            for key in _OBS_KEYS:
                dst = out.get(key)
                dst[e, :n] = ep.get(key)
                dst[e, n] = ep.get(_nxt(key))[n - 1]
            for key, src in _TRANSITION_KEYS:
                out.get(key)[e, :n] = ep.get(src)
        out.set(layout.FILLED, layout.filled_rows(lengths, T1).to(device))
        return out
