"""PNG plots of training curves and adaptation curves (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training(metrics: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Pre- and post-adaptation mean return against the meta-iteration."""
    iterations = [m["iteration"] for m in metrics]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(iterations, [m["pre_return"] for m in metrics], label="before adaptation")
    ax.plot(iterations, [m["post_return"] for m in metrics], label="after adaptation")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("mean episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_adaptation(result: dict[str, Any], path: str | Path, title: str = "", label: str = "MAML") -> None:
    """Mean return (+- standard error over test tasks) against the number of adaptation steps."""
    fig, ax = plt.subplots(figsize=(4.5, 3.5), dpi=100)
    ax.errorbar(result["steps"], result["mean_return"], yerr=result["stderr"], marker="o", capsize=3, label=label)
    ax.set_xticks(result["steps"])
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel("average return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
