"""Meta-test evaluation with the MAML paper's protocol.

From the meta-learned parameters, each of ``num_tasks`` held-out tasks (``metarl.run.factory.eval_tasks``) is
adapted with policy-gradient steps on fresh episodes (the run's inner loss, plain VPG by default);
the average episode return is recorded before each step. Reported: the mean over tasks after
0..num_steps steps, with its standard error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import torch

from metarl import config as cfg
from metarl.envs.base import implements, task_to_json
from metarl.maml import MetaSGDStepSizes, adapt
from metarl.policy import GaussianMLPPolicy, Params, detach_params, expand_params
from metarl.sampler import BaseSampler


def check_eval_tasks(env: gym.Env, source: str) -> None:
    """Raise a :class:`ConfigError` naming ``eval.tasks`` when ``env`` cannot supply ``source``."""
    if source not in cfg.EVAL_TASK_SOURCES:
        raise cfg.ConfigError(f"eval.tasks: must be one of {', '.join(cfg.EVAL_TASK_SOURCES)}, got {source!r}")
    if source == "paper" and not implements(env, "paper_test_tasks"):
        raise cfg.ConfigError(
            f"eval.tasks: {type(env.unwrapped).__name__} has no paper test tasks (only envs that define "
            "paper_test_tasks, e.g. metarl/Navigation2D-v0); use eval.tasks=seeded"
        )


def evaluate(
    policy: GaussianMLPPolicy,
    sampler: BaseSampler,
    tasks: list[Any],
    num_steps: int = 3,
    step_sizes: tuple[float, ...] = (0.1, 0.05),
    episodes_per_task: int = 40,
    gamma: float = 0.99,
    gae_lambda: float = 1.0,
    baseline_ridge: float = 1e-5,
    normalize_advantages: bool = True,
    budget: str = "episodes",
    on_step: Callable[[int, Params], None] | None = None,
    inner_loss: str = "vpg",
    learned_step_sizes: Params | None = None,
    bootstrap_truncated: bool = False,
    pack_episodes: bool = True,
) -> dict[str, Any]:
    """Adapt ``policy`` to each task for ``num_steps`` inner steps and record returns after each.

    Step ``k`` (0-based) uses ``step_sizes[min(k, len(step_sizes) - 1)]``, or Meta-SGD's
    ``learned_step_sizes`` (per-parameter tensors) at every step when given. ``budget`` is the
    sampler's ("episodes" or "steps"); ``on_step(k, params)`` sees the per-task parameters after
    ``k`` steps (``metarl render`` keeps them).

    Returns:
        A JSON-ready dict: ``num_tasks``, ``steps`` (0..num_steps), ``mean_return`` and ``stderr``
        (aligned with ``steps``; stderr = sample std over tasks / sqrt(num_tasks)), ``step_sizes``,
        ``episodes_per_task``, ``per_task_returns`` ([step][task]) and ``tasks``.
    """
    num_tasks = len(tasks)
    params = detach_params(expand_params(policy.parameters_dict(), num_tasks))
    per_task: list[torch.Tensor] = []
    used_step_sizes = []
    for k in range(num_steps + 1):
        if on_step is not None:
            on_step(k, params)  # the per-task parameters after k steps (e.g. to render them)
        episodes = sampler.sample(policy, params, tasks, episodes_per_task, budget)
        per_task.append(episodes.task_mean_returns().cpu().double())
        if k == num_steps:
            break
        step_size = learned_step_sizes if learned_step_sizes is not None else step_sizes[min(k, len(step_sizes) - 1)]
        used_step_sizes.append("learned" if learned_step_sizes is not None else step_size)
        episodes.compute_advantages(gamma, gae_lambda, baseline_ridge, normalize_advantages, bootstrap_truncated)
        adapt_on = episodes.pack() if pack_episodes else episodes  # the same step on the valid steps only
        params = detach_params(adapt(policy, params, adapt_on, step_size, first_order=True, inner_loss=inner_loss))
    means = [float(r.mean()) for r in per_task]
    stderrs = [float(r.std(unbiased=True)) / math.sqrt(num_tasks) if num_tasks > 1 else 0.0 for r in per_task]
    return {
        "num_tasks": num_tasks,
        "steps": list(range(num_steps + 1)),
        "mean_return": means,
        "stderr": stderrs,
        "step_sizes": used_step_sizes,
        "episodes_per_task": episodes_per_task,
        "budget": budget,
        "per_task_returns": [r.tolist() for r in per_task],
        "tasks": [task_to_json(t) for t in tasks],
    }


def evaluate_protocol(
    config: cfg.Config,
    policy: GaussianMLPPolicy,
    sampler: BaseSampler,
    tasks: list[Any],
    step_sizes: MetaSGDStepSizes | None = None,
    num_steps: int | None = None,
    on_step: Callable[[int, Params], None] | None = None,
) -> dict[str, Any]:
    """:func:`evaluate` with the protocol of ``config.eval`` and the run's inner loss and advantages;
    ``step_sizes``: a Meta-SGD run's learned ones; ``num_steps`` overrides ``eval.num_steps``."""
    ev, maml = config.eval, config.maml
    learned = None if step_sizes is None else detach_params(step_sizes.as_params())
    return evaluate(
        policy, sampler, tasks, ev.num_steps if num_steps is None else num_steps, tuple(ev.step_sizes),
        ev.episodes_per_task, maml.gamma, maml.gae_lambda, maml.baseline_ridge, maml.normalize_advantages, ev.budget,
        on_step, maml.inner_loss, learned, config.sampler.bootstrap_truncated, maml.pack_episodes,
    )


def format_table(result: dict[str, Any]) -> str:
    """The adaptation table: one row per number of steps, mean +- standard error over tasks."""
    lines = [f"{'steps':>5}  {'mean return':>12}  {'s.e.':>7}   ({result['num_tasks']} test tasks)"]
    for step, mean, se in zip(result["steps"], result["mean_return"], result["stderr"], strict=True):
        lines.append(f"{step:>5}  {mean:>12.2f}  {se:>7.2f}")
    return "\n".join(lines)
