"""The sampler on a counter env: shapes, masks, per-task assignment, determinism, errors."""

import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from conftest import CounterEnv, LengthTask, TruncatingCounterEnv
from metarl.envs import GoalTask, Navigation2DEnv, VelocityTask
from metarl.envs.locomotion import HalfCheetahVelEnv
from metarl.episodes import ValidSteps
from metarl.policy import GaussianMLPPolicy, expand_params
from metarl.sampler import NonFiniteEnvError, Sampler, TaskEnvError


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


@pytest.mark.parametrize("mode", ["sync", "async", "processes"])
def test_tasks_are_installed_without_reading_the_task_first(mode):
    # gymnasium's own set_attr("task", ...) reads `task` (the env's get_task) before it sets it
    sampler = Sampler("tests/UnreadTask-v0", seed=0, vectorization=mode, processes=2)
    torch.manual_seed(0)
    tasks = [LengthTask(2), LengthTask(4), LengthTask(5)]
    try:
        episodes = sampler.sample(GaussianMLPPolicy(2, 1, hidden_sizes=(4,)), None, tasks, episodes_per_task=2)
    finally:
        sampler.close()
    assert torch.equal(episodes.mask.sum(-1), torch.tensor([[2.0] * 2, [4.0] * 2, [5.0] * 2]))


@pytest.mark.parametrize(
    "rescale, action_range, vectorization",
    [(True, 1.0, "auto"), (False, 1.0, "auto"), (True, 10.0, "auto"), (True, 10.0, "sync")],
)
def test_navigation_actions_are_rescaled_to_the_bounds_and_clipped_by_the_env(rescale, action_range, vectorization):
    sampler = Sampler("metarl/Navigation2D-v0", seed=0, rescale_actions=rescale, action_range=action_range,
                      vectorization=vectorization)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,), init_std=0.5 * action_range)
    tasks = gym.make("metarl/Navigation2D-v0").unwrapped.sample_tasks(2)
    try:
        episodes = sampler.sample(policy, None, tasks, episodes_per_task=2)
    finally:
        sampler.close()
    moves = episodes.observations[:, :, 1:] - episodes.observations[:, :, :-1]
    # policy units [-r, r] -> env bounds [-0.1, 0.1]
    scale = 0.1 / action_range if rescale else 1.0
    expected = (scale * episodes.actions[:, :, :-1]).clamp(-0.1, 0.1)
    valid = episodes.mask[:, :, 1:].bool()
    assert torch.allclose(moves[valid], expected[valid], atol=1e-6)
    assert (expected.abs() == 0.1).any() and (expected.abs() < 0.1).any()  # both sides of the clip
    assert episodes.actions.abs().max() > 0.1 * action_range  # the log keeps the policy's own actions


def test_action_range_must_be_positive():
    with pytest.raises(ValueError, match="sampler.action_range must be > 0, got 0"):
        Sampler("metarl/Navigation2D-v0", action_range=0.0)


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
    with pytest.raises(TaskEnvError, match="sampler.vectorization: CounterEnv has no batched simulator"):
        Sampler("tests/Counter-v0", vectorization="batched")


@pytest.mark.parametrize("env_id", ["metarl/HalfCheetahVel-v0", "metarl/HopperRandParams-v0", "metarl/AntGoal-v0"])
def test_mujoco_batched_path_matches_the_gymnasium_path_step_by_step(env_id):
    """Without initial-state noise (whose generators differ between the paths) the batched
    simulator and gymnasium's env give the same episodes: observations, rewards, terminations."""
    kwargs = {"reset_noise_scale": 0.0}
    probe = gym.make(env_id, **kwargs)
    tasks = probe.unwrapped.sample_tasks(2)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(probe.observation_space.shape[0], probe.action_space.shape[0], hidden_sizes=(8,))
    batched, generic = (Sampler(env_id, kwargs, horizon=30, seed=3, vectorization=m) for m in ("auto", "sync"))
    assert batched.mode == "batched" and generic.mode == "sync"
    a, b = batched.sample(policy, None, tasks, 3), generic.sample(policy, None, tasks, 3)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.terminated, b.terminated)
    assert torch.allclose(a.observations, b.observations, atol=1e-5)
    assert torch.allclose(a.rewards, b.rewards, atol=1e-4)
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


