"""One meta-iteration: sample a meta-batch, adapt, sample after adaptation, take the outer update."""

from __future__ import annotations

import time
from typing import Any

import torch

from metarl import config as cfg
from metarl.episodes import Episodes
from metarl.maml import MetaBatch, adapt
from metarl.policy import Params, detach_params, expand_params
from metarl.run.factory import Components


def collect_meta_batch(config: cfg.Config, parts: Components, tasks: list[Any]) -> tuple[MetaBatch, dict[str, Any]]:
    """Sample ``tasks`` before each inner step, adapt, and sample after adaptation.

    Returns the batch the outer update runs on, each episode batch packed once after its advantages
    (``maml.pack_episodes``; the inner steps use the same packed batches), and what only the padded
    episodes can tell: ``pre_return``, ``post_return``, ``adapt_returns`` (after each further inner
    step), ``pre_success`` and ``post_success`` (success rates, for envs that report success),
    ``pre_length`` and ``post_length`` (mean episode length in steps), ``pre_terminated`` and
    ``post_terminated`` (the fraction of episodes that ended by termination, not by the horizon: a
    run whose episodes end early, an Ant falling or jumping out of its healthy range, shows it here),
    ``env_steps``, and seconds spent: ``time_sampling`` (all sampling, advantages and packing),
    ``time_sampling_valid`` (the post-adaptation batch) and ``time_adapt`` (the inner steps).
    """
    maml, sampler, policy = config.maml, parts.sampler, parts.policy

    def sample(params: Params) -> tuple[Episodes, Episodes]:
        """The padded episodes (for the returns) and what the update uses (packed, or the same)."""
        episodes = sampler.sample(policy, params, tasks, config.sampler.episodes_per_task, config.sampler.budget)
        episodes.compute_advantages(maml.gamma, maml.gae_lambda, maml.baseline_ridge, maml.normalize_advantages,
                                    config.sampler.bootstrap_truncated)
        return episodes, episodes.pack() if maml.pack_episodes else episodes

    start = time.perf_counter()
    train, returns, successes, first = [], [], [], None
    adapt_time = 0.0
    params = detach_params(expand_params(policy.parameters_dict(), len(tasks)))
    step_size = parts.inner_step_size(config)
    for _ in range(maml.inner_steps):
        episodes, used = sample(params)
        train.append(used)
        returns.append(episodes.mean_return())
        successes.append(episodes.success_rate())
        first = first or episodes
        adapt_start = time.perf_counter()
        # Only the values are needed to sample after adaptation; the meta-update rebuilds the graph.
        params = detach_params(adapt(policy, params, used, step_size, first_order=True, inner_loss=maml.inner_loss))
        adapt_time += time.perf_counter() - adapt_start
    valid_start = time.perf_counter()
    episodes, valid = sample(params)
    valid_time = time.perf_counter() - valid_start
    sampled = {
        "pre_return": returns[0],
        "post_return": episodes.mean_return(),
        "adapt_returns": returns[1:],
        # Logged once the env has reported success (a batch in which no step did counts as none).
        **({} if episodes.success is None and successes[0] is None else
           {"pre_success": successes[0] or 0.0, "post_success": episodes.success_rate() or 0.0}),
        "pre_length": first.mean_length(),
        "post_length": episodes.mean_length(),
        **({} if episodes.terminated is None else
           {"pre_terminated": first.terminated_rate(), "post_terminated": episodes.terminated_rate()}),
        "env_steps": sum(e.num_steps for e in train) + valid.num_steps,
        "time_sampling": time.perf_counter() - start - adapt_time,
        "time_sampling_valid": valid_time,
        "time_adapt": adapt_time,
    }
    return MetaBatch(train, valid), sampled


def meta_iteration(config: cfg.Config, parts: Components) -> dict[str, Any]:
    """Sample a meta-batch of training tasks, adapt, sample after adaptation, and take one outer update.
    Returns the iteration's metrics (one line of ``metrics.jsonl`` without its counters)."""
    tasks = parts.task_env.unwrapped.sample_tasks(config.maml.meta_batch_size)
    batch, sampled = collect_meta_batch(config, parts, tasks)
    update_start = time.perf_counter()
    outer = parts.outer.step(parts.policy, batch, parts.inner_step_size(config))
    update_time = time.perf_counter() - update_start
    if parts.step_sizes is not None:
        alphas = torch.cat([a.detach().flatten() for a in parts.step_sizes.parameters()])
        outer["inner_lr_mean"], outer["inner_lr_min"], outer["inner_lr_max"] = (
            float(alphas.mean()), float(alphas.min()), float(alphas.max()))
    returns = {key: sampled.pop(key) for key in ("pre_return", "post_return", "adapt_returns", "pre_success",
                                                 "post_success") if key in sampled}
    return {**returns, **outer, **sampled, "time_update": update_time}
