"""Success bookkeeping (``info["success"]``), the evaluation's task sources and chunks, and batch-size
checks of a task env: the parts of the Meta-World support that need no Meta-World."""

import json
import pickle
import sys

import gymnasium as gym
import pytest
import torch

from conftest import CounterEnv, LengthTask, SuccessCounterEnv
from metarl import config as cfg
from metarl.cli import main
from metarl.episodes import ValidSteps, concat_episodes
from metarl.evaluate import evaluate
from metarl.policy import GaussianMLPPolicy
from metarl.run.factory import build, eval_tasks
from metarl.run.rundir import read_metrics
from metarl.sampler import Sampler


class SplitCounterEnv(CounterEnv):
    """A benchmark with a held-out split (test tasks are long, training ones short) whose batches
    must hold an even number of tasks."""

    def sample_tasks(self, num_tasks):
        return [LengthTask(int(n)) for n in self.np_random.integers(1, 3, size=num_tasks)]

    def sample_test_tasks(self, num_tasks):
        return [LengthTask(int(n)) for n in self.np_random.integers(4, 6, size=num_tasks)]

    def task_count_error(self, num_tasks, split):
        return None if num_tasks % 2 == 0 else f"{split} batches must be even, got {num_tasks}"


class SplitSuccessEnv(SplitCounterEnv, SuccessCounterEnv):
    pass


for _id, _cls in [("tests/SplitCounter-v0", SplitCounterEnv), ("tests/SplitSuccess-v0", SplitSuccessEnv)]:
    if _id not in gym.registry:
        gym.register(_id, entry_point=_cls, max_episode_steps=6)


def policy():
    torch.manual_seed(0)
    return GaussianMLPPolicy(2, 1, hidden_sizes=(4,))


def test_an_episode_succeeds_if_any_step_does():
    sampler = Sampler("tests/SuccessCounter-v0", seed=0)
    tasks = [LengthTask(1), LengthTask(3), LengthTask(5)]
    batch = sampler.sample(policy(), None, tasks, episodes_per_task=2)
    # Success is reported at step 2 only: a length-1 episode never gets there; later steps say False.
    assert batch.success.tolist() == [[False, False], [True, True], [True, True]]
    assert batch.task_success_rates().tolist() == [0.0, 1.0, 1.0]
    assert batch.success_rate() == pytest.approx(4 / 6)
    cut = Sampler("tests/SuccessCounter-v0", seed=0, horizon=1).sample(policy(), None, tasks, episodes_per_task=2)
    assert not cut.success.any()  # the horizon ends every episode before its success
    assert Sampler("tests/Counter-v0", seed=0).sample(policy(), None, tasks, 2).success is None


def test_success_survives_step_budgets_shipping_and_concatenation():
    sampler = Sampler("tests/SuccessCounter-v0", seed=0)
    tasks = [LengthTask(1), LengthTask(3)]
    batch = sampler.sample(policy(), None, tasks, episodes_per_task=2, budget="steps")
    kept = batch.episode_mask.bool()
    assert not (batch.success & ~kept).any()  # an emptied slot of the step budget never succeeded
    rebuilt = pickle.loads(pickle.dumps(ValidSteps.of(batch))).episodes()
    assert torch.equal(rebuilt.success, batch.success)
    both = concat_episodes([batch.task_slice(0, 1), batch.task_slice(1, 2)])
    assert torch.equal(both.success, batch.success)


def test_a_resumed_sampler_remembers_that_the_env_reports_success():
    # An env that says "success" only when it succeeds: after a round with a success, a round
    # without one has all-False success, in a sampler restored from the state as in the original.
    sampler = Sampler("tests/SuccessWhenTrue-v0", seed=0)
    assert sampler.sample(policy(), None, [LengthTask(1)], 2).success is None  # not seen yet
    sampler.sample(policy(), None, [LengthTask(3)], 2)
    restored = Sampler("tests/SuccessWhenTrue-v0", seed=0)
    restored.load_state_dict(sampler.state_dict())
    for s in (sampler, restored):
        assert s.sample(policy(), None, [LengthTask(1)], 2).success.tolist() == [[False, False]]


def run_evaluation(tasks, env_id="tests/SuccessCounter-v0", **kwargs):
    sampler = Sampler(env_id, seed=0)
    try:
        return evaluate(policy(), sampler, tasks, num_steps=1, step_sizes=(0.1,), episodes_per_task=3, **kwargs)
    finally:
        sampler.close()


