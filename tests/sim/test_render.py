"""Episode recording and rendering (PNG strip, animated GIF) work headless."""

import matplotlib

matplotlib.use("Agg")  # headless test runs; the module itself never picks a backend

import numpy as np
from PIL import Image

from ovmse.envs import make_env
from ovmse.envs.render import Frame, record_episode, render_frame, render_gif, render_strip


def test_record_and_render_3m(tmp_path):
    env = make_env("3m", num_envs=2, seed=0)
    frames = record_episode(env, env_index=1, max_steps=12)
    assert 2 <= len(frames) <= 13
    assert all(isinstance(f, Frame) for f in frames)
    assert [f.step for f in frames] == list(range(len(frames)))
    first = frames[0]
    assert first.unit_types == ["marine"] * 6
    assert list(first.team) == [0, 0, 0, 1, 1, 1]
    assert first.alive.all() and np.allclose(first.health, 1.0)
    assert first.reward == 0.0 and first.episode_return == 0.0
    # Positions stay on the map (dead units keep their last living position).
    for f in frames:
        assert np.isfinite(f.x).all() and np.isfinite(f.y).all()
        assert ((f.x >= 0) & (f.x <= 32) & (f.y >= 0) & (f.y <= 32)).all()
        assert ((0 <= f.health) & (f.health <= 1)).all()
    # Units never come back to life within an episode.
    counts = np.array([f.n_alive for f in frames])
    assert (np.diff(counts, axis=0) <= 0).all()
    assert np.isclose(frames[-1].episode_return, sum(f.reward for f in frames))
    assert not any(f.done for f in frames[:-1])

    png = render_strip(frames, tmp_path / "strip.png", env.spec, every=4)
    gif = render_gif(frames, tmp_path / "episode.gif", env.spec, fps=4, dpi=50)
    for path in (png, gif):
        assert path.exists() and path.stat().st_size > 0
    with Image.open(gif) as im:
        assert im.n_frames > 1
    with Image.open(png) as im:
        assert im.size[0] > 0 and im.size[1] > 0


def test_render_frame_on_given_axes():
    from matplotlib.figure import Figure

    env = make_env("2s3z", num_envs=1, seed=1)
    frames = record_episode(env, max_steps=2)
    fig = Figure()
    ax = fig.add_subplot()
    assert render_frame(frames[-1], env.spec, ax) is ax
    assert "2s3z" in ax.get_title() and "step 2" in ax.get_title()
