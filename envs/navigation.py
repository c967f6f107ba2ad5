"""2D navigation (Finn et al., 2017, section 5.2): a point moves to a goal it cannot see.

State: the point's 2D position, starting at the origin. Action: a 2D displacement, clipped to
[-0.1, 0.1] per axis. Task: a goal drawn uniformly from [-0.5, 0.5]^2. Reward: minus the Euclidean
distance between the new position and the goal. The episode terminates when the point is within
0.01 of the goal on both axes; the registration truncates it at 100 steps.

``Navigation2DVectorEnv`` steps N points at once in numpy with the same dynamics; it is registered as
the env's vector entry point, so ``gymnasium.make_vec`` picks it up. ``Navigation2DTorchSim`` does
the same in torch on any device; it is the env's batched simulator, which metarl's sampler uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from torch import Tensor

from metarl.envs.base import TaskEnv
from metarl.envs.batched import BatchedTaskSim, check_num_tasks


@dataclass(frozen=True)
class GoalTask:
    """A goal position in the plane."""

    goal: tuple[float, float]


def navigation_step(
    position: np.ndarray, goal: np.ndarray, action: np.ndarray, max_action: float, goal_tolerance: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move by the clipped action; reward minus the distance to the goal; terminate within tolerance.

    Args:
        position, goal, action: ``[..., 2]``.
    Returns:
        new position ``[..., 2]``, reward ``[...]``, terminated ``[...]`` (bool).
    """
    position = position + np.clip(action, -max_action, max_action)
    offset = position - goal
    reward = -np.sqrt(np.sum(offset**2, axis=-1))
    terminated = np.all(np.abs(offset) < goal_tolerance, axis=-1)
    return position, reward, terminated


class Navigation2DEnv(TaskEnv):
    """Point-mass navigation to a goal drawn from a square, as in the MAML paper.

    Args:
        goal_low, goal_high: bounds of the square the goals are drawn from (paper: -0.5, 0.5).
        max_action: per-axis bound on the displacement (paper: 0.1).
        goal_tolerance: per-axis distance below which the episode terminates (paper: 0.01).
    """

    metadata = {"render_modes": []}
    task_description = "goal uniform in [-0.5, 0.5]^2"
    batched_simulator = True  # Navigation2DTorchSim (tested step by step against step)

    def __init__(
        self,
        goal_low: float = -0.5,
        goal_high: float = 0.5,
        max_action: float = 0.1,
        goal_tolerance: float = 0.01,
    ):
        if not goal_low < goal_high:
            raise ValueError(f"goal_low must be < goal_high, got {goal_low} and {goal_high}")
        self.goal_low, self.goal_high = float(goal_low), float(goal_high)
        self.max_action = float(max_action)
        self.goal_tolerance = float(goal_tolerance)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-self.max_action, self.max_action, shape=(2,), dtype=np.float32)
        self._goal = np.zeros(2)
        self._position = np.zeros(2)

    def sample_tasks(self, num_tasks: int) -> list[GoalTask]:
        goals = self.np_random.uniform(self.goal_low, self.goal_high, size=(num_tasks, 2))
        return [GoalTask(goal=(float(x), float(y))) for x, y in goals]

    def paper_test_tasks(self, num_tasks: int) -> list[GoalTask]:
        """The MAML paper's 40 test goals (and more, from the same stream): the authors' test script
        (cbfinn/maml_rl, ``test_maml_point.py``) drew them with ``np.random.seed(1)`` and
        ``np.random.uniform(-0.5, 0.5, size=(40, 2))``. With other goal bounds the same draws are
        scaled to them."""
        goals = np.random.RandomState(1).uniform(self.goal_low, self.goal_high, size=(num_tasks, 2))
        return [GoalTask(goal=(float(x), float(y))) for x, y in goals]

    def set_task(self, task: GoalTask | dict) -> None:
        if isinstance(task, dict):
            task = GoalTask(goal=tuple(task["goal"]))
        if not isinstance(task, GoalTask) or len(task.goal) != 2:
            raise TypeError(f"task must be a GoalTask with a 2D goal, got {task!r}")
        self._goal = np.asarray(task.goal, dtype=np.float64)

    def get_task(self) -> GoalTask:
        return GoalTask(goal=(float(self._goal[0]), float(self._goal[1])))

    def make_batched(self, num_envs: int, device: Any = "cpu", seed: int | None = None) -> Navigation2DTorchSim:
        return Navigation2DTorchSim(num_envs, self.max_action, self.goal_tolerance, device)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._position = np.zeros(2)
        return self._position.astype(np.float32), {"task": self.get_task()}

    def step(self, action):
        self._position, reward, terminated = navigation_step(
            self._position, self._goal, np.asarray(action, dtype=np.float64), self.max_action, self.goal_tolerance
        )
        return self._position.astype(np.float32), float(reward), bool(terminated), False, {"task": self.get_task()}


