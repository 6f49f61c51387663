"""Record one battle of a batched SMAC env and draw it (PNG strips, GIFs, notebook axes).

Typical use::

    from ovmse.envs import make_env
    from ovmse.envs.render import record_episode, render_gif, render_strip

    env = make_env("2s3z", num_envs=1, seed=0)
    frames = record_episode(env)                 # random valid actions
    render_strip(frames, "2s3z.png", env.spec, every=10)
    render_gif(frames, "2s3z.gif", env.spec, fps=4)

In a notebook, draw single frames onto your own axes::

    fig, ax = plt.subplots(figsize=(6, 3.5))
    render_frame(frames[-1], env.spec, ax)

Nothing here selects a matplotlib backend: files are drawn on figures that
own an Agg canvas (no pyplot, no display needed), and :func:`render_frame`
draws on whatever axes it is given, so it works headless and inline alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.envs import EnvBase
from torchrl.envs.utils import step_mdp

from .maps import MAP_SIZE, MapSpec
from .terrain import walkable_grid
from .units import UNIT_TYPES

Policy = Callable[[TensorDictBase], TensorDictBase]

ALLY_COLOUR = "#1f5fbf"
ENEMY_COLOUR = "#c8281e"
WALKABLE_COLOUR = "#f3efe2"
BLOCKED_COLOUR = "#8f8f8f"
HEALTH_COLOUR = "#2ca02c"
SHIELD_COLOUR = "#17becf"
# One letter per unit type, drawn inside the unit's circle.
TYPE_LETTERS = {
    "marine": "m",
    "marauder": "M",
    "medivac": "V",
    "stalker": "S",
    "zealot": "Z",
    "colossus": "C",
    "hydralisk": "H",
    "zergling": "z",
}


@dataclass
class Frame:
    """The state of one battle after ``step`` env steps (CPU numpy / Python values).

    Per-unit arrays are ``[U]`` in simulator order (allies first, then enemies).
    Dead units keep the position where they were last seen alive (the simulator
    parks them off the map). ``target`` is the unit each unit is attacking or
    healing (-1 for none); ``actions`` are the agents' actions that led to this
    frame (``None`` for the reset frame).
    """

    step: int
    x: np.ndarray
    y: np.ndarray
    health: np.ndarray  # fraction of max health
    shield: np.ndarray  # fraction of max shield (0 for units without shields)
    alive: np.ndarray  # bool
    team: np.ndarray  # 0 = ally (agent), 1 = enemy
    unit_types: list[str]
    reward: float
    episode_return: float
    won: bool
    done: bool = False
    truncated: bool = False
    target: np.ndarray | None = None
    actions: np.ndarray | None = None

    @property
    def n_alive(self) -> tuple[int, int]:
        """Living (allies, enemies)."""
        return int((self.alive & (self.team == 0)).sum()), int((self.alive & (self.team == 1)).sum())

    @property
    def outcome(self) -> str:
        """'won', 'lost', 'timeout' or '' while the battle is still on."""
        if not self.done:
            return ""
        if self.won:
            return "won"
        return "timeout" if self.truncated else "lost"


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu").numpy().copy()


def _snapshot(env: EnvBase, b: int, last_xy: np.ndarray, **fields) -> Frame:
    battle, spec = env.battle, env.spec
    ut = battle.units
    alive = _np(battle.alive[b])
    x, y = _np(battle.x[b]), _np(battle.y[b])
    last_xy[alive, 0], last_xy[alive, 1] = x[alive], y[alive]
    shield_max = _np(ut.max_shield)
    shield = np.where(shield_max > 0, _np(battle.shield[b]) / np.where(shield_max > 0, shield_max, 1.0), 0.0)
    return Frame(
        x=last_xy[:, 0].copy(),
        y=last_xy[:, 1].copy(),
        health=_np(battle.health[b]) / _np(ut.max_health),
        shield=shield,
        alive=alive,
        team=_np(ut.team),
        unit_types=list(spec.allies) + list(spec.enemies),
        target=_np(battle.target[b]),
        **fields,
    )


@torch.no_grad()
def record_episode(
    env: EnvBase,
    policy: Policy | None = None,
    env_index: int = 0,
    max_steps: int | None = None,
) -> list[Frame]:
    """Reset ``env`` and record one episode of battle ``env_index``.

    Every battle of the batch is stepped (the others just run along and reset
    when they end); only ``env_index`` is recorded. Returns the reset frame
    followed by one frame per env step, up to and including the step that ends
    the episode, or ``max_steps`` steps if that comes first. ``policy`` gets the
    whole batch's tensordict and writes ``("agents", "action")``; the default
    is uniformly random available actions (``env.rand_action``).
    """
    B = env.batch_size[0]
    if not 0 <= env_index < B:
        raise IndexError(f"env_index {env_index} out of range for {B} battles")
    policy = policy or env.rand_action
    limit = env.spec.episode_limit if max_steps is None else max_steps
    n_units = env.spec.n_agents + env.spec.n_enemies
    last_xy = np.full((n_units, 2), np.nan, dtype=np.float32)

    td = env.reset()
    frames = [_snapshot(env, env_index, last_xy, step=0, reward=0.0, episode_return=0.0, won=False)]
    ret = 0.0
    for step in range(1, limit + 1):
        td = policy(td)
        actions = _np(td.get(("agents", "action"))[env_index])
        td = env.step(td)
        nxt = td.get("next")
        reward = float(nxt.get("reward")[env_index].item())
        done = bool(nxt.get("done")[env_index].item())
        ret += reward
        frames.append(_snapshot(
            env, env_index, last_xy, step=step, reward=reward, episode_return=ret,
            won=bool(nxt.get(("info", "battle_won"))[env_index].item()), done=done,
            truncated=bool(nxt.get("truncated")[env_index].item()), actions=actions,
        ))
        if done:
            break
        # Let the other battles of the batch reset when they end.
        td = env.maybe_reset(step_mdp(td))
    return frames


# ----------------------------------------------------------------- drawing
View = tuple[float, float, float, float]


def map_view(spec: MapSpec, margin: float = 0.5) -> View:
    """``(x0, x1, y0, y1)``: the bounding box of the map's walkable area, plus a margin."""
    grid = walkable_grid(spec.terrain).numpy()
    xs, ys = np.nonzero(grid)
    return (
        max(xs.min() - margin, 0.0), min(xs.max() + 1 + margin, MAP_SIZE),
        max(ys.min() - margin, 0.0), min(ys.max() + 1 + margin, MAP_SIZE),
    )


