"""MuJoCo locomotion task families on gymnasium's v5 envs (goal- and dynamics-varying).

Goal-varying (the task changes the reward): HalfCheetahVel / HalfCheetahDir (Finn et al., 2017),
AntVel / AntDir / AntGoal. Dynamics-varying (the task changes the physics, as in ProMP's
rand_param_envs): HopperRandParams, Walker2dRandParams, HalfCheetahRandParams.

Each env keeps gymnasium's observation, dynamics and reward terms and replaces only the forward
term by the task's. ``info`` carries the reward terms (``reward_forward``, ``reward_ctrl`` and, for
Ant and the hoppers, ``reward_contact`` / ``reward_survive``), ``x_velocity`` and the ``task``. With
``oracle=True`` the task's features are appended to the observation (the oracle baseline).

Reward weights: gymnasium v5's defaults unless the MAML literature used others, which are then the
default here and named in the constructor docstring.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import mujoco
import numpy as np
from gymnasium import spaces, utils
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv

from metarl.envs.base import TaskEnv
from metarl.envs.batched import BatchedTaskSim
from metarl.envs.mujoco_batch import MujocoBatchSim
from metarl.envs.navigation import GoalTask


@dataclass(frozen=True)
class VelocityTask:
    """Target forward velocity (m/s)."""

    velocity: float


@dataclass(frozen=True)
class DirectionTask:
    """Direction of travel along x: +1 forward, -1 backward."""

    direction: int


@dataclass(frozen=True)
class DynamicsTask:
    """Multipliers of the model's nominal parameters, flattened in MuJoCo's array order."""

    body_mass: tuple[float, ...]
    body_inertia: tuple[float, ...]
    dof_damping: tuple[float, ...]
    geom_friction: tuple[float, ...]


def _coerce(task: Any, task_type: type) -> Any:
    """Accept the task dataclass itself or its JSON form (a dict of its fields)."""
    if isinstance(task, dict):
        task = task_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in task.items()})
    if not isinstance(task, task_type):
        raise TypeError(f"task must be a {task_type.__name__}, got {task!r}")
    return task


class LocomotionTaskEnv(TaskEnv):
    """Shared machinery of the MuJoCo task envs; the concrete classes mix it into a v5 env.

    Subclasses define ``task_type``, ``task_description``, ``sample_tasks``, ``_apply_task`` (called
    by ``set_task``) and ``task_features`` (the oracle's extra observation), and call
    :meth:`_finish_init` at the end of ``__init__``, after the v5 parent's ``__init__``.
    """

    task_type: type
    task_description: str = ""

    def _finish_init(self, oracle: bool, default_task: Any, **pickle_kwargs: Any) -> None:
        self.oracle = oracle
        self._task = None
        self.set_task(default_task)
        if oracle:
            extra = self._task_features().size
            size = self.observation_space.shape[0] + extra
            self.observation_space = spaces.Box(-np.inf, np.inf, shape=(size,), dtype=np.float64)
        # Pickle through our own kwargs (the v5 parent recorded its own positional ones).
        utils.EzPickle.__init__(self, oracle=oracle, **pickle_kwargs)

    def set_task(self, task: Any) -> None:
        task = _coerce(task, self.task_type)
        self._apply_task(task)  # raises before changing anything if the task does not fit
        self._task = task

    def get_task(self) -> Any:
        return self._task

    def _apply_task(self, task: Any) -> None:
        """Hook for tasks that change the model; goal tasks only change the reward."""

    def coerce_task(self, task: Any) -> Any:
        """``task`` as this family's task dataclass (accepts its JSON form); raises TypeError otherwise."""
        return _coerce(task, self.task_type)

    def task_features(self, task: Any) -> np.ndarray:
        """What the oracle sees of ``task`` (appended to the observation)."""
        raise NotImplementedError

    def _task_features(self) -> np.ndarray:
        return self.task_features(self._task)

    # Hooks of the batched simulator (metarl.envs.mujoco_batch): the task's reward term for N envs at once.

    def batch_task_array(self, tasks: list[Any]) -> np.ndarray:
        """The tasks' reward parameters as one array, first dimension N."""
        return np.zeros((len(tasks), 0))

    def batch_forward_term(self, x_velocity: np.ndarray, qpos: np.ndarray, task_array: np.ndarray) -> np.ndarray:
        """:meth:`_forward_term` for N envs: ``x_velocity`` ``[N]``, ``qpos`` ``[N, nq]`` after the step."""
        return x_velocity

    def task_model(self, task: Any) -> mujoco.MjModel:
        """The model an env on ``task`` simulates (goal tasks: this env's own, shared)."""
        return self.model

    def make_batched(self, num_envs: int, device: Any = "cpu", seed: int | None = None) -> BatchedTaskSim:
        return MujocoBatchSim(self, num_envs, device=device, seed=seed)

    def _get_obs(self) -> np.ndarray:
        obs = super()._get_obs()
        if getattr(self, "oracle", False) and getattr(self, "_task", None) is not None:
            obs = np.concatenate([obs, self._task_features()])
        return obs

    def _get_reset_info(self) -> dict[str, Any]:
        return {**super()._get_reset_info(), "task": self._task}

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        info["task"] = self._task
        return obs, reward, terminated, truncated, info

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "task": self._task}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        task = state.pop("task")
        super().__setstate__(state)
        self.set_task(task)


