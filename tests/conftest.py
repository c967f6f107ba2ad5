"""Shared fixtures: a counter task env for collector tests and tiny synthetic episode batches."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

import metarl  # noqa: F401  (registers the metarl/ envs)
from metarl import config as cfg
from metarl.cli import main
from metarl.envs.base import TaskEnv
from metarl.episodes import Episodes


@dataclass(frozen=True)
class LengthTask:
    length: int


class CounterEnv(TaskEnv):
    """Observation ``[t, length]``; reward ``t + 1`` at step t; terminates after ``length`` steps."""

    def __init__(self):
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._task, self._t = LengthTask(3), 0

    def sample_tasks(self, num_tasks):
        return [LengthTask(int(n)) for n in self.np_random.integers(1, 6, size=num_tasks)]

    def set_task(self, task):
        self._task = task

    def get_task(self):
        return self._task

    def _obs(self):
        return np.array([self._t, self._task.length], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._obs(), {"task": self._task}

    def step(self, action):
        self._t += 1
        return self._obs(), float(self._t), self._t >= self._task.length, False, {"task": self._task}


def skip_unless_ci(reason: str, allow_module_level: bool = False) -> None:
    """Skip a test whose requirement (EGL, Ray) is missing here, but fail it under CI (``CI=1``),
    which has them all: there a missing requirement is a broken setup, not a reason to pass."""
    if os.environ.get("CI") == "1":
        pytest.fail(f"CI=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=allow_module_level)


def init_local_ray(ray) -> None:
    """Start a local 2-CPU Ray whose workers import from this folder and the repository (the test
    envs, metarl) and render offscreen."""
    tests = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join([tests, os.path.dirname(tests), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}})


class TruncatingCounterEnv(CounterEnv):
    """:class:`CounterEnv` whose own time limit cuts every episode at step 3 (``truncated=True``)."""

    def step(self, action):
        obs, reward, terminated, _, info = super().step(action)
        return obs, reward, terminated, self._t >= 3 and not terminated, info


class NonFiniteEnv(CounterEnv):
    """:class:`CounterEnv` that returns a NaN reward at step 2 of every episode after its first
    ``clean_resets`` resets (the run trains, then the env breaks)."""

    def __init__(self, clean_resets: int = 0):
        super().__init__()
        self.clean_resets, self.resets = clean_resets, 0

    def reset(self, *, seed=None, options=None):
        self.resets += 1
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if self.resets > self.clean_resets and self._t == 2:
            reward = float("nan")
        return obs, reward, terminated, truncated, info


class SuccessCounterEnv(CounterEnv):
    """:class:`CounterEnv` that reports ``info["success"]``, True at step 2 only: an episode succeeds
    iff its task's length is at least 2 (and the horizon lets it get there)."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, {**info, "success": self._t == 2}


