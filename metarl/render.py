"""``metarl render``: videos (mp4) of a run's policy on a few test tasks, before and after adaptation.

The test tasks and the adaptation are the evaluation protocol's (``config.eval``), restricted to the
first ``num_tasks`` tasks; each video is one episode of the policy's mean action on the gymnasium
env rendered offscreen. MuJoCo needs an offscreen GL backend: set ``MUJOCO_GL=egl`` (or ``osmesa``)
before running.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.registration import load_env_creator

from metarl import config as cfg
from metarl.evaluate import evaluate_protocol
from metarl.policy import Params
from metarl.run.factory import build, eval_tasks, make_sampler
from metarl.run.rundir import RunDir
from metarl.run.state import load_meta_parameters


class RenderError(RuntimeError):
    """The env cannot be rendered here (no rgb_array mode, no GL backend, no mp4 writer)."""


def _rendering_env(env_id: str, env_kwargs: dict[str, Any], size: tuple[int, int]) -> gym.Env:
    """``env_id`` in rgb_array mode at ``size`` (width, height), or at its own size if it takes none."""
    try:
        return gym.make(env_id, render_mode="rgb_array", width=size[0], height=size[1], **env_kwargs)
    except TypeError:
        return gym.make(env_id, render_mode="rgb_array", **env_kwargs)


def rendering_unavailable(env_id: str, env_kwargs: dict[str, Any] | None = None) -> str | None:
    """Why ``env_id`` cannot be rendered to frames here, or None when it can."""
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return "mp4 writing needs imageio-ffmpeg (pip install imageio-ffmpeg)"
    spec = gym.spec(env_id)
    creator = spec.entry_point if callable(spec.entry_point) else load_env_creator(spec.entry_point)
    modes = getattr(creator, "metadata", {}).get("render_modes", [])
    if "rgb_array" not in modes:
        return f"{env_id} has no rgb_array render mode (its render modes: {modes or 'none'})"
    try:
        env = _rendering_env(env_id, env_kwargs or {}, (64, 64))
    except Exception as exc:  # noqa: BLE001 - any construction failure is the reason
        return f"{env_id} cannot render rgb_array frames: {exc}"
    try:
        if "rgb_array" not in env.metadata.get("render_modes", []):
            return f"{env_id} has no rgb_array render mode (render_modes: {env.metadata.get('render_modes', [])})"
        env.reset(seed=0)
        frame = env.render()
        if frame is None:
            return f"{env_id} rendered no frame"
    except Exception as exc:  # noqa: BLE001 - GL errors come in many types
        return f"no offscreen GL backend for {env_id} (set MUJOCO_GL=egl or osmesa): {exc}"
    finally:
        env.close()
    return None


def _episode_frames(
    env: gym.Env, policy: torch.nn.Module, params: Params, task: Any, frames: int, action_map: Any
) -> list[np.ndarray]:
    env.unwrapped.set_task(task)
    obs, _ = env.reset(seed=0)
    images = [env.render()]
    for _ in range(frames - 1):
        with torch.no_grad():
            device = next(iter(params.values())).device
            mean, _ = policy.mean_std(torch.as_tensor(obs, dtype=torch.float32, device=device)[None, None], params)
        obs, _, terminated, truncated, _ = env.step(action_map(mean[0, 0].cpu().numpy()))
        images.append(env.render())
        if terminated or truncated:
            break
    return images


def render_run(
    run_dir: str | Path,
    num_tasks: int = 2,
    frames: int = 100,
    checkpoint: str | Path | None = None,
    out_dir: str | Path | None = None,
    size: tuple[int, int] = (320, 240),
    fps: int = 20,
) -> list[Path]:
    """Write ``task{i}_before.mp4`` and ``task{i}_after{K}.mp4`` for the first ``num_tasks`` test tasks
    (K = ``eval.num_steps``); returns the files. Raises :class:`RenderError` when rendering is unavailable."""
    import imageio

    run = RunDir.open(run_dir)
    config = run.load_config()
    if num_tasks < 1 or frames < 1:
        raise cfg.ConfigError(f"--tasks and --frames must be positive, got {num_tasks} and {frames}")
    reason = rendering_unavailable(config.env.id, config.env.kwargs)
    if reason:
        raise RenderError(reason)
    parts = build(config)
    try:
        path = Path(checkpoint) if checkpoint else run.checkpoint()
        load_meta_parameters(parts, run.load_checkpoint(path, parts.device), path)
        ev = config.eval
        tasks = eval_tasks(config)[:num_tasks]
        kept: dict[int, Params] = {}
        sampler = make_sampler(config, parts.device, "eval_sampler")
        try:
            evaluate_protocol(config, parts.policy, sampler, tasks, parts.step_sizes,
                              on_step=lambda k, params: kept.__setitem__(k, params))
        finally:
            sampler.close()
        action_map = sampler.action_to_env  # the policy's range onto the env's bounds
        out = Path(out_dir) if out_dir else run.path / "videos"
        out.mkdir(parents=True, exist_ok=True)
        env = _rendering_env(config.env.id, config.env.kwargs, size)
        written = []
        try:
            for i, task in enumerate(tasks):
                for k, name in ((0, f"task{i}_before.mp4"), (ev.num_steps, f"task{i}_after{ev.num_steps}.mp4")):
                    params = {key: value[i : i + 1] for key, value in kept[k].items()}
                    images = _episode_frames(env, parts.policy, params, task, frames, action_map)
                    imageio.mimwrite(out / name, images, fps=fps, macro_block_size=1)
                    written.append(out / name)
        finally:
            env.close()
    finally:
        parts.close()
    return written


def default_gl() -> None:
    """Pick EGL for MuJoCo's offscreen rendering when nothing is set (call before importing mujoco)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
