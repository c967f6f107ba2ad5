"""Meta-World's ML1, ML10 and ML45 as task families (needs the metaworld extra: ``make test`` runs
this file with it installed and never skips it). The missing-extra error is tested in tests/test_success.py."""

import json
import os
import pickle
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from conftest import TINY_CONFIG, init_local_ray, tiny_config_run
from metarl.bench import async_batch
from metarl.cli import main
from metarl.config import ConfigError
from metarl.config import load as load_config
from metarl.envs.base import task_to_json
from metarl.evaluate import check_eval_tasks
from metarl.policy import GaussianMLPPolicy
from metarl.run.rundir import read_metrics
from metarl.sampler import Sampler, contiguous_shards

TINY = [*TINY_CONFIG, "eval.final_episodes_per_task=1", "eval.tasks_per_chunk=1", "eval.train_tasks=0",
        "run.device=cpu"]
ML1_CONFIGS = ["experiments/ml1_reach.yaml", "experiments/ml1_push.yaml", "experiments/ml1_pick_place.yaml"]


if os.environ.get("METARL_REQUIRE_METAWORLD") == "1":  # make test: never skip
    import metaworld
else:
    metaworld = pytest.importorskip("metaworld", reason="no metaworld extra (pip install -e .[metaworld])")
from metaworld.env_dict import ALL_V3_ENVIRONMENTS  # noqa: E402

from metarl.envs.metaworld import MetaWorldTask, placements  # noqa: E402


@pytest.fixture(scope="module")
def ml10():
    env = gym.make("metarl/ML10-v0")
    yield env.unwrapped
    env.close()


def test_bench_measures_async_on_a_meta_batch_the_env_accepts(ml10):
    # ML10 takes multiples of its 10 classes: --async-envs 8 measures 10 tasks x 1 episode, not 2 x 4
    assert async_batch(load_config("experiments/ml10.yaml"), 8) == (10, 1)
    assert async_batch(load_config("experiments/ml1_reach.yaml"), 8) == (2, 4)