def test_evaluation_reports_success_per_step_and_task_and_runs_in_chunks():
    tasks = [LengthTask(n) for n in (1, 3, 1, 4, 2)]
    whole = run_evaluation(tasks)
    assert whole["success_rate"] == [pytest.approx(0.6), pytest.approx(0.6)]
    assert whole["per_task_success"][0] == [0.0, 1.0, 0.0, 1.0, 1.0]
    assert whole["success_stderr"][0] == pytest.approx(torch.tensor([0.0, 1, 0, 1, 1]).std().item() / 5 ** 0.5)
    assert "per_class_success" not in whole  # LengthTask has no env_name
    chunked = run_evaluation(tasks, tasks_per_chunk=2)
    # Rewards and success do not depend on the actions here, so chunks change nothing but the noise.
    for key in ("mean_return", "per_task_returns", "success_rate", "per_task_success", "num_tasks", "tasks"):
        assert chunked[key] == whole[key], key


def test_an_env_that_reports_success_only_when_true_loses_no_chunk():
    # The first chunk's episodes all end at step 1 (length 1): no step there says "success" at all.
    tasks = [LengthTask(1), LengthTask(1), LengthTask(3), LengthTask(4)]
    whole = run_evaluation(tasks, "tests/SuccessWhenTrue-v0")
    chunked = run_evaluation(tasks, "tests/SuccessWhenTrue-v0", tasks_per_chunk=2)
    assert whole["success_rate"] == chunked["success_rate"] == [0.5, 0.5]
    assert chunked["per_task_success"][0] == [0.0, 0.0, 1.0, 1.0]
    sampler = Sampler("tests/SuccessWhenTrue-v0", seed=0)
    first = sampler.sample(policy(), None, [LengthTask(3)], 1)
    later = sampler.sample(policy(), None, [LengthTask(1)], 1)  # no report, after the env has reported one
    assert first.success.tolist() == [[True]] and later.success.tolist() == [[False]]
    joined = concat_episodes([Sampler("tests/SuccessWhenTrue-v0", seed=0).sample(policy(), None, [LengthTask(1)], 1),
                              first])
    assert joined.success.tolist() == [[False], [True]]
    sampler.close()


def test_the_last_step_may_sample_other_episodes_per_task(monkeypatch):
    counts = []
    original = Sampler.sample

    def counting(self, policy, params, tasks, episodes_per_task, budget="episodes"):
        counts.append((len(tasks), episodes_per_task))
        return original(self, policy, params, tasks, episodes_per_task, budget)

    monkeypatch.setattr(Sampler, "sample", counting)
    result = run_evaluation([LengthTask(3)] * 4, final_episodes_per_task=2, tasks_per_chunk=3)
    assert counts == [(3, 3), (3, 2), (1, 3), (1, 2)]
    assert result["final_episodes_per_task"] == 2 and result["episodes_per_task"] == 3


def test_seeded_evaluation_draws_the_held_out_split_and_train_the_training_one():
    base = ["env.id=tests/SplitCounter-v0", "eval.num_tasks=6"]
    seeded = eval_tasks(cfg.load(None, base))
    train = eval_tasks(cfg.load(None, [*base, "eval.tasks=train"]))
    assert all(t.length >= 4 for t in seeded) and all(t.length <= 2 for t in train)
    assert eval_tasks(cfg.load(None, base)) == seeded  # seeded by eval.seed
    # An env without a held-out split is evaluated on its task distribution either way.
    counter = ["env.id=tests/Counter-v0", "eval.num_tasks=6"]
    assert eval_tasks(cfg.load(None, counter)) == eval_tasks(cfg.load(None, [*counter, "eval.tasks=train"]))


@pytest.mark.parametrize("override, field", [("maml.meta_batch_size=3", "maml.meta_batch_size"),
                                             ("eval.num_tasks=5", "eval.num_tasks"),
                                             ("eval.train_tasks=3", "eval.train_tasks")])
