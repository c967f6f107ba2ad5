"""The MAML paper's baselines, run through the same evaluation protocol as MAML.

- **random**: a freshly initialised policy, adapted with the evaluation protocol.
- **pretrained**: one policy trained with stable-baselines3 PPO on the whole task distribution (a new
  task at every reset, no task information), same architecture as the MAML policy; its actor
  weights are copied into metarl's policy, which is then adapted with the evaluation protocol.
- **oracle**: PPO on the env with the task appended to the observation (``oracle=True``),
  evaluated without adaptation.

PPO acts in [-1, 1] (in [-r, r] with ``sampler.action_range`` r; the env's actions are rescaled, as
metarl's sampler does), so the copied actor means the same thing in both frameworks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from metarl import config as cfg
from metarl.checkpoint import atomic_write_bytes
from metarl.evaluate import evaluate_protocol
from metarl.policy import GaussianMLPPolicy
from metarl.progress import progress_bar
from metarl.run.factory import eval_tasks, make_sampler
from metarl.runtime import seed_env

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


class TaskDistribution(gym.Wrapper):
    """Installs a new task from the env's own distribution at every reset (no task information).
    Seeding it puts the env's generator (its tasks and reset noise) on the "baselines" stream of the
    seed, which no training or test stream shares."""

    def reset(self, **kwargs: Any):
        if "seed" in kwargs and kwargs["seed"] is not None:
            seed_env(self.env, kwargs.pop("seed"), "baselines")
        base = self.env.unwrapped
        base.set_task(base.sample_tasks(1)[0])
        return self.env.reset(**kwargs)


def make_training_env(config: cfg.Config, oracle: bool = False) -> gym.Env:
    """The task env for PPO: the run's kwargs and horizon, actions in [-1, 1], a task per episode."""
    kwargs = dict(config.env.kwargs, **({"oracle": True} if oracle else {}))
    horizon = config.sampler.horizon or gym.spec(config.env.id.rpartition(":")[2]).max_episode_steps
    try:
        env = gym.make(config.env.id, max_episode_steps=horizon, **kwargs)
    except TypeError as exc:
        if oracle:
            raise cfg.ConfigError(f"{config.env.id} has no oracle option (an `oracle=True` kwarg): {exc}") from exc
        raise
    low, high = env.action_space.low, env.action_space.high
    bound = config.sampler.action_range  # the policy's range, as metarl's sampler maps it
    if (low != -bound).any() or (high != bound).any():
        ones = np.ones(env.action_space.shape, dtype=env.action_space.dtype)
        env = gym.wrappers.RescaleAction(env, -bound * ones, bound * ones)
    return TaskDistribution(env)


def train_ppo(config: cfg.Config, timesteps: int, oracle: bool = False, seed: int = 0) -> Any:
    """Stable-baselines3 PPO with the MAML policy's architecture, trained for ``timesteps`` env steps."""
    model = make_ppo(config, oracle, seed)
    model.learn(total_timesteps=timesteps, callback=ppo_progress("oracle PPO" if oracle else "pretrained PPO"))
    return model


def ppo_progress(desc: str) -> Any:
    """A stable-baselines3 callback showing a ``learn`` call's env steps as a progress bar (updated
    after each rollout, so it costs nothing per step)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class _Progress(BaseCallback):
        def _on_training_start(self) -> None:
            total = self.locals["total_timesteps"]  # learn()'s target, from 0 (it adds the steps already done)
            self.bar = progress_bar(total=total, initial=self.num_timesteps, desc=desc, unit="step",
                                    unit_scale=True, dynamic_ncols=True)

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            self.bar.update(min(self.num_timesteps, self.bar.total) - self.bar.n)

        def _on_training_end(self) -> None:
            self.bar.close()

    return _Progress()


def make_ppo(config: cfg.Config, oracle: bool = False, seed: int = 0) -> Any:
    """An untrained stable-baselines3 PPO with the MAML policy's architecture (separate value network)."""
    from stable_baselines3 import PPO

    hidden = list(config.policy.hidden_sizes)
    return PPO(
        "MlpPolicy",
        make_training_env(config, oracle),
        policy_kwargs={"net_arch": {"pi": hidden, "vf": hidden},
                       "activation_fn": ACTIVATIONS[config.policy.nonlinearity],
                       "log_std_init": float(torch.log(torch.tensor(config.policy.init_std)))},
        gamma=config.maml.gamma,
        seed=seed,
        device="cpu",
        verbose=0,
    )


def policy_from_ppo(model: Any, config: cfg.Config) -> GaussianMLPPolicy:
    """Copy a PPO actor (hidden layers, action mean layer, log-std) into metarl's policy."""
    actor = model.policy
    linears = [m for m in actor.mlp_extractor.policy_net if isinstance(m, nn.Linear)]
    obs_dim, act_dim = linears[0].in_features, actor.action_net.out_features
    policy = GaussianMLPPolicy(obs_dim, act_dim, tuple(config.policy.hidden_sizes), config.policy.nonlinearity)
    with torch.no_grad():
        for ours, theirs in zip(policy.hidden, linears, strict=True):
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)
        policy.mean.weight.copy_(actor.action_net.weight)
        policy.mean.bias.copy_(actor.action_net.bias)
        policy.log_std.copy_(actor.log_std)
    return policy