def test_the_profile_script_attributes_a_steps_time():
    script = os.path.join(os.path.dirname(__file__), "..", "experiments", "profile_metaworld.py")
    proc = subprocess.run([sys.executable, script, "pick-place-v3", "--steps", "200"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| pick-place-v3 |")]
    assert [row[1] for row in rows] == ["Meta-World's", "metarl's kernels"]
    for row in rows:  # every part, and the rest, took some of the time
        assert all(float(cell.strip(" |%")) > 0 for cell in row[3:])


@pytest.mark.parametrize("name", sorted(ALL_V3_ENVIRONMENTS))
def test_every_class_passes_check_env(name):
    env = gym.make("metarl/ML1-v0", task_name=name)
    try:
        check_env(env.unwrapped, skip_render_check=True)
        env.reset(seed=0)
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert isinstance(info["success"], bool) and info["task"].env_name == name
        assert not terminated and not truncated and np.isfinite(reward)
    finally:
        env.close()


def test_tasks_round_trip_and_match_metaworlds_own():
    env = gym.make("metarl/ML1-v0", task_name="push-v3").unwrapped
    env.reset(seed=1)
    task = env.sample_tasks(1)[0]
    assert isinstance(task, MetaWorldTask) and task.split == "train" and 0 <= task.placement < 50
    assert pickle.loads(pickle.dumps(task)) == task
    assert MetaWorldTask.from_json(json.loads(json.dumps(task_to_json(task)))) == task
    # Installing our task resets exactly as installing Meta-World's own task of that placement.
    bench = metaworld.ML1("push-v3", seed=0)
    other = gym.make("metarl/ML1-v0", task_name="push-v3").unwrapped
    theirs_env = other._simulator("push-v3")
    theirs_env.set_task(bench.train_tasks[task.placement])
    env.set_task(task)
    ours, _ = env.reset(seed=3)
    theirs, _ = theirs_env.reset()
    assert np.array_equal(ours, theirs)
    assert env.get_task() == task
    env.close()
    other.close()


def test_set_task_builds_each_class_once_and_never_the_benchmark(ml10, monkeypatch):
    ml10.reset(seed=0)
    tasks = ml10.sample_tasks(20)
    monkeypatch.setattr(metaworld, "ML10", lambda *a, **k: pytest.fail("the benchmark was rebuilt"))
    for task in tasks[:3] + tasks[:3]:
        ml10.set_task(task)
    sims = dict(ml10._sims)
    ml10.set_task(tasks[1])
    assert ml10._sims == sims and len(sims) == 3  # one simulator per class, kept


def test_the_samplers_sub_envs_build_only_their_own_class(ml10):
    # gymnasium's set_attr("task", ...) reads the attribute before it sets it: reading must not build a
    # simulator of a default task (the first training class) beside the sub-env's own.
    ml10.reset(seed=0)
    tasks = ml10.sample_tasks(10)
    sampler = Sampler("metarl/ML10-v0", horizon=3, seed=0, vectorization="sync")
    try:
        sampler.sample(GaussianMLPPolicy(39, 4, hidden_sizes=(8,)), None, tasks, 1)
        sub_envs = [env.unwrapped for stepper in sampler._steppers.values() for env in stepper.env.envs]
        assert [list(env._sims) for env in sub_envs] == [[task.env_name] for task in tasks]
    finally:
        sampler.close()
    fresh = gym.make("metarl/ML10-v0").unwrapped
    assert fresh.task is None and not fresh._sims  # reading the attribute builds nothing
    fresh.reset(seed=0)  # a reset with no task installs the default one
    assert fresh.task == fresh.get_task() and fresh.task.placement == -1 and list(fresh._sims) == ["reach-v3"]
    fresh.close()


def test_meta_batches_hold_every_class_in_a_fixed_order(ml10):
    ml10.reset(seed=5)
    first = ml10.sample_tasks(40)
    names = ml10.classes["train"]
    assert [t.env_name for t in first] == names * 4  # sub-env i keeps its class across meta-iterations
    for name in names:
        placements_of = [t.placement for t in first if t.env_name == name]
        assert len(set(placements_of)) == 4  # no repeats within a class until all 50 are used
    ml10.reset(seed=5)
    assert ml10.sample_tasks(40) == first  # the env's own seeded generator
    assert ml10.sample_tasks(40) != first
    test = ml10.sample_test_tasks(10)
    assert {t.env_name for t in test} == set(ml10.classes["test"]) and not set(ml10.classes["test"]) & set(names)
    assert ml10.task_count_error(15, "train") and ml10.task_count_error(15, "test") is None


def test_ray_shards_and_worker_processes_keep_their_classes_across_meta_batches(ml10):
    # Ray splits a meta-batch's tasks, and worker processes its sub-envs, into contiguous shares: with
    # the classes in a fixed order, each share holds the same classes at every meta-iteration.
    ml10.reset(seed=2)
    batches = [ml10.sample_tasks(20) for _ in range(3)]
    for shards in (contiguous_shards(20, 3), contiguous_shards(20 * 10, 2)):
        per_episode = [[t for t in batch for _ in range(10)] if shards[-1][1] == 200 else batch for batch in batches]
        classes = [[[t.env_name for t in tasks[a:b]] for a, b in shards] for tasks in per_episode]
        assert classes[0] == classes[1] == classes[2]


def test_each_sub_env_builds_one_simulator_and_keeps_it_across_meta_batches(ml10):
    # What the shares above hold for a worker's sub-envs, seen in one process: sub-env i gets class
    # i mod 10 at every meta-iteration, so it builds that one simulator once.
    sampler = Sampler("metarl/ML10-v0", horizon=2, seed=0, vectorization="sync")
    policy = GaussianMLPPolicy(39, 4, hidden_sizes=(8,))
    ml10.reset(seed=3)
    held = []
    try:
        for _ in range(3):
            tasks = ml10.sample_tasks(10)
            sampler.sample(policy, None, tasks, 1)
            (stepper,) = sampler._steppers.values()
            assert [list(env.unwrapped._sims) for env in stepper.env.envs] == [[t.env_name] for t in tasks]
            held.append([sim for env in stepper.env.envs for sim in env.unwrapped._sims.values()])
        # the same simulator objects, not rebuilt ones (held here, so no id is reused)
        assert all(a is b is c for a, b, c in zip(*held, strict=True))
    finally:
        sampler.close()


def test_ray_workers_sample_the_local_samplers_episodes_and_success(ml10):
    # Each worker holds the classes of its contiguous share of the meta-batch (see above) and
    # samples what the local sampler does, success included.
    if os.environ.get("METARL_REQUIRE_METAWORLD") == "1":  # make test's venv has the ray extra too
        import ray
    else:
        ray = pytest.importorskip("ray", reason="no ray extra (pip install -e .[ray])")
    from metarl.ray_sampler import RaySampler

    init_local_ray(ray)
    local = Sampler("metarl/ML10-v0", horizon=4, seed=1)
    remote = None
    try:
        remote = RaySampler("metarl/ML10-v0", horizon=4, seed=1, num_workers=2, cpus_per_worker=1.0)
        torch.manual_seed(0)
        policy = GaussianMLPPolicy(39, 4, hidden_sizes=(8,))
        ml10.reset(seed=0)
        tasks = ml10.sample_tasks(10)
        for _ in range(2):  # the second round reuses each worker's simulators
            ours, theirs = local.sample(policy, None, tasks, 2), remote.sample(policy, None, tasks, 2)
            for name in ("observations", "actions", "rewards", "mask", "success"):
                assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
            assert theirs.success.dtype == torch.bool and theirs.tasks == tasks
    finally:
        if remote is not None:
            remote.close()
        local.close()
        ray.shutdown()


def test_paper_tasks_are_metaworlds_meta_test_set(ml10):
    tasks = ml10.paper_test_tasks(200)
    assert [t.env_name for t in tasks[:5]] == ml10.classes["test"]
    # The first 40 test placements of each test class of Meta-World's own ML10 (seed 0), each once.
    theirs = {}
    for task in metaworld.ML10(seed=0).test_tasks:
        theirs.setdefault(task.env_name, []).append(tuple(float(v) for v in pickle.loads(task.data)["rand_vec"]))
    for name in ml10.classes["test"]:
        ours = sorted((t.placement, t.rand_vec) for t in tasks if t.env_name == name)
        assert ours == [(i, theirs[name][i]) for i in range(40)]
    with pytest.raises(ValueError, match="eval.num_tasks"):
        ml10.paper_test_tasks(205)
    assert "meta-test has 200 tasks" in ml10.task_count_error(205, "paper")


def test_ml1_test_placements_are_not_training_placements():
    vectors = placements("ML1", "reach-v3", 0)
    train, test = vectors[("train", "reach-v3")], vectors[("test", "reach-v3")]
    assert train.shape == test.shape == (50, train.shape[1])
    assert not any((t == train).all(axis=1).any() for t in test)


def test_the_sampler_records_success_for_metaworld():
    sampler = Sampler("metarl/ML1-v0", {"task_name": "reach-v3"}, horizon=5, seed=0)
    env = gym.make("metarl/ML1-v0", task_name="reach-v3").unwrapped
    env.reset(seed=0)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(39, 4, hidden_sizes=(8,))
    batch = sampler.sample(policy, None, env.sample_tasks(2), 2)
    assert batch.success is not None and batch.success.shape == (2, 2) and batch.success.dtype == torch.bool
    assert batch.observations.shape == (2, 2, 5, 39)
    sampler.close()
    env.close()


class ReachPolicy(GaussianMLPPolicy):
    """Moves the hand (observation[:3]) towards each task's goal (``goals[i]``, read from the task
    since ML1 hides it from the observation), or keeps it still where the goal is None."""

    def __init__(self, goals):
        super().__init__(39, 4, hidden_sizes=(4,), init_std=1e-3)
        self.goals = torch.tensor([g if g is not None else [np.nan] * 3 for g in goals], dtype=torch.float32)

    def mean_std(self, obs, params=None):
        _, std = super().mean_std(obs, params)
        mean = torch.zeros(*obs.shape[:-1], 4)
        step = (10 * (self.goals[:, None] - obs[..., :3])).clamp(-1, 1)
        mean[..., :3] = torch.nan_to_num(step)
        return mean, std


@pytest.mark.parametrize("vectorization", ["sync", "processes"])
def test_metaworld_success_reaches_the_episodes(vectorization):
    # A reach-v3 episode that reaches its goal succeeds, one that stays put does not: success is
    # taken from Meta-World's own info["success"] through the sub-envs or the worker processes.
    env = gym.make("metarl/ML1-v0", task_name="reach-v3").unwrapped
    env.reset(seed=0)
    tasks = env.sample_tasks(2)
    env.close()
    sampler = Sampler("metarl/ML1-v0", {"task_name": "reach-v3"}, horizon=150, seed=0, vectorization=vectorization)
    try:
        batch = sampler.sample(ReachPolicy([tasks[0].rand_vec[3:], None]), None, tasks, 2)
    finally:
        sampler.close()
    assert batch.success.tolist() == [[True, True], [False, False]]


def test_unknown_task_name_exits_2_listing_the_valid_ones(tmp_path, capsys):
    args = ["train", "experiments/ml1_reach.yaml", *TINY, "env.kwargs.task_name=reach-v9", f"run.output_dir={tmp_path}",
            "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "reach-v9" in err and "pick-place-v3" in err and "Traceback" not in err


def test_a_tiny_ml1_run_logs_and_evaluates_success(tmp_path):
    args = ["train", "experiments/ml1_reach.yaml", *TINY, f"run.output_dir={tmp_path}", "run.name=ml1", "--quiet"]
    assert main(args) == 0
    (metrics,) = read_metrics(tmp_path / "ml1")
    assert {"pre_success", "post_success"} <= set(metrics)
    result = json.loads((tmp_path / "ml1" / "eval.json").read_text())
    assert result["eval_tasks"] == "paper" and result["final_episodes_per_task"] == 1
    assert len(result["success_rate"]) == 2 and set(result["per_class_success"]) == {"reach-v3"}
    assert [t["split"] for t in result["tasks"]] == ["test", "test"]
    assert set(result["per_class_success_stderr"]) == {"reach-v3"}
    assert main(["evaluate", str(tmp_path / "ml1"), "eval.tasks=train"]) == 0  # meta-train success, kept apart
    train = json.loads((tmp_path / "ml1" / "eval_train.json").read_text())
    assert [t["split"] for t in train["tasks"]] == ["train", "train"]
    assert (tmp_path / "ml1" / "eval_train.png").is_file()
    assert json.loads((tmp_path / "ml1" / "eval.json").read_text()) == result


@pytest.mark.parametrize("override, message", [
    ("eval.num_tasks=45", "eval.num_tasks: Meta-World's ML1 meta-test has 40 tasks"),
    ("env.id=metarl/ML10-v0 env.kwargs.task_name=null eval.num_tasks=5 eval.tasks_per_chunk=4",
     "eval.tasks_per_chunk: ML10's batches hold each of its 5 test classes"),
    ("env.id=metarl/ML10-v0 maml.meta_batch_size=10", "task_name: only ML1 takes one (ML10 meta-trains on its"),
    ("env.kwargs.benchmark_seed=-1", "benchmark_seed: must be an integer from 0 to 4294967294, got -1"),
    ("env.kwargs.benchmark_seed=4294967295", "benchmark_seed: must be an integer from 0 to 4294967294"),
])
def test_evaluation_sizes_metaworld_refuses_exit_2_before_training(tmp_path, capsys, override, message):
    args = ["train", "experiments/ml1_reach.yaml", *TINY, *override.split(), f"run.output_dir={tmp_path}",
            "run.name=x", "--quiet"]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_chunk_of_at_least_every_task_is_not_checked_on_its_own(ml10):
    # Such a chunk is one chunk of every task: only eval.num_tasks must suit the benchmark.
    for source, num_tasks, chunk in (("paper", 5, 7), ("paper", 200, 250), ("seeded", 40, 47), ("train", 10, 10)):
        check_eval_tasks(ml10, source, num_tasks, chunk)
    with pytest.raises(ConfigError, match="eval.tasks_per_chunk: ML10's batches hold each of its 5 test classes"):
        check_eval_tasks(ml10, "paper", 10, 4)
    with pytest.raises(ConfigError, match="eval.num_tasks: Meta-World's ML10 meta-test has 200 tasks"):
        check_eval_tasks(ml10, "paper", 250, 300)
    # The end-of-run meta-train evaluation shares eval.tasks_per_chunk: its error says so.
    check_eval_tasks(ml10, "paper", 200, 5)
    with pytest.raises(ConfigError, match=r"eval.tasks_per_chunk \(chunks of eval.train_tasks\): ML10's batches hold "
                                          "each of its 10 train classes"):
        check_eval_tasks(ml10, "train", 40, 5, "eval.train_tasks")


@pytest.mark.parametrize("path", ML1_CONFIGS)
def test_every_ml1_config_trains_with_a_tiny_budget(path, tmp_path):
    run = tiny_config_run(path, tmp_path, ["eval.final_episodes_per_task=1", "eval.tasks_per_chunk=1",
                                           "eval.train_tasks=2"])
    held_out, train = (json.loads((run.path / name).read_text()) for name in ("eval.json", "eval_train.json"))
    assert {t["split"] for t in held_out["tasks"]} == {"test"} and {t["split"] for t in train["tasks"]} == {"train"}


@pytest.mark.slow
@pytest.mark.parametrize("path, batch, train",
                         [("experiments/ml10.yaml", 10, True), ("experiments/ml45.yaml", 45, False)])
def test_ml10_and_ml45_train_and_evaluate_end_to_end(tmp_path, path, batch, train):
    evaluation = ["eval.tasks_per_chunk=10", f"eval.train_tasks={batch}"] if train else ["eval.tasks_per_chunk=5"]
    run = tiny_config_run(path, tmp_path, [f"maml.meta_batch_size={batch}", "sampler.episodes_per_task=1",
                                           "eval.num_tasks=5", *evaluation])
    result = json.loads((run.path / "eval.json").read_text())
    assert len(result["per_class_success"]) == 5
    if train:  # meta-train success on every training class, apart
        assert len(json.loads((run.path / "eval_train.json").read_text())["per_class_success"]) == batch