def test_padding_is_zero_and_valid_steps_rebuild_the_batch_exactly():
    # Steps after an episode ended and episodes dropped by the step budget are zeros in every field,
    # so the valid steps a Ray worker ships rebuild the padded batch bit for bit.
    sampler, policy = make()
    tasks = [LengthTask(2), LengthTask(5), LengthTask(9)]
    batch = sampler.sample(policy, None, tasks, episodes_per_task=2, budget="steps")
    padding = ~batch.mask.bool()
    assert padding.any()
    for name in ("observations", "actions", "rewards"):
        assert not getattr(batch, name)[padding].any(), name
    shipped = ValidSteps.of(batch)
    assert shipped.observations.shape == (batch.num_steps, 2)
    rebuilt = shipped.episodes()
    for name in ("observations", "actions", "rewards", "mask", "terminated", "truncated", "final_observations"):
        assert torch.equal(getattr(rebuilt, name), getattr(batch, name)), name
    assert rebuilt.tasks == batch.tasks and rebuilt.mask.dtype == batch.mask.dtype
    assert len(pickle.dumps(shipped)) < len(pickle.dumps(batch))
    batch.compute_advantages(0.99, 1.0)
    with pytest.raises(ValueError, match="sampled episodes only"):
        ValidSteps.of(batch)
    with pytest.raises(ValueError, match="before pack"):
        ValidSteps.of(batch.pack())


def test_unknown_budget_is_rejected():
    sampler, policy = make()
    with pytest.raises(ValueError, match="budget must be one of"):
        sampler.sample(policy, None, [LengthTask(2)], 1, budget="minutes")


# --- which path steps the env: the batched simulator only for the class it reproduces ------------


class LoudNavigation(Navigation2DEnv):
    """A user's subclass of a shipped family with its own reward."""

    def step(self, action):
        obs, _, terminated, truncated, info = super().step(action)
        return obs, 1000.0, terminated, truncated, info


class ExactNavigation(Navigation2DEnv):
    """A subclass that keeps the parent's dynamics and says so."""

    batched_simulator = True


class ConstantForwardCheetah(HalfCheetahVelEnv):
    """A HalfCheetahVel subclass whose forward term is a constant 10 (the parent's is <= 0)."""

    def _forward_term(self, x_velocity):
        return 10.0


class NoSimulatorNavigation(Navigation2DEnv):
    """Declares a batched simulator, but its make_batched says there is none."""

    batched_simulator = True

    def make_batched(self, num_envs, device="cpu", seed=None):
        return None


class OverridesMakeBatchedOnly(CounterEnv):
    def make_batched(self, num_envs, device="cpu", seed=None):
        return None


for _id, _cls, _steps in [("tests/LoudNavigation-v0", LoudNavigation, 20),
                          ("tests/ExactNavigation-v0", ExactNavigation, 20),
                          ("tests/ConstantForwardCheetah-v0", ConstantForwardCheetah, 10),
                          ("tests/NoSimulatorNavigation-v0", NoSimulatorNavigation, 20),
                          ("tests/OverridesMakeBatchedOnly-v0", OverridesMakeBatchedOnly, 6)]:
    if _id not in gym.registry:
        gym.register(_id, entry_point=_cls, max_episode_steps=_steps)


def test_a_subclass_of_a_family_trains_on_its_own_reward():
    sampler = Sampler("tests/LoudNavigation-v0")
    assert sampler.mode == "sync"
    assert "reproduces Navigation2DEnv, not its subclass LoudNavigation" in sampler.note
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,))
    episodes = sampler.sample(policy, None, [GoalTask(goal=(0.3, 0.3))], 2)
    assert torch.all(episodes.rewards[episodes.mask.bool()] == 1000.0)
    with pytest.raises(TaskEnvError, match="not its subclass LoudNavigation"):
        Sampler("tests/LoudNavigation-v0", vectorization="batched")
    assert Sampler("tests/ExactNavigation-v0").mode == "batched"  # re-declared: the subclass vouches for it


def test_a_locomotion_subclass_with_another_forward_term_is_not_simulated_as_its_parent():
    sampler = Sampler("tests/ConstantForwardCheetah-v0", horizon=5)
    assert sampler.mode == "sync" and "HalfCheetahVelEnv" in sampler.note
    policy = GaussianMLPPolicy(17, 6, hidden_sizes=(8,))
    episodes = sampler.sample(policy, None, [VelocityTask(velocity=1.0)], 2)
    expected = 10.0 - 0.05 * episodes.actions.square().sum(-1)  # its own forward term minus the control cost
    assert torch.allclose(episodes.rewards, expected, atol=1e-4)
    sampler.close()