def test_batch_sizes_the_env_refuses_exit_2_before_anything_is_written(tmp_path, tiny_run_args, capsys, override,
                                                                       field):
    args = ["train", "experiments/navigation2d_quick.yaml", *tiny_run_args, "env.id=tests/SplitCounter-v0",
            "sampler.horizon=6", "maml.meta_batch_size=2", "eval.num_tasks=2", override, "run.name=refused", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{field}: " in err and "must be even" in err
    assert not (tmp_path / "refused").exists()


def test_train_tasks_are_checked_where_they_will_be_evaluated():
    base = ["env.id=tests/SplitCounter-v0", "maml.meta_batch_size=2", "eval.num_tasks=2", "eval.train_tasks=3",
            "run.device=cpu"]
    with pytest.raises(cfg.ConfigError, match="eval.train_tasks: train batches must be even, got 3"):
        build(cfg.load(None, base))
    build(cfg.load(None, [*base, "eval.tasks=train"])).close()  # its one evaluation is of training tasks already


def test_training_logs_success_rates_and_eval_json_holds_them(tmp_path, tiny_run_args):
    args = ["train", "experiments/navigation2d_quick.yaml", *tiny_run_args, "env.id=tests/SplitSuccess-v0",
            "sampler.horizon=6", "maml.meta_batch_size=2", "eval.num_tasks=2", "eval.num_steps=1",
            "policy.init_std=1.0",
            "run.name=success", "--quiet"]
    assert main(args) == 0
    metrics = read_metrics(tmp_path / "success")
    for m in metrics:
        assert 0.0 <= m["pre_success"] <= 1.0 and 0.0 <= m["post_success"] <= 1.0
    result = json.loads((tmp_path / "success" / "eval.json").read_text())
    assert result["success_rate"] == [1.0, 1.0]  # held-out tasks are 4-5 steps long: every episode reaches step 2
    assert (tmp_path / "success" / "eval.png").is_file()
    # metarl evaluate runs one evaluation (eval.tasks): eval.train_tasks, which only the end of a
    # run uses, is not checked against the env (here an odd count, which this env refuses)
    assert main(["evaluate", str(tmp_path / "success"), "eval.num_steps=0", "eval.train_tasks=3"]) == 0


class FailingCounterEnv(CounterEnv):
    """Raises from ``step`` once its task is 5 steps long (in a worker process, for the driver to report)."""

    def step(self, action):
        if self._task.length == 5:
            raise RuntimeError("the simulator fell over")
        return super().step(action)


if "tests/FailingCounter-v0" not in gym.registry:
    gym.register("tests/FailingCounter-v0", entry_point=FailingCounterEnv, max_episode_steps=6)


@pytest.mark.parametrize("env_id", ["tests/SuccessCounter-v0", "tests/SuccessWhenTrue-v0", "metarl/Navigation2D-v0"])
def test_worker_processes_give_the_episodes_of_sync(env_id):
    torch.manual_seed(0)
    obs_dim = 2
    net = GaussianMLPPolicy(obs_dim, 2 if env_id.startswith("metarl") else 1, hidden_sizes=(4,))
    batches = []
    for mode in ("sync", "processes"):
        sampler = Sampler(env_id, seed=3, vectorization=mode, processes=3, horizon=6)
        task_env = gym.make(env_id)
        task_env.reset(seed=0)
        tasks = task_env.unwrapped.sample_tasks(4)
        task_env.close()
        try:
            assert sampler.mode == mode
            batches.append([sampler.sample(net, None, tasks, 5) for _ in range(2)])  # the stepper is reused
        finally:
            sampler.close()
    for sync, processes in zip(*batches, strict=True):
        for name in ("observations", "actions", "rewards", "mask", "terminated", "truncated", "success"):
            a, b = getattr(sync, name), getattr(processes, name)
            assert (a is None and b is None) or torch.equal(a, b), name


def test_a_worker_process_that_fails_is_named_and_the_others_are_closed():
    sampler = Sampler("tests/FailingCounter-v0", seed=0, vectorization="processes", processes=2)
    try:
        with pytest.raises(RuntimeError, match=r"tests/FailingCounter-v0: sampler worker 1 of 2 failed: .*fell over"):
            sampler.sample(policy(), None, [LengthTask(3), LengthTask(5)], 2)
        (stepper,) = sampler._steppers.values()
        assert stepper.workers == [] and stepper.pipes == []  # every worker ended with the failure
    finally:
        sampler.close()
    assert sampler._steppers == {}


def test_without_metaworld_naming_a_family_exits_2_with_the_install_command(tmp_path, tiny_run_args, monkeypatch,
                                                                           capsys):
    monkeypatch.setitem(sys.modules, "metaworld", None)  # as if it were not installed (it may be)
    args = ["train", "experiments/ml1_reach.yaml", *tiny_run_args, "run.name=x", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "pip install" in err and "metaworld" in err and "Traceback" not in err and "env.kwargs" not in err
    assert not (tmp_path / "x").exists()
