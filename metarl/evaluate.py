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
from metarl.envs.base import implements, task_to_json, tasks_by_class
from metarl.maml import MetaSGDStepSizes, adapt, cavia_step_size
from metarl.policy import GaussianMLPPolicy, Params, detach_params, expand_params
from metarl.sampler import BaseSampler


def check_eval_tasks(env: gym.Env, source: str, num_tasks: int | None = None, tasks_per_chunk: int = 0,
                     count_field: str = "eval.num_tasks") -> None:
    """Raise a :class:`ConfigError` naming ``eval.tasks`` when ``env`` cannot supply ``source``, or
    ``count_field`` (the field that gave ``num_tasks``) / ``eval.tasks_per_chunk`` when that many
    tasks do not suit it (``TaskEnv.task_count_error``: for ``paper`` tasks with split ``"paper"``)."""
    chunk_field = "eval.tasks_per_chunk" + ("" if count_field == "eval.num_tasks" else f" (chunks of {count_field})")
    if source not in cfg.EVAL_TASK_SOURCES:
        raise cfg.ConfigError(f"eval.tasks: must be one of {', '.join(cfg.EVAL_TASK_SOURCES)}, got {source!r}")
    if source == "paper" and not implements(env, "paper_test_tasks"):
        raise cfg.ConfigError(
            f"eval.tasks: {type(env.unwrapped).__name__} has no paper test tasks (only envs that define "
            "paper_test_tasks, e.g. metarl/Navigation2D-v0); use eval.tasks=seeded"
        )
    if num_tasks is not None and implements(env, "task_count_error"):
        split = {"train": "train", "paper": "paper"}.get(source, "test")
        # A chunk of at least eval.num_tasks is one chunk of every task: only eval.num_tasks matters.
        chunk = tasks_per_chunk if tasks_per_chunk < num_tasks else 0
        for field, count in ((count_field, num_tasks), (chunk_field, chunk)):
            error = env.unwrapped.task_count_error(count, split) if count else None
            if error:
                raise cfg.ConfigError(f"{field}: {error}")


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
    final_episodes_per_task: int = 0,
    tasks_per_chunk: int = 0,
    context_only: bool = False,
) -> dict[str, Any]:
    """Adapt ``policy`` to each task for ``num_steps`` inner steps and record returns after each.

    Step ``k`` (0-based) uses ``step_sizes[min(k, len(step_sizes) - 1)]``, or Meta-SGD's
    ``learned_step_sizes`` (per-parameter tensors) at every step when given. ``budget`` is the
    sampler's ("episodes" or "steps"). The episodes after the last step are
    ``final_episodes_per_task`` per task when set (Meta-World's protocol: 10 episodes to adapt on,
    3 to evaluate), else ``episodes_per_task``. ``tasks_per_chunk`` (0: all at once) runs the whole
    protocol on that many tasks at a time, so that the sub-envs and episodes of a large test set
    never sit in memory together; each task's adaptation is its own either way, only the random
    streams of the sampling differ. ``on_step(k, params)`` sees the per-task parameters after ``k``
    steps (``metarl render`` keeps them); with it the tasks run in one chunk. ``context_only``
    (CAVIA): each step adapts only the policy's context, with the step sizes given.

    Returns:
        A JSON-ready dict: ``num_tasks``, ``steps`` (0..num_steps), ``mean_return`` and ``stderr``
        (aligned with ``steps``; stderr = sample std over tasks / sqrt(num_tasks)), ``step_sizes``,
        ``episodes_per_task``, ``per_task_returns`` ([step][task]) and ``tasks``; for envs that report
        success, ``success_rate`` and ``success_stderr`` (over tasks, aligned with ``steps``),
        ``per_task_success`` ([step][task]) and, for tasks with an ``env_name`` (Meta-World's classes),
        ``per_class_success`` and ``per_class_success_stderr`` ({class: [step]}, over the class's tasks).
    """
    num_tasks = len(tasks)
    chunk = num_tasks if on_step is not None or tasks_per_chunk <= 0 else tasks_per_chunk
    returns: list[list[torch.Tensor]] = [[] for _ in range(num_steps + 1)]
    successes: list[list[torch.Tensor | None]] = [[] for _ in range(num_steps + 1)]
    used_step_sizes = []
    for begin in range(0, num_tasks, chunk):
        part = tasks[begin:begin + chunk]
        params = detach_params(expand_params(policy.parameters_dict(), len(part)))
        used_step_sizes = []
        for k in range(num_steps + 1):
            if on_step is not None:
                on_step(k, params)  # the per-task parameters after k steps (e.g. to render them)
            last = k == num_steps and final_episodes_per_task
            episodes_k = final_episodes_per_task if last else episodes_per_task
            episodes = sampler.sample(policy, params, part, episodes_k, budget)
            returns[k].append(episodes.task_mean_returns().cpu().double())
            success = episodes.task_success_rates()
            successes[k].append(None if success is None else success.cpu().double())
            if k == num_steps:
                break
            fixed = step_sizes[min(k, len(step_sizes) - 1)]
            step_size = learned_step_sizes if learned_step_sizes is not None else fixed
            used_step_sizes.append("learned" if learned_step_sizes is not None else fixed)
            if context_only:  # CAVIA
                step_size = cavia_step_size(fixed)
            episodes.compute_advantages(gamma, gae_lambda, baseline_ridge, normalize_advantages, bootstrap_truncated)
            adapt_on = episodes.pack() if pack_episodes else episodes  # the same step on the valid steps only
            params = detach_params(adapt(policy, params, adapt_on, step_size, first_order=True, inner_loss=inner_loss))
    per_task = [torch.cat(r) for r in returns]
    result = {
        "num_tasks": num_tasks,
        "steps": list(range(num_steps + 1)),
        "mean_return": [float(r.mean()) for r in per_task],
        "stderr": [stderr(r) for r in per_task],
        "step_sizes": used_step_sizes,
        "episodes_per_task": episodes_per_task,
        **({"final_episodes_per_task": final_episodes_per_task} if final_episodes_per_task else {}),
        "budget": budget,
        "per_task_returns": [r.tolist() for r in per_task],
        "tasks": [task_to_json(t) for t in tasks],
    }
    if any(s is not None for step in successes for s in step):
        # A chunk in which no step reported success (an env that only says so when it succeeds) had none.
        per_task_success = [torch.cat([torch.zeros_like(r) if s is None else s for s, r in zip(ss, rs, strict=True)])
                            for ss, rs in zip(successes, returns, strict=True)]
        result["success_rate"] = [float(s.mean()) for s in per_task_success]
        result["success_stderr"] = [stderr(s) for s in per_task_success]
        result["per_task_success"] = [s.tolist() for s in per_task_success]
        members = tasks_by_class([getattr(t, "env_name", None) for t in tasks])
        if members:
            result["per_class_success"] = {name: [float(s[rows].mean()) for s in per_task_success]
                                           for name, rows in members.items()}
            result["per_class_success_stderr"] = {name: [stderr(s[rows]) for s in per_task_success]
                                                  for name, rows in members.items()}
    return result


def stderr(values: torch.Tensor) -> float:
    """Sample standard deviation over tasks / sqrt(tasks); 0 for one task."""
    return float(values.std(unbiased=True)) / math.sqrt(len(values)) if len(values) > 1 else 0.0


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
        ev.final_episodes_per_task, ev.tasks_per_chunk, policy.context_dim > 0,  # CAVIA (baselines have no context)
    )


def format_table(result: dict[str, Any]) -> str:
    """The adaptation table: one row per number of steps, mean +- standard error over tasks."""
    success = "success_rate" in result
    lines = [f"{'steps':>5}  {'mean return':>12}  {'s.e.':>7}" + (f"  {'success':>8}  {'s.e.':>6}" if success else "")
             + f"   ({result['num_tasks']} {'training' if result.get('eval_tasks') == 'train' else 'test'} tasks)"]
    for i, (step, mean, se) in enumerate(zip(result["steps"], result["mean_return"], result["stderr"], strict=True)):
        line = f"{step:>5}  {mean:>12.2f}  {se:>7.2f}"
        if success:
            line += f"  {result['success_rate'][i]:>8.1%}  {result['success_stderr'][i]:>6.1%}"
        lines.append(line)
    return "\n".join(lines)
