"""Meta-training: the MAML-TRPO loop, the run directory and the end-of-run evaluation."""

from __future__ import annotations

import csv
import io
import json
import math
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from tqdm import tqdm

from metarl import config as cfg
from metarl.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from metarl.evaluate import check_eval_tasks, eval_tasks, evaluate_protocol, format_table
from metarl.maml import (
    MetaBatch, MetaSGDStepSizes, StepSize, adapt, adapt_kl_coef, meta_parameters, ppo_meta_step, trpo_meta_step,
)
from metarl.plots import plot_adaptation, plot_training
from metarl.policy import GaussianMLPPolicy, detach_params, expand_params
from metarl.runtime import resolve_device, rng_state, seed_everything, set_rng_state
from metarl.sampler import Sampler, check_task_env
from metarl.tracking import Tracker

CHECKPOINT = Path("checkpoints") / "last.pt"
BEST_CHECKPOINT = Path("checkpoints") / "best.pt"
#: What ``metarl train --resume RUN_DIR key=value`` may change: more iterations, checkpoint cadence,
#: the evaluation at the end. Everything else would no longer be the run that was started.
RESUME_OVERRIDES = ("run.iterations", "run.checkpoint_every", "eval.")


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint at ``iteration``."""

    def __init__(self, run_dir: Path, iteration: int, signum: int):
        self.run_dir, self.iteration, self.signum = run_dir, iteration, signum
        name = signal.Signals(signum).name
        super().__init__(
            f"{name}: stopped after {iteration} meta-iterations, checkpoint written to {run_dir / CHECKPOINT}; "
            f"resume with: metarl train --resume {run_dir}"
        )


@dataclass
class Components:
    """What a run is built from; building it validates the env, so bad input fails before any file is written."""

    device: torch.device
    sampler: Sampler
    task_env: gym.Env
    policy: GaussianMLPPolicy
    optimizer: torch.optim.Optimizer | None = None  # the promp and adam meta-updates'
    inner_kl_coef: float = 0.0  # promp's current inner-KL weight (adapted when ppo.inner_kl_target is set)
    step_sizes: MetaSGDStepSizes | None = None  # maml.meta_sgd's learned inner step sizes

    def inner_step_size(self, config: cfg.Config) -> StepSize:
        """The inner step size: Meta-SGD's learned tensors, or ``maml.inner_lr``."""
        return self.step_sizes.as_params() if self.step_sizes is not None else config.maml.inner_lr


def make_sampler(config: cfg.Config, device: torch.device, seed: int) -> Sampler:
    """The sampler of ``config.sampler`` (local, or on Ray workers: same episodes either way)."""
    args = (config.env.id, config.env.kwargs, config.sampler.horizon, config.sampler.vectorization, device, seed,
            config.sampler.rescale_actions)
    if config.sampler.backend == "local":
        return Sampler(*args)
    from metarl.ray_sampler import RaySampler  # Ray is optional

    ray = config.ray
    try:
        return RaySampler(*args, num_workers=ray.workers, cpus_per_worker=ray.cpus_per_worker, address=ray.address,
                          max_retries=ray.max_retries, timeout_s=ray.timeout_s)
    except (ImportError, ValueError) as exc:
        raise cfg.ConfigError(str(exc)) from exc  # the message names the field


