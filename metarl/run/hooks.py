"""What a run does around its meta-iterations, one hook per concern (see :class:`metarl.run.loop.Hook`).

- :class:`MetricsLog`: one line of ``metrics.jsonl`` per iteration, flushed at once.
- :class:`Progress`: the progress bar (or nothing with ``--quiet``).
- :class:`Checkpoints`: ``best.pt`` on every new best post-adaptation return; ``last.pt`` every
  ``run.checkpoint_every`` iterations or ``run.checkpoint_minutes`` minutes (whichever comes
  first), after the last iteration and at a signal.
- :class:`RunFinished`: ``last.pt`` marked finished once the end-of-run steps are done.
- :class:`Plots`: ``training.png`` and ``metrics.csv`` at a stop and at the end.
- :class:`Evaluation`: the test protocol at the end (``eval.at_end``), its table, and the videos.
- :class:`WandbLog`: metrics, evaluation, videos and checkpoint artifacts to Weights & Biases.
"""

from __future__ import annotations

import json
import time
from typing import IO, Any

from metarl.evaluate import format_table
from metarl.plots import plot_training
from metarl.progress import progress_bar
from metarl.run.evaluation import evaluation_file, run_evaluation
from metarl.run.factory import train_evaluation
from metarl.run.loop import Hook, RunState
from metarl.run.rundir import BEST_CHECKPOINT, CHECKPOINT
from metarl.run.state import checkpoint_state
from metarl.tracking import Tracker


class MetricsLog(Hook):
    def __init__(self) -> None:
        self.file: IO[str] | None = None

    def on_start(self, state: RunState) -> None:
        self.file = open(state.run.metrics_path, "a")  # noqa: SIM115 (closed by close())

    def on_iteration(self, state: RunState, metrics: dict[str, Any]) -> None:
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class Progress(Hook):
    def __init__(self, quiet: bool):
        self.quiet, self.bar = quiet, None

    def on_start(self, state: RunState) -> None:
        iterations = state.config.run.iterations
        self.bar = progress_bar(total=iterations, initial=state.start, desc="meta-training", unit="it",
                                disable=self.quiet, dynamic_ncols=True)

    def on_iteration(self, state: RunState, metrics: dict[str, Any]) -> None:
        seconds = metrics["time_sampling"] + metrics["time_adapt"] + metrics["time_update"]
        success = {} if metrics.get("post_success") is None else {"success": f"{metrics['post_success']:.0%}"}
        self.bar.set_postfix(pre=f"{metrics['pre_return']:.1f}", post=f"{metrics['post_return']:.1f}", **success,
                             kl=f"{metrics['kl']:.4f}", steps_per_s=f"{metrics['env_steps'] / seconds:.0f}",
                             refresh=False)
        self.bar.update(1)

    def on_end(self, state: RunState) -> None:
        self.close()  # before the end-of-run messages and the evaluation table
        if state.done > state.start:
            state.say(f"trained {state.config.run.iterations} meta-iterations in {state.wall_time:.0f} s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _checkpoint(state: RunState, tracker: Tracker, finished: bool = False) -> dict[str, Any]:
    return checkpoint_state(state.config, state.parts, state.done, state.best_post_return, tracker.run_id, finished)


class Checkpoints(Hook):
    """``best.pt`` and ``last.pt`` during training and at a stop; it runs before the other hooks'
    side work, so a plot that fails never costs the checkpoint."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self.saved_at = -1  # the iteration count last.pt holds
        self.last_save = time.monotonic()

    def _save(self, state: RunState) -> None:
        state.run.save_checkpoint(_checkpoint(state, self.tracker))
        self.saved_at, self.last_save = state.done, time.monotonic()

    def on_start(self, state: RunState) -> None:
        self.saved_at, self.last_save = state.start, time.monotonic()

    def on_iteration(self, state: RunState, metrics: dict[str, Any]) -> None:
        run = state.config.run
        if metrics["post_return"] > state.best_post_return:
            state.best_post_return = metrics["post_return"]
            state.run.save_checkpoint(_checkpoint(state, self.tracker), best=True)
        overdue = run.checkpoint_minutes > 0 and time.monotonic() - self.last_save >= 60 * run.checkpoint_minutes
        if state.done % run.checkpoint_every == 0 or state.done == run.iterations or overdue:
            self._save(state)

    def on_stop(self, state: RunState, signum: int) -> None:
        if self.saved_at != state.done:
            self._save(state)


class RunFinished(Hook):
    """After the end-of-run steps (the evaluation): ``last.pt`` marked finished, so that a resume
    knows nothing is left to do; what follows (uploads) cannot make the run unfinished."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_end(self, state: RunState) -> None:
        state.run.save_checkpoint(_checkpoint(state, self.tracker, finished=True))
        state.phase = "finishing"


class Plots(Hook):
    def _write(self, state: RunState) -> None:
        metrics = state.run.read_metrics()
        if metrics:
            plot_training(metrics, state.run.path / "training.png", title=state.config.env.id)
            state.run.write_metrics_csv(metrics)

    def on_stop(self, state: RunState, signum: int) -> None:
        self._write(state)

    def on_end(self, state: RunState) -> None:
        self._write(state)


class Evaluation(Hook):
    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_end(self, state: RunState) -> None:
        if not state.config.eval.at_end:
            return
        # Training is over: the training sampler's sub-envs (worker processes, simulators) go first,
        # so that they and the evaluation's never take memory together (ML45: 450 simulators).
        state.parts.sampler.close()
        train = train_evaluation(state.config)  # eval.train_tasks, after the held-out tasks
        for config in [state.config, *([train] if train else [])]:
            result = run_evaluation(config, state.parts, state.run)
            plot = evaluation_file(state.run.path, result["eval_tasks"]).with_suffix(".png")
            self.tracker.log_evaluation(result, plot)
            state.say(format_table(result))
        self.tracker.log_videos(state.config, state.run.path, state.say)


class WandbLog(Hook):
    """Ends the wandb run with the run's exit code; the iterations' metrics go to it as they come."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_iteration(self, state: RunState, metrics: dict[str, Any]) -> None:
        self.tracker.log_iteration(metrics)

    def on_stop(self, state: RunState, signum: int) -> None:
        self.tracker.finish(exit_code=128 + signum)

    def on_end(self, state: RunState) -> None:
        if state.config.tracking.log_checkpoints:
            self.tracker.log_checkpoints({"latest": state.run.checkpoint(CHECKPOINT),
                                          "best": state.run.checkpoint(BEST_CHECKPOINT)})
        self.tracker.finish()

    def on_error(self, state: RunState, exc: BaseException) -> None:
        self.tracker.finish(exit_code=1)


def default_hooks(tracker: Tracker, quiet: bool) -> list[Hook]:
    """The hooks of ``metarl train``, in the order they run at each event."""
    return [MetricsLog(), Progress(quiet), Checkpoints(tracker), Plots(), Evaluation(tracker), RunFinished(tracker),
            WandbLog(tracker)]


__all__ = ["Checkpoints", "Evaluation", "MetricsLog", "Plots", "Progress", "RunFinished", "WandbLog", "default_hooks"]
