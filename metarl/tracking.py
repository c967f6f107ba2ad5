"""Experiment tracking in Weights & Biases, next to the run directory (which is always written).

Keys are namespaced and plotted against the meta-iteration: ``meta/`` (returns, KL, surrogate
losses, line search, env steps), ``adapt/`` (returns after each further inner step), ``time/``
(seconds per phase) and ``eval/`` (the adaptation curve of the test protocol, as a table and a
line plot, and mp4s of a few test tasks before and after adaptation). The resolved config, the
git commit and the package versions go into the run's config; checkpoints into a model artifact.
Offline runs live in ``RUN_DIR/wandb`` and upload with ``wandb sync``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from metarl import config as cfg
from metarl.checkpoint import versions

META_KEYS = ("pre_return", "post_return", "pre_success", "post_success",
             "kl", "loss_before", "loss_after", "grad_norm", "line_search_step",
             "step_accepted", "inner_kl", "env_steps", "total_env_steps")


def git_commit() -> str | None:
    """The commit of the metarl checkout, if it is one (None otherwise)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def namespaced(metrics: dict[str, Any]) -> dict[str, Any]:
    """One meta-iteration's metrics under wandb's namespaced keys."""
    out: dict[str, Any] = {"meta/iteration": metrics["iteration"]}
    for key in META_KEYS:
        if key in metrics:
            value = metrics[key]
            out[f"meta/{key}"] = -1 if key == "line_search_step" and value is None else value
    for step, value in enumerate(metrics.get("adapt_returns", []), start=2):
        out[f"adapt/return_after_{step}_steps"] = value
    for key, value in metrics.items():
        if key.startswith("time_") or key == "wall_time":
            out[f"time/{key.removeprefix('time_')}"] = value
    return out


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def check_tracking(config: cfg.Config) -> None:
    """Raise :class:`ConfigError` for a tracking setup that cannot start; writes nothing, so a run
    checks it before it creates its directory."""
    tracking = config.tracking
    if tracking.wandb and tracking.mode == "online" and not _has_api_key():
        raise cfg.ConfigError(
            "tracking.mode: online needs a wandb account (`wandb login` or WANDB_API_KEY); "
            "use tracking.mode=offline and `wandb sync` later"
        )


class Tracker:
    """Does nothing unless ``tracking.wandb`` is on (then see the module docstring)."""

    def __init__(self, config: cfg.Config, run_dir: Path, resume_id: str | None = None):
        self.run = None
        tracking = config.tracking
        if not tracking.wandb or tracking.mode == "disabled":
            return
        check_tracking(config)
        import wandb

        self.run = wandb.init(
            project=tracking.project, entity=tracking.entity, group=tracking.group,
            name=tracking.name or run_dir.name, tags=list(tracking.tags), mode=tracking.mode,
            dir=str(run_dir), config=cfg.to_dict(config), id=resume_id, resume="allow" if resume_id else None,
            settings=wandb.Settings(silent=True, console="off"),
        )
        self.run.config.update({"git_commit": git_commit(), "versions": versions()}, allow_val_change=True)
        self.run.define_metric("meta/iteration")
        for prefix in ("meta", "adapt", "time"):
            self.run.define_metric(f"{prefix}/*", step_metric="meta/iteration")

    @property
    def run_id(self) -> str | None:
        return None if self.run is None else self.run.id

    def log_iteration(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log(namespaced(metrics))

    def log_evaluation(self, result: dict[str, Any], plot_path: Path | None = None) -> None:
        if self.run is None:
            return
        import wandb

        prefix = "eval_train" if result.get("eval_tasks") == "train" else "eval"  # meta-train tasks apart
        rows = [[step, mean, err]
                for step, mean, err in zip(result["steps"], result["mean_return"], result["stderr"], strict=True)]
        table = wandb.Table(data=rows, columns=["adaptation steps", "mean return", "stderr"])
        logged: dict[str, Any] = {
            f"{prefix}/adaptation": wandb.plot.line(table, "adaptation steps", "mean return",
                                                    title="return after adaptation steps"),
            f"{prefix}/table": table,
        }
        if plot_path is not None and plot_path.is_file():
            logged[f"{prefix}/plot"] = wandb.Image(str(plot_path))
        self.run.log(logged)
        for step, mean in zip(result["steps"], result["mean_return"], strict=True):
            self.run.summary[f"{prefix}/return_after_{step}_steps"] = mean
        for step, rate in zip(result["steps"], result.get("success_rate", []), strict=False):
            self.run.summary[f"{prefix}/success_after_{step}_steps"] = rate

    def log_videos(self, config: cfg.Config, run_dir: Path, say: Any = print) -> None:
        """Render ``tracking.videos`` test tasks before and after adaptation and log the mp4s; an env
        that cannot render here is skipped with a message, never failing the run."""
        if self.run is None or config.tracking.videos == 0:
            return
        import wandb

        from metarl.render import RenderError, render_run

        try:
            paths = render_run(run_dir, num_tasks=config.tracking.videos, out_dir=run_dir / "videos")
        except RenderError as exc:
            say(f"wandb: no videos ({exc})")
            return
        self.run.log({f"eval/video/{path.stem}": wandb.Video(str(path), format="mp4") for path in paths})

    def log_checkpoints(self, paths: dict[str, Path]) -> None:
        """One model artifact with the existing files of ``paths`` (alias -> checkpoint file)."""
        if self.run is None:
            return
        import wandb

        artifact = wandb.Artifact(f"{self.run.name}-checkpoints", type="model")
        present = {alias: path for alias, path in paths.items() if path.is_file()}
        for path in present.values():
            artifact.add_file(str(path))
        if present:
            self.run.log_artifact(artifact, aliases=sorted(present))

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
