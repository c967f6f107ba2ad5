"""``metarl bench``: where a meta-iteration's time goes, measured side by side in one run.

For each env at a reference config (the literature's batch size and policy, ``--envs``), or for
any experiment config as shipped (``--config FILE``), it measures:

- ``limit_steps_per_s``: raw open-loop ``mujoco.rollout`` over the same batch and threads,
  replaying the actions the sampler's policy took (no policy, no rewards, no early termination):
  the ceiling for MuJoCo envs. Null for envs without MuJoCo.
- ``sampler_steps_per_s``: metarl's sampler as training uses it (the config's
  ``sampler.vectorization``: by default the batched simulator; Meta-World's configs: worker
  processes; policy forward every step, episodes stored); ``sampler_vs_limit`` is the ratio to the
  ceiling.
- ``sync_vector_steps_per_s`` / ``async_vector_steps_per_s``: the same sampler forced onto gymnasium's
  SyncVectorEnv and AsyncVectorEnv. Async runs one process per sub-env, so it is measured on a small
  batch (``--async-envs``); its figure is a rate, comparable all the same. For Meta-World the sync
  baseline runs Meta-World's own code, and ``sync_kernels_steps_per_s`` is SyncVectorEnv with
  metarl's bit-identical replacements of its hottest Python (``metarl.envs.metaworld_kernels``),
  which the sampler uses: the two gains, kernels and worker processes, apart.
- ``meta_update_s``: one meta-update on a sampled batch as training runs it (the config's outer
  update, inner loss and step sizes; TRPO with tasks stacked in cache-sized groups, on a GPU in
  groups of about 262,144 steps);
  for TRPO also ``meta_update_one_group_s`` with all tasks stacked in one group, and
  ``meta_update_per_task_s`` task by task, as the reference implementations compute it. All three
  are the same update (see ``metarl.maml.trpo_meta_step``).
- ``iteration_s``: one whole meta-iteration (sampling before and after adaptation, then the update).
- ``eval_s`` (with ``--eval``): the end-of-run evaluation of the config's ``eval`` section (its
  test tasks, adaptation steps and budget), once.
- ``peak_rss_mb``: the peak resident memory of the process that measured the row (each row runs
  in a fresh process, so rows do not inherit each other's peaks); ``update_peak_mb``: how far the
  resident memory rose above its level before the meta-update while it ran (sampled every 2 ms);
  ``update_gpu_mb`` (on cuda, else None): how far the GPU memory torch allocated rose above its level
  before the first meta-update while it ran. On cuda every time includes waiting for the GPU.

Rates count valid env steps (those of episodes still running); the sampler does not simulate
finished episodes. Every figure is the best of ``--repeats`` runs, after one
warm-up where the measurement allows it.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import resource
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import torch
from mujoco import rollout

import metarl.config as cfg
from metarl.checkpoint import load_checkpoint
from metarl.envs import metaworld_kernels
from metarl.envs.base import implements
from metarl.envs.batched import cpu_cores
from metarl.envs.metaworld import IDS as METAWORLD_IDS
from metarl.envs.mujoco_batch import MujocoBatchSim
from metarl.evaluate import evaluate_protocol
from metarl.maml import trpo_meta_step
from metarl.run.factory import build, eval_tasks, make_sampler
from metarl.run.iteration import collect_meta_batch, meta_iteration
from metarl.run.state import load_meta_parameters
from metarl.sampler import check_task_env, resolve_env_id


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


def file_config(path: str, tasks: int | None, episodes: int | None, horizon: int | None,
                sets: list[str] | None = None) -> cfg.Config:
    """A shipped (or any) experiment config as training runs it, on the CPU, with the batch options
    and ``sets`` (``key=value`` overrides)."""
    overrides = ["run.device=cpu", *(sets or [])]
    for key, value in (("maml.meta_batch_size", tasks), ("sampler.episodes_per_task", episodes),
                       ("sampler.horizon", horizon)):
        if value is not None:
            overrides.append(f"{key}={value}")
    return cfg.load(path, overrides)


def _rss_mb() -> float | None:
    """Resident memory of this process now (Linux), in MiB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


@contextmanager
def rss_growth(result: dict[str, float | None]) -> Iterator[None]:
    """Sample the resident memory every 2 ms while the block runs; ``result["mb"]`` is its peak above
    the level at entry (None where /proc is missing)."""
    start = _rss_mb()
    peak = [start]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.002):
            now = _rss_mb()
            if now is not None and peak[0] is not None:
                peak[0] = max(peak[0], now)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        end = _rss_mb()
        result["mb"] = None if start is None else max(peak[0], end or 0.0) - start


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
    actions = episodes.actions.reshape(num_envs, horizon, 1, sim.nu).double().cpu().numpy()
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