def build(config: cfg.Config) -> Components:
    seed_everything(config.run.seed)
    try:
        device = resolve_device(config.run.device)
    except ValueError as exc:
        raise cfg.ConfigError(str(exc)) from exc
    task_env = check_task_env(config.env.id, config.env.kwargs)
    check_eval_tasks(task_env, config.eval.tasks)  # before training, not when it ends
    task_env.reset(seed=config.run.seed)
    sampler = make_sampler(config, device, config.run.seed)
    policy = GaussianMLPPolicy(
        sampler.obs_dim,
        sampler.act_dim,
        tuple(config.policy.hidden_sizes),
        config.policy.nonlinearity,
        config.policy.init_std,
    ).to(device)
    step_sizes = MetaSGDStepSizes(policy.parameters_dict(), config.maml.inner_lr).to(device) if config.maml.meta_sgd else None
    parts = Components(device, sampler, task_env, policy, None, config.ppo.inner_kl_coef, step_sizes)
    if config.maml.outer != "trpo":
        tensors = meta_parameters(policy.parameters_dict(), parts.inner_step_size(config))
        parts.optimizer = torch.optim.Adam(tensors, lr=config.ppo.lr)
    return parts


def collect_meta_batch(config: cfg.Config, parts: Components, tasks: list[Any]) -> tuple[MetaBatch, dict[str, float]]:
    """Sample ``tasks`` before each inner step, adapt, and sample after adaptation.

    Returns the batch and seconds spent: ``time_sampling`` (all sampling), ``time_sampling_valid``
    (the post-adaptation batch) and ``time_adapt`` (the inner steps).
    """
    maml, sampler, policy = config.maml, parts.sampler, parts.policy
    advantage_args = (maml.gamma, maml.gae_lambda, maml.baseline_ridge, maml.normalize_advantages)
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
        params = detach_params(adapt(policy, params, episodes, step_size, first_order=True, inner_loss=maml.inner_loss))
        adapt_time += time.perf_counter() - adapt_start
    valid_start = time.perf_counter()
    valid = sampler.sample(policy, params, tasks, config.sampler.episodes_per_task, config.sampler.budget)
    valid.compute_advantages(*advantage_args)
    valid_time = time.perf_counter() - valid_start
    times = {"time_sampling": time.perf_counter() - start - adapt_time, "time_sampling_valid": valid_time,
             "time_adapt": adapt_time}
    return MetaBatch(train_episodes, valid), times


def meta_iteration(config: cfg.Config, parts: Components) -> dict[str, Any]:
    """Sample a meta-batch, adapt, sample after adaptation, and take one meta-update."""
    maml, policy = config.maml, parts.policy
    tasks = parts.task_env.unwrapped.sample_tasks(maml.meta_batch_size)
    batch, times = collect_meta_batch(config, parts, tasks)
    train_episodes, valid = batch.train, batch.valid

    update_start = time.perf_counter()
    trpo, ppo = config.trpo, config.ppo
    step_size = parts.inner_step_size(config)
    if maml.outer == "trpo":
        stats = trpo_meta_step(
            policy,
            batch,
            step_size,
            first_order=maml.first_order,
            max_kl=trpo.max_kl,
            cg_iters=trpo.cg_iters,
            cg_damping=trpo.cg_damping,
            line_search_steps=trpo.line_search_steps,
            backtrack_ratio=trpo.backtrack_ratio,
            tasks_per_group=trpo.tasks_per_group or None,
            inner_loss=maml.inner_loss,
        )
        outer = {"line_search_step": stats.line_search_step, "step_accepted": stats.accepted}
    else:
        promp = maml.outer == "promp"
        stats = ppo_meta_step(
            policy, parts.optimizer, batch, step_size, first_order=maml.first_order, inner_loss=maml.inner_loss,
            epochs=ppo.epochs if promp else 1, clip=ppo.clip if promp else None,
            inner_kl_coef=parts.inner_kl_coef if promp else 0.0,
        )
        outer = {"line_search_step": 0, "step_accepted": True, "inner_kl": stats.inner_kl}
        if promp:
            outer["inner_kl_coef"] = parts.inner_kl_coef
            if ppo.inner_kl_target:
                parts.inner_kl_coef = adapt_kl_coef(parts.inner_kl_coef, stats.inner_kl, ppo.inner_kl_target)
    update_time = time.perf_counter() - update_start
    if parts.step_sizes is not None:
        alphas = torch.cat([a.detach().flatten() for a in parts.step_sizes.parameters()])
        outer["inner_lr_mean"], outer["inner_lr_min"], outer["inner_lr_max"] = (
            float(alphas.mean()), float(alphas.min()), float(alphas.max()))
    return {
        "pre_return": train_episodes[0].mean_return(),
        "post_return": valid.mean_return(),
        "adapt_returns": [e.mean_return() for e in train_episodes[1:]],
        "loss_before": stats.loss_before,
        "loss_after": stats.loss_after,
        "kl": stats.kl_after,
        "grad_norm": stats.grad_norm,
        **outer,
        "env_steps": sum(e.num_steps for e in train_episodes) + valid.num_steps,
        **times,
        "time_update": update_time,
    }