# --- goal-varying families -------------------------------------------------------------------


class _VelocityTaskMixin:
    task_type = VelocityTask
    velocity_range: tuple[float, float]
    #: A constant added to the velocity term each step (see :class:`AntVelEnv`).
    velocity_offset: float = 0.0

    def sample_default(self) -> VelocityTask:
        return VelocityTask(sum(self.velocity_range) / 2)  # the middle of the range

    def sample_tasks(self, num_tasks: int) -> list[VelocityTask]:
        low, high = self.velocity_range
        return [VelocityTask(float(v)) for v in self.np_random.uniform(low, high, size=num_tasks)]

    def task_features(self, task: VelocityTask) -> np.ndarray:
        return np.array([task.velocity])

    def _forward_term(self, x_velocity: float) -> float:
        return self.velocity_offset - abs(x_velocity - self._task.velocity)

    def batch_task_array(self, tasks: list[VelocityTask]) -> np.ndarray:
        return np.array([t.velocity for t in tasks], dtype=np.float64)

    def batch_forward_term(self, x_velocity: np.ndarray, qpos: np.ndarray, task_array: np.ndarray) -> np.ndarray:
        return self.velocity_offset - np.abs(x_velocity - task_array)


class _DirectionTaskMixin:
    task_type = DirectionTask
    task_description = "direction in {-1, +1}"

    def sample_default(self) -> DirectionTask:
        return DirectionTask(1)

    def sample_tasks(self, num_tasks: int) -> list[DirectionTask]:
        return [DirectionTask(int(d)) for d in self.np_random.choice([-1, 1], size=num_tasks)]

    def task_features(self, task: DirectionTask) -> np.ndarray:
        return np.array([float(task.direction)])

    def _forward_term(self, x_velocity: float) -> float:
        return self._task.direction * x_velocity

    def batch_task_array(self, tasks: list[DirectionTask]) -> np.ndarray:
        return np.array([t.direction for t in tasks], dtype=np.float64)

    def batch_forward_term(self, x_velocity: np.ndarray, qpos: np.ndarray, task_array: np.ndarray) -> np.ndarray:
        return task_array * x_velocity


