"""The Ray sampler against the local one on a local Ray: same episodes whatever the number of
workers, failures that name the tasks and env, replaced workers, timeouts, and configuration errors."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch

from conftest import init_local_ray, skip_unless_ci, without_timings
from metarl import config as cfg
from metarl.cli import main
from metarl.policy import GaussianMLPPolicy
from metarl.run.factory import make_sampler
from metarl.run.rundir import read_metrics
from metarl.sampler import Sampler

try:
    import ray
except ImportError:
    skip_unless_ci("Ray is not installed (`pip install -e .[ray]`, as make setup does)", allow_module_level=True)
from metarl.ray_sampler import RaySampler, SamplerWorkerError  # noqa: E402

TESTS = Path(__file__).resolve().parent
NAV = str(TESTS.parent / "experiments" / "navigation2d.yaml")
FIELDS = ("observations", "actions", "rewards", "mask")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module (workers import the test envs from this folder)."""
    init_local_ray(ray)
    yield
    ray.shutdown()


def tasks_of(env_id, n, **kwargs):
    env = gym.make(env_id, **kwargs)
    env.reset(seed=0)
    return env.unwrapped.sample_tasks(n)


def policy_for(sampler):
    torch.manual_seed(0)
    return GaussianMLPPolicy(sampler.obs_dim, sampler.act_dim, (16, 16), "tanh")


def per_task(params, num_tasks):
    return {k: v.detach() + 0.05 * torch.arange(num_tasks, dtype=v.dtype).view(-1, *[1] * v.dim())
            for k, v in params.items()}


def assert_same(a, b):
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.tasks == b.tasks


@pytest.mark.parametrize("env_id,vectorization,workers", [
    ("metarl/Navigation2D-v0", "auto", 1),
    ("metarl/Navigation2D-v0", "auto", 3),  # 5 tasks over 3 workers: uneven shards
    ("metarl/Navigation2D-v0", "sync", 2),  # the generic gymnasium path
    ("metarl/HalfCheetahVel-v0", "auto", 2),  # the MuJoCo batched simulator: resets of a shard
])
def test_same_episodes_as_the_local_sampler_whatever_the_number_of_workers(env_id, vectorization, workers):
    local = Sampler(env_id, horizon=15, vectorization=vectorization, seed=3)
    remote = RaySampler(env_id, horizon=15, vectorization=vectorization, seed=3, num_workers=workers,
                        cpus_per_worker=0.5)
    policy = policy_for(local)
    tasks = tasks_of(env_id, 5)
    try:
        assert_same(local.sample(policy, policy.parameters_dict(), tasks, 3),
                    remote.sample(policy, policy.parameters_dict(), tasks, 3))
        adapted = per_task(policy.parameters_dict(), len(tasks))  # one parameter set per task, after adaptation
        assert_same(local.sample(policy, adapted, tasks, 3, "steps"), remote.sample(policy, adapted, tasks, 3, "steps"))
        assert remote.mode == f"ray ({workers} workers)" and remote.last_round_overhead_s >= 0
    finally:
        remote.close()
        local.close()


def test_success_over_ray_is_the_local_samplers():
    # Round 1: only the worker holding task 3 sees a success; round 2 (one task: one worker, the
    # other one): no env reports any, and both samplers say "no success" (all False), not "no
    # success criterion" (None).
    env_id = "ray_envs:ray_envs/LateSuccess-v0"
    local, remote = Sampler(env_id, seed=0), RaySampler(env_id, seed=0, num_workers=2, cpus_per_worker=0.5)
    policy = policy_for(local)
    try:
        assert local.sample(policy, None, [1, 1], 2).success is None  # not yet seen: no criterion
        assert remote.sample(policy, None, [1, 1], 2).success is None
        for tasks, expected in (([1, 3], [[False, False], [True, True]]), ([1], [[False, False]])):
            ours, theirs = local.sample(policy, None, tasks, 2), remote.sample(policy, None, tasks, 2)
            assert ours.success.tolist() == theirs.success.tolist() == expected
    finally:
        remote.close()
        local.close()


def test_an_exception_in_a_user_env_names_the_env_and_tasks():
    sampler = RaySampler("ray_envs:ray_envs/Faulty-v0", num_workers=2, cpus_per_worker=0.5)
    policy = policy_for(sampler)
    try:
        with pytest.raises(SamplerWorkerError, match=r"ray_envs/Faulty-v0: sampling tasks 3, 1 failed on a Ray worker: "
                                                     r"RuntimeError: simulator exploded"):
            sampler.sample(policy, policy.parameters_dict(), [0, 2, 3, 1], 2)
        # the workers survive a failed round
        assert sampler.sample(policy, policy.parameters_dict(), [0, 2, 1], 2).rewards.sum() == 3 * 2 * 5
    finally:
        sampler.close()


def test_a_killed_worker_is_replaced_and_its_tasks_rerun():
    env_id = "metarl/Navigation2D-v0"
    local = Sampler(env_id, horizon=10, seed=1)
    remote = RaySampler(env_id, horizon=10, seed=1, num_workers=2, cpus_per_worker=0.5)
    policy, tasks = policy_for(local), tasks_of(env_id, 4)
    try:
        assert_same(local.sample(policy, policy.parameters_dict(), tasks, 2),
                    remote.sample(policy, policy.parameters_dict(), tasks, 2))
        victim = remote.worker_pids()[1]
        os.kill(victim, signal.SIGKILL)
        assert_same(local.sample(policy, policy.parameters_dict(), tasks, 2),
                    remote.sample(policy, policy.parameters_dict(), tasks, 2))
        assert victim not in remote.worker_pids()
    finally:
        remote.close()
        local.close()