def make_run_dir(config: cfg.Config) -> Path:
    name = config.run.name or f"{config.env.id.split('/')[-1]}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(config.run.output_dir) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise cfg.ConfigError(f"run.name: run directory {run_dir} already exists and is not empty; choose another run.name")
    return run_dir


def checkpoint_state(
    config: cfg.Config, parts: Components, iteration: int, best_post_return: float, tracking_id: str | None = None
) -> dict[str, Any]:
    """Everything a resumed run needs to continue exactly: the policy, the iteration counter, the
    best post-adaptation return so far and every random state (global, sampler, task sampler).
    TRPO keeps no optimiser state and the linear baseline is refitted on every batch."""
    return {
        "iteration": iteration,
        "policy": parts.policy.state_dict(),
        "config": cfg.to_dict(config),
        "best_post_return": best_post_return,
        "rng": rng_state(),
        "sampler": parts.sampler.state_dict(),
        "task_sampler": parts.task_env.unwrapped.np_random.bit_generator.state,
        "tracking_id": tracking_id,
        "optimizer": None if parts.optimizer is None else parts.optimizer.state_dict(),
        "inner_kl_coef": parts.inner_kl_coef,
        "step_sizes": None if parts.step_sizes is None else parts.step_sizes.state_dict(),
    }


def load_meta_parameters(parts: Components, state: dict[str, Any]) -> None:
    """The meta-learned parameters of a checkpoint: the policy and, with Meta-SGD, the step sizes."""
    parts.policy.load_state_dict(state["policy"])
    if parts.step_sizes is not None:
        parts.step_sizes.load_state_dict(state["step_sizes"])


def restore_state(parts: Components, state: dict[str, Any]) -> None:
    """Load what :func:`checkpoint_state` saved into freshly built components."""
    load_meta_parameters(parts, state)
    if parts.optimizer is not None and state.get("optimizer"):
        parts.optimizer.load_state_dict(state["optimizer"])
    parts.inner_kl_coef = float(state.get("inner_kl_coef", parts.inner_kl_coef))
    set_rng_state(state["rng"])
    parts.sampler.load_state_dict(state["sampler"])
    parts.task_env.unwrapped.np_random.bit_generator.state = state["task_sampler"]


