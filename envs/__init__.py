"""Task-distribution environments for metarl; importing this package registers them with gymnasium.

Every env is registered under the ``metarl/`` namespace, so ``gymnasium.make("metarl/Navigation2D-v0")``
works once ``metarl.envs`` is imported (``import metarl`` imports it too).
"""

import gymnasium as gym

from metarl.envs import metaworld
from metarl.envs.base import TASK_PROTOCOL, TaskEnv, missing_protocol, task_to_json
from metarl.envs.locomotion import DirectionTask, DynamicsTask, VelocityTask
from metarl.envs.navigation import GoalTask, Navigation2DEnv, Navigation2DVectorEnv

__all__ = [
    "TASK_PROTOCOL",
    "DirectionTask",
    "DynamicsTask",
    "VelocityTask",
    "GoalTask",
    "Navigation2DEnv",
    "Navigation2DVectorEnv",
    "TaskEnv",
    "missing_protocol",
    "task_to_json",
]


def _register(env_id: str, **kwargs) -> None:
    # Re-importing (e.g. under pytest's module reloading) must not warn about re-registration.
    if env_id not in gym.registry:
        gym.register(id=env_id, **kwargs)


_register(
    "metarl/Navigation2D-v0",
    entry_point="metarl.envs.navigation:Navigation2DEnv",
    vector_entry_point="metarl.envs.navigation:Navigation2DVectorEnv",
    max_episode_steps=100,
)

# MuJoCo families: horizon 200 as in the MAML paper and ProMP (pytorch-maml-rl used 100; set
# sampler.horizon in a config to change it).
for _name, _cls in [
    ("HalfCheetahVel", "HalfCheetahVelEnv"),
    ("HalfCheetahDir", "HalfCheetahDirEnv"),
    ("AntVel", "AntVelEnv"),
    ("AntDir", "AntDirEnv"),
    ("AntGoal", "AntGoalEnv"),
    ("HopperRandParams", "HopperRandParamsEnv"),
    ("Walker2dRandParams", "Walker2dRandParamsEnv"),
    ("HalfCheetahRandParams", "HalfCheetahRandParamsEnv"),
]:
    _register(f"metarl/{_name}-v0", entry_point=f"metarl.envs.locomotion:{_cls}", max_episode_steps=200)

# Meta-World's ML1, ML10 and ML45 (metarl/ML1-v0, ...): always listed; building one needs the
# optional metaworld extra, and says how to install it when it is missing.
metaworld.register()
