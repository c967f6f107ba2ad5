"""``metarl bench``: where a meta-iteration's time goes, measured side by side in one run.

For each env, at a reference config (the literature's batch size and policy), it measures:

- ``limit_steps_per_s``: raw open-loop ``mujoco.rollout`` over the same batch and threads,
  replaying the actions the sampler's policy took (no policy, no rewards, no early termination):
  the ceiling for MuJoCo envs. Null for envs without MuJoCo.
- ``sampler_steps_per_s``: metarl's sampler as training uses it (batched simulator, policy forward
  every step, episodes stored); ``sampler_vs_limit`` is the ratio to the ceiling.
- ``sync_vector_steps_per_s`` / ``async_vector_steps_per_s``: the same sampler forced onto gymnasium's
  SyncVectorEnv and AsyncVectorEnv. Async runs one process per sub-env, so it is measured on a small
  batch (``--async-envs``); its figure is a rate, comparable all the same.
- ``meta_update_s``: one MAML-TRPO meta-update on a sampled batch as training runs it (tasks stacked
  in cache-sized groups); ``meta_update_one_group_s`` with all tasks stacked in one group, and
  ``meta_update_per_task_s`` task by task, as the reference implementations compute it. All three
  are the same update (see ``metarl.maml.trpo_meta_step``).
- ``iteration_s``: one whole meta-iteration (sampling before and after adaptation, then the update).

Rates count valid env steps (those of episodes still running); the sampler does not simulate
finished episodes. Every figure is the best of ``--repeats`` runs, after one
warm-up where the measurement allows it.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mujoco
import numpy as np
import torch
from mujoco import rollout

import metarl.config as cfg
from metarl.envs.batched import cpu_cores
from metarl.envs.mujoco_batch import MujocoBatchSim
from metarl.maml import trpo_meta_step
from metarl.run.factory import build
from metarl.run.iteration import collect_meta_batch, meta_iteration


@dataclass(frozen=True)
class BenchEnv:
    """A reference config: env, batch shape and policy."""

    env_id: str
    tasks: int
    episodes: int
    horizon: int
    hidden_sizes: tuple[int, ...]
    nonlinearity: str
    inner_lr: float
    source: str


BENCH_ENVS = {
    "HalfCheetahVel": BenchEnv("metarl/HalfCheetahVel-v0", 40, 20, 100, (64, 64), "tanh", 0.1,
                               "pytorch-maml-rl halfcheetah-vel"),
    "AntVel": BenchEnv("metarl/AntVel-v0", 40, 20, 100, (64, 64), "tanh", 0.1, "pytorch-maml-rl ant-vel"),
    "HopperRandParams": BenchEnv("metarl/HopperRandParams-v0", 40, 20, 200, (64, 64), "tanh", 0.05,
                                 "ProMP hopper-rand-params"),
    "Navigation2D": BenchEnv("metarl/Navigation2D-v0", 20, 20, 100, (100, 100), "relu", 0.1,
                             "MAML paper 2D navigation"),
}


def bench_config(spec: BenchEnv, tasks: int | None, episodes: int | None, horizon: int | None) -> cfg.Config:
    return cfg.load(None, [
        f"env.id={spec.env_id}",
        f"policy.hidden_sizes={list(spec.hidden_sizes)}",
        f"policy.nonlinearity={spec.nonlinearity}",
        f"sampler.episodes_per_task={episodes or spec.episodes}",
        f"sampler.horizon={horizon or spec.horizon}",
        f"maml.meta_batch_size={tasks or spec.tasks}",
        f"maml.inner_lr={spec.inner_lr}",
        "run.device=cpu",
    ])


def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Smallest wall time of ``repeats`` calls of ``fn`` and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def rollout_limit(config: cfg.Config, repeats: int) -> float | None:
    """Env steps per second of open-loop ``mujoco.rollout`` over the batch (None without MuJoCo).

    The controls are the actions the sampler's (untrained) policy took in one sample of the same
    batch, replayed from freshly reset states: the physics' cost depends on how the bodies are
    driven, so the ceiling is measured on the same workload.
    """
    config = copy.deepcopy(config)
    config.sampler.vectorization = "auto"
    parts = build(config)
    num_envs = config.maml.meta_batch_size * config.sampler.episodes_per_task
    sampler = parts.sampler
    sim = sampler.stepper(num_envs).sim if sampler.batched else None
    if not isinstance(sim, MujocoBatchSim):
        parts.close()
        return None
    tasks = parts.task_env.unwrapped.sample_tasks(config.maml.meta_batch_size)
    episodes = sampler.sample(parts.policy, None, tasks, config.sampler.episodes_per_task)
    horizon = episodes.rewards.shape[-1]
    actions = episodes.actions.reshape(num_envs, horizon, 1, sim.nu).double().numpy()
    env_actions = sampler._action_center + sampler._action_scale * actions  # MuJoCo clamps to ctrlrange
    nstep = horizon * sim.frame_skip
    controls = np.ascontiguousarray(np.repeat(env_actions, sim.frame_skip, axis=2).reshape(num_envs, nstep, sim.nu))
    sim.reset(seed=0)
    state = sim._state.copy()
    out = np.empty((num_envs, nstep, sim.nstate))
    sensors = np.empty((num_envs, nstep, sim.env.model.nsensordata))
    datas = [mujoco.MjData(sim.env.model) for _ in range(sim.nthread)]
    with rollout.Rollout(nthread=sim.nthread) as pool:
        seconds, _ = best_of(repeats, lambda: pool.rollout(
            sim._models, datas, state, controls, skip_checks=True, nstep=nstep, state=out, sensordata=sensors,
            control_spec=mujoco.mjtState.mjSTATE_CTRL.value,
        ))
    parts.close()
    return num_envs * horizon / seconds


def sampler_rate(
    config: cfg.Config, vectorization: str, repeats: int, tasks: int | None = None, episodes: int | None = None
) -> float:
    """Valid env steps per second of one ``Sampler.sample`` call on the batch."""
    config = copy.deepcopy(config)
    config.sampler.vectorization = vectorization
    if tasks:
        config.maml.meta_batch_size = tasks
    if episodes:
        config.sampler.episodes_per_task = episodes
    parts = build(config)
    task_list = parts.task_env.unwrapped.sample_tasks(config.maml.meta_batch_size)
    sample = lambda: parts.sampler.sample(parts.policy, None, task_list, config.sampler.episodes_per_task)  # noqa: E731
    sample()  # warm-up: builds the vector env or simulator
    seconds, episodes_batch = best_of(repeats, sample)
    steps = episodes_batch.num_steps
    parts.close()
    return steps / seconds


def meta_update_times(config: cfg.Config, repeats: int) -> dict[str, float]:
    """Seconds of the meta-update (default groups, one group, task by task) and of a whole iteration."""
    parts = build(config)
    maml = config.maml
    tasks = parts.task_env.unwrapped.sample_tasks(maml.meta_batch_size)
    batch, _ = collect_meta_batch(config, parts, tasks)
    start_state = copy.deepcopy(parts.policy.state_dict())

    def update(tasks_per_group: int | None) -> Callable[[], Any]:
        def run() -> Any:
            parts.policy.load_state_dict(start_state)
            return trpo_meta_step(parts.policy, batch, maml.inner_lr, max_kl=config.trpo.max_kl,
                                  tasks_per_group=tasks_per_group)
        return run

    times = {
        "meta_update_s": best_of(repeats, update(config.trpo.tasks_per_group or None))[0],
        "meta_update_one_group_s": best_of(repeats, update(len(tasks)))[0],
        "meta_update_per_task_s": best_of(repeats, update(1))[0],
    }
    parts.policy.load_state_dict(start_state)
    times["iteration_s"] = best_of(repeats, lambda: meta_iteration(config, parts))[0]
    parts.close()
    return times


def bench_env(name: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = BENCH_ENVS[name]
    config = bench_config(spec, args.tasks, args.episodes, args.horizon)
    torch.set_num_threads(args.threads)
    row: dict[str, Any] = {
        "env": name,
        "env_id": spec.env_id,
        "config": (f"{config.maml.meta_batch_size} tasks x {config.sampler.episodes_per_task} episodes"
                   f" x {config.sampler.horizon} steps"),
        "source": spec.source,
        "threads": args.threads,
    }
    row["limit_steps_per_s"] = rollout_limit(config, args.repeats)
    row["sampler_steps_per_s"] = sampler_rate(config, "auto", args.repeats)
    row["sync_vector_steps_per_s"] = sampler_rate(config, "sync", max(1, args.repeats - 1))
    async_tasks = max(1, args.async_envs // 4)
    row["async_vector_steps_per_s"] = (
        sampler_rate(config, "async", 1, tasks=async_tasks, episodes=max(1, args.async_envs // async_tasks))
        if args.async_envs else None
    )
    limit = row["limit_steps_per_s"]
    row["sampler_vs_limit"] = row["sampler_steps_per_s"] / limit if limit else None
    row["sampler_vs_sync"] = row["sampler_steps_per_s"] / row["sync_vector_steps_per_s"]
    if not args.no_update:
        row.update(meta_update_times(config, args.repeats))
    else:
        row.update(meta_update_s=None, meta_update_one_group_s=None, meta_update_per_task_s=None, iteration_s=None)
    return row


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'env':<17} {'limit':>9} {'sampler':>9} {'/limit':>7} {'sync':>9} {'async':>8} {'/sync':>6}"
        f" {'update':>7} {'1 group':>8} {'per-task':>9} {'iter':>7}"
    )
    lines = [header, f"{'':<17} {'steps/s':>9} {'steps/s':>9} {'':>7} {'steps/s':>9} {'steps/s':>8} {'':>6}"
                     f" {'s':>7} {'s':>8} {'s':>9} {'s':>7}"]
    for r in rows:
        lines.append(
            f"{r['env']:<17} {_fmt(r['limit_steps_per_s'], ',.0f'):>9} {_fmt(r['sampler_steps_per_s'], ',.0f'):>9}"
            f" {_fmt(r['sampler_vs_limit'], '.0%'):>7} {_fmt(r['sync_vector_steps_per_s'], ',.0f'):>9}"
            f" {_fmt(r['async_vector_steps_per_s'], ',.0f'):>8} {_fmt(r['sampler_vs_sync'], '.1f'):>5}x"
            f" {_fmt(r['meta_update_s'], '.2f'):>7} {_fmt(r['meta_update_one_group_s'], '.2f'):>8}"
            f" {_fmt(r['meta_update_per_task_s'], '.2f'):>9} {_fmt(r['iteration_s'], '.2f'):>7}"
        )
    lines.append("")
    lines += [f"{r['env']}: {r['config']} ({r['source']}), {r['threads']} threads" for r in rows]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--envs", nargs="+", default=list(BENCH_ENVS), choices=list(BENCH_ENVS), metavar="ENV",
                   help=f"envs to measure (default: all of {', '.join(BENCH_ENVS)})")
    p.add_argument("--tasks", type=int, help="tasks per meta-batch (default: each env's reference config)")
    p.add_argument("--episodes", type=int, help="episodes per task (default: the reference config)")
    p.add_argument("--horizon", type=int, help="steps per episode (default: the reference config)")
    p.add_argument("--repeats", type=int, default=3, help="measurements per figure; the best is kept (default 3)")
    p.add_argument("--async-envs", type=int, default=8,
                   help="sub-envs (= processes) for the AsyncVectorEnv rate; 0 skips it (default 8)")
    p.add_argument("--threads", type=int, default=cpu_cores(), help="torch threads (default: all cores)")
    p.add_argument("--no-update", action="store_true", help="skip the meta-update and iteration timings")
    p.add_argument("--json", action="store_true", help="one JSON object per env and line instead of the table")


def run(args: argparse.Namespace) -> int:
    for name, value in (("--tasks", args.tasks), ("--episodes", args.episodes), ("--horizon", args.horizon)):
        if value is not None and value <= 0:
            raise cfg.ConfigError(f"{name} must be positive, got {value}")
    if args.repeats <= 0:
        raise cfg.ConfigError(f"--repeats must be positive, got {args.repeats}")
    rows = []
    for name in args.envs:
        row = bench_env(name, args)
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"measured {name}", file=sys.stderr, flush=True)
    if not args.json:
        print(format_table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="metarl bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))
