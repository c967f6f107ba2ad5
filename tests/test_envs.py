"""Every registered task env passes gymnasium's checker; 2D navigation follows the paper's definition."""

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from metarl.envs import GoalTask, metaworld, missing_protocol, task_to_json
from metarl.sampler import registered_task_env_ids

# Meta-World's families need their extra: tests/test_metaworld.py checks them where it is installed.
ALL_IDS = [i for i in registered_task_env_ids() if i not in metaworld.IDS]
MUJOCO_IDS = [i for i in ALL_IDS if "Navigation" not in i]


def test_registry_has_navigation():
    assert "metarl/Navigation2D-v0" in ALL_IDS


@pytest.mark.parametrize(
    "env_id, kwargs", [(i, {}) for i in ALL_IDS] + [(i, {"oracle": True}) for i in MUJOCO_IDS],
    ids=lambda x: x if isinstance(x, str) else ("oracle" if x else "plain"),
)
def test_check_env_and_protocol(env_id, kwargs):
    env = gym.make(env_id, **kwargs)
    check_env(env.unwrapped, skip_render_check=True)
    assert missing_protocol(env) == []
    env.close()


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_task_persists_across_resets_and_is_reported_in_info(env_id):
    env = gym.make(env_id)
    env.reset(seed=0)
    task = env.unwrapped.sample_tasks(1)[0]
    env.unwrapped.set_task(task)
    for seed in (1, 2):
        _, info = env.reset(seed=seed)
        assert env.unwrapped.get_task() == task
        assert info["task"] == task
    _, _, _, _, info = env.step(env.action_space.sample())
    assert info["task"] == task


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_seeded_sample_tasks_is_reproducible_and_pickles(env_id):
    a, b = gym.make(env_id), gym.make(env_id)
    a.reset(seed=7)
    b.reset(seed=7)
    tasks = a.unwrapped.sample_tasks(20)  # 20 draws: two sign sequences coincide with prob 2^-20
    assert tasks == b.unwrapped.sample_tasks(20)
    assert tasks != a.unwrapped.sample_tasks(20)
    assert pickle.loads(pickle.dumps(tasks)) == tasks
    a.unwrapped.set_task(tasks[3])
    clone = pickle.loads(pickle.dumps(a.unwrapped))
    assert clone.get_task() == tasks[3]


def test_navigation_dynamics_reward_and_termination():
    env = gym.make("metarl/Navigation2D-v0")
    env.unwrapped.set_task(GoalTask(goal=(0.25, -0.1)))
    obs, info = env.reset(seed=0)
    assert np.array_equal(obs, np.zeros(2, dtype=np.float32))
    obs, reward, terminated, truncated, _ = env.step(np.array([0.5, -0.05]))  # x clipped to 0.1
    assert np.allclose(obs, [0.1, -0.05])
    assert reward == pytest.approx(-np.hypot(0.15, 0.05))
    assert not terminated and not truncated
    env.step(np.array([0.1, -0.05]))
    obs, reward, terminated, _, _ = env.step(np.array([0.05, 0.0]))  # lands exactly on the goal
    assert np.allclose(obs, [0.25, -0.1])
    assert terminated and reward == pytest.approx(0.0, abs=1e-7)


def test_navigation_goals_are_uniform_in_the_square():
    env = gym.make("metarl/Navigation2D-v0")
    env.reset(seed=0)
    goals = np.array([t.goal for t in env.unwrapped.sample_tasks(2000)])
    assert goals.min() >= -0.5 and goals.max() <= 0.5
    assert np.allclose(goals.mean(0), 0.0, atol=0.03) and np.allclose(goals.var(0), 1 / 12, atol=0.01)


def test_navigation_paper_test_tasks_are_the_authors_goals():
    # cbfinn/maml_rl test_maml_point.py: np.random.seed(1); np.random.uniform(-0.5, 0.5, size=(40, 2)).
    # MT19937 seeded with 1 starts 0.417022004702574, 0.7203244934421581, 0.00011437481734488664.
    env = gym.make("metarl/Navigation2D-v0")
    tasks = env.unwrapped.paper_test_tasks(40)
    assert tasks[0].goal == pytest.approx((0.417022004702574 - 0.5, 0.7203244934421581 - 0.5))
    assert tasks[1].goal[0] == pytest.approx(0.00011437481734488664 - 0.5)
    assert len(set(tasks)) == 40 and all(-0.5 <= c <= 0.5 for t in tasks for c in t.goal)
    assert env.unwrapped.paper_test_tasks(3) == tasks[:3]  # a prefix of the same stream
    env.reset(seed=0)
    assert env.unwrapped.paper_test_tasks(2) == tasks[:2]  # independent of the env's own seeding


def test_navigation_truncates_at_the_registered_horizon():
    env = gym.make("metarl/Navigation2D-v0")
    env.unwrapped.set_task(GoalTask(goal=(0.5, 0.5)))
    env.reset(seed=0)
    for _ in range(100):
        _, _, terminated, truncated, _ = env.step(np.zeros(2))
    assert truncated and not terminated


def test_tasks_are_independent_between_instances_and_serialise():
    a, b = gym.make("metarl/Navigation2D-v0"), gym.make("metarl/Navigation2D-v0")
    a.unwrapped.set_task(GoalTask(goal=(0.1, 0.2)))
    b.unwrapped.set_task({"goal": [0.3, 0.4]})
    assert a.unwrapped.get_task() == GoalTask(goal=(0.1, 0.2))
    assert task_to_json(b.unwrapped.get_task()) == {"goal": [0.3, 0.4]}
    with pytest.raises(TypeError, match="GoalTask"):
        a.unwrapped.set_task((0.1, 0.2))


def test_navigation_vector_env_matches_sync_vector_env_step_for_step():
    """The numpy vector entry point and gymnasium's SyncVectorEnv of the single env agree exactly."""
    tasks = [GoalTask(goal=(0.05, 0.05)), GoalTask(goal=(-0.3, 0.2)), GoalTask(goal=(0.0, 0.0))]
    fast = gym.make_vec("metarl/Navigation2D-v0", num_envs=3, vectorization_mode="vector_entry_point")
    slow = gym.make_vec("metarl/Navigation2D-v0", num_envs=3, vectorization_mode="sync")
    assert fast.metadata["autoreset_mode"] == slow.metadata["autoreset_mode"]
    for envs in (fast, slow):
        envs.set_attr("task", tasks)
    assert list(fast.get_attr("task")) == tasks
    obs_f, info_f = fast.reset(seed=0)
    obs_s, info_s = slow.reset(seed=0)
    assert np.array_equal(obs_f, obs_s)
    assert list(info_f["task"]) == list(info_s["task"]) == tasks
    rng = np.random.default_rng(0)
    ended = np.zeros(3, dtype=bool)
    for t in range(230):  # crosses truncation at 100 and the autoresets after it
        actions = rng.uniform(-0.15, 0.15, size=(3, 2))
        if t == 0:
            actions[0] = [0.05, 0.05]  # env 0 reaches its goal at once
        out_f, out_s = fast.step(actions), slow.step(actions)
        for a, b in zip(out_f[:4], out_s[:4], strict=True):
            assert np.array_equal(a, b), t
        assert list(out_f[4]["task"]) == tasks
        ended |= out_f[2] | out_f[3]
    assert ended.all()
