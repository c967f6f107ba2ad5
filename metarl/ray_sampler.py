"""Sampling on Ray: the meta-batch's tasks split over rollout workers, on this machine or a cluster.

Each worker is a Ray actor holding an ordinary :class:`~metarl.sampler.Sampler` (the batched
simulator when the env has one, else gymnasium's vector API) for the task env. For every round of
episodes the driver draws the round's randomness exactly as the local sampler does (one reset seed
and the action noise, from the same generators), splits the tasks into contiguous shards, one per
worker, and each worker rolls out its shard with its slice of the noise and the resets of its
envs' positions in the whole round (``env_offset``). The episodes are therefore those of the local
sampler, bit for bit, whatever the number of workers (tested). A worker ships only the valid steps of its
episodes (:class:`~metarl.episodes.ValidSteps`) and the driver rebuilds the padded batch, on which
the advantages and returns are computed before the batch is packed for the update.

The policy parameters go to the object store once per :meth:`RaySampler.sample` call (shared
before adaptation, one set per task after it); a worker reads its tasks' rows. The inner
adaptation stays on the driver: the meta-update needs the episodes there anyway (it
differentiates through the inner step), and adapting all tasks is one batched backward pass
(``time_adapt`` in ``metrics.jsonl``, milliseconds to tens of milliseconds), far less than shipping
the episodes' graph or recomputing it.

Failures: an exception raised in a worker (a user env's bug) stops sampling with
:class:`SamplerWorkerError` naming the env, the tasks of the shard and the cause. A worker whose
process dies is replaced and its shard re-run, up to ``max_retries`` times per round; a round that
takes longer than ``timeout_s`` is an error too (its workers are killed and replaced), never a hang.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metarl.episodes import Episodes, ValidSteps, concat_episodes
from metarl.policy import GaussianMLPPolicy, Params
from metarl.sampler import BaseSampler, Sampler, contiguous_shards


class SamplerWorkerError(RuntimeError):
    """A Ray rollout worker failed on some tasks (exception in the env, death beyond the retries, timeout)."""


def import_ray() -> Any:
    """``ray``, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError("sampler.backend=ray needs Ray, an optional dependency: pip install -e .[ray]") from exc
    return ray


class RolloutWorker:
    """The body of a Ray rollout actor: a local sampler for the task env, on CPU."""

    def __init__(self, sampler_kwargs: dict[str, Any], policy_spec: dict[str, Any], threads: int):
        # The simulator's pool gets the worker's CPUs; torch runs the small policy on one thread.
        os.environ["METARL_SIM_THREADS"] = str(threads)
        torch.set_num_threads(1)
        self.sampler = Sampler(**sampler_kwargs, device="cpu")
        self.policy = GaussianMLPPolicy(**policy_spec)

    def pid(self) -> int:
        return os.getpid()

    def rollout(
        self, params: Params, rows: tuple[int, int] | None, tasks: list[Any], episodes_per_task: int,
        reset_seed: int, noise: Tensor, env_offset: int,
    ) -> tuple[ValidSteps, float]:
        """Roll out ``tasks``; ``rows`` selects their per-task parameters (None: shared ones).
        Returns the episodes' valid steps (less to ship than the padded batch) and the seconds the
        rollout took in this worker."""
        start = time.perf_counter()
        if rows is not None:
            params = {name: p[rows[0] : rows[1]] for name, p in params.items()}
        episodes = self.sampler.rollout(self.policy, params, tasks, episodes_per_task, reset_seed, noise, env_offset)
        return ValidSteps.of(episodes), time.perf_counter() - start


class _WorkerPool:
    """Rollout actors for one env and policy architecture, shared by the samplers that need them
    (training and evaluation use the same ones: workers keep no random state of their own)."""

    def __init__(self, ray: Any, args: tuple[Any, ...], size: int, cpus_per_worker: float):
        self.ray, self.args, self.cpus = ray, args, size * cpus_per_worker
        self.actor_class = ray.remote(num_cpus=cpus_per_worker, max_restarts=0)(RolloutWorker)
        self.workers = [self.actor_class.remote(*args) for _ in range(size)]
        self.users = 0

    def replace(self, k: int) -> None:
        """Kill worker ``k`` (if it still lives) and start a fresh one in its place."""
        self.ray.kill(self.workers[k])
        self.workers[k] = self.actor_class.remote(*self.args)

    def kill(self) -> None:
        for worker in self.workers:
            self.ray.kill(worker)
        self.workers = []


#: Live pools by env, policy and worker settings; Ray is shut down with the last one if metarl started it.
_POOLS: dict[str, _WorkerPool] = {}
_STARTED_RAY = False


