"""2D navigation (Finn et al., 2017, section 5.2): a point moves to a goal it cannot see.

State: the point's 2D position, starting at the origin. Action: a 2D displacement, clipped to
[-0.1, 0.1] per axis. Task: a goal drawn uniformly from [-0.5, 0.5]^2. Reward: minus the Euclidean
distance between the new position and the goal. The episode terminates when the point is within
0.01 of the goal on both axes; the registration truncates it at 100 steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.base import TaskEnv


@dataclass(frozen=True)
class GoalTask:
    """A goal position in the plane."""

    goal: tuple[float, float]


class Navigation2DEnv(TaskEnv):
    """Point-mass navigation to a goal drawn from a square, as in the MAML paper.

    Args:
        goal_low, goal_high: bounds of the square the goals are drawn from (paper: -0.5, 0.5).
        max_action: per-axis bound on the displacement (paper: 0.1).
        goal_tolerance: per-axis distance below which the episode terminates (paper: 0.01).
    """

    metadata = {"render_modes": []}

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

    def set_task(self, task: GoalTask | dict) -> None:
        if isinstance(task, dict):
            task = GoalTask(goal=tuple(task["goal"]))
        if not isinstance(task, GoalTask) or len(task.goal) != 2:
            raise TypeError(f"task must be a GoalTask with a 2D goal, got {task!r}")
        self._goal = np.asarray(task.goal, dtype=np.float64)

    def get_task(self) -> GoalTask:
        return GoalTask(goal=(float(self._goal[0]), float(self._goal[1])))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._position = np.zeros(2)
        return self._position.astype(np.float32), {"task": self.get_task()}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -self.max_action, self.max_action)
        self._position = self._position + action
        offset = self._position - self._goal
        reward = -float(np.sqrt(np.sum(offset**2)))
        terminated = bool(np.all(np.abs(offset) < self.goal_tolerance))
        return self._position.astype(np.float32), reward, terminated, False, {"task": self.get_task()}
