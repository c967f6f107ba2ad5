"""Task envs that misbehave on purpose, for the Ray sampler's failure tests (imported by the workers)."""

import time

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from metarl.envs.base import TaskEnv


class FaultyEnv(TaskEnv):
    """Observation ``[t]``; task 3 raises in ``step``, task 99 hangs there."""

    def __init__(self):
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._task, self._t = 0, 0

    def sample_tasks(self, num_tasks):
        return [int(n) for n in self.np_random.integers(0, 3, size=num_tasks)]

    def set_task(self, task):
        self._task = task

    def get_task(self):
        return self._task

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return np.array([0.0], dtype=np.float32), {"task": self._task}

    def step(self, action):
        if self._task == 3:
            raise RuntimeError("simulator exploded")
        if self._task == 99:
            time.sleep(60)
        self._t += 1
        return np.array([self._t], dtype=np.float32), 1.0, False, False, {"task": self._task}


class LateSuccessEnv(FaultyEnv):
    """:class:`FaultyEnv`'s spaces and tasks, but the task is the episode's length, and
    ``info["success"]`` is reported only at step 2 (True), so an episode of length 1 reports none."""

    def sample_tasks(self, num_tasks):
        return [int(n) for n in self.np_random.integers(1, 4, size=num_tasks)]

    def step(self, action):
        self._t += 1
        info = {"success": True} if self._t == 2 else {}
        return np.array([self._t], dtype=np.float32), 1.0, self._t >= self._task, False, info


gym.register("ray_envs/Faulty-v0", entry_point=FaultyEnv, max_episode_steps=5)
gym.register("ray_envs/LateSuccess-v0", entry_point=LateSuccessEnv, max_episode_steps=5)
