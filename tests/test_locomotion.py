"""MuJoCo task families: rewards recomputed from info, task persistence, dynamics per instance, oracle."""

import json
import pickle

import gymnasium as gym
import numpy as np
import pytest

from metarl.envs import DirectionTask, DynamicsTask, GoalTask, VelocityTask, task_to_json

# (control cost weight, alive bonus) of each family's defaults
WEIGHTS = {"HalfCheetah": (0.05, None), "AntVel": (0.005, 0.05), "AntDir": (0.005, 0.05), "AntGoal": (0.1, 0.0)}


def rollout(env, actions, seed=0):
    env.reset(seed=seed)
    return [env.step(a) for a in actions]


def actions_for(env, n=15, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, env.action_space.shape) for _ in range(n)]


@pytest.mark.parametrize(
    "env_id, task, forward",
    [
        ("metarl/HalfCheetahVel-v0", VelocityTask(1.3), lambda info: -abs(info["x_velocity"] - 1.3)),
        ("metarl/HalfCheetahDir-v0", DirectionTask(-1), lambda info: -info["x_velocity"]),
        ("metarl/AntVel-v0", VelocityTask(0.7), lambda info: 1.0 - abs(info["x_velocity"] - 0.7)),
        ("metarl/AntDir-v0", DirectionTask(1), lambda info: info["x_velocity"]),
        ("metarl/AntGoal-v0", GoalTask(goal=(1.0, -2.0)),
         lambda info: -(abs(info["x_position"] - 1.0) + abs(info["y_position"] + 2.0))),
    ],
)
def test_goal_family_rewards_recomputed_from_info(env_id, task, forward):
    env = gym.make(env_id)
    env.unwrapped.set_task(task)
    actions = actions_for(env)
    for action, (_, reward, _, _, info) in zip(actions, rollout(env, actions), strict=True):
        assert info["task"] == task
        assert info["reward_forward"] == pytest.approx(forward(info), abs=1e-9)
        ctrl, alive = next(w for name, w in WEIGHTS.items() if name in env_id)
        assert info["reward_ctrl"] == pytest.approx(-ctrl * np.sum(action**2))
        total = info["reward_forward"] + info["reward_ctrl"]
        if alive is not None:
            assert info["reward_survive"] in (0.0, alive)
            total += info["reward_contact"] + info["reward_survive"]
        assert reward == pytest.approx(total)


def test_velocity_tasks_rank_the_same_motion_differently():
    slow, fast = gym.make("metarl/HalfCheetahVel-v0"), gym.make("metarl/HalfCheetahVel-v0")
    slow.unwrapped.set_task(VelocityTask(0.0))
    fast.unwrapped.set_task(VelocityTask(2.0))
    actions = actions_for(slow)
    r_slow = [step[1] for step in rollout(slow, actions)]
    r_fast = [step[1] for step in rollout(fast, actions)]
    assert not np.allclose(r_slow, r_fast)


@pytest.mark.parametrize("env_id", ["metarl/HopperRandParams-v0", "metarl/Walker2dRandParams-v0",
                                    "metarl/HalfCheetahRandParams-v0"])
def test_dynamics_tasks_change_trajectories_and_only_their_own_model(env_id):
    a, b = gym.make(env_id), gym.make(env_id)
    a.reset(seed=0)
    task = a.unwrapped.sample_tasks(1)[0]
    nominal_mass = b.unwrapped.model.body_mass.copy()
    a.unwrapped.set_task(task)
    assert np.allclose(a.unwrapped.model.body_mass, nominal_mass * np.asarray(task.body_mass))
    assert np.array_equal(b.unwrapped.model.body_mass, nominal_mass)  # the other instance is untouched

    actions = actions_for(a, n=20)
    obs_a = [s[0] for s in rollout(a, actions)]
    obs_b = [s[0] for s in rollout(b, actions)]
    assert not np.allclose(obs_a[-1], obs_b[-1])  # different physics, same actions

    c = gym.make(env_id)
    c.unwrapped.set_task(task)
    obs_c = [s[0] for s in rollout(c, actions)]
    assert np.array_equal(np.array(obs_a), np.array(obs_c))  # same task, same trajectory


def test_dynamics_task_multipliers_follow_promp_ranges():
    env = gym.make("metarl/HopperRandParams-v0")
    env.reset(seed=0)
    tasks = env.unwrapped.sample_tasks(50)
    mass = np.concatenate([t.body_mass for t in tasks])
    damping = np.concatenate([t.dof_damping for t in tasks])
    assert mass.min() >= 1.5**-3 and mass.max() <= 1.5**3 and np.log(mass).std() > 0.5
    assert damping.min() >= 1.3**-3 and damping.max() <= 1.3**3
    with pytest.raises(ValueError, match="body_mass has 2 multipliers"):
        env.unwrapped.set_task(DynamicsTask(body_mass=(1.0, 1.0), body_inertia=(), dof_damping=(), geom_friction=()))


