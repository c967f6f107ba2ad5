"""Training end to end through the CLI: smoke run, determinism, checkpoints, evaluation, bad input."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import without_timings
from metarl import config as cfg
from metarl.cli import main
from metarl.run.factory import build
from metarl.run.rundir import CHECKPOINT, read_metrics

NAV = str(Path(__file__).resolve().parents[1] / "experiments" / "navigation2d.yaml")
#: The first of the MAML paper's 2D-navigation test goals (np.random.seed(1), uniform in [-0.5, 0.5]^2).
PAPER_FIRST_GOAL = [0.417022004702574 - 0.5, 0.7203244934421581 - 0.5]


def test_smoke_run_writes_the_run_directory(tmp_path, tiny_run_args):
    assert main(["train", NAV, *tiny_run_args, "run.name=smoke", "--quiet"]) == 0
    run_dir = tmp_path / "smoke"
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "training.png", "eval.json", "eval.png", CHECKPOINT):
        assert (run_dir / name).is_file(), name
    import csv

    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [0, 1] and float(rows[1]["post_return"]) < 0
    metrics = read_metrics(run_dir)
    assert [m["iteration"] for m in metrics] == [0, 1]
    expected = {"pre_return", "post_return", "kl", "loss_before", "loss_after", "line_search_step", "step_accepted",
                "env_steps", "total_env_steps", "time_sampling", "time_sampling_valid", "time_update"}
    assert expected <= set(metrics[0])
    # 2D navigation ends an episode at its goal (termination) or at the horizon (20 steps here)
    for when in ("pre", "post"):
        assert 0 < metrics[0][f"{when}_length"] <= 20 and 0 <= metrics[0][f"{when}_terminated"] <= 1
    assert metrics[1]["total_env_steps"] == metrics[0]["env_steps"] + metrics[1]["env_steps"]
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["num_tasks"] == 3 and result["steps"] == [0, 1, 2]
    assert len(result["mean_return"]) == len(result["stderr"]) == 3
    assert cfg.load(run_dir / "config.yaml").run.iterations == 2


def test_same_seed_gives_identical_metrics(tmp_path, tiny_run_args):
    for name in ("a", "b"):
        assert main(["train", NAV, *tiny_run_args, f"run.name={name}", "eval.at_end=false", "--quiet"]) == 0
    a, b = (read_metrics(tmp_path / n) for n in "ab")
    assert without_timings(a) == without_timings(b)
    assert main(["train", NAV, *tiny_run_args, "run.name=c", "run.seed=1", "eval.at_end=false", "--quiet"]) == 0
    assert without_timings(read_metrics(tmp_path / "c")) != without_timings(a)


def test_evaluate_command_reruns_the_protocol(tmp_path, tiny_run_args, capsys):
    assert main(["train", NAV, *tiny_run_args, "run.name=ev", "eval.at_end=false", "--quiet"]) == 0
    run_dir = tmp_path / "ev"
    assert not (run_dir / "eval.json").exists()
    assert main(["evaluate", str(run_dir), "eval.num_steps=1", "eval.num_tasks=2"]) == 0
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["steps"] == [0, 1] and result["num_tasks"] == 2
    out = capsys.readouterr().out
    assert "mean return" in out and f"wrote {run_dir / 'eval.json'} and {run_dir / 'eval.png'}" in out
    # The config evaluates on the MAML paper's own test goals ...
    assert result["eval_tasks"] == "paper"
    assert result["tasks"][0]["goal"] == pytest.approx(PAPER_FIRST_GOAL)
    # ... or on seeded draws of the task distribution.
    assert main(["evaluate", str(run_dir), "eval.num_steps=1", "eval.num_tasks=2", "eval.tasks=seeded"]) == 0
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["eval_tasks"] == "seeded" and result["eval_seed"] == 1000
    assert result["tasks"][0]["goal"] != pytest.approx(PAPER_FIRST_GOAL)
    # The meta-train tasks' evaluation goes beside it and leaves it alone.
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "eval.num_steps=1", "eval.num_tasks=2", "eval.tasks=train"]) == 0
    assert json.loads((run_dir / "eval.json").read_text())["eval_tasks"] == "seeded"
    assert json.loads((run_dir / "eval_train.json").read_text())["eval_tasks"] == "train"
    assert f"wrote {run_dir / 'eval_train.json'} and {run_dir / 'eval_train.png'}" in capsys.readouterr().out


def test_a_run_evaluates_training_tasks_too_as_metarl_evaluate_would(tmp_path, tiny_run_args, capsys):
    assert main(["train", NAV, *tiny_run_args, "run.name=both", "eval.num_tasks=2", "eval.train_tasks=4",
                 "--quiet"]) == 0
    run_dir = tmp_path / "both"
    held_out, train = (json.loads((run_dir / name).read_text()) for name in ("eval.json", "eval_train.json"))
    assert held_out["eval_tasks"] == "paper" and held_out["num_tasks"] == 2
    assert train["eval_tasks"] == "train" and train["num_tasks"] == 4 and (run_dir / "eval_train.png").is_file()
    assert main(["evaluate", str(run_dir), "eval.tasks=train", "eval.num_tasks=4"]) == 0
    again = json.loads((run_dir / "eval_train.json").read_text())
    assert {**again, "time_s": 0} == {**train, "time_s": 0}


def test_evaluate_out_leaves_the_runs_own_evaluation_alone(tmp_path, tiny_run_args, capsys):
    assert main(["train", NAV, *tiny_run_args, "run.name=out", "--quiet"]) == 0
    run_dir = tmp_path / "out"
    own = (run_dir / "eval.json").read_bytes()
    out = tmp_path / "probe" / "step_0.5.json"
    assert main(["evaluate", str(run_dir), "eval.num_steps=1", "eval.step_sizes=[0.5]", "--out", str(out)]) == 0
    assert (run_dir / "eval.json").read_bytes() == own
    assert json.loads(out.read_text())["step_sizes"] == [0.5] and out.with_suffix(".png").is_file()
    assert f"wrote {out} and" in capsys.readouterr().out
    assert main(["evaluate", str(run_dir), "--out", str(tmp_path / "probe.txt")]) == 2
    assert "--out: must name a .json file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ("maml.inner_rate=0.1", "unknown key maml.inner_rate"),
        ("run.iterations=many", "run.iterations: expected int"),
        ("env.id=metarl/Nope-v0", "env.id: unknown env 'metarl/Nope-v0'"),
        ("env.kwargs={bad_kwarg: 1}", "env.kwargs"),
        ("env.kwargs={goal_low: 1, goal_high: 0}", "env.kwargs: metarl/Navigation2D-v0 could not be built"),
        ("run.seed=-1", "run.seed: must be in"),
        ("eval.tasks=every", "eval.tasks: must be one of seeded, paper"),
    ],
)
def test_cli_bad_input_exits_2_and_leaves_no_run_directory(tmp_path, override, message):
    proc = subprocess.run(
        [sys.executable, "-m", "metarl.cli", "train", NAV, f"run.output_dir={tmp_path}", "run.name=bad", override],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "bad").exists()


def test_paper_test_tasks_of_an_env_without_them_is_refused_before_training(tmp_path, capsys):
    args = [f"run.output_dir={tmp_path}", "run.name=bad", "env.id=metarl/HalfCheetahVel-v0", "eval.tasks=paper"]
    assert main(["train", NAV, *args]) == 2
    assert "eval.tasks: HalfCheetahVelEnv has no paper test tasks" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_evaluation_is_reproducible_and_rejects_policy_overrides(tmp_path, tiny_run_args):
    assert main(["train", NAV, *tiny_run_args, "run.name=rep", "--quiet"]) == 0
    run_dir = tmp_path / "rep"
    first = json.loads((run_dir / "eval.json").read_text())
    assert main(["evaluate", str(run_dir)]) == 0  # a fresh process state, same checkpoint
    second = json.loads((run_dir / "eval.json").read_text())
    assert first["per_task_returns"] == second["per_task_returns"]
    assert main(["evaluate", str(run_dir), "policy.hidden_sizes=[8]"]) == 2


def test_horizon_longer_than_the_registered_limit(tmp_path, tiny_run_args):
    config = cfg.load(NAV, [*tiny_run_args, "sampler.horizon=130"])
    parts = build(config)
    tasks = parts.task_env.unwrapped.sample_tasks(2)
    episodes = parts.sampler.sample(parts.policy, None, tasks, 2)
    assert episodes.rewards.shape[-1] == 130


def test_envs_command_lists_navigation(capsys):
    assert main(["envs"]) == 0
    out = capsys.readouterr().out
    assert "metarl/Navigation2D-v0" in out and "navigation" in out.lower()


def test_plot_command_draws_several_runs(tmp_path, tiny_run_args, capsys):
    for name in ("a", "b"):
        assert main(["train", NAV, *tiny_run_args, f"run.name={name}", f"run.seed={ord(name)}", "--quiet"]) == 0
    (tmp_path / "b" / "eval.json").unlink()  # a run without evaluation still gets its training curves
    out = tmp_path / "both.png"
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--labels", "A", "B",
                 "--smooth", "2"]) == 0
    assert out.is_file() and out.stat().st_size > 10_000
    assert main(["plot", str(tmp_path / "a"), "--labels", "A", "B"]) == 2
    assert "--labels: got 2 labels for 1 runs" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "missing")]) == 2


@pytest.mark.parametrize("inner_loss", ["lvc", "dice"])
def test_training_with_other_inner_losses(tmp_path, tiny_run_args, inner_loss):
    assert main(["train", NAV, *tiny_run_args, f"maml.inner_loss={inner_loss}", "eval.at_end=false", "run.name=x",
                 "--quiet"]) == 0
    metrics = read_metrics(tmp_path / "x")
    assert len(metrics) == 2 and all(math.isfinite(m["loss_after"]) for m in metrics)
    assert all(m["step_accepted"] for m in metrics)