def load_policy(parts: Any, checkpoint: str | None) -> None:
    """Start from a trained policy (``--checkpoint``): its episodes end where a trained policy's do,
    which is what the meta-update's cost depends on (an untrained policy rarely ends one early)."""
    if checkpoint:
        load_meta_parameters(parts, load_checkpoint(checkpoint), checkpoint)


def meta_update_times(config: cfg.Config, repeats: int, checkpoint: str | None = None) -> dict[str, float | None]:
    """Seconds of the meta-update as trained (for TRPO also in one group and task by task), the
    memory it takes, and the seconds of a whole iteration."""
    parts = build(config)
    load_policy(parts, checkpoint)
    maml = config.maml
    tasks = parts.task_env.unwrapped.sample_tasks(maml.meta_batch_size)
    batch, _ = collect_meta_batch(config, parts, tasks)  # as the update sees it (packed or not)
    start = copy.deepcopy((parts.policy.state_dict(), parts.step_sizes and parts.step_sizes.state_dict(),
                           parts.outer.state_dict()))

    def restore() -> None:
        policy, step_sizes, outer = copy.deepcopy(start)
        parts.policy.load_state_dict(policy)
        if parts.step_sizes is not None:
            parts.step_sizes.load_state_dict(step_sizes)
        parts.outer.load_state_dict(outer)

    gpu = parts.device.type == "cuda"

    def finished(result: Any) -> Any:
        if gpu:  # a GPU runs what it was handed after the call returns: time until it is done
            torch.cuda.synchronize(parts.device)
        return result

    def as_trained() -> Any:
        restore()
        return finished(parts.outer.step(parts.policy, batch, parts.inner_step_size(config)))

    def trpo(tasks_per_group: int) -> Callable[[], Any]:
        def run() -> Any:
            restore()
            return finished(trpo_meta_step(
                parts.policy, batch, parts.inner_step_size(config), first_order=maml.first_order,
                max_kl=config.trpo.max_kl, cg_iters=config.trpo.cg_iters, tasks_per_group=tasks_per_group,
                inner_loss=maml.inner_loss))
        return run

    memory: dict[str, float | None] = {}
    if gpu:
        finished(None)
        gpu_before = torch.cuda.memory_allocated(parts.device)
        torch.cuda.reset_peak_memory_stats(parts.device)
    with rss_growth(memory):  # the first update: later ones reuse what the allocator kept from it
        as_trained()
    gpu_mb = (torch.cuda.max_memory_allocated(parts.device) - gpu_before) / 2**20 if gpu else None
    times: dict[str, float | None] = {
        "meta_update_s": best_of(repeats, as_trained)[0], "update_peak_mb": memory["mb"], "update_gpu_mb": gpu_mb,
    }
    is_trpo = maml.outer == "trpo"
    times["meta_update_one_group_s"] = best_of(repeats, trpo(len(tasks)))[0] if is_trpo else None
    times["meta_update_per_task_s"] = best_of(repeats, trpo(1))[0] if is_trpo else None
    restore()
    times["iteration_s"] = best_of(repeats, lambda: finished(meta_iteration(config, parts)))[0]
    parts.close()
    return times


def evaluation_time(config: cfg.Config, checkpoint: str | None = None) -> float:
    """Seconds of the end-of-run evaluation (``config.eval``) of the checkpoint's policy (or a fresh one)."""
    parts = build(config)
    load_policy(parts, checkpoint)
    tasks = eval_tasks(config)
    sampler = make_sampler(config, parts.device, "eval_sampler")
    start = time.perf_counter()
    evaluate_protocol(config, parts.policy, sampler, tasks, parts.step_sizes)
    seconds = time.perf_counter() - start
    sampler.close()
    parts.close()
    return seconds