def units_view(frames: Sequence[Frame], spec: MapSpec, margin: float = 2.0, min_size: float = 10.0) -> View:
    """The box around every position the units take in ``frames`` (plus ``margin``), inside :func:`map_view`."""
    mx0, mx1, my0, my1 = map_view(spec)
    xs = np.concatenate([f.x for f in frames])
    ys = np.concatenate([f.y for f in frames])
    ok = np.isfinite(xs) & np.isfinite(ys)
    if not ok.any():
        return mx0, mx1, my0, my1
    box = []
    for lo, hi, a, b in ((xs[ok].min(), xs[ok].max(), mx0, mx1), (ys[ok].min(), ys[ok].max(), my0, my1)):
        lo, hi = lo - margin, hi + margin
        grow = max(0.0, min(min_size, b - a) - (hi - lo)) / 2
        lo, hi = lo - grow, hi + grow
        shift = max(a - lo, 0.0) - max(hi - b, 0.0)  # slide back inside the map view
        box += [max(lo + shift, a), min(hi + shift, b)]
    return tuple(float(v) for v in box)


def _resolve_view(view, frames: Sequence[Frame], spec: MapSpec) -> View:
    if view is None or view == "map":
        return map_view(spec)
    if view == "units":
        return units_view(frames, spec)
    return tuple(float(v) for v in view)


