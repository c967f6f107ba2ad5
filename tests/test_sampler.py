"""The sampler on a counter env: shapes, masks, per-task assignment, determinism, errors."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import LengthTask
from metarl.policy import GaussianMLPPolicy, expand_params
from metarl.sampler import Sampler, TaskEnvError


def make(seed=0, horizon=None):
    sampler = Sampler("tests/Counter-v0", seed=seed, horizon=horizon)
    torch.manual_seed(0)
    return sampler, GaussianMLPPolicy(2, 1, hidden_sizes=(4,))


def test_shapes_masks_and_task_assignment():
    sampler, policy = make()
    tasks = [LengthTask(2), LengthTask(5), LengthTask(9)]  # 9 > the registered limit of 6 steps
    episodes = sampler.sample(policy, None, tasks, episodes_per_task=3)
    assert episodes.observations.shape == (3, 3, 6, 2)
    assert episodes.actions.shape == (3, 3, 6, 1)
    assert episodes.rewards.shape == episodes.mask.shape == (3, 3, 6)
    assert episodes.tasks == tasks
    lengths = episodes.mask.sum(-1)
    assert torch.equal(lengths, torch.tensor([[2.0] * 3, [5.0] * 3, [6.0] * 3]))  # task 2 truncated at 6
    # every sub-env of row t ran on task t: the task's length is in the observation
    valid = episodes.mask.bool()
    assert torch.equal(episodes.observations[..., 1][valid].unique(), torch.tensor([2.0, 5.0, 9.0]))
    for t, task in enumerate(tasks):
        assert torch.all(episodes.observations[t, ..., 1][valid[t]] == task.length)
    # rewards are 1, 2, ... on valid steps and zero after termination; observations start at t = 0
    assert torch.equal(episodes.rewards[0, 0], torch.tensor([1.0, 2.0, 0, 0, 0, 0]))
    assert torch.equal(episodes.observations[1, 0, :5, 0], torch.arange(5.0))
    assert episodes.num_steps == 3 * (2 + 5 + 6)
    assert torch.allclose(episodes.episode_returns()[1], torch.full((3,), 15.0))


def test_per_task_parameters_drive_their_own_rows():
    sampler, policy = make()
    params = expand_params({k: v.detach() for k, v in policy.parameters_dict().items()}, 2)
    params = {k: v.clone() for k, v in params.items()}
    params["mean.bias"][1] += 100.0  # task 1's policy outputs huge actions
    episodes = sampler.sample(policy, params, [LengthTask(6), LengthTask(6)], episodes_per_task=4)
    assert episodes.actions[0].abs().max() < 20 and episodes.actions[1].min() > 50


def test_horizon_shorter_than_episodes():
    sampler, policy = make(horizon=3)
    episodes = sampler.sample(policy, None, [LengthTask(5)], episodes_per_task=2)
    assert episodes.rewards.shape == (1, 2, 3) and episodes.mask.sum() == 6


def test_same_seed_same_episodes_different_seed_different():
    (s1, p1), (s2, p2), (s3, p3) = make(seed=1), make(seed=1), make(seed=2)
    tasks = [LengthTask(4), LengthTask(6)]
    e1, e2, e3 = (s.sample(p, None, tasks, 3) for s, p in [(s1, p1), (s2, p2), (s3, p3)])
    assert torch.equal(e1.actions, e2.actions)
    assert not torch.equal(e1.actions, e3.actions)


@pytest.mark.parametrize("rescale", [True, False])
def test_navigation_actions_are_rescaled_to_the_bounds_and_clipped_by_the_env(rescale):
    sampler = Sampler("metarl/Navigation2D-v0", seed=0, rescale_actions=rescale)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,), init_std=0.5)
    tasks = gym.make("metarl/Navigation2D-v0").unwrapped.sample_tasks(2)
    episodes = sampler.sample(policy, None, tasks, episodes_per_task=2)
    moves = episodes.observations[:, :, 1:] - episodes.observations[:, :, :-1]
    scale = 0.1 if rescale else 1.0  # policy units [-1, 1] -> env bounds [-0.1, 0.1]
    expected = (scale * episodes.actions[:, :, :-1]).clamp(-0.1, 0.1)
    valid = episodes.mask[:, :, 1:].bool()
    assert torch.allclose(moves[valid], expected[valid], atol=1e-6)
    assert episodes.actions.abs().max() > 0.1  # the log keeps the policy's own actions


@pytest.mark.parametrize(
    "env_id, message",
    [
        ("tests/NoProtocol-v0", "missing sample_tasks, set_task, get_task"),
        ("tests/Discrete-v0", "flat Box action_space"),
        ("metarl/Nope-v0", "unknown env 'metarl/Nope-v0'; registered task envs: .*metarl/Navigation2D-v0"),
    ],
)
def test_unusable_envs_are_rejected_before_sampling(env_id, message):
    with pytest.raises(TaskEnvError, match=message):
        Sampler(env_id)


def test_vector_entry_point_mode_needs_one():
    with pytest.raises(TaskEnvError, match="registers no vector_entry_point"):
        Sampler("tests/Counter-v0", vectorization="vector_entry_point")


def test_navigation_batched_vector_and_generic_sync_paths_give_identical_episodes():
    tasks = gym.make("metarl/Navigation2D-v0").unwrapped.sample_tasks(3)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,), init_std=0.3)
    modes = ("auto", "vector_entry_point", "sync")
    samplers = [Sampler("metarl/Navigation2D-v0", seed=5, vectorization=mode) for mode in modes]
    assert [s.mode for s in samplers] == ["batched", "vector_entry_point", "sync"]
    batched, *others = [s.sample(policy, None, tasks, 4) for s in samplers]
    for other in others:
        for name in ("observations", "actions", "rewards", "mask"):
            assert torch.equal(getattr(batched, name), getattr(other, name)), name


def test_batched_mode_needs_a_batched_simulator():
    assert Sampler("tests/Counter-v0").mode == "sync"
    with pytest.raises(TaskEnvError, match="sampler.vectorization: tests/Counter-v0 has no batched simulator"):
        Sampler("tests/Counter-v0", vectorization="batched")


def test_mujoco_batched_path_matches_the_gymnasium_path_in_distribution():
    # Same policy and tasks through both paths: the initial-state noise comes from different
    # generators, so compare statistics, not values. HalfCheetah never terminates.
    env_id = "metarl/HalfCheetahVel-v0"
    tasks = gym.make(env_id).unwrapped.sample_tasks(2)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(17, 6, hidden_sizes=(8,))
    batched, generic = (Sampler(env_id, horizon=20, seed=3, vectorization=m) for m in ("auto", "sync"))
    assert batched.mode == "batched" and generic.mode == "sync"
    a, b = batched.sample(policy, None, tasks, 8), generic.sample(policy, None, tasks, 8)
    assert a.observations.shape == b.observations.shape == (2, 8, 20, 17)
    # The first observation is the reset state: init_qpos[1:] / init_qvel plus noise of scale 0.1.
    assert a.observations[:, :, 0].abs().max() < 0.6 and b.observations[:, :, 0].abs().max() < 0.6
    assert a.episode_returns().mean().item() == pytest.approx(b.episode_returns().mean().item(), rel=0.15)
    batched.close()
    generic.close()


def test_env_without_a_settable_task_property_is_rejected():
    """set_attr("task", ...) would land on a wrapper and never reach such an env: refuse it up front."""

    class MethodsOnly(gym.Env):
        observation_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

        def sample_tasks(self, n):
            return [0.0] * n

        def set_task(self, task):
            self._task = task

        def get_task(self):
            return self._task

    if "tests/MethodsOnly-v0" not in gym.registry:
        gym.register("tests/MethodsOnly-v0", entry_point=MethodsOnly, max_episode_steps=3)
    with pytest.raises(TaskEnvError, match="settable `task` property"):
        Sampler("tests/MethodsOnly-v0")


def test_step_budget_fills_each_task_with_whole_episodes():
    # Counter tasks end after `length` steps: short tasks need more episodes to reach the budget.
    sampler, policy = make()
    tasks = [LengthTask(2), LengthTask(5), LengthTask(9)]  # horizon 6: the last is cut at 6 steps
    batch = sampler.sample(policy, None, tasks, episodes_per_task=2, budget="steps")  # 12 steps per task
    kept = batch.episode_mask.sum(1)
    assert kept.tolist() == [6.0, 3.0, 2.0]  # 6 x 2 = 12; 3 x 5 = 15 (the third crosses 12); 2 x 6 = 12
    assert batch.mask.sum((1, 2)).tolist() == [12.0, 15.0, 12.0]
    assert batch.observations.shape[1] == 6  # three rounds of 2; no slot beyond the longest prefix
    # kept episodes come first, in order, and empty slots carry no reward
    assert torch.all(batch.episode_mask[1, :3] == 1) and torch.all(batch.episode_mask[1, 3:] == 0)
    assert torch.equal(batch.task_mean_returns(), torch.tensor([3.0, 15.0, 21.0]))
    assert batch.mean_return() == pytest.approx((6 * 3 + 3 * 15 + 2 * 21) / 11)
    assert sampler.sample(policy, None, tasks, episodes_per_task=2).observations.shape[1] == 2


def test_unknown_budget_is_rejected():
    sampler, policy = make()
    with pytest.raises(ValueError, match="budget must be one of"):
        sampler.sample(policy, None, [LengthTask(2)], 1, budget="minutes")
