"""Batched simulators against the gymnasium envs they stand for, step by step."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from metarl.envs.mujoco_batch import MujocoBatchSim
from metarl.envs.navigation import Navigation2DTorchSim, navigation_step

MUJOCO_FAMILIES = [
    "metarl/HalfCheetahVel-v0",
    "metarl/HalfCheetahDir-v0",
    "metarl/AntVel-v0",
    "metarl/AntDir-v0",
    "metarl/AntGoal-v0",
    "metarl/HopperRandParams-v0",
    "metarl/Walker2dRandParams-v0",
    "metarl/HalfCheetahRandParams-v0",
]


def run_side_by_side(env_id, num_envs=3, steps=40, **kwargs):
    """Step gymnasium envs and a batched sim from the same states with the same actions.

    Returns the largest relative observation error, the largest reward error, the number of
    termination mismatches and the number of compared steps.
    """
    singles = [gym.make(env_id, **kwargs).unwrapped for _ in range(num_envs)]
    tasks = singles[0].sample_tasks(num_envs)
    first = []
    for seed, (env, task) in enumerate(zip(singles, tasks, strict=True)):
        env.set_task(task)
        first.append(env.reset(seed=seed)[0])
    sim = singles[0].make_batched(num_envs)
    assert isinstance(sim, MujocoBatchSim)
    sim.set_tasks(tasks)
    obs = sim.reset_to(np.stack([e.data.qpos.copy() for e in singles]), np.stack([e.data.qvel.copy() for e in singles]))
    assert np.array_equal(obs.numpy(), np.stack(first))
    rng = np.random.default_rng(0)
    alive = np.ones(num_envs, dtype=bool)
    obs_error = reward_error = mismatches = compared = 0
    for _ in range(steps):
        action = rng.uniform(-1, 1, size=(num_envs, singles[0].action_space.shape[0])).astype(np.float32)
        obs, reward, terminated = sim.step(torch.as_tensor(action))
        for i, env in enumerate(singles):
            if not alive[i]:
                continue
            expected_obs, expected_reward, expected_terminated, _, _ = env.step(action[i])
            obs_error = max(obs_error, np.abs(obs[i].numpy() - expected_obs).max() / (1 + np.abs(expected_obs).max()))
            reward_error = max(reward_error, abs(reward[i].item() - expected_reward) / (1 + abs(expected_reward)))
            mismatches += int(bool(terminated[i]) != expected_terminated)
            alive[i] &= not expected_terminated
            compared += 1
    sim.close()
    return obs_error, reward_error, mismatches, compared


@pytest.mark.parametrize("env_id", MUJOCO_FAMILIES)
def test_mujoco_batch_matches_the_gymnasium_env(env_id):
    # Tolerance: the constraint solver's warm start is not carried between steps (see envs.mujoco_batch).
    obs_error, reward_error, mismatches, compared = run_side_by_side(env_id)
    assert compared >= 40
    assert obs_error < 1e-4 and reward_error < 1e-4
    assert mismatches == 0


def test_mujoco_batch_carries_kwargs_and_the_oracle_observation():
    obs_error, reward_error, mismatches, _ = run_side_by_side(
        "metarl/AntVel-v0", oracle=True, ctrl_cost_weight=0.3, include_cfrc_ext_in_observation=False
    )
    assert obs_error < 1e-4 and reward_error < 1e-4 and mismatches == 0


def test_hopper_terminations_are_reported():
    # Random actions topple the hopper within 40 steps; the batch must say so on the same step.
    _, _, mismatches, compared = run_side_by_side("metarl/HopperRandParams-v0", num_envs=4, steps=60)
    assert mismatches == 0 and compared < 4 * 60


def test_mujoco_batch_resets_within_the_envs_noise_and_is_seeded():
    env = gym.make("metarl/HalfCheetahVel-v0").unwrapped
    sim_a, sim_b = env.make_batched(5, seed=1), env.make_batched(5, seed=1)
    a, b = sim_a.reset(), sim_b.reset()
    assert torch.equal(a, b)
    assert not torch.equal(a, sim_a.reset())
    qpos_part = a[:, :8].numpy()
    assert np.all(np.abs(qpos_part - env.init_qpos[1:]) <= 0.1)
    # a shard of the batch starts where the whole batch would (the Ray sampler's workers rely on it)
    whole = sim_a.reset(seed=7)
    assert torch.equal(env.make_batched(2).reset(seed=7, env_offset=3), whole[3:])
    assert torch.equal(env.make_batched(3).reset(seed=7), whole[:3])


def test_mujoco_batch_rejects_bad_tasks_and_actions():
    env = gym.make("metarl/HopperRandParams-v0").unwrapped
    sim = env.make_batched(2)
    with pytest.raises(ValueError, match="one task per environment"):
        sim.set_tasks(env.sample_tasks(3))
    with pytest.raises(TypeError, match="DynamicsTask"):
        sim.set_tasks(["fast", "slow"])
    sim.reset()
    with pytest.raises(ValueError, match=r"actions must be shaped \(2, 3\)"):
        sim.step(torch.zeros(2, 4))


def test_dynamics_tasks_each_run_their_own_model():
    env = gym.make("metarl/HopperRandParams-v0").unwrapped
    tasks = env.sample_tasks(2)
    sim = env.make_batched(4)
    sim.set_tasks([tasks[0], tasks[1], tasks[0], tasks[1]])
    sim.reset_to(np.tile(env.init_qpos, (4, 1)), np.tile(env.init_qvel, (4, 1)))
    action = torch.full((4, 3), 0.5)
    for _ in range(5):
        obs, _, _ = sim.step(action)
    assert torch.equal(obs[0], obs[2]) and torch.equal(obs[1], obs[3])
    assert not torch.allclose(obs[0], obs[1])
    assert sim._models[0] is sim._models[2] and sim._models[0] is not env.model


def test_navigation_torch_sim_matches_the_numpy_dynamics():
    sim = Navigation2DTorchSim(4)
    goals = np.array([[0.3, -0.2], [0.0, 0.05], [-0.5, 0.5], [0.1, 0.1]])
    sim.set_tasks([{"goal": list(g)} for g in goals])
    position = np.zeros((4, 2))
    assert torch.equal(sim.reset(), torch.zeros(4, 2))
    rng = np.random.default_rng(0)
    for _ in range(10):
        action = rng.uniform(-0.2, 0.2, size=(4, 2))
        obs, reward, terminated = sim.step(torch.as_tensor(action))
        position, expected_reward, expected_terminated = navigation_step(position, goals, action, 0.1, 0.01)
        assert np.allclose(obs.numpy(), position.astype(np.float32))
        assert np.allclose(reward.numpy(), expected_reward, atol=1e-12)
        assert np.array_equal(terminated.numpy(), expected_terminated)


@pytest.mark.parametrize("env_id", ["metarl/HopperRandParams-v0", "metarl/AntVel-v0"])
def test_inactive_environments_are_not_simulated(env_id):
    env = gym.make(env_id).unwrapped
    tasks = env.sample_tasks(4)
    full, partial = env.make_batched(4, seed=0), env.make_batched(4, seed=0)
    for sim in (full, partial):
        sim.set_tasks(tasks)
        sim.reset()
    action = torch.as_tensor(np.random.default_rng(1).uniform(-1, 1, size=(4, env.action_space.shape[0])))
    active = torch.tensor([True, False, True, False])
    frozen = partial._state.copy()
    obs_full, reward_full, _ = full.step(action)
    obs_partial, reward_partial, _ = partial.step(action, active)
    assert np.array_equal(partial._state[[1, 3]], frozen[[1, 3]])
    assert torch.allclose(obs_partial[[0, 2]], obs_full[[0, 2]], rtol=1e-9, atol=1e-9)
    assert torch.allclose(reward_partial[[0, 2]], reward_full[[0, 2]], rtol=1e-9, atol=1e-9)