def _panel_size(view: View, width: float) -> tuple[float, float]:
    x0, x1, y0, y1 = view
    return width, width * min(max((y1 - y0) / (x1 - x0), 0.35), 1.5) + 0.4  # room for the title


def render_frame(
    frame: Frame, spec: MapSpec, ax=None, *, view: View | str | None = None, targets: bool = True, title: bool = True
):
    """Draw one frame on matplotlib axes ``ax`` (a new pyplot figure if None); returns ``ax``.

    Walkable cells are light, cliffs/outside grey; units are circles of their
    true radius (allies blue, enemies red) with their type letter, a health
    bar (green) and a shield bar (cyan) above; dead units are faint crosses
    where they fell; thin lines join units to their current targets.
    ``view`` is ``(x0, x1, y0, y1)``, ``"map"`` (the walkable area, default)
    or ``"units"`` (around this frame's units).
    """
    from matplotlib.patches import Circle, Rectangle

    x0, x1, y0, y1 = _resolve_view(view, [frame], spec)
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=_panel_size((x0, x1, y0, y1), 6.0))
    grid = walkable_grid(spec.terrain).numpy()
    ax.imshow(
        np.where(grid.T[..., None], _rgb(WALKABLE_COLOUR), _rgb(BLOCKED_COLOUR)),
        origin="lower", extent=(0, MAP_SIZE, 0, MAP_SIZE), interpolation="nearest", zorder=0,
    )
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])

    n_units = len(frame.unit_types)
    # Scale letters with the panel: points per map cell.
    fig = ax.figure
    width_in = ax.get_position().width * fig.get_size_inches()[0]
    pt_per_cell = 72.0 * width_in / (x1 - x0)

    if targets and frame.target is not None:
        for u in range(n_units):
            t = int(frame.target[u])
            if frame.alive[u] and t >= 0 and frame.alive[t]:
                colour = ALLY_COLOUR if frame.team[u] == 0 else ENEMY_COLOUR
                ax.plot([frame.x[u], frame.x[t]], [frame.y[u], frame.y[t]], color=colour,
                        lw=0.6, alpha=0.45, zorder=1)

    for u in range(n_units):
        if np.isnan(frame.x[u]):
            continue
        kind = UNIT_TYPES[frame.unit_types[u]]
        colour = ALLY_COLOUR if frame.team[u] == 0 else ENEMY_COLOUR
        cx, cy, r = float(frame.x[u]), float(frame.y[u]), kind.radius
        if not frame.alive[u]:
            ax.plot([cx], [cy], marker="x", color=colour, alpha=0.35, ms=max(3.0, r * pt_per_cell), zorder=2)
            continue
        ax.add_patch(Circle(
            (cx, cy), r, facecolor=colour, edgecolor="white" if kind.is_air else "black",
            lw=0.6, ls="--" if kind.is_air else "-", alpha=0.65 if kind.is_air else 0.9, zorder=3,
        ))
        ax.text(cx, cy, TYPE_LETTERS.get(kind.name, kind.name[0]), ha="center", va="center",
                color="white", fontsize=max(3.0, 1.1 * r * pt_per_cell), fontweight="bold", zorder=4)
        # Bars above the unit: health, then shield on top (if the type has shields).
        w, h = max(2 * r, 0.8), 0.16
        bx, by = cx - w / 2, cy + r + 0.08
        ax.add_patch(Rectangle((bx, by), w, h, facecolor="#444444", lw=0, zorder=4))
        ax.add_patch(Rectangle((bx, by), w * float(np.clip(frame.health[u], 0, 1)), h,
                               facecolor=HEALTH_COLOUR, lw=0, zorder=5))
        if kind.shield > 0:
            ax.add_patch(Rectangle((bx, by + h), w, h, facecolor="#444444", lw=0, zorder=4))
            ax.add_patch(Rectangle((bx, by + h), w * float(np.clip(frame.shield[u], 0, 1)), h,
                                   facecolor=SHIELD_COLOUR, lw=0, zorder=5))

    if title:
        allies, enemies = frame.n_alive
        text = f"{spec.name}  step {frame.step}  return {frame.episode_return:.2f}  ({allies} vs {enemies})"
        if frame.outcome:
            text += f"  {frame.outcome.upper()}"
        ax.set_title(text, fontsize=max(6.0, min(10.0, 1.2 * width_in + 3.5)))
    return ax


