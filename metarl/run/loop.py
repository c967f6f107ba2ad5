"""The training loop: meta-iterations and signals, nothing else.

Everything that happens around an iteration (metrics, checkpoints, wandb, plots, the evaluation at
the end) is a :class:`~metarl.run.hooks.Hook`. SIGINT or SIGTERM during training finish the current
meta-iteration, let the hooks write a checkpoint and raise :class:`TrainingInterrupted`; a second
signal abandons the iteration (``KeyboardInterrupt``; the previous checkpoint stays). A signal
after the last iteration (during the evaluation) stops at once: the run resumes into its
end-of-run steps with ``metarl train --resume``. Once a hook has marked the run finished
(``state.phase = "finishing"``), a signal only cuts the remaining uploads short.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from metarl import config as cfg
from metarl.run.factory import Components
from metarl.run.iteration import meta_iteration
from metarl.run.rundir import RunDir


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM with a resumable run directory."""

    def __init__(self, run: RunDir, iteration: int, signum: int, during: str = "training"):
        self.run_dir, self.iteration, self.signum = run.path, iteration, signum
        name = signal.Signals(signum).name
        if during == "finishing":  # evaluation and final checkpoint written: only uploads were cut short
            super().__init__(f"{name}: stopped while finishing; the run in {run.path} is complete (wandb may lack "
                             "its last uploads)")
            return
        if during == "training" and iteration == 0:
            super().__init__(f"{name}: stopped before the first meta-iteration was recorded; nothing to resume")
            return
        where = (f"stopped after {iteration} meta-iterations, checkpoint written to {run.checkpoint()}"
                 if during == "training" else f"stopped during the end-of-run {during} (training is complete)")
        super().__init__(f"{name}: {where}; resume with: metarl train --resume {run.path}")


@dataclass
class RunState:
    """What the loop and its hooks share about the run in progress."""

    config: cfg.Config
    parts: Components
    run: RunDir
    start: int  # iterations done before this process started
    best_post_return: float
    total_env_steps: int = 0
    wall_time_before: float = 0.0  # seconds of training before this process started
    say: Callable[[str], None] = print
    done: int = 0  # iterations done so far
    phase: str = "training"
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.done = self.start

    @property
    def wall_time(self) -> float:
        return self.wall_time_before + time.perf_counter() - self.started


class Hook:
    """Side work of a run; every method does nothing unless overridden."""

    def on_start(self, state: RunState) -> None:
        """Before the first iteration of this process."""

    def on_iteration(self, state: RunState, metrics: dict[str, Any]) -> None:
        """After each meta-iteration (``state.done`` counts it)."""

    def on_stop(self, state: RunState, signum: int) -> None:
        """After the iteration a signal arrived in; the run must be left resumable."""

    def on_end(self, state: RunState) -> None:
        """After the last iteration (also when a resumed run had no iteration left)."""

    def on_error(self, state: RunState, exc: BaseException) -> None:
        """When anything raised (the run directory keeps its last checkpoint)."""

    def close(self) -> None:
        """Last, however the loop ended (finished, stopped or raised): release files and displays."""


def run_loop(state: RunState, hooks: Sequence[Hook]) -> None:
    """Meta-iterations ``state.start .. run.iterations``, then the end of the run, calling ``hooks``."""
    stop: dict[str, int | None] = {"signum": None}

    def on_signal(signum: int, frame: Any) -> None:
        if state.phase != "training":  # the evaluation at the end: nothing to finish, the checkpoint is written
            raise TrainingInterrupted(state.run, state.done, signum, during=state.phase)
        if stop["signum"] is not None:
            raise KeyboardInterrupt  # a second signal: abandon the iteration (the last checkpoint stays)
        stop["signum"] = signum
        state.say(f"{signal.Signals(signum).name}: finishing this meta-iteration, then writing a checkpoint "
                  "(send it again to stop at once)")

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for hook in hooks:
            hook.on_start(state)
        for iteration in range(state.start, state.config.run.iterations):
            if stop["signum"] is not None:  # arrived before this process's first iteration
                break
            metrics = meta_iteration(state.config, state.parts)
            state.done = iteration + 1
            state.total_env_steps += metrics["env_steps"]
            metrics = {"iteration": iteration, **metrics, "total_env_steps": state.total_env_steps,
                       "wall_time": state.wall_time}
            for hook in hooks:
                hook.on_iteration(state, metrics)
            if stop["signum"] is not None:
                break
        if stop["signum"] is not None:
            for hook in hooks:
                hook.on_stop(state, stop["signum"])
            raise TrainingInterrupted(state.run, state.done, stop["signum"])
        state.phase = "evaluation"
        for hook in hooks:
            hook.on_end(state)
    except TrainingInterrupted as stopped:
        if state.phase != "training":
            for hook in hooks:
                hook.on_stop(state, stopped.signum)
        raise
    except BaseException as exc:
        for hook in hooks:
            hook.on_error(state, exc)
        raise
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for hook in hooks:
            hook.close()