def bench_row(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One row: a reference config (``name`` in :data:`BENCH_ENVS`) or a config file (``name`` a path)."""
    if name in BENCH_ENVS:
        spec = BENCH_ENVS[name]
        config = bench_config(spec, args.tasks, args.episodes, args.horizon)
        label, source = name, spec.source
    else:
        config = file_config(name, args.tasks, args.episodes, args.horizon, args.set)
        label, source = Path(name).stem, name
    torch.set_num_threads(args.threads)
    horizon = config.sampler.horizon or gym_horizon(config)
    row: dict[str, Any] = {
        "env": label,
        "env_id": config.env.id,
        "config": (f"{config.maml.meta_batch_size} tasks x {config.sampler.episodes_per_task} episodes"
                   f" x {horizon} steps" + (" (step budget)" if config.sampler.budget == "steps" else "")),
        "source": source,
        "threads": args.threads,
        "packed": config.maml.pack_episodes,
        "checkpoint": args.checkpoint,
    }
    row["limit_steps_per_s"] = rollout_limit(config, args.repeats)
    row["sampler_steps_per_s"] = sampler_rate(config, config.sampler.vectorization, args.repeats)
    meta_world = resolve_env_id(config.env.id) in METAWORLD_IDS

    def sync_rate() -> float | None:
        return None if args.no_sync else sampler_rate(config, "sync", max(1, args.repeats - 1))

    # Meta-World's baseline is its own code; with metarl's kernels (which the sampler uses) apart.
    with metaworld_kernels.stock() if meta_world else nullcontext():
        row["sync_vector_steps_per_s"] = sync_rate()
    row["sync_kernels_steps_per_s"] = sync_rate() if meta_world else None
    if args.async_envs:
        async_tasks, async_episodes = async_batch(config, args.async_envs)
        row["async_vector_steps_per_s"] = sampler_rate(config, "async", 1, tasks=async_tasks, episodes=async_episodes)
    else:
        row["async_vector_steps_per_s"] = None
    limit = row["limit_steps_per_s"]
    row["sampler_vs_limit"] = row["sampler_steps_per_s"] / limit if limit else None
    sync = row["sync_vector_steps_per_s"]
    row["sampler_vs_sync"] = row["sampler_steps_per_s"] / sync if sync else None
    if not args.no_update:
        row.update(meta_update_times(config, args.repeats, args.checkpoint))
    else:
        row.update(meta_update_s=None, meta_update_one_group_s=None, meta_update_per_task_s=None, iteration_s=None,
                   update_peak_mb=None, update_gpu_mb=None)
    row["eval_s"] = evaluation_time(config, args.checkpoint) if args.eval else None
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return row


def async_batch(config: cfg.Config, async_envs: int) -> tuple[int, int]:
    """``(tasks, episodes per task)`` for the AsyncVectorEnv rate: about ``async_envs`` sub-envs, a
    quarter of them tasks, unless the env's smallest meta-batch is larger (``task_count_error``:
    Meta-World ML10 asks for a multiple of its 10 classes, so 10 sub-envs; ML45 for 45)."""
    tasks = max(1, async_envs // 4)
    env = check_task_env(config.env.id, config.env.kwargs)
    try:
        if implements(env, "task_count_error"):
            tasks = next((n for n in range(tasks, tasks + 1000)
                          if env.unwrapped.task_count_error(n, "train") is None), tasks)
    finally:
        env.close()
    return tasks, max(1, async_envs // tasks)


def gym_horizon(config: cfg.Config) -> int | None:
    return gym.spec(resolve_env_id(config.env.id)).max_episode_steps


class MeasuringProcessError(Exception):
    """Where the error that a measuring process handed back was raised: its traceback, as text."""


def _row_to_pipe(name: str, args: argparse.Namespace, pipe: Any) -> None:
    try:
        pipe.send(("row", bench_row(name, args)))
    except BaseException as exc:  # handed to the parent, which raises it with this process's traceback
        pipe.send(("error", (exc, traceback.format_exc())))


def bench_env(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`bench_row` in a fresh process (not a pool's daemon: AsyncVectorEnv starts processes of
    its own), so that its peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_row_to_pipe, args=(name, args, sender))
    process.start()
    sender.close()
    try:
        kind, value = receiver.recv()
    except EOFError:
        process.join()
        raise RuntimeError(f"metarl bench: the process measuring {name} died (exit code {process.exitcode})") from None
    process.join()
    if kind == "error":
        error, where = value
        raise error from MeasuringProcessError(f"in the process measuring {name}:\n{where}")
    return value


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    w = max([17, *(len(r["env"]) + 1 for r in rows)])
    header = (
        f"{'env':<{w}} {'limit':>9} {'sampler':>9} {'/limit':>7} {'sync':>9} {'async':>8} {'/sync':>6}"
        f" {'update':>7} {'1 group':>8} {'per-task':>9} {'iter':>7} {'eval':>7} {'update':>7} {'peak':>7}"
    )
    lines = [header, f"{'':<{w}} {'steps/s':>9} {'steps/s':>9} {'':>7} {'steps/s':>9} {'steps/s':>8} {'':>6}"
                     f" {'s':>7} {'s':>8} {'s':>9} {'s':>7} {'s':>7} {'MiB':>7} {'MiB':>7}"]
    for r in rows:
        lines.append(
            f"{r['env']:<{w}} {_fmt(r['limit_steps_per_s'], ',.0f'):>9} {_fmt(r['sampler_steps_per_s'], ',.0f'):>9}"
            f" {_fmt(r['sampler_vs_limit'], '.0%'):>7} {_fmt(r['sync_vector_steps_per_s'], ',.0f'):>9}"
            f" {_fmt(r['async_vector_steps_per_s'], ',.0f'):>8} {_fmt(r['sampler_vs_sync'], '.1f'):>5}x"
            f" {_fmt(r['meta_update_s'], '.2f'):>7} {_fmt(r['meta_update_one_group_s'], '.2f'):>8}"
            f" {_fmt(r['meta_update_per_task_s'], '.2f'):>9} {_fmt(r['iteration_s'], '.2f'):>7}"
            f" {_fmt(r['eval_s'], '.1f'):>7} {_fmt(r['update_peak_mb'], ',.0f'):>7} {_fmt(r['peak_rss_mb'], ',.0f'):>7}"
        )
    lines.append("")
    lines += [f"{r['env']}: {r['config']} ({r['source']}), {r['threads']} threads, meta-update on "
              f"{'packed' if r['packed'] else 'padded'} episodes"
              + (f", policy of {r['checkpoint']}" if r["checkpoint"] else "")
              + (f", meta-update's peak GPU memory {r['update_gpu_mb']:,.0f} MiB" if r.get("update_gpu_mb") else "")
              + (f"; sync is Meta-World's own code, with metarl's kernels {r['sync_kernels_steps_per_s']:,.0f} steps/s"
                 f" (sampler {r['sampler_steps_per_s'] / r['sync_kernels_steps_per_s']:.2f}x that)"
                 if r.get("sync_kernels_steps_per_s") else "") for r in rows]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--envs", nargs="+", choices=list(BENCH_ENVS), metavar="ENV",
                   help=f"reference configs to measure (default without --config: all of {', '.join(BENCH_ENVS)})")
    p.add_argument("--config", nargs="+", default=[], metavar="FILE",
                   help="experiment configs to measure as they train, e.g. experiments/navigation2d_authors.yaml")
    p.add_argument("--eval", action="store_true", help="also time the config's end-of-run evaluation (eval_s)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides of the --config files, e.g. maml.pack_episodes=false")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="the meta-update and iteration start from this checkpoint's policy (a trained one)")
    p.add_argument("--tasks", type=int, help="tasks per meta-batch (default: each env's reference config)")
    p.add_argument("--episodes", type=int, help="episodes per task (default: the reference config)")
    p.add_argument("--horizon", type=int, help="steps per episode (default: the reference config)")
    p.add_argument("--repeats", type=int, default=3, help="measurements per figure; the best is kept (default 3)")
    p.add_argument("--async-envs", type=int, default=8,
                   help="sub-envs (= processes) for the AsyncVectorEnv rate, or the env's smallest meta-batch "
                   "if larger (ML45: 45); 0 skips it (default 8)")
    p.add_argument("--threads", type=int, default=cpu_cores(), help="torch threads (default: all cores)")
    p.add_argument("--no-update", action="store_true", help="skip the meta-update and iteration timings")
    p.add_argument("--no-sync", action="store_true", help="skip gymnasium's SyncVectorEnv rate (slow on large batches)")
    p.add_argument("--json", action="store_true", help="one JSON object per env and line instead of the table")


def run(args: argparse.Namespace) -> int:
    for name, value in (("--tasks", args.tasks), ("--episodes", args.episodes), ("--horizon", args.horizon)):
        if value is not None and value <= 0:
            raise cfg.ConfigError(f"{name} must be positive, got {value}")
    if args.repeats <= 0:
        raise cfg.ConfigError(f"--repeats must be positive, got {args.repeats}")
    for path in args.config:
        cfg.load(path, args.set)  # a bad file fails here, with the field named, not in the measuring process
    names = list(args.envs or ([] if args.config else BENCH_ENVS)) + list(args.config)
    rows = []
    for name in names:
        row = bench_env(name, args)
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"measured {row['env']}", file=sys.stderr, flush=True)
    if not args.json:
        print(format_table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="metarl bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))