class Navigation2DVectorEnv(VectorEnv):
    """``num_envs`` 2D-navigation envs stepped together in numpy, each with its own goal.

    Same dynamics, spaces and task protocol as :class:`Navigation2DEnv`; truncates at
    ``max_episode_steps`` and autoresets on the next step (``AutoresetMode.NEXT_STEP``), like
    gymnasium's SyncVectorEnv. Install one task per sub-env with ``set_attr("task", tasks)``.
    """

    def __init__(self, num_envs: int, max_episode_steps: int = 100, **kwargs: Any):
        self._single = Navigation2DEnv(**kwargs)  # holds the parameters; samples tasks
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}
        self.single_observation_space = self._single.observation_space
        self.single_action_space = self._single.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._goals = np.zeros((num_envs, 2))
        self._positions = np.zeros((num_envs, 2))
        self._steps = np.zeros(num_envs, dtype=np.int64)
        self._needs_reset = np.zeros(num_envs, dtype=bool)
        self._info: dict[str, np.ndarray] = {}
        self._update_info()

    def _update_info(self) -> None:
        # Built once per task change: every step reports the tasks, as SyncVectorEnv would.
        self._info = {"task": np.array(self._tasks(), dtype=object), "_task": np.ones(self.num_envs, dtype=bool)}

    def _tasks(self) -> list[GoalTask]:
        return [GoalTask(goal=(float(x), float(y))) for x, y in self._goals]

    def sample_tasks(self, num_tasks: int) -> list[GoalTask]:
        return self._single.sample_tasks(num_tasks)

    def set_attr(self, name: str, values: Any) -> None:
        if name != "task":
            raise AttributeError(f"Navigation2DVectorEnv only sets 'task', not {name!r}")
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks, got {len(values)}")
        for i, task in enumerate(values):
            self._single.set_task(task)
            self._goals[i] = self._single.get_task().goal
        self._update_info()

    def get_attr(self, name: str) -> tuple[Any, ...]:
        if name != "task":
            raise AttributeError(f"Navigation2DVectorEnv only gets 'task', not {name!r}")
        return tuple(self._tasks())

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._single.reset(seed=seed)
        self._positions[:] = 0.0
        self._steps[:] = 0
        self._needs_reset[:] = False
        return self._positions.astype(np.float32), dict(self._info)

    def step(self, actions):
        actions = np.asarray(actions, dtype=np.float64)
        positions, rewards, terminated = navigation_step(
            self._positions, self._goals, actions, self._single.max_action, self._single.goal_tolerance
        )
        steps = self._steps + 1
        truncated = steps >= self.max_episode_steps
        # Sub-envs that ended on the previous step are reset now, ignoring their action.
        restart = self._needs_reset
        positions[restart] = 0.0
        steps[restart] = 0
        rewards[restart] = 0.0
        terminated[restart] = False
        truncated[restart] = False
        self._positions, self._steps = positions, steps
        self._needs_reset = terminated | truncated
        return self._positions.astype(np.float32), rewards, terminated, truncated, dict(self._info)


class Navigation2DTorchSim(BatchedTaskSim):
    """``num_envs`` 2D-navigation envs in torch on ``device``: the dynamics of :func:`navigation_step`.

    Positions are float64 (as in the numpy envs); observations are returned as float32.
    """

    def __init__(self, num_envs: int, max_action: float = 0.1, goal_tolerance: float = 0.01, device: Any = "cpu"):
        self.num_envs, self.device = num_envs, torch.device(device)
        self.max_action, self.goal_tolerance = float(max_action), float(goal_tolerance)
        self._goals = torch.zeros(num_envs, 2, dtype=torch.float64, device=self.device)
        self._positions = torch.zeros_like(self._goals)

    def set_tasks(self, tasks) -> None:
        goals = [GoalTask(goal=tuple(t["goal"])) if isinstance(t, dict) else t
                 for t in check_num_tasks(tasks, self.num_envs)]
        if not all(isinstance(t, GoalTask) and len(t.goal) == 2 for t in goals):
            raise TypeError("tasks must be GoalTasks with 2D goals")
        self._goals = torch.tensor([t.goal for t in goals], dtype=torch.float64, device=self.device)

    def reset(self, seed: int | None = None, env_offset: int = 0) -> Tensor:
        self._positions = torch.zeros_like(self._goals)  # every episode starts at the origin
        return self._positions.float()

    def step(self, actions: Tensor, active: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        actions = actions.to(device=self.device, dtype=torch.float64)  # stepping all N costs less than selecting
        self._positions = self._positions + actions.clamp(-self.max_action, self.max_action)
        offset = self._positions - self._goals
        reward = -offset.square().sum(-1).sqrt()
        terminated = (offset.abs() < self.goal_tolerance).all(-1)
        return self._positions.float(), reward, terminated
