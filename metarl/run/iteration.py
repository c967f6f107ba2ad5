"""One meta-iteration: sample a meta-batch, adapt, sample after adaptation, take the outer update."""

from __future__ import annotations

import time
from typing import Any

import torch

from metarl import config as cfg
from metarl.maml import MetaBatch, adapt
from metarl.policy import detach_params, expand_params
from metarl.run.factory import Components


def collect_meta_batch(config: cfg.Config, parts: Components, tasks: list[Any]) -> tuple[MetaBatch, dict[str, float]]:
    """Sample ``tasks`` before each inner step, adapt, and sample after adaptation.

    Returns the batch and seconds spent: ``time_sampling`` (all sampling), ``time_sampling_valid``
    (the post-adaptation batch) and ``time_adapt`` (the inner steps).
    """
    maml, sampler, policy = config.maml, parts.sampler, parts.policy
    advantage_args = (maml.gamma, maml.gae_lambda, maml.baseline_ridge, maml.normalize_advantages,
                      config.sampler.bootstrap_truncated)
    start = time.perf_counter()
    train_episodes = []
    adapt_time = 0.0
    params = detach_params(expand_params(policy.parameters_dict(), len(tasks)))
    step_size = parts.inner_step_size(config)
    for _ in range(maml.inner_steps):
        episodes = sampler.sample(policy, params, tasks, config.sampler.episodes_per_task, config.sampler.budget)
        episodes.compute_advantages(*advantage_args)
        train_episodes.append(episodes)
        adapt_start = time.perf_counter()
        # Only the values are needed to sample after adaptation; the meta-update rebuilds the graph.
        adapt_on = episodes.pack() if maml.pack_episodes else episodes
        params = detach_params(adapt(policy, params, adapt_on, step_size, first_order=True, inner_loss=maml.inner_loss))
        adapt_time += time.perf_counter() - adapt_start
    valid_start = time.perf_counter()
    valid = sampler.sample(policy, params, tasks, config.sampler.episodes_per_task, config.sampler.budget)
    valid.compute_advantages(*advantage_args)
    valid_time = time.perf_counter() - valid_start
    times = {"time_sampling": time.perf_counter() - start - adapt_time, "time_sampling_valid": valid_time,
             "time_adapt": adapt_time}
    return MetaBatch(train_episodes, valid), times


def update_batch(config: cfg.Config, batch: MetaBatch) -> MetaBatch:
    """What the outer update runs on: the batch packed (``maml.pack_episodes``), or as sampled."""
    return batch.pack() if config.maml.pack_episodes else batch


def meta_iteration(config: cfg.Config, parts: Components) -> dict[str, Any]:
    """Sample a meta-batch of training tasks, adapt, sample after adaptation, and take one outer update.
    Returns the iteration's metrics (one line of ``metrics.jsonl`` without its counters)."""
    tasks = parts.task_env.unwrapped.sample_tasks(config.maml.meta_batch_size)
    batch, times = collect_meta_batch(config, parts, tasks)
    update_start = time.perf_counter()
    outer = parts.outer.step(parts.policy, update_batch(config, batch), parts.inner_step_size(config))
    update_time = time.perf_counter() - update_start
    if parts.step_sizes is not None:
        alphas = torch.cat([a.detach().flatten() for a in parts.step_sizes.parameters()])
        outer["inner_lr_mean"], outer["inner_lr_min"], outer["inner_lr_max"] = (
            float(alphas.mean()), float(alphas.min()), float(alphas.max()))
    return {
        "pre_return": batch.train[0].mean_return(),
        "post_return": batch.valid.mean_return(),
        "adapt_returns": [e.mean_return() for e in batch.train[1:]],
        **outer,
        "env_steps": sum(e.num_steps for e in batch.train) + batch.valid.num_steps,
        **times,
        "time_update": update_time,
    }
