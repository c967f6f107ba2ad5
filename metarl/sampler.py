"""Collect episodes for a batch of tasks at once: the env's batched simulator, or gymnasium's vector API."""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from torch import Tensor

import envs  # noqa: F401  (registers the metarl/ task envs)
from envs.base import implements, missing_protocol
from envs.batched import BatchedTaskSim
from metarl.episodes import Episodes
from metarl.policy import GaussianMLPPolicy, Params

#: How the sampler steps its T*E sub-environments. "auto": the env's batched simulator if it has one
#: (``TaskEnv.make_batched``), else its registered vector entry point, else gymnasium's SyncVectorEnv.
#: "async" is gymnasium's AsyncVectorEnv: one process per sub-env, slow on few cores (for benchmarks).
VECTORIZATION_MODES = ("auto", "batched", "vector_entry_point", "sync", "async")
#: How many episodes a batch holds: a fixed number per task, or whole episodes up to a step budget.
SAMPLE_BUDGETS = ("episodes", "steps")


def _within_step_budget(rounds: list[Episodes], limit: int) -> Episodes:
    """Concatenate rounds of episodes per task and keep, in order, the episodes that start before the
    task's ``limit`` valid steps are reached; the others are masked out."""
    cat = lambda name: torch.cat([getattr(r, name) for r in rounds], dim=1)  # noqa: E731
    mask = cat("mask")
    lengths = mask.sum(-1)
    before = torch.cumsum(lengths, dim=1) - lengths
    kept = (before < limit).to(mask.dtype)
    width = int(kept.sum(1).max().item())  # kept episodes are a prefix per task: drop slots no task uses
    return Episodes(
        cat("observations")[:, :width], cat("actions")[:, :width], (cat("rewards") * kept[..., None])[:, :width],
        (mask * kept[..., None])[:, :width], rounds[0].tasks,
    )


#: Floats per 64 bytes: the policy's inputs are laid out so that every task's block starts on a
#: 64-byte boundary (see :func:`aligned_rows`).
_ALIGN_FLOATS = 16