def _rgb(hex_colour: str) -> np.ndarray:
    h = hex_colour.lstrip("#")
    return np.array([int(h[i:i + 2], 16) / 255.0 for i in (0, 2, 4)])


def _figure(width: float, height: float, dpi: float = 100):
    """A figure with its own Agg canvas: no pyplot state, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _pick(frames: Sequence[Frame], every: int) -> list[Frame]:
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    picked = list(frames[::every])
    if picked[-1] is not frames[-1]:
        picked.append(frames[-1])
    return picked


def render_strip(
    frames: Sequence[Frame],
    path: str | Path,
    spec: MapSpec,
    every: int = 1,
    *,
    cols: int = 5,
    panel_width: float = 3.6,
    dpi: int = 110,
    view: View | str | None = "units",
    title: str | None = None,
) -> Path:
    """Save every ``every``-th frame (and always the last) as panels, ``cols`` per row.

    ``view``: ``"units"`` (default) zooms every panel to the area the units
    cover during the recorded frames, ``"map"`` shows the whole walkable area,
    or give ``(x0, x1, y0, y1)``.
    """
    if not frames:
        raise ValueError("no frames to render")
    picked = _pick(frames, every)
    box = _resolve_view(view, frames, spec)
    cols = max(1, min(cols, len(picked)))
    rows = -(-len(picked) // cols)
    pw, ph = _panel_size(box, panel_width)
    top = 0.4 if title else 0.0
    fig = _figure(pw * cols, ph * rows + top, dpi)
    for k, frame in enumerate(picked):
        render_frame(frame, spec, fig.add_subplot(rows, cols, k + 1), view=box)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _frame_images(frames: Sequence[Frame], spec: MapSpec, view, width: float, dpi: int):
    """Yield RGB ``uint8`` arrays ``[H, W, 3]``, drawing every frame on one reused figure."""
    box = _resolve_view(view, frames, spec)
    w, h = _panel_size(box, width)
    fig = _figure(w, h, dpi)
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.99 - 0.4 / h))
    for frame in frames:
        ax.clear()
        render_frame(frame, spec, ax, view=box)
        fig.canvas.draw()
        yield np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def frame_image(frame: Frame, spec: MapSpec, *, view: View | str | None = "map", width: float = 6.0,
                dpi: int = 90) -> np.ndarray:
    """One frame as an RGB ``uint8`` array ``[H, W, 3]``."""
    return next(_frame_images([frame], spec, view, width, dpi))


def render_gif(
    frames: Sequence[Frame],
    path: str | Path,
    spec: MapSpec,
    fps: float = 4,
    *,
    every: int = 1,
    width: float = 6.0,
    dpi: int = 100,
    view: View | str | None = "units",
    hold_last: float = 1.5,
) -> Path:
    """Save the frames as a looping animated GIF (the last frame is held ``hold_last`` s).

    ``view`` as in :func:`render_strip`. Drawn with matplotlib's Agg canvas
    and written with Pillow, so it needs no display.
    """
    from PIL import Image

    if not frames:
        raise ValueError("no frames to render")
    box = _resolve_view(view, frames, spec)
    images = [Image.fromarray(a) for a in _frame_images(_pick(frames, every), spec, box, width, dpi)]
    ms = int(round(1000.0 / fps))
    durations = [ms] * len(images)
    durations[-1] = max(ms, int(round(1000.0 * hold_last)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return path


__all__ = [
    "Frame", "frame_image", "map_view", "record_episode", "render_frame", "render_gif", "render_strip", "units_view",
]