def evaluate_policy(config: cfg.Config, policy: GaussianMLPPolicy, oracle: bool = False) -> dict[str, Any]:
    """The evaluation protocol of ``config.eval`` (no adaptation for the oracle)."""
    if oracle:
        config = _with_oracle(config)
    tasks = eval_tasks(config)
    sampler = make_sampler(config, torch.device("cpu"), "eval_sampler")
    try:
        return evaluate_protocol(config, policy, sampler, tasks, num_steps=0 if oracle else None)
    finally:
        sampler.close()


def _with_oracle(config: cfg.Config) -> cfg.Config:
    data = cfg.to_dict(config)
    data["env"]["kwargs"] = {**data["env"]["kwargs"], "oracle": True}
    return cfg.from_dict(data)


def gap_closed(maml: float, pretrained: float, oracle: float) -> float:
    """The fraction of the pretrained-to-oracle gap that MAML closes: ``(maml - pre) / (oracle - pre)``."""
    return (maml - pretrained) / (oracle - pretrained)


def train_ppo_until_plateau(
    config: cfg.Config, chunk: int, patience: int, max_timesteps: int, state_dir: Path, oracle: bool = False,
    seed: int = 0, say: Callable[[str], None] = print,
) -> tuple[Any, dict[str, Any]]:
    """PPO trained in chunks of ``chunk`` env steps until its evaluated return stops improving.

    After each chunk the policy is evaluated with the protocol of ``config.eval`` (without
    adaptation); training stops after ``patience`` evaluations in a row that do not beat the best
    one by more than its standard error over the test tasks, or at ``max_timesteps``. The best
    evaluated policy is returned: for the oracle, the upper bound the gap fraction needs (chosen on
    the test tasks, so if anything optimistic, which an upper bound may be).

    Resumable: ``state_dir`` keeps the latest model, the best one and the curve after every chunk
    (each written by rename), and a call with the same ``state_dir`` continues from them (the
    environment's random state restarts, so the continuation is not bit-identical).

    Returns:
        The best model and ``{"curve": [{timesteps, mean_return, stderr, seconds}, ...],
        "stopped": why, "timesteps": the best model's, "trained_timesteps", "seconds"}``.
    """
    from stable_baselines3 import PPO

    if chunk < 1 or patience < 1 or max_timesteps < chunk:
        raise cfg.ConfigError(f"plateau: need chunk >= 1, patience >= 1 and max timesteps >= chunk "
                              f"(got {chunk}, {patience}, {max_timesteps})")
    state_dir.mkdir(parents=True, exist_ok=True)
    latest, best_path, curve_path = state_dir / "latest.zip", state_dir / "best.zip", state_dir / "curve.json"
    if latest.is_file() and curve_path.is_file():
        model = PPO.load(latest, env=make_training_env(config, oracle), device="cpu")
        curve = json.loads(curve_path.read_text())
        say(f"continuing from {latest} at {model.num_timesteps} steps")
    else:
        model, curve = make_ppo(config, oracle, seed), []

    def best_index() -> int:
        return max(range(len(curve)), key=lambda i: curve[i]["mean_return"])

    def stalled() -> bool:
        """The last ``patience`` evaluations did not beat the best before them by its s.e."""
        if len(curve) <= patience:
            return False
        before = curve[:-patience]
        top = max(before, key=lambda p: p["mean_return"])
        return all(p["mean_return"] <= top["mean_return"] + top["stderr"] for p in curve[-patience:])

    stopped = "plateau" if stalled() else ""
    while not stopped and model.num_timesteps < max_timesteps:
        start = time.perf_counter()
        model.learn(total_timesteps=min(chunk, max_timesteps - model.num_timesteps), reset_num_timesteps=False,
                    callback=ppo_progress(f"{'oracle' if oracle else 'pretrained'} PPO, chunk {len(curve) + 1}"))
        result = evaluate_policy(config, policy_from_ppo(model, config), oracle)
        curve.append({"timesteps": int(model.num_timesteps), "mean_return": float(result["mean_return"][0]),
                      "stderr": float(result["stderr"][0]), "seconds": time.perf_counter() - start})
        if best_index() == len(curve) - 1:
            atomic_write_bytes(best_path, model.save)
        atomic_write_bytes(latest, model.save)
        atomic_write_bytes(curve_path, lambda f: f.write(json.dumps(curve, indent=1).encode()))
        say(f"{model.num_timesteps} steps: return {curve[-1]['mean_return']:.2f} ± {curve[-1]['stderr']:.2f}")
        stopped = "plateau" if stalled() else ""
    stopped = stopped or "max_timesteps"
    best = curve[best_index()]
    model = PPO.load(best_path, env=make_training_env(config, oracle), device="cpu")
    return model, {"curve": curve, "stopped": stopped, "timesteps": best["timesteps"],
                   "trained_timesteps": curve[-1]["timesteps"], "seconds": sum(p["seconds"] for p in curve)}