class SuccessWhenTrueEnv(CounterEnv):
    """Reports ``info["success"]`` only in the step that succeeds (step 2), as some envs do."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, {**info, **({"success": True} if self._t == 2 else {})}


class UnreadTaskEnv(CounterEnv):
    """:class:`CounterEnv` whose ``get_task`` must not be called: the sampler installs tasks without
    reading one first (an env may build a default task in ``get_task``)."""

    def get_task(self):
        raise AssertionError("get_task was called")


class NoProtocolEnv(gym.Env):
    """A plain env without the task protocol."""

    observation_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        return np.zeros(1, dtype=np.float32), 0.0, False, False, {}


class DiscreteTaskEnv(CounterEnv):
    """Has the protocol but a discrete action space the Gaussian policy cannot drive."""

    def __init__(self):
        super().__init__()
        self.action_space = spaces.Discrete(2)


for _id, _cls in [("tests/Counter-v0", CounterEnv), ("tests/NoProtocol-v0", NoProtocolEnv),
                  ("tests/Discrete-v0", DiscreteTaskEnv),
                  ("tests/TruncatingCounter-v0", TruncatingCounterEnv), ("tests/NonFinite-v0", NonFiniteEnv),
                  ("tests/SuccessCounter-v0", SuccessCounterEnv), ("tests/SuccessWhenTrue-v0", SuccessWhenTrueEnv),
                  ("tests/UnreadTask-v0", UnreadTaskEnv)]:
    if _id not in gym.registry:
        gym.register(_id, entry_point=_cls, max_episode_steps=6)


def synthetic_episodes(num_tasks=3, num_episodes=2, horizon=4, obs_dim=2, act_dim=2, seed=0, dtype=torch.float64):
    """Random episodes with ragged termination and advantages already computed."""
    g = torch.Generator().manual_seed(seed)
    shape = (num_tasks, num_episodes, horizon)
    lengths = torch.randint(1, horizon + 1, (num_tasks, num_episodes), generator=g)
    mask = (torch.arange(horizon).expand(shape) < lengths.unsqueeze(-1)).to(dtype)
    episodes = Episodes(
        observations=torch.randn(*shape, obs_dim, generator=g, dtype=dtype),
        actions=torch.randn(*shape, act_dim, generator=g, dtype=dtype),
        rewards=torch.randn(shape, generator=g, dtype=dtype) * mask,
        mask=mask,
        tasks=list(range(num_tasks)),
    )
    episodes.compute_advantages(gamma=0.9, gae_lambda=0.95)
    return episodes


@pytest.fixture
def tiny_run_args(tmp_path):
    """Overrides that make a 2D-navigation training run take a few seconds."""
    return [
        f"run.output_dir={tmp_path}",
        "run.iterations=2",
        "maml.meta_batch_size=3",
        "sampler.episodes_per_task=4",
        "sampler.horizon=20",
        "policy.hidden_sizes=[16,16]",
        "trpo.cg_iters=3",
        "eval.num_tasks=3",
        "eval.episodes_per_task=3",
        "eval.num_steps=2",
    ]


#: Keys of metrics.jsonl that measure wall-clock time, the only ones that differ between identical runs.
TIMING_KEYS = {"time_sampling", "time_sampling_valid", "time_adapt", "time_update", "wall_time"}


def without_timings(metrics):
    """metrics.jsonl lines without their timings: what two identical runs share."""
    return [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in metrics]


TINY_CONFIG = ["run.iterations=1", "maml.meta_batch_size=2", "sampler.episodes_per_task=2", "sampler.horizon=10",
               "policy.hidden_sizes=[8]", "trpo.cg_iters=2", "eval.num_tasks=2", "eval.episodes_per_task=2",
               "eval.num_steps=1"]


def tiny_config_run(path, tmp_path, overrides=()):
    """Train the experiment config ``path`` through the CLI for one tiny meta-iteration and check that
    it wrote a run whose metrics are finite and whose meta-update moved the initialisation."""
    from metarl.run.factory import build
    from metarl.run.rundir import RunDir, read_metrics

    assert main(["train", str(path), *TINY_CONFIG, *overrides, f"run.output_dir={tmp_path}", "run.name=tiny",
                 "--quiet"]) == 0
    run = RunDir.open(tmp_path / "tiny")
    metrics = read_metrics(run.path)
    assert len(metrics) == 1 and metrics[0]["env_steps"] > 0
    assert all(math.isfinite(metrics[0][k]) for k in ("pre_return", "post_return", "loss_before", "loss_after"))
    config = run.load_config()
    assert cfg.load(path).env.id == config.env.id
    # the meta-update moved the initialisation: the trained policy is not the one the run started from
    start = build(config)
    trained = run.load_checkpoint()["policy"]
    assert any(not torch.equal(p.cpu(), trained[name].cpu()) for name, p in start.policy.state_dict().items())
    start.close()
    return run


def assert_meta_problem_is_double_backprop(problem, loss, kl, num_tasks, meta_params):
    """The TRPO meta-problem's gradient and three curvature products (``J^T F J`` on random vectors)
    equal plain double backprop of the mean loss and KL through the whole adaptation."""
    from metarl.trpo import flat, hessian_vector_product

    reference_grad = flat(torch.autograd.grad(loss * num_tasks, meta_params, retain_graph=True))
    assert torch.allclose(flat(problem.gradient), reference_grad, atol=1e-12)
    reference_product = hessian_vector_product(kl * num_tasks, meta_params)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(reference_grad.shape, generator=generator, dtype=torch.float64)
        vectors = [c.view_as(p) for c, p in zip(torch.split(v, [p.numel() for p in meta_params]), meta_params,
                                                 strict=True)]
        assert torch.allclose(flat(problem.product(vectors)), reference_product(v), atol=1e-10)
