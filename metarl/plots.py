"""PNG plots of training curves and adaptation curves (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training(metrics: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Pre- and post-adaptation mean return against the meta-iteration, and the success rates beside
    it for envs that report success."""
    iterations = [m["iteration"] for m in metrics]
    success = all("post_success" in m for m in metrics) and bool(metrics)
    fig, axes = plt.subplots(1, 2 if success else 1, figsize=(10 if success else 6, 3.5), dpi=100, squeeze=False)
    ax = axes[0, 0]
    ax.plot(iterations, [m["pre_return"] for m in metrics], label="before adaptation")
    ax.plot(iterations, [m["post_return"] for m in metrics], label="after adaptation")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("mean episode return")
    if success:
        right = axes[0, 1]
        right.plot(iterations, [m["pre_success"] for m in metrics], label="before adaptation")
        right.plot(iterations, [m["post_success"] for m in metrics], label="after adaptation")
        _success_axis(right, "meta-iteration")
    for a in axes[0]:
        a.set_title(title)
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _success_axis(ax: Any, xlabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)


def plot_adaptation(result: dict[str, Any], path: str | Path, title: str = "", label: str = "MAML") -> None:
    """Mean return (+- standard error over test tasks) against the number of adaptation steps, and the
    success rate beside it for envs that report success."""
    success = "success_rate" in result
    fig, axes = plt.subplots(1, 2 if success else 1, figsize=(9 if success else 4.5, 3.5), dpi=100, squeeze=False)
    ax = axes[0, 0]
    ax.errorbar(result["steps"], result["mean_return"], yerr=result["stderr"], marker="o", capsize=3, label=label)
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel("average return")
    if success:
        right = axes[0, 1]
        right.errorbar(result["steps"], result["success_rate"], yerr=result["success_stderr"], marker="o", capsize=3,
                       label=label)
        _success_axis(right, "number of gradient steps")
    for a in axes[0]:
        a.set_xticks(result["steps"])
        a.set_title(title)
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (shorter at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_runs(runs: list[dict[str, Any]], path: str | Path, title: str = "", window: int = 1) -> None:
    """Several runs on one figure: post-adaptation (solid) and pre-adaptation (dashed) return against
    the meta-iteration, and, for the runs that were evaluated, return against adaptation steps.

    Args:
        runs: dicts with ``label``, ``metrics`` (the ``metrics.jsonl`` lines) and ``eval`` (``eval.json``
            or None).
        window: moving-average window for the training curves.
    """
    evaluated = [run for run in runs if run.get("eval")]
    fig, axes = plt.subplots(1, 2 if evaluated else 1, figsize=(11 if evaluated else 6.5, 4), dpi=100, squeeze=False)
    curves = axes[0][0]
    for index, run in enumerate(runs):
        color = f"C{index % 10}"
        iterations = [m["iteration"] for m in run["metrics"]]
        curves.plot(iterations, smooth([m["post_return"] for m in run["metrics"]], window), color=color,
                    label=run["label"])
        curves.plot(iterations, smooth([m["pre_return"] for m in run["metrics"]], window), color=color, ls="--",
                    alpha=0.6)
    curves.set_xlabel("meta-iteration")
    curves.set_ylabel("mean episode return")
    curves.set_title("training: after (solid) and before (dashed) adaptation")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=8)
    if evaluated:
        adaptation = axes[0][1]
        for index, run in enumerate(runs):
            result = run.get("eval")
            if result:
                adaptation.errorbar(result["steps"], result["mean_return"], yerr=result["stderr"], marker="o",
                                    capsize=3, color=f"C{index % 10}", label=run["label"])
        steps = sorted({s for run in evaluated for s in run["eval"]["steps"]})
        adaptation.set_xticks(steps)
        adaptation.set_xlabel("number of gradient steps")
        adaptation.set_ylabel("average return (test tasks)")
        adaptation.set_title("evaluation")
        adaptation.grid(alpha=0.3)
        adaptation.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_adaptation_curves(results: dict[str, dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Return against adaptation steps for several methods (an oracle without steps is a line)."""
    fig, ax = plt.subplots(figsize=(5, 3.8), dpi=100)
    steps = sorted({s for r in results.values() for s in r["steps"]})
    for index, (label, result) in enumerate(results.items()):
        color = f"C{index % 10}"
        if len(result["steps"]) == 1:
            ax.axhline(result["mean_return"][0], color=color, ls="--", label=label)
        else:
            ax.errorbar(result["steps"], result["mean_return"], yerr=result["stderr"], marker="o", capsize=3,
                        color=color, label=label)
    ax.set_xticks(steps)
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel("average return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
