"""From a config to the objects a run is made of, with one random stream per purpose.

Streams (``metarl.runtime.seed_stream``): ``run.seed`` seeds the global generators (parameter
initialisation), the training tasks and the training sampler (its env resets and action noise);
``eval.seed`` seeds the test tasks and the evaluation's sampler. Each purpose has its own child of
the seed's ``SeedSequence``, so no two purposes share a stream even when ``run.seed == eval.seed``:
the test tasks are never the first training meta-batch, and evaluation noise is never training noise.

Building validates everything that can fail before a run directory is written (the env, the
device, the Ray cluster, the evaluation's task source).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import torch

from metarl import config as cfg
from metarl.envs.base import implements
from metarl.evaluate import check_eval_tasks
from metarl.maml import MetaSGDStepSizes, StepSize, cavia_step_size, meta_parameters
from metarl.outer import OuterUpdate, make_outer_update
from metarl.policy import GaussianMLPPolicy
from metarl.runtime import resolve_device, seed_env, seed_everything, seed_stream
from metarl.sampler import BaseSampler, Sampler, check_task_env, resolve_env_id


@dataclass
class Components:
    """What a run is built from."""

    device: torch.device
    sampler: BaseSampler
    task_env: gym.Env  # draws the training tasks, from the "train_tasks" stream of run.seed
    policy: GaussianMLPPolicy
    outer: OuterUpdate
    step_sizes: MetaSGDStepSizes | None = None  # maml.meta_sgd's learned inner step sizes
    notes: list[str] = field(default_factory=list)  # one line each: what was chosen, or not restored

    def inner_step_size(self, config: cfg.Config) -> StepSize:
        return inner_step_size(self.step_sizes, config)

    def close(self) -> None:
        self.sampler.close()
        self.task_env.close()


def inner_step_size(step_sizes: MetaSGDStepSizes | None, config: cfg.Config) -> StepSize:
    """The inner step size: Meta-SGD's learned tensors, CAVIA's ``maml.inner_lr`` on the context
    only, or ``maml.inner_lr``."""
    if step_sizes is not None:
        return step_sizes.as_params()
    return cavia_step_size(config.maml.inner_lr) if config.maml.cavia_context else config.maml.inner_lr


def train_evaluation(config: cfg.Config) -> cfg.Config | None:
    """``config`` with its evaluation on ``eval.train_tasks`` training tasks (``eval.tasks=train``),
    the end of a run's second evaluation; None where it has none (``eval.train_tasks: 0``, or
    ``eval.tasks: train``, whose one evaluation is of training tasks already)."""
    if not config.eval.train_tasks or config.eval.tasks == "train":
        return None
    config = copy.deepcopy(config)
    config.eval.tasks, config.eval.num_tasks = "train", config.eval.train_tasks
    return config


def make_sampler(config: cfg.Config, device: torch.device, purpose: str = "train_sampler") -> BaseSampler:
    """The sampler of ``config.sampler`` (local, or on Ray workers: same episodes either way), on the
    random stream of ``purpose``: "train_sampler" (``run.seed``) or "eval_sampler" (``eval.seed``)."""
    seed = config.eval.seed if purpose == "eval_sampler" else config.run.seed
    args = (config.env.id, config.env.kwargs, config.sampler.horizon, config.sampler.vectorization, device,
            seed_stream(seed, purpose), config.sampler.rescale_actions)
    if config.sampler.backend == "local":
        return Sampler(*args, processes=config.sampler.processes, action_range=config.sampler.action_range)
    from metarl.ray_sampler import RaySampler  # Ray is optional

    ray = config.ray
    try:
        return RaySampler(*args, num_workers=ray.workers,
                          cpus_per_worker=ray.cpus_per_worker, address=ray.address, max_retries=ray.max_retries,
                          timeout_s=ray.timeout_s, processes=config.sampler.processes,
                          action_range=config.sampler.action_range)
    except (ImportError, ValueError) as exc:
        raise cfg.ConfigError(str(exc)) from exc  # the message names the field


def resolve(device: str) -> torch.device:
    try:
        return resolve_device(device)
    except ValueError as exc:
        raise cfg.ConfigError(str(exc)) from exc


def build(config: cfg.Config, device: torch.device | None = None) -> Components:
    """The components of a run on ``device`` (default: ``run.device`` resolved)."""
    check_combinations(config)
    seed_everything(config.run.seed)
    device = device or resolve(config.run.device)
    task_env = check_task_env(config.env.id, config.env.kwargs)
    try:
        # before training, not when it ends
        check_eval_tasks(task_env, config.eval.tasks, config.eval.num_tasks, config.eval.tasks_per_chunk)
        train = train_evaluation(config)
        if train is not None:
            check_eval_tasks(task_env, "train", train.eval.num_tasks, train.eval.tasks_per_chunk, "eval.train_tasks")
        if implements(task_env, "task_count_error"):
            error = task_env.unwrapped.task_count_error(config.maml.meta_batch_size, "train")
            if error:
                raise cfg.ConfigError(f"maml.meta_batch_size: {error}")
        seed_env(task_env, config.run.seed, "train_tasks")
        sampler = make_sampler(config, device, "train_sampler")
    except BaseException:
        task_env.close()
        raise
    policy = GaussianMLPPolicy(
        sampler.obs_dim, sampler.act_dim, tuple(config.policy.hidden_sizes), config.policy.nonlinearity,
        config.policy.init_std, config.maml.cavia_context,
    ).to(device)
    step_sizes = (MetaSGDStepSizes(policy.parameters_dict(), config.maml.inner_lr).to(device)
                  if config.maml.meta_sgd else None)
    outer = make_outer_update(config, meta_parameters(policy.parameters_dict(), inner_step_size(step_sizes, config)))
    return Components(device, sampler, task_env, policy, outer, step_sizes, [sampler.note])


def check_combinations(config: cfg.Config) -> None:
    """Refuse settings that do not go together, naming the fields."""
    maml = config.maml
    if maml.cavia_context and maml.meta_sgd:
        raise cfg.ConfigError("maml.cavia_context: CAVIA adapts only its context, with maml.inner_lr; Meta-SGD learns "
                              "a step size for every parameter: set maml.meta_sgd=false or maml.cavia_context=0")
    if maml.cavia_context and maml.emaml:
        raise cfg.ConfigError("maml.cavia_context: CAVIA with E-MAML's exploration term is not supported: "
                              "set maml.emaml=false or maml.cavia_context=0")


def eval_tasks(config: cfg.Config) -> list[Any]:
    """The tasks of ``config.eval``: ``eval.num_tasks`` draws from the "test_tasks" stream of
    ``eval.seed`` (``seeded``: of the env's held-out test distribution, ``sample_test_tasks``, where it
    has one, else of ``sample_tasks``; ``train``: of the training distribution, ``sample_tasks``), or
    the env's ``paper_test_tasks`` (``paper``)."""
    ev = config.eval
    env = gym.make(resolve_env_id(config.env.id), **config.env.kwargs)
    try:
        check_eval_tasks(env, ev.tasks, ev.num_tasks, ev.tasks_per_chunk)
        if ev.tasks == "paper":
            return env.unwrapped.paper_test_tasks(ev.num_tasks)
        seed_env(env, ev.seed, "test_tasks")
        if ev.tasks == "seeded" and implements(env, "sample_test_tasks"):
            return env.unwrapped.sample_test_tasks(ev.num_tasks)
        return env.unwrapped.sample_tasks(ev.num_tasks)
    finally:
        env.close()