def _describe(tasks: list[Any], limit: int = 4) -> str:
    shown = ", ".join(repr(t) for t in tasks[:limit])
    return shown + (f", ... ({len(tasks)} tasks)" if len(tasks) > limit else "")


class RaySampler(BaseSampler):
    """A sampler whose rounds run on ``num_workers`` Ray actors, each holding a :class:`~metarl.sampler.Sampler`.

    Args:
        env_id, env_kwargs, horizon, vectorization, seed, rescale_actions, action_range: as for ``Sampler``;
            the workers use them, the driver only draws the randomness.
        device: where the returned episodes go (the policy's device); workers run on CPU.
        num_workers: rollout actors; a round uses ``min(num_workers, tasks)`` of them.
        cpus_per_worker: CPUs Ray reserves for each actor; also its simulator's thread count.
        address: the Ray cluster to join; None: ``$RAY_ADDRESS`` if set, else a local Ray.
        max_retries: how many times per round a dead worker is replaced and its shard re-run.
        timeout_s: longest a round may take before it is an error.
        processes: each worker's ``sampler.processes`` (vectorization=processes; 0: one per CPU Ray
            reserved for it).
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
        num_workers: int = 2,
        cpus_per_worker: float = 1.0,
        address: str | None = None,
        max_retries: int = 2,
        timeout_s: float = 600.0,
        processes: int = 0,
        action_range: float = 1.0,
    ):
        ray = import_ray()
        if num_workers < 1:
            raise ValueError(f"ray.workers must be >= 1, got {num_workers}")
        # The workers' own sampler, built here once so that a bad vectorization fails on the driver.
        local = Sampler(env_id, env_kwargs, horizon, vectorization, "cpu", 0, rescale_actions, processes, action_range)
        self._worker_note = local.note.split(" steps through ", 1)[1]
        local.close()
        super().__init__(env_id, env_kwargs, horizon, device, seed, rescale_actions, action_range)
        super().close()  # the driver never simulates
        global _STARTED_RAY
        self._ray = ray
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
            # A local Ray's workers see the driver's import path, so a user's task-env module
            # found here ("module:Env-v0") imports there too; a cluster's nodes need it installed.
            runtime_env = None if address else {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
            try:
                ray.init(address=address, include_dashboard=False, configure_logging=False, runtime_env=runtime_env)
            except (ConnectionError, RuntimeError) as exc:
                raise ValueError(f"ray.address: cannot join the Ray cluster at {address}: {exc}") from exc
            _STARTED_RAY = True
        self.num_workers, self.cpus_per_worker = num_workers, cpus_per_worker
        self._check_cpus(others=False)
        self.max_retries, self.timeout_s = max_retries, timeout_s
        self._sampler_kwargs = {"env_id": env_id, "env_kwargs": self.env_kwargs, "horizon": self.horizon,
                                "vectorization": vectorization, "rescale_actions": rescale_actions,
                                "processes": processes, "action_range": action_range}
        self._pool: _WorkerPool | None = None
        self._pool_key: str | None = None
        self._params_ref: Any = None
        self._params_per_task = False
        #: Seconds of the last round not spent in the slowest worker's rollout: drawing and shipping
        #: the noise, scheduling, returning and concatenating the episodes.
        self.last_round_overhead_s = 0.0

    @property
    def mode(self) -> str:
        return f"ray ({self.num_workers} workers)"

    @property
    def note(self) -> str:
        return f"{super().note}, each worker through {self._worker_note}"

    def _check_cpus(self, others: bool) -> None:
        """Workers that can never all be scheduled would wait forever: refuse them up front
        (``others``: count the CPUs that other samplers' workers hold)."""
        cpus = self._ray.cluster_resources().get("CPU", 0.0)
        if others:
            cpus -= sum(pool.cpus for pool in _POOLS.values())
        if self.num_workers * self.cpus_per_worker > cpus:
            raise ValueError(
                f"ray.workers x ray.cpus_per_worker = {self.num_workers} x {self.cpus_per_worker:g} CPUs, but the Ray "
                f"cluster has {cpus:g} free for them: the workers could never all start; use fewer workers or a "
                "fractional ray.cpus_per_worker"
            )

    def _workers_for(self, policy: GaussianMLPPolicy) -> _WorkerPool:
        spec = {"obs_dim": policy.obs_dim, "act_dim": policy.act_dim, "hidden_sizes": policy.hidden_sizes,
                "nonlinearity": policy.nonlinearity, "context_dim": policy.context_dim}
        key = repr((self._sampler_kwargs, spec, self.num_workers, self.cpus_per_worker))
        if key != self._pool_key:
            self._release()
            if key not in _POOLS:
                self._check_cpus(others=True)
                args = (self._sampler_kwargs, spec, max(1, int(self.cpus_per_worker)))
                _POOLS[key] = _WorkerPool(self._ray, args, self.num_workers, self.cpus_per_worker)
            self._pool, self._pool_key = _POOLS[key], key
            self._pool.users += 1
        return self._pool

    def worker_pids(self) -> list[int]:
        """The process ids of the current workers (tests kill one to check the recovery)."""
        return self._ray.get([w.pid.remote() for w in self._pool.workers]) if self._pool else []

    @torch.no_grad()
    def sample(
        self, policy: GaussianMLPPolicy, params: Params, tasks: list[Any], episodes_per_task: int,
        budget: str = "episodes"
    ) -> Episodes:
        self._workers_for(policy)
        own = policy.parameters_dict()
        params = own if params is None else params
        self._params_per_task = any(p.dim() > own[name].dim() for name, p in params.items())
        # once per call: every round and worker reads the same object
        self._params_ref = self._ray.put({name: p.detach().cpu() for name, p in params.items()})
        try:
            return super().sample(policy, params, tasks, episodes_per_task, budget)
        finally:
            self._params_ref = None

    def _sample_round(
        self, policy: GaussianMLPPolicy, params: Params, tasks: list[Any], episodes_per_task: int
    ) -> Episodes:
        ray, pool = self._ray, self._pool
        start = time.perf_counter()
        reset_seed, noise = self.draw_round(len(tasks), episodes_per_task)
        noise = noise.cpu()
        shards = contiguous_shards(len(tasks), self.num_workers)

        def submit(k: int) -> Any:
            a, b = shards[k]
            rows = (a, b) if self._params_per_task else None
            return pool.workers[k].rollout.remote(self._params_ref, rows, tasks[a:b], episodes_per_task, reset_seed,
                                                   noise[:, a:b].contiguous(), a * episodes_per_task)

        pending = {submit(k): k for k in range(len(shards))}
        results: dict[int, ValidSteps] = {}
        retries = 0
        deadline = time.monotonic() + self.timeout_s
        rollout_s = 0.0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                stuck = sorted(pending.values())
                for k in stuck:  # a hung worker is killed and replaced, so that the next round starts clean
                    pool.replace(k)
                names = "; ".join(f"worker {k}: {_describe(tasks[slice(*shards[k])])}" for k in stuck)
                raise SamplerWorkerError(f"{self.env_id}: no episodes after sampler timeout {self.timeout_s:g} s "
                                         f"from {names}")
            ref = ready[0]
            k = pending.pop(ref)
            a, b = shards[k]
            try:
                results[k], seconds = ray.get(ref)
                rollout_s = max(rollout_s, seconds)
            except ray.exceptions.RayActorError as exc:  # the process died (killed, out of memory, node lost)
                pool.replace(k)
                if retries >= self.max_retries:
                    raise SamplerWorkerError(
                        f"{self.env_id}: the Ray worker sampling tasks {_describe(tasks[a:b])} died {retries + 1} "
                        f"time(s) this round (ray.max_retries={self.max_retries}; replaced for the next round): {exc}"
                    ) from exc
                retries += 1
                pending[submit(k)] = k
            except ray.exceptions.RayTaskError as exc:  # the env (or the worker's code) raised
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                raise SamplerWorkerError(
                    f"{self.env_id}: sampling tasks {_describe(tasks[a:b])} failed on a Ray worker: "
                    f"{type(cause).__name__}: {cause}"
                ) from cause
        episodes = concat_episodes([results[k].episodes() for k in range(len(shards))]).to(self.device)
        # As the local sampler: once the env has reported success, a round without any has none.
        if episodes.success is not None:
            self.reports_success = True
        elif self.reports_success:
            episodes = replace(episodes, success=torch.zeros_like(episodes.episode_mask, dtype=torch.bool))
        self.last_round_overhead_s = time.perf_counter() - start - rollout_s
        return episodes

    def _release(self) -> None:
        if self._pool is None:
            return
        self._pool.users -= 1
        if self._pool.users == 0:
            self._pool.kill()
            del _POOLS[self._pool_key]
        self._pool, self._pool_key = None, None

    def close(self) -> None:
        global _STARTED_RAY
        self._release()
        super().close()
        if not _POOLS and _STARTED_RAY and self._ray.is_initialized():
            self._ray.shutdown()
            _STARTED_RAY = False
