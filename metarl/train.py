"""``metarl train``: compose the run layer into a training run, new or resumed.

The order of a start is the guarantee that a failed start leaves nothing behind: every check that
can fail (config, env, device, Ray, evaluation tasks, tracking) runs before the run directory is
claimed or changed, and a new run that fails before its first meta-iteration is recorded removes
its directory.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch

from metarl import config as cfg
from metarl.checkpoint import version_changes
from metarl.run.factory import Components, build, resolve
from metarl.run.hooks import default_hooks
from metarl.run.loop import RunState, TrainingInterrupted, run_loop
from metarl.run.rundir import RESUME_OVERRIDES, RunDir, config_differences
from metarl.run.state import restore_state
from metarl.tracking import Tracker, check_tracking

__all__ = ["TrainingInterrupted", "resume", "train"]


def train(config: cfg.Config, quiet: bool = False) -> Path:
    """Meta-train as configured; returns the run directory (see :mod:`metarl.run.rundir` for what
    it holds). SIGINT or SIGTERM finish the current meta-iteration, write a checkpoint and raise
    :class:`TrainingInterrupted`; a second signal abandons the iteration. An exception raised while
    training carries ``run_dir``: the directory, or None when it was removed (nothing recorded)."""
    parts = build(config)
    try:
        check_tracking(config)
        run = RunDir.create(config)
        with run.training():
            try:
                tracker = Tracker(config, run.path)
            except BaseException:
                run.remove()
                raise
            state = RunState(config, parts, run, start=0, best_post_return=-math.inf)
            try:
                _run(state, tracker, quiet, [])
            except BaseException as exc:
                if state.done == 0:
                    run.remove()  # nothing of the run was recorded: the same run.name can be used again
                exc.run_dir = None if state.done == 0 else run.path
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
    with run.training():  # before anything is read: another process may be writing it
        return _resume(run, overrides, quiet, checkpoint)


def _resume(run: RunDir, overrides: list[str] | None, quiet: bool, checkpoint: str | Path | None) -> Path:
    refusal = f"a resumed run only accepts overrides of {', '.join(RESUME_OVERRIDES)}"
    config = run.load_config(overrides, RESUME_OVERRIDES, refusal)
    path = Path(checkpoint) if checkpoint else run.checkpoint()
    saved = run.load_checkpoint(path)
    edited = config_differences(saved["config"], run.load_config(), RESUME_OVERRIDES)
    if edited:
        raise cfg.ConfigError(
            f"{run.config_path} differs from the config {path} was trained with: {'; '.join(edited)}. "
            f"A resumed run only accepts changes to {', '.join(RESUME_OVERRIDES)}: restore those fields, "
            "or start a new run with the new config"
        )
    start = int(saved["iteration"])
    if start > config.run.iterations or (start == config.run.iterations and saved.get("finished", True)):
        raise cfg.ConfigError(
            f"run.iterations: {run.path} already has {start} of {config.run.iterations} meta-iterations"
            + (" and its evaluation" if saved.get("finished") else "")
            + f"; pass run.iterations=N with N > {start} to train further"
        )
    changed = version_changes(saved.get("versions"))
    if changed:
        print(f"metarl train: warning: {path} was written with other package versions ({changed}): the "
              "resumed run will not be bit-identical to an uninterrupted one", file=sys.stderr, flush=True)
    parts = build(config, _resume_device(saved, overrides or [], config))
    try:
        notes = restore_state(parts, saved, path)
        check_tracking(config)
        tracker = Tracker(config, run.path, resume_id=saved.get("tracking_id"))
        # Every check has passed: only now is the run directory changed.
        previous = run.keep_metrics_before(start)
        run.write_config(config)
        state = RunState(config, parts, run, start=start, best_post_return=float(saved["best_post_return"]),
                         total_env_steps=previous[-1]["total_env_steps"] if previous else 0,
                         wall_time_before=previous[-1]["wall_time"] if previous else 0.0)
        try:
            _run(state, tracker, quiet, notes)
        except BaseException as exc:
            exc.run_dir = run.path
            raise
    finally:
        parts.close()
    return run.path


def _run(state: RunState, tracker: Tracker, quiet: bool, notes: list[str]) -> None:
    """Say where the run is and how it samples, then run the loop with the default hooks."""
    from tqdm import tqdm

    state.say = (lambda text: None) if quiet else tqdm.write
    parts: Components = state.parts
    start = state.start
    where = ""
    if start:
        where = (f", resumed at meta-iteration {start}" if start < state.config.run.iterations
                 else f", training complete ({start} meta-iterations): end-of-run steps only")
    state.say(f"run directory: {state.run.path}  (device {parts.device}){where}")
    for note in parts.notes + notes:
        state.say(note)
    run_loop(state, default_hooks(tracker, quiet))


def _resume_device(saved: dict[str, Any], overrides: list[str], config: cfg.Config) -> torch.device:
    """The device a resumed run continues on: ``run.device`` when overridden, else the one it ran on
    (not ``auto`` re-resolved, which could move a CPU run onto a GPU that appeared since)."""
    if any(text.partition("=")[0] == "run.device" for text in overrides) or "device" not in saved:
        return resolve(config.run.device)
    device = torch.device(saved["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise cfg.ConfigError(
            f"run.device: the run was trained on {device}, which is not available here; pass run.device=cpu to "
            "continue on the CPU (its action-noise stream then restarts, so it will not match an uninterrupted run)"
        )
    return device