class _CheetahTask(LocomotionTaskEnv, HalfCheetahEnv):
    """HalfCheetah-v5 with the forward reward replaced by the task's term."""

    def __init__(self, oracle: bool = False, ctrl_cost_weight: float = 0.05, **kwargs: Any):
        """Args: ctrl_cost_weight 0.05 as in the MAML paper (gymnasium v5: 0.1); other v5 kwargs pass
        through (``forward_reward_weight`` scales the task's term)."""
        super().__init__(ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        self._finish_init(oracle, self.sample_default(), ctrl_cost_weight=ctrl_cost_weight, **kwargs)

    def _get_rew(self, x_velocity: float, action):
        forward = self._forward_reward_weight * self._forward_term(x_velocity)
        ctrl_cost = self.control_cost(action)
        return forward - ctrl_cost, {"reward_forward": forward, "reward_ctrl": -ctrl_cost}


class HalfCheetahVelEnv(_VelocityTaskMixin, _CheetahTask):
    """HalfCheetah running at a target velocity ~ U[0, 2] (MAML paper); reward -|v_x - v*| - 0.05 |a|^2."""

    batched_simulator = True  # MujocoBatchSim, tested step by step against this class

    velocity_range = (0.0, 2.0)
    task_description = "target velocity ~ U[0, 2]"


class HalfCheetahDirEnv(_DirectionTaskMixin, _CheetahTask):
    """HalfCheetah running forward or backward (MAML paper); reward d * v_x - 0.05 |a|^2."""

    batched_simulator = True  # MujocoBatchSim, tested step by step against this class


class _AntTask(LocomotionTaskEnv, AntEnv):
    """Ant-v5 with the forward reward replaced by the task's term (alive bonus and costs kept)."""

    def __init__(
        self,
        oracle: bool = False,
        ctrl_cost_weight: float = 0.005,
        contact_cost_weight: float = 5e-4,
        healthy_reward: float = 0.05,
        **kwargs: Any,
    ):
        """Args: weights as in pytorch-maml-rl's Ant task envs (ctrl 0.005, contact 5e-4, alive 0.05);
        gymnasium v5's defaults are 0.5, 5e-4 and 1.0. Other v5 kwargs pass through
        (``forward_reward_weight`` scales the task's term)."""
        weights = dict(ctrl_cost_weight=ctrl_cost_weight, contact_cost_weight=contact_cost_weight,
                       healthy_reward=healthy_reward)
        super().__init__(**weights, **kwargs)
        self._finish_init(oracle, self.sample_default(), **weights, **kwargs)

    def _get_rew(self, x_velocity: float, action):
        forward = self._forward_reward_weight * self._forward_term(x_velocity)
        healthy = self.healthy_reward
        ctrl_cost, contact_cost = self.control_cost(action), self.contact_cost
        info = {"reward_forward": forward, "reward_ctrl": -ctrl_cost, "reward_contact": -contact_cost,
                "reward_survive": healthy}
        return forward + healthy - ctrl_cost - contact_cost, info


class AntVelEnv(_VelocityTaskMixin, _AntTask):
    """Ant running at a target velocity ~ U[0, 3]; reward 1 - |v_x - v*| + alive - control and contact costs.

    The constant 1 is the MAML authors' (rllab's ``AntEnvRand``, kept by pytorch-maml-rl): the Ant's
    episode ends when its torso leaves the healthy height range, and without the constant every
    step's reward is negative whenever the target is missed by more than the alive bonus, so ending
    the episode early (a jump) would raise the return.
    """

    batched_simulator = True  # MujocoBatchSim, tested step by step against this class

    velocity_range = (0.0, 3.0)
    velocity_offset = 1.0
    task_description = "target velocity ~ U[0, 3]"


class AntDirEnv(_DirectionTaskMixin, _AntTask):
    """Ant running forward or backward; reward d * v_x + alive - control and contact costs."""

    batched_simulator = True  # MujocoBatchSim, tested step by step against this class


class AntGoalEnv(_AntTask):
    """Ant walking to a goal in the disk of radius 3 (ProMP); reward -|xy - goal|_1 - control and contact costs."""

    batched_simulator = True  # MujocoBatchSim, tested step by step against this class

    task_type = GoalTask
    task_description = "goal uniform in the disk of radius 3"

    def __init__(
        self,
        oracle: bool = False,
        ctrl_cost_weight: float = 0.1,
        contact_cost_weight: float = 5e-4,
        healthy_reward: float = 0.0,
        terminate_when_unhealthy: bool = False,
        exclude_current_positions_from_observation: bool = False,
        **kwargs: Any,
    ):
        """Args: as ProMP's AntRandGoal: ctrl 0.1, contact 5e-4, no alive bonus, no termination, and
        the torso's x, y in the observation (the reward depends on them)."""
        super().__init__(
            oracle,
            ctrl_cost_weight=ctrl_cost_weight,
            contact_cost_weight=contact_cost_weight,
            healthy_reward=healthy_reward,
            terminate_when_unhealthy=terminate_when_unhealthy,
            exclude_current_positions_from_observation=exclude_current_positions_from_observation,
            **kwargs,
        )

    def sample_default(self) -> GoalTask:
        return GoalTask(goal=(1.0, 1.0))

    def sample_tasks(self, num_tasks: int) -> list[GoalTask]:
        radius = 3.0 * np.sqrt(self.np_random.uniform(size=num_tasks))  # uniform in area
        angle = self.np_random.uniform(0.0, 2 * np.pi, size=num_tasks)
        return [GoalTask(goal=(float(r * np.cos(a)), float(r * np.sin(a)))) for r, a in zip(radius, angle, strict=True)]

    def task_features(self, task: GoalTask) -> np.ndarray:
        return np.asarray(task.goal, dtype=np.float64)

    def _forward_term(self, x_velocity: float) -> float:
        xy = self.data.qpos[:2]  # the torso's free joint: the state after this step (xpos lags one step)
        return -float(np.abs(xy - np.asarray(self._task.goal)).sum())

    def batch_task_array(self, tasks: list[GoalTask]) -> np.ndarray:
        return np.array([t.goal for t in tasks], dtype=np.float64).reshape(len(tasks), 2)

    def batch_forward_term(self, x_velocity: np.ndarray, qpos: np.ndarray, task_array: np.ndarray) -> np.ndarray:
        return -np.abs(qpos[:, :2] - task_array).sum(1)


# --- dynamics-varying families ---------------------------------------------------------------

DYNAMICS_FIELDS = ("body_mass", "body_inertia", "dof_damping", "geom_friction")


class _RandParamsTask(LocomotionTaskEnv):
    """Dynamics randomisation of ProMP's rand_param_envs.

    A task multiplies, element by element, the nominal body masses, inertias and geom frictions by
    ``1.5 ** U(-3, 3)`` and the joint damping by ``1.3 ** U(-3, 3)``. Setting it rewrites this
    instance's own ``MjModel`` (each gymnasium MujocoEnv loads its own) and recomputes the derived
    constants with ``mj_setConst``.
    """

    task_type = DynamicsTask
    task_description = "masses, inertias, friction x 1.5^U(-3,3); damping x 1.3^U(-3,3)"
    log_scale_limit = 3.0

    def sample_default(self) -> DynamicsTask:
        return DynamicsTask(**{name: (1.0,) * self._nominal[name].size for name in DYNAMICS_FIELDS})

    def sample_tasks(self, num_tasks: int) -> list[DynamicsTask]:
        tasks = []
        for _ in range(num_tasks):
            fields = {}
            for name in DYNAMICS_FIELDS:
                base = 1.3 if name == "dof_damping" else 1.5
                exponents = self.np_random.uniform(-self.log_scale_limit, self.log_scale_limit,
                                                   self._nominal[name].size)
                fields[name] = tuple(float(m) for m in base**exponents)
            tasks.append(DynamicsTask(**fields))
        return tasks

    def __init__(self, oracle: bool = False, **kwargs: Any):
        super().__init__(**kwargs)  # the v5 env that follows in the MRO
        self._nominal = {name: getattr(self.model, name).copy() for name in DYNAMICS_FIELDS}
        self._finish_init(oracle, self.sample_default(), **kwargs)

    def _apply_task(self, task: DynamicsTask, model: mujoco.MjModel | None = None) -> None:
        model = self.model if model is None else model
        multipliers = {name: np.asarray(getattr(task, name), dtype=np.float64) for name in DYNAMICS_FIELDS}
        for name, values in multipliers.items():
            if values.size != self._nominal[name].size:
                raise ValueError(f"task.{name} has {values.size} multipliers, "
                                 f"the model needs {self._nominal[name].size}")
        for name, values in multipliers.items():
            getattr(model, name)[:] = self._nominal[name] * values.reshape(self._nominal[name].shape)
        # Derived constants (subtree masses, ...); a scratch MjData keeps the running episode's state intact.
        mujoco.mj_setConst(model, mujoco.MjData(model))

    def task_model(self, task: DynamicsTask) -> mujoco.MjModel:
        model = copy.copy(self.model)
        self._apply_task(task, model)
        return model

    def task_features(self, task: DynamicsTask) -> np.ndarray:
        return np.log(np.concatenate([np.asarray(getattr(task, name)) for name in DYNAMICS_FIELDS]))


class HopperRandParamsEnv(_RandParamsTask, HopperEnv):
    """Hopper-v5 with randomised dynamics (ProMP); the v5 reward: v_x + alive - 1e-3 |a|^2."""

    batched_simulator = True  # MujocoBatchSim, tested step by step against this class


class Walker2dRandParamsEnv(_RandParamsTask, Walker2dEnv):
    """Walker2d-v5 with randomised dynamics (ProMP); the v5 reward: v_x + alive - 1e-3 |a|^2."""

    batched_simulator = True  # MujocoBatchSim, tested step by step against this class


class HalfCheetahRandParamsEnv(_RandParamsTask, HalfCheetahEnv):
    """HalfCheetah-v5 with randomised dynamics; forward reward v_x - 0.05 |a|^2."""

    batched_simulator = True  # MujocoBatchSim, tested step by step against this class

    def __init__(self, oracle: bool = False, ctrl_cost_weight: float = 0.05, **kwargs: Any):
        """Args: ctrl_cost_weight 0.05 as in the other cheetah families (gymnasium v5: 0.1)."""
        super().__init__(oracle, ctrl_cost_weight=ctrl_cost_weight, **kwargs)