def test_make_batched_returning_none_takes_the_vector_path():
    for env_id in ("tests/NoSimulatorNavigation-v0", "tests/OverridesMakeBatchedOnly-v0"):
        sampler = Sampler(env_id)
        assert sampler.mode in ("sync", "vector_entry_point"), env_id
        obs_dim = sampler.obs_dim
        task = GoalTask(goal=(0.2, 0.1)) if "Navigation" in env_id else LengthTask(3)
        episodes = sampler.sample(GaussianMLPPolicy(obs_dim, sampler.act_dim, hidden_sizes=(4,)), None, [task], 2)
        assert episodes.num_steps > 0
    assert "make_batched returned None" in Sampler("tests/NoSimulatorNavigation-v0").note


# --- truncation is not termination ------------------------------------------------------------


def test_truncation_and_termination_are_kept_apart():
    sampler = Sampler("tests/TruncatingCounter-v0", horizon=6)
    policy = GaussianMLPPolicy(2, 1, hidden_sizes=(4,))
    # length 2: terminates at step 2; length 5: the env truncates at step 3; horizon 6 never reached
    episodes = sampler.sample(policy, None, [LengthTask(2), LengthTask(5)], 2)
    assert episodes.mask.sum(-1).tolist() == [[2.0, 2.0], [3.0, 3.0]]
    assert episodes.terminated.tolist() == [[True, True], [False, False]]
    assert episodes.truncated.tolist() == [[False, False], [True, True]]
    # the observation the truncated episode was cut off in: t = 3 on the task of length 5
    assert episodes.final_observations[1].tolist() == [[3.0, 5.0], [3.0, 5.0]]
    # what training logs of them: 2 and 3 steps, half the episodes terminated
    assert episodes.mean_length() == 2.5 and episodes.terminated_rate() == 0.5
    # the sampler's horizon is a time limit too
    short = Sampler("tests/Counter-v0", horizon=4).sample(policy, None, [LengthTask(5), LengthTask(3)], 1)
    assert short.truncated.tolist() == [[True], [False]] and short.terminated.tolist() == [[False], [True]]
    assert short.final_observations[0, 0].tolist() == [4.0, 5.0]


def test_bootstrapping_at_a_truncation_is_a_switch():
    sampler = Sampler("tests/TruncatingCounter-v0", horizon=6)
    policy = GaussianMLPPolicy(2, 1, hidden_sizes=(4,))
    episodes = sampler.sample(policy, None, [LengthTask(2), LengthTask(5)], 3)
    plain = episodes.compute_advantages(0.9, 1.0, normalize=False).clone()
    boot = episodes.compute_advantages(0.9, 1.0, normalize=False, bootstrap_truncated=True).clone()
    # terminated episodes (task 0) are unchanged; the truncated ones gain gamma^(2-t) V(s_3) > 0
    assert torch.allclose(plain[0], boot[0])
    assert not torch.allclose(plain[1], boot[1])
    assert torch.equal(episodes.rewards[1, :, :3], torch.tensor([[1.0, 2.0, 3.0]] * 3))  # the record is untouched


# --- non-finite values from the env -------------------------------------------------------------


def test_nan_from_the_env_is_one_clear_error():
    sampler = Sampler("tests/NonFinite-v0")
    policy = GaussianMLPPolicy(2, 1, hidden_sizes=(4,))
    with pytest.raises(NonFiniteEnvError, match=r"tests/NonFinite-v0 returned a non-finite reward nan at step 2 "
                                                r"of an episode on task LengthTask\(length=4\)"):
        sampler.sample(policy, None, [LengthTask(1), LengthTask(4)], 2)
    # the first task ends before step 2: no NaN reaches an episode, no error
    assert sampler.sample(policy, None, [LengthTask(1)], 2).num_steps == 2


def same_step_counters(num_envs, **kwargs):
    """A vector entry point that autoresets in the same step (the reset observation comes back)."""
    return SyncVectorEnv([TruncatingCounterEnv for _ in range(num_envs)], autoreset_mode=AutoresetMode.SAME_STEP)


if "tests/SameStepCounter-v0" not in gym.registry:
    gym.register("tests/SameStepCounter-v0", entry_point=TruncatingCounterEnv, vector_entry_point=same_step_counters,
                 max_episode_steps=6)


def test_a_same_step_autoreset_still_gives_the_observation_an_episode_was_cut_off_in():
    sampler = Sampler("tests/SameStepCounter-v0")
    assert sampler.mode == "vector_entry_point"
    episodes = sampler.sample(GaussianMLPPolicy(2, 1, hidden_sizes=(4,)), None, [LengthTask(5)], 2)
    assert episodes.truncated.all() and episodes.mask.sum(-1).tolist() == [[3.0, 3.0]]
    assert episodes.final_observations[0].tolist() == [[3.0, 5.0], [3.0, 5.0]]  # not the reset [0, 5]
