"""Collect episodes for a batch of tasks at once: the env's batched simulator, or gymnasium's vector API.

Layers: :class:`BaseSampler` owns what every sampler shares (the env's spaces and horizon, the
budget of a batch, the randomness of each round); :class:`Sampler` rolls rounds out in this process
through one :class:`Stepper` (one class per stepping backend: :class:`BatchedStepper` over the env's
own batched simulator, :class:`VectorStepper` over gymnasium's vector envs, :class:`ProcessStepper`
over worker processes that each hold a share of the sub-envs);
``metarl.ray_sampler.RaySampler`` rolls them out on Ray workers, each holding a :class:`Sampler`.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import signal
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from torch import Tensor

import metarl.envs  # noqa: F401  (registers the metarl/ task envs)
from metarl.config import SAMPLE_BUDGETS, VECTORIZATION_MODES
from metarl.envs.base import batched_simulator_note, has_batched_simulator, missing_protocol
from metarl.envs.batched import BatchedTaskSim, cpu_cores
from metarl.episodes import Episodes, concat_episodes
from metarl.policy import GaussianMLPPolicy, Params

# VECTORIZATION_MODES: how the sampler steps its T*E sub-environments. "auto": the env's batched
# simulator if its class declares one (``TaskEnv.batched_simulator``), else its registered vector
# entry point, else gymnasium's SyncVectorEnv. "async" is gymnasium's AsyncVectorEnv: one process
# per sub-env, slow on few cores (for benchmarks). "processes": the sub-envs split over a few
# worker processes (one per core), for envs whose step is mostly Python (Meta-World).
__all__ = ["SAMPLE_BUDGETS", "VECTORIZATION_MODES", "BaseSampler", "Sampler", "NonFiniteEnvError", "TaskEnvError"]


def _within_step_budget(rounds: list[Episodes], limit: int) -> Episodes:
    """Concatenate rounds of episodes per task and keep, in order, the episodes that start before the
    task's ``limit`` valid steps are reached; the others are emptied (all-zero mask)."""
    batch = concat_episodes(rounds, dim=1)
    lengths = batch.mask.sum(-1)
    before = torch.cumsum(lengths, dim=1) - lengths
    kept = before < limit
    width = int(kept.sum(1).max().item())  # kept episodes are a prefix per task: drop slots no task uses
    return batch.keep_episodes(kept).episode_slice(0, width)


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


class TaskEnvError(ValueError):
    """A task env that metarl cannot train on (missing protocol, unsupported spaces, unknown id)."""


class NonFiniteEnvError(RuntimeError):
    """The env returned NaN or inf (reward or observation) while sampling; names the env, task and step."""


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
    except ImportError as exc:  # a package the env needs (an optional extra: Meta-World) is missing
        raise TaskEnvError(f"env.id: {env_id} could not be built: {exc}") from exc
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