def aligned_rows(num_episodes: int, input_sizes: tuple[int, ...]) -> int:
    """Rows per task for the sampler's policy forward: ``num_episodes`` rounded up so that each
    task's block of every layer input (``rows * size`` floats) is a whole number of 64 bytes.

    MKL's products round differently depending on where their input starts in memory (measured:
    a 4-float shift changes the last bit). With aligned blocks, task ``t`` computes the same bits
    whether it sits among all the tasks (local sampling) or in a shard of them (a Ray worker).
    The padding rows are zeros whose outputs are dropped.
    """
    period = _ALIGN_FLOATS // math.gcd(_ALIGN_FLOATS, *input_sizes)
    return -(-num_episodes // period) * period


def has_batched_simulator(env: gym.Env) -> bool:
    """Whether ``env`` offers a batched simulator (overrides ``TaskEnv.make_batched``)."""
    return implements(env, "make_batched")


class TaskEnvError(ValueError):
    """A task env that metarl cannot train on (missing protocol, unsupported spaces, unknown id)."""


def registered_task_env_ids() -> list[str]:
    return sorted(env_id for env_id in gym.registry if env_id.startswith("metarl/"))


def import_task_module(module: str) -> None:
    """Import a user's module, which registers its task envs with gymnasium."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise TaskEnvError(f"env.id: cannot import module {module!r}: {exc}") from exc


def resolve_env_id(env_id: str) -> str:
    """Import the module of a ``"module:Env-v0"`` id (gymnasium's syntax) and return ``"Env-v0"``.

    This is how a user's own task env, registered when its module is imported, reaches a run.
    """
    module, sep, bare = env_id.rpartition(":")
    if sep:
        import_task_module(module)
    return bare


def check_task_env(env_id: str, env_kwargs: dict[str, Any] | None = None) -> gym.Env:
    """Build one instance of ``env_id`` and check that the sampler can run it; returns the env.

    Raises:
        TaskEnvError: naming the unknown id, the missing protocol methods or the unsupported space.
    """
    env_id = resolve_env_id(env_id)
    if env_id not in gym.registry:
        raise TaskEnvError(
            f"env.id: unknown env {env_id!r}; registered task envs: {', '.join(registered_task_env_ids())} "
            "(a user env must be registered with gymnasium.register before the run starts)"
        )
    try:
        env = gym.make(env_id, **(env_kwargs or {}))
    except Exception as exc:  # a user env may raise anything from its constructor
        raise TaskEnvError(f"env.kwargs: {env_id} could not be built with kwargs {env_kwargs}: {exc}") from exc
    missing = missing_protocol(env)
    if missing:
        env.close()
        raise TaskEnvError(f"{env_id} does not implement the task protocol: missing {', '.join(missing)}")
    for name in ("observation_space", "action_space"):
        space = getattr(env, name)
        if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1):
            env.close()
            raise TaskEnvError(f"{env_id}: the sampler needs a flat Box {name}, got {space}")
    return env


class Sampler:
    """Runs T tasks x E episodes as one vector env of T*E sub-environments, each on its own task.

    Episodes last ``horizon`` steps; steps after an episode terminates are masked out (the vector
    env autoresets them, and whatever they return is ignored). Actions for all sub-environments come
    from one policy forward pass per step.

    Args:
        env_id, env_kwargs: the registered task env and its constructor kwargs.
        horizon: steps per episode; defaults to the env's ``max_episode_steps``, and replaces it
            as the env's time limit otherwise.
        vectorization: one of :data:`VECTORIZATION_MODES`; "auto" picks the fastest the env offers.
        device: where observations are sent for the policy.
        seed: seeds the env resets and the action noise.
        rescale_actions: the policy acts in [-1, 1] per dimension, mapped affinely onto the env's
            finite action bounds (``low + (a + 1) (high - low) / 2``), as rllab's ``normalize`` did
            for the MAML paper; the env then clips. Identity for envs whose bounds are [-1, 1].
            Episodes record the policy's own (unmapped) actions.
    """

    def __init__(
        self,
        env_id: str,
        env_kwargs: dict[str, Any] | None = None,
        horizon: int | None = None,
        vectorization: str = "auto",
        device: torch.device | str = "cpu",
        seed: int = 0,
        rescale_actions: bool = True,
    ):
        if vectorization not in VECTORIZATION_MODES:
            raise ValueError(f"sampler.vectorization must be one of {VECTORIZATION_MODES}, got {vectorization!r}")
        env_id = resolve_env_id(env_id)
        probe = check_task_env(env_id, env_kwargs)
        self.observation_space, self.action_space = probe.observation_space, probe.action_space
        if vectorization == "batched" and not has_batched_simulator(probe):
            probe.close()
            raise TaskEnvError(f"sampler.vectorization: {env_id} has no batched simulator; use auto, vector_entry_point or sync")
        self.batched = vectorization == "batched" or (vectorization == "auto" and has_batched_simulator(probe))
        # The batched simulator is made by an instance of the env (it copies the instance's kwargs).
        self._factory: gym.Env | None = probe if self.batched else None
        if not self.batched:
            probe.close()
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs or {})
        self.horizon = horizon or gym.spec(env_id).max_episode_steps
        if not self.horizon or self.horizon <= 0:
            raise TaskEnvError(f"sampler.horizon: {env_id} registers no max_episode_steps; set a positive horizon")
        if vectorization == "vector_entry_point" and gym.spec(env_id).vector_entry_point is None:
            raise TaskEnvError(f"sampler.vectorization: {env_id} registers no vector_entry_point; use auto or sync")
        self.vectorization = vectorization
        low, high = self.action_space.low.astype(np.float64), self.action_space.high.astype(np.float64)
        finite = np.isfinite(low) & np.isfinite(high) & rescale_actions
        self._action_center = np.where(finite, (high + low) / 2, 0.0)
        self._action_scale = np.where(finite, (high - low) / 2, 1.0)
        self.device = torch.device(device)
        self._reset_seeds = np.random.default_rng(seed)
        self._noise = torch.Generator(device=self.device).manual_seed(seed)
        self._vector_envs: dict[int, gym.vector.VectorEnv] = {}
        self._sims: dict[int, BatchedTaskSim] = {}
        self._seed = seed

    @property
    def obs_dim(self) -> int:
        return self.observation_space.shape[0]

    @property
    def act_dim(self) -> int:
        return self.action_space.shape[0]

    def state_dict(self) -> dict[str, Any]:
        """The sampler's random state (reset seeds and action noise), for exact resumption."""
        return {"reset_seeds": self._reset_seeds.bit_generator.state, "noise": self._noise.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._reset_seeds.bit_generator.state = state["reset_seeds"]
        self._noise.set_state(state["noise"].to(torch.uint8).cpu())

    @property
    def mode(self) -> str:
        """The path actually used: "batched", "vector_entry_point", "sync" or "async"."""
        if self.batched:
            return "batched"
        if self.vectorization == "auto":
            return "vector_entry_point" if gym.spec(self.env_id).vector_entry_point is not None else "sync"
        return self.vectorization

    def _batched_sim(self, num_envs: int) -> BatchedTaskSim:
        if num_envs not in self._sims:
            sim = self._factory.unwrapped.make_batched(num_envs, device=self.device, seed=self._seed)
            self._sims[num_envs] = sim
        return self._sims[num_envs]

    def _vector_env(self, num_envs: int) -> gym.vector.VectorEnv:
        if num_envs not in self._vector_envs:
            mode = None if self.vectorization == "auto" else self.vectorization
            spec = gym.spec(self.env_id)
            uses_entry_point = mode == "vector_entry_point" or (mode is None and spec.vector_entry_point is not None)
            vector_kwargs = None if uses_entry_point else {"autoreset_mode": AutoresetMode.NEXT_STEP}
            vector_env = gym.make_vec(
                self.env_id,
                num_envs=num_envs,
                vectorization_mode=mode,
                vector_kwargs=vector_kwargs,
                max_episode_steps=self.horizon,
                **self.env_kwargs,
            )
            if vector_env.metadata.get("autoreset_mode") == AutoresetMode.DISABLED:
                raise TaskEnvError(f"{self.env_id}: the sampler needs a vector env that autoresets")
            self._vector_envs[num_envs] = vector_env
        return self._vector_envs[num_envs]

    @torch.no_grad()
    def sample(
        self, policy: GaussianMLPPolicy, params: Params, tasks: list[Any], episodes_per_task: int, budget: str = "episodes"
    ) -> Episodes:
        """Run ``episodes_per_task`` episodes on each task, or as many as a step budget takes.

        Args:
            policy: the policy module (its parameters are not used unless ``params`` is them).
            params: shared parameters, or per-task parameters with a leading dim ``len(tasks)``;
                None: the module's own.
            tasks: one task per row of the returned batch.
            budget: "episodes": exactly ``episodes_per_task`` episodes per task. "steps": whole
                episodes, in order, until each task has ``episodes_per_task * horizon`` steps (the
                last episode may cross it), as rllab's samplers filled a batch for the MAML paper:
                a task whose episodes end early gets more of them. Rounds of
                ``episodes_per_task`` episodes are sampled until every task is full; the slots of
                episodes past a task's budget are left empty (see ``Episodes.episode_mask``).
        Returns:
            :class:`Episodes` shaped ``[len(tasks), E, horizon]``, ``E = episodes_per_task`` for the
            episode budget and a multiple of it for the step budget.
        """
        if budget not in SAMPLE_BUDGETS:
            raise ValueError(f"budget must be one of {SAMPLE_BUDGETS}, got {budget!r}")
        batch = self._sample_round(policy, params, tasks, episodes_per_task)
        if budget == "episodes":
            return batch
        limit = episodes_per_task * self.horizon
        rounds = [batch]
        # Every episode has at least one step, so `horizon` rounds always fill the budget.
        while len(rounds) < self.horizon and bool((sum(r.mask.sum((1, 2)) for r in rounds) < limit).any()):
            rounds.append(self._sample_round(policy, params, tasks, episodes_per_task))
        return _within_step_budget(rounds, limit)

    def _sample_round(self, policy: GaussianMLPPolicy, params: Params, tasks: list[Any], episodes_per_task: int) -> Episodes:
        """One round: ``episodes_per_task`` episodes of every task, from this round's randomness."""
        reset_seed, noise = self.draw_round(len(tasks), episodes_per_task)
        return self.rollout(policy, params, tasks, episodes_per_task, reset_seed, noise)

    def draw_round(self, num_tasks: int, episodes_per_task: int) -> tuple[int, Tensor]:
        """A round's randomness: the reset seed of its envs and the action noise ``[H, T, E, act_dim]``."""
        reset_seed = int(self._reset_seeds.integers(2**31 - 1))
        shape = (self.horizon, num_tasks, episodes_per_task, self.act_dim)
        return reset_seed, torch.randn(shape, generator=self._noise, device=self.device)

    @torch.no_grad()
    def rollout(
        self,
        policy: GaussianMLPPolicy,
        params: Params,
        tasks: list[Any],
        episodes_per_task: int,
        reset_seed: int,
        noise: Tensor,
        env_offset: int = 0,
    ) -> Episodes:
        """Run the episodes of one round with the given randomness (see :meth:`draw_round`).

        ``env_offset``: these tasks' envs are envs ``env_offset..`` of a larger round (a shard of it
        on a remote worker); their resets then match the whole round's.
        """
        num_tasks, num_episodes, horizon = len(tasks), episodes_per_task, self.horizon
        num_envs = num_tasks * num_episodes
        with self._policy_threads(num_envs):
            env_tasks = [task for task in tasks for _ in range(num_episodes)]
            if self.batched:
                sim = self._batched_sim(num_envs)
                sim.set_tasks(env_tasks)
                obs = sim.reset(seed=reset_seed, env_offset=env_offset) if env_offset else sim.reset(seed=reset_seed)
            else:
                vector_env = self._vector_env(num_envs)
                vector_env.set_attr("task", env_tasks)
                obs, _ = vector_env.reset(seed=reset_seed + env_offset)  # sub-env i is seeded with seed + i

            shape = (num_tasks, num_episodes, horizon)
            observations = torch.zeros(*shape, self.obs_dim, device=self.device)
            actions = torch.zeros(*shape, self.act_dim, device=self.device)
            rewards = torch.zeros(shape, device=self.device)
            mask = torch.zeros(shape, device=self.device)
            alive = torch.ones(num_envs, dtype=torch.bool, device=self.device)
            all_alive = True
            center = torch.as_tensor(self._action_center, dtype=torch.float32, device=self.device)
            scale = torch.as_tensor(self._action_scale, dtype=torch.float32, device=self.device)
            noise = noise.to(self.device)
            # One parameter set per task even when shared (a view), and each task's rows of the input
            # padded to whole 64-byte blocks: every task's forward is then its own product on an
            # aligned input, whatever else the batch holds, so a shard of the tasks (a Ray worker)
            # computes bit-identical actions (see aligned_rows).
            own = policy.parameters_dict()
            params = {name: p if p.dim() > own[name].dim() else p.expand(num_tasks, *p.shape)
                      for name, p in (params or own).items()}
            rows = aligned_rows(num_episodes, (self.obs_dim, *policy.hidden_sizes))
            policy_input = torch.zeros(num_tasks, rows, self.obs_dim, device=self.device)
            for t in range(horizon):
                obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
                if not all_alive:  # what a finished sub-env returns is ignored, and must not become NaNs in the losses
                    obs_t = torch.where(alive[:, None], obs_t, 0.0)
                obs_t = obs_t.reshape(num_tasks, num_episodes, -1)
                policy_input[:, :num_episodes] = obs_t
                mean, std = policy.mean_std(policy_input, params)
                mean, std = mean[:, :num_episodes], std[:, :num_episodes]
                action = mean + std * noise[t]
                observations[:, :, t] = obs_t
                actions[:, :, t] = action
                mask[:, :, t] = alive.reshape(num_tasks, num_episodes)
                env_action = center + scale * action.reshape(num_envs, -1)
                if self.batched:
                    obs, reward, terminated = sim.step(env_action, alive)
                else:
                    env_action = env_action.cpu().numpy().astype(self.action_space.dtype)
                    obs, reward, terminated, truncated, _ = vector_env.step(env_action)
                    terminated = torch.as_tensor(terminated | truncated, device=self.device)
                reward = torch.as_tensor(reward, dtype=torch.float32, device=self.device)
                rewards[:, :, t] = (reward if all_alive else torch.where(alive, reward, 0.0)).reshape(num_tasks, num_episodes)
                terminated = terminated.to(self.device)
                if terminated.any():
                    alive &= ~terminated
                    all_alive = False
                    if not alive.any():
                        break
            return Episodes(observations, actions, rewards, mask, list(tasks))

    @contextlib.contextmanager
    def _policy_threads(self, num_envs: int) -> Iterator[None]:
        """One torch thread while a batched simulator with its own CPU thread pool steps: torch's idle
        threads spin and slow the simulator's pool down, and a one-thread policy forward for a few
        hundred envs costs less than that."""
        sim = self._batched_sim(num_envs) if self.batched else None
        if sim is None or not sim.uses_cpu_threads or self.device.type != "cpu":
            yield
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def close(self) -> None:
        for vector_env in self._vector_envs.values():
            vector_env.close()
        self._vector_envs.clear()
        for sim in self._sims.values():
            sim.close()
        self._sims.clear()
        self._close_factory()

    def _close_factory(self) -> None:
        """Close the env instance that makes the batched simulators (no new ones after this)."""
        if self._factory is not None:
            self._factory.close()
            self._factory = None