def test_a_worker_that_dies_beyond_the_retries_is_an_error_naming_its_tasks():
    env_id = "metarl/Navigation2D-v0"
    sampler = RaySampler(env_id, horizon=10, num_workers=2, cpus_per_worker=0.5, max_retries=0)
    policy, tasks = policy_for(sampler), tasks_of(env_id, 4)
    try:
        sampler.sample(policy, policy.parameters_dict(), tasks, 2)
        os.kill(sampler.worker_pids()[0], signal.SIGKILL)
        with pytest.raises(SamplerWorkerError, match=r"Navigation2D-v0: the Ray worker sampling tasks GoalTask.* died"):
            sampler.sample(policy, policy.parameters_dict(), tasks, 2)
        sampler.sample(policy, policy.parameters_dict(), tasks, 2)  # and it was replaced for the next round
    finally:
        sampler.close()


def test_a_hung_worker_times_out_with_an_error_naming_its_tasks():
    sampler = RaySampler("ray_envs:ray_envs/Faulty-v0", num_workers=2, cpus_per_worker=0.5)
    policy = policy_for(sampler)
    try:
        sampler.sample(policy, policy.parameters_dict(), [0, 1], 1)  # the workers are up (start-up counts too)
        sampler.timeout_s = 3
        with pytest.raises(SamplerWorkerError,
                           match=r"Faulty-v0: no episodes after sampler timeout 3 s from worker 1: 99$"):
            sampler.sample(policy, policy.parameters_dict(), [0, 99], 1)
        sampler.timeout_s = 600  # the replacement worker starts up within the next round
        assert sampler.sample(policy, policy.parameters_dict(), [0, 1], 1).num_steps == 10
    finally:
        sampler.close()


def test_training_on_ray_gives_the_metrics_of_local_training(tmp_path, tiny_run_args):
    args = [*tiny_run_args, "eval.at_end=false"]
    assert main(["train", NAV, *args, "run.name=local", "--quiet"]) == 0
    assert main(["train", NAV, *args, "run.name=ray", "sampler.backend=ray", "ray.workers=2", "ray.cpus_per_worker=0.5",
                 "--quiet"]) == 0
    assert without_timings(read_metrics(tmp_path / "ray")) == without_timings(read_metrics(tmp_path / "local"))


def test_configuration_errors(tmp_path, tiny_run_args, monkeypatch, capsys):
    too_many = cfg.load(NAV, [*tiny_run_args, "sampler.backend=ray", "ray.workers=3"])
    with pytest.raises(cfg.ConfigError,
                       match=r"ray.workers x ray.cpus_per_worker = 3 x 1 CPUs, but the Ray cluster has 2"):
        make_sampler(too_many, torch.device("cpu"))
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main(["train", NAV, *tiny_run_args, "run.name=noray", "sampler.backend=ray", "--quiet"]) == 2
    assert r"sampler.backend=ray needs Ray, an optional dependency: pip install -e .[ray]" in capsys.readouterr().err
    assert not (tmp_path / "noray").exists()


def test_ray_benchmark_script_runs(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(TESTS.parent / "experiments" / "bench_ray.py"), "--env", "metarl/Navigation2D-v0",
         "--tasks", "4", "--episodes", "2", "--horizon", "5", "--repeats", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert set(result["steps_per_s"]) == {"local", "ray-1", "ray-2"} and result["ratio_to_local"]["local"] == 1.0
    assert set(result["ray_overhead_s"]) == {"ray-1", "ray-2"} and result["steps_per_round"] == 4 * 2 * 5
    assert result["projection"]["2"]["speedup"] > 0


def test_a_sweep_runs_its_points_as_ray_tasks(tmp_path, tiny_run_args):
    out = tmp_path / "sweep"
    args = [a for a in tiny_run_args if not a.startswith("run.output_dir=")]
    assert main(["sweep", NAV, *args, "run.seed=0,1", "--backend", "ray", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [p["status"] for p in summary["points"]] == ["finished", "finished"]
    assert all((out / f"seed-{seed}" / "eval.json").is_file() for seed in (0, 1))


@pytest.mark.slow  # each point starts its own Ray rollout worker: minutes on 2 cores
def test_a_sweep_on_ray_runs_points_that_sample_on_ray_without_deadlock(tmp_path, tiny_run_args):
    # Two CPUs: a point needs 1 thread for its driver and 1 CPU for its Ray rollout worker, so the
    # sweep runs them one after the other instead of starving the workers of the first.
    out = tmp_path / "sweep"
    args = [a for a in tiny_run_args if not a.startswith("run.output_dir=")]
    assert main(["sweep", NAV, *args, "sampler.backend=ray", "ray.workers=1", "run.seed=0,1", "--backend", "ray",
                 "--jobs", "2", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [p["status"] for p in summary["points"]] == ["finished", "finished"]
    for seed in (0, 1):
        assert len(read_metrics(out / f"seed-{seed}")) == 2 and (out / f"seed-{seed}" / "eval.json").is_file()