class Stepper(ABC):
    """Steps N sub-environments, each on its own task, for the sampler; one subclass per backend.

    Everything crosses this interface as torch tensors on the sampler's device; actions are in the
    env's own units.
    """

    #: The backend steps on a CPU thread pool of its own (the policy then runs on one torch thread).
    uses_cpu_threads: bool = False

    @abstractmethod
    def start(self, tasks: list[Any], seed: int, env_offset: int) -> Tensor:
        """Install one task per sub-env and reset them all; returns observations ``[N, obs_dim]``.
        Sub-env ``i`` resets as sub-env ``env_offset + i`` of a larger round would."""

    @abstractmethod
    def step(self, actions: Tensor, alive: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """Apply ``actions`` ``[N, act_dim]``; returns observations ``[N, obs_dim]``, rewards ``[N]``,
        ``terminated`` and ``truncated`` ``[N]`` (bool), and ``success`` ``[N]`` (bool; the env's
        ``info["success"]``, None when the env reports none). Values of sub-envs not ``alive`` are
        ignored."""

    def close(self) -> None:  # noqa: B027 (optional: nothing to do by default)
        """Release processes, threads or buffers."""


class BatchedStepper(Stepper):
    """The env's own batched simulator (``TaskEnv.make_batched``): one call steps all N copies.
    It has no time limit of its own, so ``truncated`` is always False (the sampler's horizon ends episodes)."""

    def __init__(self, sim: BatchedTaskSim, device: torch.device):
        self.sim, self.device = sim, device
        self.uses_cpu_threads = sim.uses_cpu_threads

    def start(self, tasks: list[Any], seed: int, env_offset: int) -> Tensor:
        self.sim.set_tasks(tasks)
        obs = self.sim.reset(seed=seed, env_offset=env_offset) if env_offset else self.sim.reset(seed=seed)
        return obs.to(self.device, torch.float32)

    def step(self, actions: Tensor, alive: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        obs, reward, terminated = self.sim.step(actions, alive)
        terminated = terminated.to(self.device)
        return (obs.to(self.device, torch.float32), reward.to(self.device, torch.float32), terminated,
                torch.zeros_like(terminated), None)

    def close(self) -> None:
        self.sim.close()


def _worker_ignoring_sigint(*args: Any, **kwargs: Any) -> None:
    """gymnasium's AsyncVectorEnv worker, deaf to SIGINT: a terminal's Ctrl-C reaches the whole process
    group, and a worker killed by it would end the run before the trainer could write its checkpoint.
    The trainer handles the signal and closes its workers itself."""
    from gymnasium.vector.async_vector_env import _async_worker

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _async_worker(*args, **kwargs)


class _SetsTaskDirectly(gym.Wrapper):
    """Installs a sub-env's task with its ``set_task`` when the vector env sets ``task``.

    gymnasium's ``set_attr`` (``set_wrapper_attr``) reads an attribute before it sets it, so a plain
    ``set_attr("task", ...)`` would call the env's ``get_task`` first: for an env that installs a
    default task there (and builds a simulator for it), a cost paid per sub-env and per meta-batch.
    The outermost wrapper of each sub-env, so both SyncVectorEnv and AsyncVectorEnv workers go
    through it."""

    def set_wrapper_attr(self, name: str, value: Any, *, force: bool = True) -> bool:
        if name == "task":
            self.env.unwrapped.set_task(value)
            return True
        return super().set_wrapper_attr(name, value, force=force)


class VectorStepper(Stepper):
    """gymnasium's vector API: the env's vector entry point, SyncVectorEnv or AsyncVectorEnv, with
    next-step autoreset (what a finished sub-env returns afterwards is ignored). A vector entry point
    that autoresets in the same step reports the observation an episode ended in as
    ``info["final_obs"]``, which is returned in place of the reset one."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], num_envs: int, mode: str, horizon: int,
                 action_dtype: Any, device: torch.device):
        uses_entry_point = mode == "vector_entry_point"
        vector_kwargs = None if uses_entry_point else {"autoreset_mode": AutoresetMode.NEXT_STEP}
        if mode == "async":
            vector_kwargs["worker"] = _worker_ignoring_sigint
        self.device, self.action_dtype = device, action_dtype
        self.env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=None if uses_entry_point else mode,
                                vector_kwargs=vector_kwargs, max_episode_steps=horizon,
                                wrappers=None if uses_entry_point else [_SetsTaskDirectly], **env_kwargs)
        if self.env.metadata.get("autoreset_mode") == AutoresetMode.DISABLED:
            self.env.close()
            raise TaskEnvError(f"{env_id}: the sampler needs a vector env that autoresets")

    def start(self, tasks: list[Any], seed: int, env_offset: int) -> Tensor:
        self.env.set_attr("task", tasks)
        obs, _ = self.env.reset(seed=seed + env_offset)  # sub-env i is seeded with seed + i
        return torch.as_tensor(obs, dtype=torch.float32, device=self.device)

    def step(self, actions: Tensor, alive: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        obs, reward, terminated, truncated, info = self.env.step(actions.cpu().numpy().astype(self.action_dtype))
        success = _vector_success(info)
        if "_final_obs" in info:  # a same-step autoreset (a vector entry point's choice) returned the reset obs
            obs = np.array(obs, copy=True)
            for i in np.flatnonzero(info["_final_obs"]):
                obs[i] = info["final_obs"][i]
        as_tensor = lambda x, dtype: torch.as_tensor(np.asarray(x), dtype=dtype, device=self.device)  # noqa: E731
        return (as_tensor(obs, torch.float32), as_tensor(reward, torch.float32), as_tensor(terminated, torch.bool),
                as_tensor(truncated, torch.bool), None if success is None else as_tensor(success, torch.bool))

    def close(self) -> None:
        self.env.close()


def contiguous_shards(count: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous ``(start, stop)`` ranges of ``count`` items in ``parts`` shares, as even as possible,
    none empty (a Ray round's tasks over its workers, a round's sub-envs over worker processes)."""
    bounds = np.linspace(0, count, min(parts, count) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _vector_success(info: dict[str, Any]) -> np.ndarray | None:
    """``info["success"]`` of a vector env's step as a bool array (None when the env reports none);
    gymnasium marks the sub-envs that gave one in ``info["_success"]``."""
    if "success" not in info:
        return None
    return np.asarray(info["success"], dtype=bool) & np.asarray(info["_success"], dtype=bool)


def _process_worker(pipe: Any, parent_end: Any, env_id: str, env_kwargs: dict[str, Any], num_envs: int,
                    horizon: int, action_dtype: Any) -> None:
    """A :class:`ProcessStepper` worker: a sync :class:`VectorStepper` of its share of the sub-envs,
    driven by ``(command, argument)`` messages; deaf to SIGINT like the async workers (the trainer
    closes it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent_end.close()
    stepper = None
    try:
        stepper = VectorStepper(env_id, env_kwargs, num_envs, "sync", horizon, action_dtype, torch.device("cpu"))
        pipe.send(("ok", None))
        while True:
            command, argument = pipe.recv()
            if command == "start":
                pipe.send(("ok", stepper.start(*argument, env_offset=0).numpy()))
            elif command == "step":
                out = stepper.step(torch.from_numpy(argument), torch.ones(len(argument), dtype=torch.bool))
                pipe.send(("ok", tuple(None if x is None else x.numpy() for x in out)))
            else:
                break
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass
    except Exception as exc:  # the driver raises it with the env's name
        with contextlib.suppress(BrokenPipeError, OSError):
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        if stepper is not None:
            stepper.close()
        pipe.close()


class ProcessStepper(Stepper):
    """The sub-envs split over ``processes`` worker processes, each stepping its share with a
    SyncVectorEnv, all shares at once. For envs whose step is mostly Python (Meta-World's reward and
    observation code), which one process cannot spread over cores. Sub-env ``i`` resets with the
    seed SyncVectorEnv gives it, so the episodes equal those of ``sync``. Arrays cross the pipes
    as numpy: a torch tensor sent through one goes into a new shared-memory segment every step.

    The workers are forked, so task envs registered in this process (a user's module, a test's
    conftest) exist in them too; a worker that fails or stays silent for ``timeout_s`` seconds on
    one step ends the stepper (all its workers) with an error naming the env.
    """

    #: The workers take the cores: the policy runs on one torch thread meanwhile (see _policy_threads).
    uses_cpu_threads = True

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], num_envs: int, processes: int, horizon: int,
                 action_dtype: Any, device: torch.device, timeout_s: float = 600.0):
        import multiprocessing

        self.env_id, self.device, self.timeout_s = env_id, device, timeout_s
        self.shares = contiguous_shards(num_envs, processes)
        context = multiprocessing.get_context("fork")  # user envs registered in this process stay registered
        self.pipes, self.workers = [], []
        try:
            for begin, end in self.shares:
                parent, child = context.Pipe()
                worker = context.Process(target=_process_worker, daemon=True,
                                         args=(child, parent, env_id, env_kwargs, end - begin, horizon, action_dtype))
                worker.start()
                child.close()
                self.pipes.append(parent)
                self.workers.append(worker)
            self._gather()  # each worker built its envs
        except BaseException:
            self.close()
            raise

    def _gather(self) -> list[Any]:
        out = []
        for k, pipe in enumerate(self.pipes):
            try:
                if pipe.poll(self.timeout_s):
                    status, value = pipe.recv()
                else:
                    status, value = "error", f"no answer within {self.timeout_s:.0f} s"
            except EOFError:
                status, value = "error", f"worker process exited with code {self.workers[k].exitcode}"
            if status != "ok":
                count = len(self.pipes)
                self.close()  # the others may be mid-reply: none of them is reused
                raise RuntimeError(f"{self.env_id}: sampler worker {k} of {count} failed: {value}")
            out.append(value)
        return out

    def start(self, tasks: list[Any], seed: int, env_offset: int) -> Tensor:
        if not self.pipes:
            raise RuntimeError(f"{self.env_id}: the sampler's worker processes ended after a failure")
        for pipe, (begin, end) in zip(self.pipes, self.shares, strict=True):
            pipe.send(("start", (tasks[begin:end], seed + env_offset + begin)))
        return torch.from_numpy(np.concatenate(self._gather())).to(self.device)

    def step(self, actions: Tensor, alive: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        actions = actions.cpu().numpy()
        for pipe, (begin, end) in zip(self.pipes, self.shares, strict=True):
            pipe.send(("step", actions[begin:end]))
        parts = self._gather()
        joined = [torch.from_numpy(np.concatenate([p[i] for p in parts])).to(self.device) for i in range(4)]
        success = None
        if any(p[4] is not None for p in parts):  # a share in which no env said "success" did not succeed
            success = np.concatenate([np.zeros_like(p[2]) if p[4] is None else p[4] for p in parts])
            success = torch.from_numpy(success).to(self.device)
        return (*joined, success)

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(BrokenPipeError, OSError):
                pipe.send(("close", None))
        for worker in self.workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
                worker.join()
        for pipe in self.pipes:
            pipe.close()
        self.pipes, self.workers, self.shares = [], [], []


def _seed_sequence(seed: int | np.random.SeedSequence) -> np.random.SeedSequence:
    return seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)


class BaseSampler(ABC):
    """What every sampler shares: the task env's spaces and horizon, how a batch is filled
    (:meth:`sample`), and the randomness of each round (:meth:`draw_round`), drawn in the driver so
    that a sampler that splits a round (Ray) gives the same episodes as one that does not.

    Args:
        env_id, env_kwargs: the registered task env and its constructor kwargs.
        horizon: steps per episode; defaults to the env's ``max_episode_steps``, and replaces it
            as the env's time limit otherwise.
        device: where observations are sent for the policy and where episodes are returned.
        seed: the root of this sampler's randomness (an int, or a ``numpy.random.SeedSequence``,
            see ``metarl.runtime.seed_stream``): it spawns one stream for the env resets and one
            for the action noise.
        rescale_actions: the policy acts in [-1, 1] per dimension, mapped affinely onto the env's
            finite action bounds (``low + (a + 1) (high - low) / 2``), as rllab's ``normalize`` did
            for the MAML paper; the env then clips. Identity for envs whose bounds are [-1, 1].
            Episodes record the policy's own (unmapped) actions.
        action_range: with ``rescale_actions``, the policy's range is [-r, r] instead
            (``low + (a + r) (high - low) / 2r``): garage's ``normalize(expected_action_scale=r)``,
            which its Meta-World ML1 and ML45 examples use with r = 10, so that the policy's
            initial noise is a tenth of the env's range. Dimensions with an infinite bound are
            passed through unchanged.
    """

    def __init__(
        self,
        env_id: str,
        env_kwargs: dict[str, Any] | None = None,
        horizon: int | None = None,
        device: torch.device | str = "cpu",
        seed: int | np.random.SeedSequence = 0,
        rescale_actions: bool = True,
        action_range: float = 1.0,
    ):
        if not action_range > 0:
            raise ValueError(f"sampler.action_range must be > 0, got {action_range}")
        #: Whether the env has reported ``info["success"]`` in any round so far: from then on a round
        #: in which no step reported it has ``success`` all False, not None.
        self.reports_success = False
        env_id = resolve_env_id(env_id)
        probe = check_task_env(env_id, env_kwargs)
        self.observation_space, self.action_space = probe.observation_space, probe.action_space
        self.env_class = type(probe.unwrapped)
        self._probe = probe
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs or {})
        self.horizon = horizon or gym.spec(env_id).max_episode_steps
        if not self.horizon or self.horizon <= 0:
            probe.close()
            raise TaskEnvError(f"sampler.horizon: {env_id} registers no max_episode_steps; set a positive horizon")
        low, high = self.action_space.low.astype(np.float64), self.action_space.high.astype(np.float64)
        finite = np.isfinite(low) & np.isfinite(high) & rescale_actions
        self._action_center = np.where(finite, (high + low) / 2, 0.0)
        self._action_scale = np.where(finite, (high - low) / (2 * action_range), 1.0)
        self.device = torch.device(device)
        self.seed = _seed_sequence(seed)
        resets, noise = self.seed.spawn(2)
        self._reset_seeds = np.random.default_rng(resets)
        self._noise = torch.Generator(device=self.device).manual_seed(int(noise.generate_state(1, np.uint64)[0] >> 1))

    @property
    def obs_dim(self) -> int:
        return self.observation_space.shape[0]

    @property
    def act_dim(self) -> int:
        return self.action_space.shape[0]

    def action_to_env(self, action: np.ndarray) -> np.ndarray:
        """The policy's action in [-r, r] mapped onto the env's bounds (see ``rescale_actions``)."""
        return (self._action_center + self._action_scale * action).astype(self.action_space.dtype)

    @property
    @abstractmethod
    def mode(self) -> str:
        """The stepping path actually used, e.g. "batched", "sync" or "ray (2 workers)"."""

    @property
    def note(self) -> str:
        """One line saying which path steps the env, and why when it is not the fastest one."""
        return f"sampler: {self.env_id} ({self.env_class.__name__}) steps through {self.mode}"

    def state_dict(self) -> dict[str, Any]:
        """The sampler's random state (reset seeds and action noise) and whether the env has reported
        success yet, for exact resumption."""
        return {"reset_seeds": self._reset_seeds.bit_generator.state, "noise": self._noise.get_state(),
                "noise_device": self.device.type, "reports_success": self.reports_success}

    def load_state_dict(self, state: dict[str, Any]) -> list[str]:
        """Restore :meth:`state_dict`; returns what could not be restored (empty when everything was).

        The action-noise generator's state belongs to one device type: a run resumed on another
        device keeps its fresh noise stream (seeded from the same root) and says so."""
        self._reset_seeds.bit_generator.state = state["reset_seeds"]
        self.reports_success = bool(state.get("reports_success", False))  # absent from older checkpoints
        saved_on = state.get("noise_device", "cpu")
        if saved_on != self.device.type:
            return [f"the sampler's action noise was saved on {saved_on} and cannot continue on {self.device.type}: "
                    "it restarts from its seed, so episodes differ from an uninterrupted run"]
        self._noise.set_state(state["noise"].to(torch.uint8).cpu())
        return []

    def sample(
        self, policy: GaussianMLPPolicy, params: Params, tasks: list[Any], episodes_per_task: int,
        budget: str = "episodes"
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
        Raises:
            NonFiniteEnvError: the env returned NaN or inf, naming the env, the task and the step.
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

    def draw_round(self, num_tasks: int, episodes_per_task: int) -> tuple[int, Tensor]:
        """A round's randomness: the reset seed of its envs and the action noise ``[H, T, E, act_dim]``."""
        reset_seed = int(self._reset_seeds.integers(2**31 - 1))
        shape = (self.horizon, num_tasks, episodes_per_task, self.act_dim)
        return reset_seed, torch.randn(shape, generator=self._noise, device=self.device)

    @abstractmethod
    def _sample_round(
        self, policy: GaussianMLPPolicy, params: Params, tasks: list[Any], episodes_per_task: int
    ) -> Episodes:
        """One round: ``episodes_per_task`` episodes of every task, from this round's randomness."""

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None


class Sampler(BaseSampler):
    """Runs T tasks x E episodes in this process as N = T*E sub-environments, each on its own task.

    Episodes last ``horizon`` steps at most; an episode ends when its env terminates or truncates
    (kept apart: ``Episodes.terminated`` / ``Episodes.truncated``), and its later steps are masked
    out. Actions for all sub-environments come from one policy forward pass per step.

    Args:
        vectorization: one of ``VECTORIZATION_MODES``; "auto" picks the fastest path the env
            offers. The env's batched simulator runs only for a class that declares it reproduces
            that very class (``TaskEnv.batched_simulator``); :attr:`note` says which path runs.
        The others: see :class:`BaseSampler`.
    """

    def __init__(
        self,
        env_id: str,
        env_kwargs: dict[str, Any] | None = None,
        horizon: int | None = None,
        vectorization: str = "auto",
        device: torch.device | str = "cpu",
        seed: int | np.random.SeedSequence = 0,
        rescale_actions: bool = True,
        processes: int = 0,
        action_range: float = 1.0,
    ):
        if vectorization not in VECTORIZATION_MODES:
            raise ValueError(f"sampler.vectorization must be one of {VECTORIZATION_MODES}, got {vectorization!r}")
        if processes < 0:
            raise ValueError(f"sampler.processes must be >= 0, got {processes}")
        self._steppers: dict[int, Stepper] = {}
        self.processes = processes or cpu_cores()
        super().__init__(env_id, env_kwargs, horizon, device, seed, rescale_actions, action_range)
        env_id, probe = self.env_id, self._probe
        spec = gym.spec(env_id)
        # Why the env's batched simulator is not used (empty when it is, or when not asked for).
        self._why = "" if has_batched_simulator(probe) else batched_simulator_note(probe)
        if not self._why and vectorization in ("auto", "batched"):
            try:
                trial = probe.unwrapped.make_batched(1, device=self.device, seed=0)
            except BaseException:
                self.close()
                raise
            if trial is None:
                self._why = f"{self.env_class.__name__}.make_batched returned None"
            else:
                trial.close()
        batched = not self._why
        if vectorization == "batched" and not batched:
            self.close()
            raise TaskEnvError(f"sampler.vectorization: {self._why}; use auto, vector_entry_point or sync")
        if vectorization != "auto":
            self._why = ""  # the user chose the path
        if vectorization == "vector_entry_point" and spec.vector_entry_point is None:
            self.close()
            raise TaskEnvError(f"sampler.vectorization: {env_id} registers no vector_entry_point; use auto or sync")
        if vectorization == "auto":
            self._mode = "batched" if batched else ("vector_entry_point" if spec.vector_entry_point is not None
                                                    else "sync")
        else:
            self._mode = vectorization
        if self._mode != "batched":  # the batched simulator is made by an instance of the env (it copies its kwargs)
            super().close()
        self._sim_seed = int(self.seed.generate_state(1)[0])

    @property
    def mode(self) -> str:
        """The path actually used: "batched", "vector_entry_point", "sync", "async" or "processes"."""
        return self._mode

    @property
    def batched(self) -> bool:
        return self._mode == "batched"

    @property
    def note(self) -> str:
        return super().note + (f" ({self._why})" if self._why else "")

    def stepper(self, num_envs: int) -> Stepper:
        """The backend that steps ``num_envs`` sub-envs (built once per size, then reused)."""
        if num_envs not in self._steppers:
            sim = None
            if self.batched:
                sim = self._probe.unwrapped.make_batched(num_envs, device=self.device, seed=self._sim_seed)
                if sim is None:  # it had one for 1 env, not for this many: the vector API from now on
                    self._why = f"{self.env_class.__name__}.make_batched returned None for {num_envs} envs"
                    self._mode = "vector_entry_point" if gym.spec(self.env_id).vector_entry_point else "sync"
                    for stepper in self._steppers.values():
                        stepper.close()
                    self._steppers.clear()
            if sim is not None:
                self._steppers[num_envs] = BatchedStepper(sim, self.device)
            elif self._mode == "processes":
                self._steppers[num_envs] = ProcessStepper(self.env_id, self.env_kwargs, num_envs, self.processes,
                                                          self.horizon, self.action_space.dtype, self.device)
            else:
                self._steppers[num_envs] = VectorStepper(self.env_id, self.env_kwargs, num_envs, self._mode,
                                                         self.horizon, self.action_space.dtype, self.device)
        return self._steppers[num_envs]

    def _sample_round(
        self, policy: GaussianMLPPolicy, params: Params, tasks: list[Any], episodes_per_task: int
    ) -> Episodes:
        reset_seed, noise = self.draw_round(len(tasks), episodes_per_task)
        return self.rollout(policy, params, tasks, episodes_per_task, reset_seed, noise)

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
        stepper = self.stepper(num_envs)
        with self._policy_threads(stepper):
            env_tasks = [task for task in tasks for _ in range(num_episodes)]
            obs = stepper.start(env_tasks, reset_seed, env_offset)
            shape = (num_tasks, num_episodes, horizon)
            observations = torch.zeros(*shape, self.obs_dim, device=self.device)
            actions = torch.zeros(*shape, self.act_dim, device=self.device)
            rewards = torch.zeros(shape, device=self.device)
            mask = torch.zeros(shape, device=self.device)
            terminated_at = torch.zeros(num_envs, dtype=torch.bool, device=self.device)
            final_obs = torch.zeros(num_envs, self.obs_dim, device=self.device)
            alive = torch.ones(num_envs, dtype=torch.bool, device=self.device)
            succeeded, reports_success = torch.zeros_like(alive), False
            all_alive = True
            self._check_finite(obs, None, alive, env_tasks, 0)
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
                if not all_alive:  # what a finished sub-env returns is ignored, and must not become NaNs in the losses
                    obs = torch.where(alive[:, None], obs, 0.0)
                obs_t = obs.reshape(num_tasks, num_episodes, -1)
                policy_input[:, :num_episodes] = obs_t
                mean, std = policy.mean_std(policy_input, params)
                mean, std = mean[:, :num_episodes], std[:, :num_episodes]
                action = mean + std * noise[t]
                observations[:, :, t] = obs_t
                actions[:, :, t] = action
                mask[:, :, t] = alive.reshape(num_tasks, num_episodes)
                obs, reward, terminated, truncated, success = stepper.step(
                    center + scale * action.reshape(num_envs, -1), alive)
                if success is not None:  # an episode succeeds if any of its steps does
                    succeeded |= success & alive
                    reports_success = self.reports_success = True
                self._check_finite(obs, reward, alive, env_tasks, t + 1)
                rewards[:, :, t] = (
                    reward if all_alive else torch.where(alive, reward, 0.0)
                ).reshape(num_tasks, num_episodes)
                # An episode ends at a termination or a truncation (the env's time limit, or the
                # horizon below); only a termination is a terminal state. The observation an episode
                # was cut off in is kept for bootstrapping (sampler.bootstrap_truncated).
                ended = (terminated | truncated) & alive if t < horizon - 1 else alive.clone()
                if ended.any():
                    terminated_at |= terminated & alive
                    final_obs = torch.where((ended & ~terminated)[:, None], obs, final_obs)
                    alive &= ~ended
                    all_alive = False
                    if not alive.any():
                        break
            episode_shape = (num_tasks, num_episodes)
            terminated = terminated_at.reshape(episode_shape)
            observations *= mask[..., None]  # padding is zeros (what finished sub-envs were fed is not kept)
            actions *= mask[..., None]
            # Once an env has reported success, a round in which no step did is a round without one.
            return Episodes(observations, actions, rewards, mask, list(tasks), terminated=terminated,
                            truncated=~terminated, final_observations=final_obs.reshape(*episode_shape, -1),
                            success=succeeded.reshape(episode_shape) if reports_success or self.reports_success
                            else None)

    def _check_finite(self, obs: Tensor, reward: Tensor | None, alive: Tensor, env_tasks: list[Any], step: int) -> None:
        """Raise :class:`NonFiniteEnvError` when a running sub-env returned NaN or inf."""
        finite = torch.isfinite(obs).all()
        if reward is not None:
            finite &= torch.isfinite(reward).all()
        if bool(finite):  # one host sync per step, the usual case
            return
        bad_obs = ~torch.isfinite(obs).all(-1) & alive
        bad_reward = (~torch.isfinite(reward) & alive) if reward is not None else torch.zeros_like(alive)
        bad = bad_obs | bad_reward
        if not bad.any():
            return  # only finished sub-envs, whose values are ignored
        i = int(bad.nonzero()[0])
        what = []
        if bad_reward[i]:
            what.append(f"reward {float(reward[i])}")
        if bad_obs[i]:
            what.append(f"observation {obs[i].tolist()}")
        where = "at reset" if step == 0 else f"at step {step}"
        raise NonFiniteEnvError(
            f"{self.env_id} returned a non-finite {' and '.join(what)} {where} of an episode on task {env_tasks[i]!r} "
            f"({int(bad.sum())} of {len(bad)} sub-envs affected); metarl cannot train on NaN or inf, fix the env"
        )

    @contextlib.contextmanager
    def _policy_threads(self, stepper: Stepper) -> Iterator[None]:
        """One torch thread while a backend with its own CPU thread pool steps: torch's idle
        threads spin and slow the simulator's pool down, and a one-thread policy forward for a few
        hundred envs costs less than that."""
        if not stepper.uses_cpu_threads or self.device.type != "cpu":
            yield
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def close(self) -> None:
        for stepper in self._steppers.values():
            stepper.close()
        self._steppers.clear()
        super().close()
