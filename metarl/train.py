"""``metarl train``: compose the run layer into a training run, new or resumed.

The order of a start is the guarantee that a failed start leaves nothing behind: every check that
can fail (config, env, device, Ray, evaluation tasks, tracking) runs before the run directory is
claimed, and a run that fails before its first meta-iteration is written removes its directory.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from metarl import config as cfg
from metarl.run.factory import build, resolve
from metarl.run.hooks import default_hooks
from metarl.run.loop import RunState, TrainingInterrupted, run_loop
from metarl.run.rundir import RESUME_OVERRIDES, RunDir, config_differences
from metarl.run.state import restore_state
from metarl.tracking import Tracker, check_tracking

__all__ = ["TrainingInterrupted", "resume", "train"]


def _say(quiet: bool):
    from tqdm import tqdm

    return (lambda text: None) if quiet else (lambda text: tqdm.write(text))


def train(config: cfg.Config, quiet: bool = False) -> Path:
    """Meta-train as configured; returns the run directory (see :mod:`metarl.run.rundir` for what
    it holds). SIGINT or SIGTERM finish the current meta-iteration, write a checkpoint and raise
    :class:`TrainingInterrupted`; a second signal abandons the iteration."""
    parts = build(config)
    try:
        check_tracking(config)
        run = RunDir.create(config)
        try:
            tracker = Tracker(config, run.path)
        except BaseException:
            run.remove()
            raise
        say = _say(quiet)
        say(f"run directory: {run.path}  (device {parts.device})")
        for note in parts.notes:
            say(note)
        state = RunState(config, parts, run, start=0, best_post_return=-math.inf, say=say)
        try:
            run_loop(state, default_hooks(tracker, quiet))
        except BaseException as exc:
            if state.done == 0 and not isinstance(exc, TrainingInterrupted):
                run.remove()  # nothing of the run was written: the same run.name can be used again
            raise
    finally:
        parts.close()
    return run.path


def resume(run_dir: str | Path, overrides: list[str] | None = None, quiet: bool = False,
           checkpoint: str | Path | None = None) -> Path:
    """Continue a run from ``RUN_DIR/checkpoints/last.pt`` (or ``checkpoint``); on CPU the metrics are
    the same as an uninterrupted run's. ``overrides`` may only touch
    :data:`~metarl.run.rundir.RESUME_OVERRIDES`; a ``config.yaml`` edited elsewhere is refused.
    The run continues on the device it started on unless ``run.device`` is overridden. A run whose
    training is complete but whose end-of-run evaluation was interrupted only runs that."""
    run = RunDir.open(run_dir)
    refusal = f"a resumed run only accepts overrides of {', '.join(RESUME_OVERRIDES)}"
    config = run.load_config(overrides, RESUME_OVERRIDES, refusal)
    path = Path(checkpoint) if checkpoint else run.checkpoint()
    state = run.load_checkpoint(path)
    edited = config_differences(state["config"], run.load_config(), RESUME_OVERRIDES)
    if edited:
        raise cfg.ConfigError(
            f"{run.config_path} differs from the config {path} was trained with: {'; '.join(edited)}. "
            f"A resumed run only accepts changes to {', '.join(RESUME_OVERRIDES)}: restore those fields, "
            "or start a new run with the new config"
        )
    device = _resume_device(state, overrides or [], config)
    start = int(state["iteration"])
    if start > config.run.iterations or (start == config.run.iterations and state.get("finished", True)):
        raise cfg.ConfigError(
            f"run.iterations: {run.path} already has {start} of {config.run.iterations} meta-iterations"
            + (" and its evaluation" if state.get("finished") else "")
            + f"; pass run.iterations=N with N > {start} to train further"
        )
    parts = build(config, device)
    try:
        notes = restore_state(parts, state, path)
        check_tracking(config)
        previous = run.keep_metrics_before(start)
        run.write_config(config)
        tracker = Tracker(config, run.path, resume_id=state.get("tracking_id"))
        say = _say(quiet)
        what = "resumed at meta-iteration" if start < config.run.iterations else "training complete; evaluating after"
        say(f"run directory: {run.path}  (device {parts.device}), {what} {start}")
        for note in parts.notes + notes:
            say(note)
        loop_state = RunState(config, parts, run, start=start, best_post_return=float(state["best_post_return"]),
                              total_env_steps=previous[-1]["total_env_steps"] if previous else 0,
                              wall_time_before=previous[-1]["wall_time"] if previous else 0.0, say=say)
        run_loop(loop_state, default_hooks(tracker, quiet))
    finally:
        parts.close()
    return run.path


def _resume_device(state: dict, overrides: list[str], config: cfg.Config) -> torch.device:
    """The device a resumed run continues on: ``run.device`` when overridden, else the one it ran on
    (not ``auto`` re-resolved, which could move a CPU run onto a GPU that appeared since)."""
    if any(text.partition("=")[0] == "run.device" for text in overrides) or "device" not in state:
        return resolve(config.run.device)
    saved = torch.device(state["device"])
    if saved.type == "cuda" and not torch.cuda.is_available():
        raise cfg.ConfigError(
            f"run.device: the run was trained on {saved}, which is not available here; pass run.device=cpu to "
            "continue on the CPU (its action-noise stream then restarts, so it will not match an uninterrupted run)"
        )
    return saved