@pytest.mark.parametrize("env_id", ["metarl/AntGoal-v0", "metarl/HalfCheetahVel-v0", "metarl/HopperRandParams-v0"])
def test_oracle_appends_the_task_and_pickles_with_it(env_id):
    plain, oracle = gym.make(env_id), gym.make(env_id, oracle=True)
    plain.reset(seed=0)
    task = plain.unwrapped.sample_tasks(1)[0]
    for env in (plain, oracle):
        env.unwrapped.set_task(task)
    obs_plain, _ = plain.reset(seed=3)
    obs_oracle, _ = oracle.reset(seed=3)
    if isinstance(task, GoalTask):
        features = np.array(task.goal)
    elif isinstance(task, VelocityTask):
        features = np.array([task.velocity])
    else:  # log-multipliers of the dynamics, in field order
        features = np.log(np.concatenate([task.body_mass, task.body_inertia, task.dof_damping, task.geom_friction]))
    assert np.allclose(obs_oracle, np.concatenate([obs_plain, features]))
    assert oracle.observation_space.shape == obs_oracle.shape
    clone = pickle.loads(pickle.dumps(oracle.unwrapped))
    assert clone.oracle and clone.get_task() == task
    assert clone.observation_space == oracle.unwrapped.observation_space


def test_ant_goals_lie_in_the_disk():
    env = gym.make("metarl/AntGoal-v0")
    env.reset(seed=0)
    goals = np.array([t.goal for t in env.unwrapped.sample_tasks(500)])
    radius = np.linalg.norm(goals, axis=1)
    assert radius.max() <= 3.0 and radius.mean() == pytest.approx(2.0, abs=0.15)  # E[r] = 2R/3 for uniform in area


def test_tasks_accept_their_json_form():
    env = gym.make("metarl/HalfCheetahVel-v0")
    env.unwrapped.set_task({"velocity": 0.25})
    assert env.unwrapped.get_task() == VelocityTask(0.25)
    with pytest.raises(TypeError, match="VelocityTask"):
        env.unwrapped.set_task(DirectionTask(1))


def test_families_run_in_subprocess_vector_envs_with_a_task_per_worker():
    """Pickling is what gymnasium's AsyncVectorEnv (and later remote workers) rely on."""
    probe = gym.make("metarl/HopperRandParams-v0")
    probe.reset(seed=0)
    tasks = probe.unwrapped.sample_tasks(2)
    envs = {mode: gym.make_vec("metarl/HopperRandParams-v0", num_envs=2, vectorization_mode=mode)
            for mode in ("async", "sync")}
    try:
        observations = {}
        for mode, vec in envs.items():
            vec.set_attr("task", tasks)
            assert list(vec.call("get_task")) == tasks
            vec.reset(seed=0)
            actions = np.random.default_rng(0).uniform(-1, 1, size=(10, 2, 3))
            observations[mode] = np.array([vec.step(a)[0] for a in actions])
        assert np.array_equal(observations["async"], observations["sync"])
    finally:
        for vec in envs.values():
            vec.close()


@pytest.mark.parametrize("env_id", ["metarl/AntGoal-v0", "metarl/Walker2dRandParams-v0"])
def test_a_stepped_env_pickles_with_its_task_and_json_round_trips_the_task(env_id):
    env = gym.make(env_id)
    env.reset(seed=0)
    task = env.unwrapped.sample_tasks(1)[0]
    env.unwrapped.set_task(task)
    env.step(env.action_space.sample())
    clone = pickle.loads(pickle.dumps(env.unwrapped))
    assert clone.get_task() == task
    if isinstance(task, DynamicsTask):
        assert np.array_equal(clone.model.body_mass, env.unwrapped.model.body_mass)
    other = gym.make(env_id)
    other.unwrapped.set_task(json.loads(json.dumps(task_to_json(task))))
    assert other.unwrapped.get_task() == task


def test_setting_a_task_mid_episode_keeps_the_state_and_a_bad_task_changes_nothing():
    env = gym.make("metarl/HopperRandParams-v0")
    env.reset(seed=0)
    env.step(np.zeros(3))
    qpos = env.unwrapped.data.qpos.copy()
    env.unwrapped.set_task(env.unwrapped.sample_tasks(1)[0])
    assert np.array_equal(env.unwrapped.data.qpos, qpos)
    before_task, before_mass = env.unwrapped.get_task(), env.unwrapped.model.body_mass.copy()
    bad = DynamicsTask(body_mass=(2.0,) * before_mass.size, body_inertia=(1.0,), dof_damping=(), geom_friction=())
    with pytest.raises(ValueError, match="body_inertia has 1 multipliers"):
        env.unwrapped.set_task(bad)
    assert env.unwrapped.get_task() == before_task
    assert np.array_equal(env.unwrapped.model.body_mass, before_mass)


def test_forward_reward_weight_scales_the_task_term():
    env = gym.make("metarl/HalfCheetahDir-v0", forward_reward_weight=2.0)
    env.unwrapped.set_task(DirectionTask(1))
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.ones(6))
    assert info["reward_forward"] == pytest.approx(2.0 * info["x_velocity"])
