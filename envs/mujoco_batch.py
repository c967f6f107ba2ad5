"""A batched simulator for the MuJoCo task families, stepped in C through ``mujoco.rollout``.

Each env step is one ``Rollout.rollout`` call over all N environments for ``frame_skip`` physics
substeps: MuJoCo spreads the environments over its thread pool and releases the GIL. Observations,
rewards and terminations are then computed for all environments at once in numpy, with the same
formulas as gymnasium's v5 envs (HalfCheetah, Hopper, Walker2d, Ant), reading the weights and
ranges from the env instance that made the simulator, so constructor kwargs carry over.

Goal tasks share one ``MjModel``; dynamics tasks get one model per distinct task (the env's own
``task_model``), and every environment runs on its task's model.

Ant needs more: it measures its velocity with the torso's ``xpos`` and observes and pays for contact
forces (``cfrc_ext``), quantities of the last substep's forward passes, which MuJoCo does not return
from a rollout (and Ant integrates with RK4, so they belong to no state the rollout returns either).
For Ant the rollout therefore runs ``frame_skip - 1`` substeps and the last one is stepped per
environment in Python, exactly as gymnasium does (``mj_step`` then ``mj_rnePostConstraint``), spread
over a thread pool. The constraint solver's warm start is not carried from step to step
(``mujoco.rollout`` does not return it), so results agree with the gymnasium env to solver tolerance
rather than bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import mujoco
import numpy as np
import torch
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv
from mujoco import rollout
from torch import Tensor

from metarl.envs.batched import BatchedTaskSim, check_num_tasks, cpu_cores

_FULL = mujoco.mjtState.mjSTATE_FULLPHYSICS.value
_CTRL = mujoco.mjtState.mjSTATE_CTRL.value


class MujocoBatchSim(BatchedTaskSim):
    """N copies of a MuJoCo task env (``env``'s model, kwargs and reward) stepped together.

    Args:
        env: the task env instance to copy (``env.unwrapped`` of a ``gymnasium.make``): a
            ``metarl.envs.locomotion.LocomotionTaskEnv``, whose reward hooks it calls (this module
            does not import that one, which imports it).
        num_envs: N.
        device: where the returned tensors go (the physics runs on CPU threads).
        seed: seeds the initial-state noise.
        nthread: threads of the rollout pool (default: the cores this process may use).
    """

    uses_cpu_threads = True

    def __init__(
        self, env: Any, num_envs: int, device: Any = "cpu", seed: int | None = None, nthread: int | None = None
    ):
        if not isinstance(env, (HalfCheetahEnv, HopperEnv, Walker2dEnv, AntEnv)):
            raise TypeError(f"no batched simulator for {type(env).__name__}")
        self.env, self.num_envs, self.device = env, num_envs, torch.device(device)
        self.nthread = nthread or cpu_cores()
        model = env.model
        self.frame_skip, self.dt = env.frame_skip, env.dt
        self.nq, self.nv, self.nu = model.nq, model.nv, model.nu
        self.nstate = mujoco.mj_stateSize(model, _FULL)
        time_size = mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_TIME.value)
        self._qpos = slice(time_size, time_size + self.nq)
        self._qvel = slice(self._qpos.stop, self._qpos.stop + self.nv)
        self._rng = np.random.default_rng(seed)
        self._pool = rollout.Rollout(nthread=self.nthread)
        self._datas = [mujoco.MjData(model) for _ in range(max(self.nthread, 1))]
        self._state = np.zeros((num_envs, self.nstate))
        self._is_ant = isinstance(env, AntEnv)
        self._rollout_steps = self.frame_skip - 1 if self._is_ant else self.frame_skip
        self._out = np.zeros((num_envs, self._rollout_steps, self.nstate))
        self._sensors = np.zeros((num_envs, self._rollout_steps, model.nsensordata))
        self._control = np.zeros((num_envs, self._rollout_steps, self.nu))
        self._threads = ThreadPoolExecutor(self.nthread) if self._is_ant and self.nthread > 1 else None
        self._xy = np.zeros((num_envs, 2))  # Ant: the torso's xpos before the step
        self.set_tasks([env.get_task()] * num_envs)

    # --- tasks -------------------------------------------------------------------------------

    def set_tasks(self, tasks: Sequence[Any]) -> None:
        coerced = [self.env.coerce_task(task) for task in check_num_tasks(tasks, self.num_envs)]
        models = {task: self.env.task_model(task) for task in dict.fromkeys(coerced)}  # validates each task once
        self.tasks = coerced
        self._models = [models[task] for task in coerced]
        self._task_array = self.env.batch_task_array(coerced)
        self._features = np.stack([self.env.task_features(t) for t in coerced]) if self.env.oracle else None

    # --- reset and step ----------------------------------------------------------------------

    def reset(self, seed: int | None = None, env_offset: int = 0) -> Tensor:
        if seed is None:
            seed = int(self._rng.integers(2**63 - 1))
        # Separate streams for qpos and qvel, filled env by env: the first rows of a draw do not
        # depend on how many rows are drawn, so a shard at env_offset draws the rows before it and
        # keeps its own.
        qpos_rng, qvel_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        env, rows, scale = self.env, env_offset + self.num_envs, self.env._reset_noise_scale
        qpos = env.init_qpos + qpos_rng.uniform(-scale, scale, size=(rows, self.nq))[env_offset:]
        if isinstance(env, (HalfCheetahEnv, AntEnv)):
            qvel = env.init_qvel + scale * qvel_rng.standard_normal((rows, self.nv))[env_offset:]
        else:
            qvel = env.init_qvel + qvel_rng.uniform(-scale, scale, size=(rows, self.nv))[env_offset:]
        return self.reset_to(qpos, qvel)

    def reset_to(self, qpos: np.ndarray, qvel: np.ndarray) -> Tensor:
        """Start every environment from the given ``qpos`` ``[N, nq]`` and ``qvel`` ``[N, nv]``."""
        self._state[:] = 0.0
        self._state[:, self._qpos] = qpos
        self._state[:, self._qvel] = qvel
        self._xy = np.array(qpos[:, :2], dtype=np.float64)  # the free joint's xpos after mj_forward
        contact = np.zeros((self.num_envs, self.env.model.nbody, 6)) if self._is_ant else None
        return self._to_torch(self._observation(self._state[:, self._qpos], self._state[:, self._qvel], contact))

    def step(self, actions: Tensor, active: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        action = actions.detach().to("cpu", torch.float64).numpy()
        if action.shape != (self.num_envs, self.nu):
            raise ValueError(f"actions must be shaped {(self.num_envs, self.nu)}, got {tuple(action.shape)}")
        envs = None if active is None or bool(active.all()) else np.flatnonzero(active.cpu().numpy())
        before_x = self._state[:, self._qpos][:, 0].copy()
        if self._rollout_steps > 0:
            self._rollout(action, envs)
        contact = None
        if self._is_ant:
            # The last substep per environment, as gymnasium does it: xpos and cfrc_ext come from its
            # forward passes (Ant integrates with RK4, so not from any state the rollout returns).
            xy_after, contact = self._last_substep(action, envs)
            x_velocity = (xy_after[:, 0] - self._xy[:, 0]) / self.dt
            self._xy = xy_after
        qpos, qvel = self._state[:, self._qpos], self._state[:, self._qvel]
        if not self._is_ant:
            x_velocity = (qpos[:, 0] - before_x) / self.dt
        reward, terminated = self._reward(x_velocity, qpos, qvel, action, contact)
        obs = self._observation(qpos, qvel, contact)
        return (self._to_torch(obs), torch.as_tensor(reward, device=self.device),
                torch.as_tensor(terminated, device=self.device))

    def _rollout(self, action: np.ndarray, envs: np.ndarray | None) -> None:
        """``_rollout_steps`` substeps of the environments ``envs`` (all when None) in one rollout call."""
        if envs is None:
            models, state, control, out, sensors = self._models, self._state, self._control, self._out, self._sensors
        else:
            models = [self._models[i] for i in envs]
            state = self._state[envs]
            control, out, sensors = self._control[: len(envs)], self._out[: len(envs)], self._sensors[: len(envs)]
            action = action[envs]
        if not models:
            return
        control[:] = action[:, None, :]
        self._pool.rollout(
            models, self._datas, state, control, control_spec=_CTRL, skip_checks=True,
            nstep=self._rollout_steps, state=out, sensordata=sensors,
        )
        if envs is None:
            self._state[:] = out[:, -1]
        else:
            self._state[envs] = out[:, -1]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._threads is not None:
            self._threads.shutdown()
            self._threads = None

    # --- the v5 formulas, vectorised ---------------------------------------------------------

    def _last_substep(self, action: np.ndarray, envs: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Step the last substep of the environments ``envs`` (all when None) in Python, on threads;
        updates their states and returns the torso's ``xpos[:2]`` ``[N, 2]`` and ``cfrc_ext``
        ``[N, nbody, 6]`` (zeros for environments not stepped)."""
        xy = self._xy.copy()
        contact = np.zeros((self.num_envs, self.env.model.nbody, 6))
        body = self.env.model.body(self.env._main_body).id
        indices = np.arange(self.num_envs) if envs is None else envs

        def run(index: int) -> None:
            data = self._datas[index]
            for i in indices[index :: len(self._datas)]:
                model = self._models[i]
                mujoco.mj_setState(model, data, self._state[i], _FULL)
                data.ctrl[:] = action[i]
                mujoco.mj_step(model, data)
                mujoco.mj_rnePostConstraint(model, data)
                mujoco.mj_getState(model, data, self._state[i], _FULL)
                xy[i] = data.xpos[body, :2]
                contact[i] = data.cfrc_ext

        if self._threads is None:
            run(0)
        else:
            list(self._threads.map(run, range(len(self._datas))))
        return xy, contact

    def _observation(self, qpos: np.ndarray, qvel: np.ndarray, contact: np.ndarray | None) -> np.ndarray:
        env = self.env
        if isinstance(env, AntEnv):
            position = qpos[:, 2:] if env._exclude_current_positions_from_observation else qpos
            parts = [position, qvel]
            if env._include_cfrc_ext_in_observation:
                low, high = env._contact_force_range
                parts.append(np.clip(contact[:, 1:], low, high).reshape(self.num_envs, -1))
        else:
            position = qpos[:, 1:] if env._exclude_current_positions_from_observation else qpos
            velocity = qvel if isinstance(env, HalfCheetahEnv) else np.clip(qvel, -10, 10)
            parts = [position, velocity]
        if self._features is not None:
            parts.append(self._features)
        return np.concatenate(parts, axis=1)

    def _healthy(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        env = self.env
        if isinstance(env, HalfCheetahEnv):
            return np.ones(self.num_envs, dtype=bool)
        if isinstance(env, AntEnv):
            low, high = env._healthy_z_range
            finite = np.isfinite(qpos).all(1) & np.isfinite(qvel).all(1)
            return finite & (low <= qpos[:, 2]) & (qpos[:, 2] <= high)
        z, angle = qpos[:, 1], qpos[:, 2]
        (z_low, z_high), (a_low, a_high) = env._healthy_z_range, env._healthy_angle_range
        healthy = (z_low < z) & (z < z_high) & (a_low < angle) & (angle < a_high)
        if isinstance(env, HopperEnv):
            s_low, s_high = env._healthy_state_range
            state = np.concatenate([qpos, qvel], axis=1)[:, 2:]
            healthy &= ((s_low < state) & (state < s_high)).all(1)
        return healthy

    def _reward(
        self, x_velocity: np.ndarray, qpos: np.ndarray, qvel: np.ndarray, action: np.ndarray, contact: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        env = self.env
        forward = env._forward_reward_weight * env.batch_forward_term(x_velocity, qpos, self._task_array)
        reward = forward - env._ctrl_cost_weight * np.square(action).sum(1)
        healthy = self._healthy(qpos, qvel)
        if not isinstance(env, HalfCheetahEnv):
            reward = reward + healthy * env._healthy_reward
        if isinstance(env, AntEnv):
            low, high = env._contact_force_range
            reward = reward - env._contact_cost_weight * np.square(np.clip(contact, low, high)).sum((1, 2))
        terminated = ~healthy & bool(getattr(env, "_terminate_when_unhealthy", False))
        return reward, terminated

    def _to_torch(self, obs: np.ndarray) -> Tensor:
        return torch.as_tensor(obs, device=self.device)
