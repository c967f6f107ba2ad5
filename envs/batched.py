"""Batched simulators: N copies of a task env stepped together, each on its own task.

A task env may offer one through ``TaskEnv.make_batched``, declared with ``batched_simulator =
True`` in the body of the class it reproduces (a subclass does not inherit the declaration);
metarl's sampler then steps all its sub-environments with one call per step instead of going
through gymnasium's vector API. A batched simulator is the *same* environment as the gymnasium one
(same spaces, dynamics, rewards and terminations; tests compare them step by step), minus what the
sampler does not need: no autoreset (the sampler runs fixed-horizon episodes and masks the steps
after a termination), no time limit (the sampler's horizon ends episodes), no ``info`` dicts, no
rendering.

Observations, rewards and actions are torch tensors on the simulator's device, so that a simulator
written in torch (2D navigation) runs wholly on the policy's device, GPU included.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


class BatchedTaskSim(ABC):
    """``num_envs`` task envs stepped together.

    Attributes:
        num_envs: N.
        device: where ``reset`` and ``step`` put their tensors and expect the actions.
        uses_cpu_threads: the simulator steps on a pool of CPU threads of its own; the sampler then
            runs the policy on one torch thread, so the two pools do not compete for the cores.
    """

    num_envs: int
    device: torch.device
    uses_cpu_threads: bool = False

    @abstractmethod
    def set_tasks(self, tasks: Sequence[Any]) -> None:
        """Install one task per environment (``len(tasks) == num_envs``); they persist across resets."""

    @abstractmethod
    def reset(self, seed: int | None = None, env_offset: int = 0) -> Tensor:
        """Start a new episode in every environment; returns observations ``[N, obs_dim]``.

        ``env_offset``: give these N environments the initial states that environments
        ``env_offset .. env_offset + N - 1`` of a larger batch reset with the same ``seed`` get.
        A sampler split over workers (``sampler.backend=ray``) passes it, so that a shard of the
        batch starts exactly where the whole batch would; it is only passed when non-zero.
        """

    @abstractmethod
    def step(self, actions: Tensor, active: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Apply ``actions`` ``[N, act_dim]`` (in the env's own action units).

        Args:
            active: optional ``[N]`` bool; environments marked False (finished episodes) may be
                left where they are, to save their simulation.
        Returns:
            observations ``[N, obs_dim]``, rewards ``[N]`` and ``terminated`` ``[N]`` (bool).
            The values of inactive or terminated environments are meaningless.
        """

    def close(self) -> None:  # noqa: B027 (optional: nothing to do by default)
        """Release threads or buffers (nothing by default)."""


def check_num_tasks(tasks: Sequence[Any], num_envs: int) -> list[Any]:
    tasks = list(tasks)
    if len(tasks) != num_envs:
        raise ValueError(f"expected one task per environment ({num_envs}), got {len(tasks)}")
    return tasks


def cpu_cores() -> int:
    """The CPU cores this process may run on, or ``$METARL_SIM_THREADS`` when set (a Ray rollout
    worker sets it to the CPUs Ray reserved for it, so that workers sharing a machine do not
    oversubscribe it)."""
    if os.environ.get("METARL_SIM_THREADS"):
        return max(1, int(os.environ["METARL_SIM_THREADS"]))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