def write_metrics_csv(run_dir: Path, metrics: list[dict[str, Any]]) -> None:
    """``metrics.csv``: the lines of ``metrics.jsonl`` as a table (lists as JSON text), for spreadsheets and pandas."""
    columns = list(dict.fromkeys(key for m in metrics for key in m))

    def write(f: Any) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        for m in metrics:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in m.items()})
        f.write(text.getvalue().encode())

    atomic_write_bytes(run_dir / "metrics.csv", write)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train(config: cfg.Config, quiet: bool = False) -> Path:
    """Meta-train as configured; returns the run directory.

    The directory holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one line per meta-iteration),
    ``checkpoints/last.pt`` and ``checkpoints/best.pt``, ``training.png`` and, after the evaluation,
    ``eval.json`` and ``eval.png``. SIGINT or SIGTERM finish the current meta-iteration, write a
    checkpoint and raise :class:`TrainingInterrupted`; a second signal abandons the iteration.
    """
    run_dir = make_run_dir(config)
    parts = build(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.dump(config, run_dir / "config.yaml")
    return _train_loop(config, parts, run_dir, 0, -math.inf, [], quiet, Tracker(config, run_dir))


def load_run_config(
    run_dir: Path, overrides: list[str] | None = None, allowed: tuple[str, ...] = (), refusal: str = ""
) -> cfg.Config:
    """The resolved config of a run directory, with ``overrides`` restricted to the keys in
    ``allowed`` (an entry ending in "." allows a whole section); ``refusal`` ends the error."""
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise cfg.ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    for text in overrides or []:
        key = text.partition("=")[0]
        if not any(key == a or (a.endswith(".") and key.startswith(a)) for a in allowed):
            raise cfg.ConfigError(f"{key}: {refusal}")
    return cfg.load(config_path, overrides)


def resume(run_dir: str | Path, overrides: list[str] | None = None, quiet: bool = False) -> Path:
    """Continue a run from ``RUN_DIR/checkpoints/last.pt``; on CPU the metrics are the same as an
    uninterrupted run's. ``overrides`` may only touch :data:`RESUME_OVERRIDES` (e.g. more
    ``run.iterations``). Metrics written after the checkpoint are dropped and recomputed."""
    run_dir = Path(run_dir)
    config = load_run_config(
        run_dir, overrides, RESUME_OVERRIDES, "a resumed run only accepts run.iterations, run.checkpoint_every and eval.* overrides"
    )
    state = load_checkpoint(run_dir / CHECKPOINT)
    start = int(state["iteration"])
    if start >= config.run.iterations:
        raise cfg.ConfigError(
            f"run.iterations: {run_dir} already has {start} of {config.run.iterations} meta-iterations; "
            f"pass run.iterations=N with N > {start} to train further"
        )
    parts = build(config)
    restore_state(parts, state)
    previous = [m for m in read_metrics(run_dir) if m["iteration"] < start]
    atomic_write_bytes(run_dir / "metrics.jsonl", lambda f: f.write("".join(json.dumps(m) + "\n" for m in previous).encode()))
    cfg.dump(config, run_dir / "config.yaml")
    tracker = Tracker(config, run_dir, resume_id=state.get("tracking_id"))
    return _train_loop(config, parts, run_dir, start, float(state["best_post_return"]), previous, quiet, tracker)


def _train_loop(
    config: cfg.Config,
    parts: Components,
    run_dir: Path,
    start: int,
    best_post_return: float,
    previous: list[dict[str, Any]],
    quiet: bool,
    tracker: Tracker,
) -> Path:
    say = (lambda *a: None) if quiet else (lambda text: tqdm.write(text))
    say(f"run directory: {run_dir}  (device {parts.device})" + (f", resumed at meta-iteration {start}" if start else ""))
    total_steps = previous[-1]["total_env_steps"] if previous else 0
    clock = time.perf_counter() - (previous[-1]["wall_time"] if previous else 0.0)
    stop: dict[str, int | None] = {"signum": None}

    def on_signal(signum: int, frame: Any) -> None:
        if stop["signum"] is not None:
            raise KeyboardInterrupt  # a second signal: abandon the iteration (the last checkpoint stays)
        stop["signum"] = signum
        say(f"{signal.Signals(signum).name}: finishing this meta-iteration, then writing a checkpoint "
            "(send it again to stop at once)")

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    bar = tqdm(range(start, config.run.iterations), desc="meta-training", unit="it", disable=quiet,
               dynamic_ncols=True, initial=start, total=config.run.iterations)
    try:
        with open(run_dir / "metrics.jsonl", "a") as metrics_file:
            for iteration in bar:
                metrics = meta_iteration(config, parts)
                total_steps += metrics["env_steps"]
                metrics = {"iteration": iteration, **metrics, "total_env_steps": total_steps,
                           "wall_time": time.perf_counter() - clock}
                metrics_file.write(json.dumps(metrics) + "\n")
                metrics_file.flush()
                tracker.log_iteration(metrics)
                steps_per_s = metrics["env_steps"] / (metrics["time_sampling"] + metrics["time_adapt"] + metrics["time_update"])
                bar.set_postfix(pre=f"{metrics['pre_return']:.1f}", post=f"{metrics['post_return']:.1f}",
                                kl=f"{metrics['kl']:.4f}", steps_per_s=f"{steps_per_s:.0f}", refresh=False)
                done = iteration + 1
                if metrics["post_return"] > best_post_return:
                    best_post_return = metrics["post_return"]
                    save_checkpoint(run_dir / BEST_CHECKPOINT, checkpoint_state(config, parts, done, best_post_return, tracker.run_id))
                if done % config.run.checkpoint_every == 0 or done == config.run.iterations or stop["signum"]:
                    save_checkpoint(run_dir / CHECKPOINT, checkpoint_state(config, parts, done, best_post_return, tracker.run_id))
                if stop["signum"]:
                    metrics = read_metrics(run_dir)
                    plot_training(metrics, run_dir / "training.png", title=config.env.id)
                    write_metrics_csv(run_dir, metrics)
                    parts.sampler.close()
                    raise TrainingInterrupted(run_dir, done, stop["signum"])
        metrics = read_metrics(run_dir)
        plot_training(metrics, run_dir / "training.png", title=config.env.id)
        write_metrics_csv(run_dir, metrics)
        say(f"trained {config.run.iterations} meta-iterations in {metrics[-1]['wall_time']:.0f} s")
        if config.eval.at_end:
            result = run_evaluation(config, parts, run_dir)
            tracker.log_evaluation(result, run_dir / "eval.png")
            say(format_table(result))
            tracker.log_videos(config, run_dir, say)
        if config.tracking.log_checkpoints:
            tracker.log_checkpoints({"latest": run_dir / CHECKPOINT, "best": run_dir / BEST_CHECKPOINT})
        tracker.finish()
    except TrainingInterrupted as stopped:
        tracker.finish(exit_code=128 + stopped.signum)
        raise
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    finally:
        bar.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    parts.sampler.close()
    return run_dir


def run_evaluation(config: cfg.Config, parts: Components, run_dir: Path) -> dict[str, Any]:
    """The paper protocol on ``config.eval``; writes ``eval.json`` and ``eval.png`` to ``run_dir``."""
    ev = config.eval
    tasks = eval_tasks(config)
    # Its own sampler, seeded by eval.seed: the same checkpoint always gives the same eval.json.
    sampler = make_sampler(config, parts.device, ev.seed)
    start = time.perf_counter()
    result = evaluate_protocol(config, parts.policy, sampler, tasks, parts.step_sizes)
    sampler.close()
    result = {"env": config.env.id, "eval_tasks": ev.tasks, "eval_seed": ev.seed, **result, "time_s": time.perf_counter() - start}
    (run_dir / "eval.json").write_text(json.dumps(result, indent=1))
    plot_adaptation(result, run_dir / "eval.png", title=config.env.id, label=run_dir.name)
    return result


def evaluate_run(run_dir: str | Path, overrides: list[str] | None = None, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Re-run the evaluation of a finished (or checkpointed) run, with optional config overrides."""
    run_dir = Path(run_dir)
    config = load_run_config(
        run_dir, overrides, ("eval.", "run.device"), "evaluate only accepts eval.* and run.device overrides (the policy is fixed by the run)"
    )
    checkpoint = Path(checkpoint) if checkpoint else run_dir / CHECKPOINT
    parts = build(config)
    state = load_checkpoint(checkpoint, map_location=parts.device)
    load_meta_parameters(parts, state)
    result = run_evaluation(config, parts, run_dir)
    parts.sampler.close()
    return result
