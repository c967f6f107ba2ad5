"""The run layer's edges: run directories, checkpoints, resume, signals, kills and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import metarl.run.hooks
import metarl.run.loop
from metarl import config as cfg
from metarl.checkpoint import save_checkpoint
from metarl.cli import main
from metarl.run.factory import build
from metarl.run.iteration import meta_iteration
from metarl.run.rundir import BEST_CHECKPOINT, CHECKPOINT, PREVIOUS_CHECKPOINT, RunDir, read_metrics
from metarl.run.state import checkpoint_state, restore_state
from metarl.runtime import set_rng_state
from metarl.train import _resume_device

ROOT = Path(__file__).resolve().parents[1]
NAV = str(ROOT / "experiments" / "navigation2d_quick.yaml")  # seeded test tasks: any env can stand in


def with_iterations(args: list[str], n: int) -> list[str]:
    return [a for a in args if not a.startswith("run.iterations=")] + [f"run.iterations={n}"]


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


# --- run directories ----------------------------------------------------------------------------


def test_default_run_names_are_unique_within_a_second(tmp_path):
    config = cfg.load(NAV, [f"run.output_dir={tmp_path}", "run.seed=3"])
    runs = [RunDir.create(config) for _ in range(20)]
    assert len({r.path for r in runs}) == 20
    assert all(r.path.name.startswith("Navigation2D-v0-") and "-s3-" in r.path.name for r in runs)


CLAIM = """
import sys, time
from metarl import config as cfg
from metarl.run.rundir import RunDir
nav, out, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
for attempt in range(5):
    config = cfg.load(nav, [f"run.output_dir={out}/{attempt}", "run.name=same"])
    instant = start + 0.3 * attempt  # both processes claim at the same instant
    time.sleep(max(0.0, instant - time.time() - 0.005))
    while time.time() < instant:
        pass
    try:
        RunDir.create(config)
        print("won")
    except cfg.ConfigError as exc:
        print(exc)
"""


def test_two_runs_claiming_one_directory_at_once_get_one_winner(tmp_path):
    start = time.time() + 8  # after both processes have imported metarl
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM, NAV, str(tmp_path), str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    a, b = (out.splitlines() for out, _ in outputs)
    for attempt, results in enumerate(zip(a, b, strict=True)):
        assert sorted(results)[-1] == "won" and results.count("won") == 1, (attempt, results)
        assert "run.name" in sorted(results)[0]


def test_online_tracking_without_a_key_writes_nothing(tmp_path, tiny_run_args, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    args = [*tiny_run_args, "run.name=online", "eval.at_end=false", "--quiet"]
    assert main(["train", NAV, *args, "tracking.wandb=true", "tracking.mode=online"]) == 2
    assert "tracking.mode: online needs a wandb account" in capsys.readouterr().err
    assert not (tmp_path / "online").exists()
    assert main(["train", NAV, *args]) == 0  # the same run.name is free


def test_a_run_that_fails_in_its_first_iteration_leaves_no_directory(tmp_path, tiny_run_args, capsys):
    args = [*tiny_run_args, "env.id=tests/NonFinite-v0", "run.name=nan", "sampler.horizon=4", "--quiet"]
    assert main(["train", NAV, *args]) == 1
    assert not (tmp_path / "nan").exists()
    assert "no meta-iteration was recorded, so no run directory was kept" in capsys.readouterr().err


# --- non-finite env values ----------------------------------------------------------------------


def test_nan_from_the_env_during_training_exits_1_with_the_last_checkpoint_intact(tmp_path, tiny_run_args, capsys):
    # The sub-envs break after some resets: training has written at least one checkpoint by then.
    args = [*with_iterations(tiny_run_args, 10), "env.id=tests/NonFinite-v0", "env.kwargs={clean_resets: 4}",
            "sampler.horizon=4", "run.checkpoint_every=1", "run.name=nan", "--quiet"]
    assert main(["train", NAV, *args]) == 1
    err = capsys.readouterr().err
    assert "tests/NonFinite-v0 returned a non-finite reward nan at step 2" in err and "Traceback" not in err
    assert f"resume with: metarl train --resume {tmp_path / 'nan'}" in err
    run = RunDir.open(tmp_path / "nan")
    state = run.load_checkpoint()
    assert state["iteration"] == len(read_metrics(run.path)) >= 1


# --- checkpoints that cannot be used ------------------------------------------------------------


@pytest.fixture
def trained(tmp_path, tiny_run_args):
    assert main(["train", NAV, *with_iterations(tiny_run_args, 3), "run.checkpoint_every=1", "run.name=t",
                 "--quiet"]) == 0
    return tmp_path / "t"


def test_a_truncated_checkpoint_is_named_with_what_to_use_instead(trained, capsys):
    last = trained / CHECKPOINT
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    assert (trained / PREVIOUS_CHECKPOINT).is_file()
    for command in (["evaluate", str(trained)], ["train", "--resume", str(trained), "run.iterations=4"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"{last} cannot be read" in err and "truncated or corrupt" in err
        assert f"--checkpoint {trained / PREVIOUS_CHECKPOINT}" in err and str(trained / BEST_CHECKPOINT) in err
    # the advice works: resume from the previous checkpoint
    assert main(["train", "--resume", str(trained), "run.iterations=4", "--checkpoint",
                 str(trained / PREVIOUS_CHECKPOINT), "--quiet"]) == 0
    assert [m["iteration"] for m in read_metrics(trained)] == [0, 1, 2, 3]


def test_a_file_that_is_not_a_checkpoint_is_refused(trained, capsys):
    (trained / CHECKPOINT).write_bytes(b"not a checkpoint at all")
    assert main(["evaluate", str(trained)]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    torch.save({"weights": torch.ones(2)}, trained / CHECKPOINT)
    assert main(["evaluate", str(trained)]) == 2
    assert "is not a metarl checkpoint (it has no iteration, policy, config)" in capsys.readouterr().err


def test_a_checkpoint_that_does_not_fit_the_config_is_named(trained, capsys):
    config_path = trained / "config.yaml"
    config_path.write_text(config_path.read_text().replace("- 16\n  - 16", "- 32\n  - 32"))
    assert main(["evaluate", str(trained)]) == 2
    err = capsys.readouterr().err
    assert "does not fit the run's config.yaml" in err and "policy.hidden_sizes" in err and "Traceback" not in err


# --- resume ---------------------------------------------------------------------------------------


def test_resume_refuses_an_edited_config_naming_the_fields(trained, capsys):
    config_path = trained / "config.yaml"
    original = config_path.read_text()
    config_path.write_text(original.replace("inner_lr: 0.1", "inner_lr: 0.7"))
    assert main(["train", "--resume", str(trained), "run.iterations=4"]) == 2
    err = capsys.readouterr().err
    assert "maml.inner_lr: checkpoint 0.1, config.yaml 0.7" in err
    # an allowed field may differ (it is what a resume override writes there)
    config_path.write_text(original.replace("checkpoint_every: 1", "checkpoint_every: 2"))
    assert main(["train", "--resume", str(trained), "run.iterations=4", "--quiet"]) == 0


def test_resume_stays_on_the_device_the_run_started_on(monkeypatch):
    config = cfg.load(NAV, ["run.device=auto"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # auto would now pick CUDA
    assert _resume_device({"device": "cpu"}, [], config) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(cfg.ConfigError, match="trained on cuda:0, which is not available here; pass run.device=cpu"):
        _resume_device({"device": "cuda:0"}, [], config)
    assert _resume_device({"device": "cuda:0"}, ["run.device=cpu"], cfg.load(NAV, ["run.device=cpu"])).type == "cpu"


def test_noise_saved_on_another_device_is_reported_not_restored(tiny_run_args):
    parts = build(cfg.load(NAV, [*tiny_run_args, "run.device=cpu"]))  # saved on cuda, whether or not there is one
    state = parts.sampler.state_dict()
    assert parts.sampler.load_state_dict(state) == []
    notes = parts.sampler.load_state_dict({**state, "noise_device": "cuda"})
    assert len(notes) == 1 and "saved on cuda and cannot continue on cpu" in notes[0]
    parts.close()


def test_checkpoint_state_round_trips_through_restore_state(tiny_run_args):
    config = cfg.load(NAV, [*tiny_run_args, "maml.outer=promp", "ppo.inner_kl_target=1e-4", "maml.meta_sgd=true"])
    parts = build(config)
    meta_iteration(config, parts)
    saved = checkpoint_state(config, parts, 1, -5.0)
    fresh = build(config)
    assert restore_state(fresh, saved) == []
    for a, b in zip(parts.policy.parameters(), fresh.policy.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(parts.step_sizes.parameters(), fresh.step_sizes.parameters(), strict=True):
        assert torch.equal(a, b)
    assert fresh.outer.inner_kl_coef == parts.outer.inner_kl_coef != config.ppo.inner_kl_coef
    assert fresh.outer.optimizer.state_dict()["state"].keys() == parts.outer.optimizer.state_dict()["state"].keys()
    # every random stream continues where the saved run's would
    assert parts.task_env.unwrapped.sample_tasks(3) == fresh.task_env.unwrapped.sample_tasks(3)
    assert torch.equal(parts.sampler.draw_round(2, 2)[1], fresh.sampler.draw_round(2, 2)[1])
    restore_state(fresh, saved)
    after_restore = torch.rand(3)  # the global stream (parameter init, third-party code) continues as saved
    set_rng_state(saved["rng"])
    assert torch.equal(after_restore, torch.rand(3))
    restore_state(fresh, saved)
    restore_state(parts, saved)
    assert meta_iteration(config, parts)["post_return"] == meta_iteration(config, fresh)["post_return"]
    parts.close()
    fresh.close()


# --- signals and kills ----------------------------------------------------------------------------


def test_a_signal_in_the_last_iteration_leaves_a_run_that_resume_finishes(tmp_path, tiny_run_args, monkeypatch):
    real = metarl.run.loop.meta_iteration
    calls = []

    def iteration_then_signal(config, parts):
        metrics = real(config, parts)
        calls.append(1)
        if len(calls) == config.run.iterations:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives during the last meta-iteration
        return metrics

    monkeypatch.setattr(metarl.run.loop, "meta_iteration", iteration_then_signal)
    assert main(["train", NAV, *tiny_run_args, "run.name=last", "--quiet"]) == 128 + signal.SIGTERM
    run = tmp_path / "last"
    assert not (run / "eval.json").exists()
    monkeypatch.setattr(metarl.run.loop, "meta_iteration", real)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert (run / "eval.json").is_file() and len(read_metrics(run)) == 2
    assert main(["train", "--resume", str(run)]) == 2  # now finished: nothing left to resume


def test_a_signal_during_the_evaluation_stops_at_once_and_resume_evaluates(tmp_path, tiny_run_args, monkeypatch):
    real = metarl.run.hooks.run_evaluation

    def signal_then_evaluate(config, parts, run):
        os.kill(os.getpid(), signal.SIGINT)
        return real(config, parts, run)

    monkeypatch.setattr(metarl.run.hooks, "run_evaluation", signal_then_evaluate)
    assert main(["train", NAV, *tiny_run_args, "run.name=ev", "--quiet"]) == 128 + signal.SIGINT
    assert not (tmp_path / "ev" / "eval.json").exists()
    monkeypatch.setattr(metarl.run.hooks, "run_evaluation", real)
    assert main(["train", "--resume", str(tmp_path / "ev"), "--quiet"]) == 0
    assert (tmp_path / "ev" / "eval.json").is_file()


def test_sigkill_loses_at_most_the_time_since_the_last_timed_checkpoint(tmp_path, tiny_run_args):
    args = [*with_iterations(tiny_run_args, 500), "run.checkpoint_every=1000", "run.checkpoint_minutes=0.0001",
            "eval.at_end=false", "run.name=k", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "metarl.cli", "train", NAV, *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "k"
    try:
        wait_for(lambda: len(read_metrics(run)) >= 3 or proc.poll() is not None)
    finally:
        proc.kill()
        proc.wait()
    state = RunDir.open(run).load_checkpoint()
    assert state["iteration"] >= 2  # written by time, long before checkpoint_every
    done = len(read_metrics(run))
    assert main(["train", "--resume", str(run), f"run.iterations={done + 1}", "--quiet"]) == 0
    assert [m["iteration"] for m in read_metrics(run)] == list(range(done + 1))


def test_the_default_config_checkpoints_every_few_minutes():
    assert 0 < cfg.Config().run.checkpoint_minutes <= 10


def test_ctrl_c_to_the_process_group_with_async_workers_leaves_a_checkpoint(tmp_path, tiny_run_args):
    """A terminal's Ctrl-C reaches every process of the foreground group, AsyncVectorEnv's workers too."""
    args = [*with_iterations(tiny_run_args, 500), "maml.meta_batch_size=2", "sampler.episodes_per_task=2",
            "sampler.vectorization=async", "run.checkpoint_every=1000", "run.checkpoint_minutes=0",
            "eval.at_end=false", "run.name=a", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "metarl.cli", "train", NAV, *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    run = tmp_path / "a"
    try:
        wait_for(lambda: len(read_metrics(run)) >= 1 or proc.poll() is not None)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "resume with: metarl train --resume" in err
    done = RunDir.open(run).load_checkpoint()["iteration"]
    assert done == len(read_metrics(run)) >= 1


# --- the command line -----------------------------------------------------------------------------


def test_overrides_may_follow_flags(tmp_path, tiny_run_args):
    assert main(["train", NAV, "--quiet", *tiny_run_args, "eval.at_end=false", "run.name=late"]) == 0
    assert len(read_metrics(tmp_path / "late")) == 2
    assert main(["evaluate", str(tmp_path / "late"), "--checkpoint", str(tmp_path / "late" / CHECKPOINT),
                 "eval.num_steps=1", "eval.num_tasks=2"]) == 0
    assert json.loads((tmp_path / "late" / "eval.json").read_text())["steps"] == [0, 1]
    with pytest.raises(SystemExit):
        main(["train", NAV, "--quiet", "not-an-override"])


def test_malformed_yaml_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("maml:\n  inner_lr: 0.1\n  gamma: [0.9\nrun:\n  iterations: 2\n")
    assert main(["train", str(bad), f"run.output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:" in err and "not valid YAML" in err and "Traceback" not in err
    line = int(err.split(f"{bad}:")[1].split(":")[0])
    assert line in (3, 4)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1e999"])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(cfg.ConfigError, match="maml.inner_lr: must be a finite number"):
        cfg.load(None, [f"maml.inner_lr={value}"])


def test_non_finite_numbers_inside_env_kwargs_are_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("env:\n  id: metarl/Navigation2D-v0\n  kwargs:\n    goal_high: .inf\n")
    with pytest.raises(cfg.ConfigError, match=r"env.kwargs.goal_high: must be a finite number"):
        cfg.load(path)
    with pytest.raises(cfg.ConfigError, match=r"env.kwargs.bounds\[1\]: must be a finite number"):
        cfg.load(None, ["env.kwargs.bounds=[0.0, .nan]"])


def test_the_checkpoint_keeps_its_previous_version(tmp_path):
    run = RunDir(tmp_path)
    state = {"iteration": 1, "policy": {}, "config": {}}
    run.save_checkpoint(state)
    run.save_checkpoint({**state, "iteration": 2})
    assert run.load_checkpoint()["iteration"] == 2
    assert run.load_checkpoint(run.checkpoint(PREVIOUS_CHECKPOINT))["iteration"] == 1
    save_checkpoint(run.checkpoint(BEST_CHECKPOINT), state)
    assert "best.pt" in run.alternatives(run.checkpoint())


def test_a_failing_plot_at_a_signal_does_not_cost_the_checkpoint(tmp_path, tiny_run_args, monkeypatch):
    real = metarl.run.loop.meta_iteration

    def iteration_then_signal(config, parts):
        metrics = real(config, parts)
        os.kill(os.getpid(), signal.SIGTERM)
        return metrics

    def broken_plot(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(metarl.run.loop, "meta_iteration", iteration_then_signal)
    monkeypatch.setattr(metarl.run.hooks, "plot_training", broken_plot)
    args = [*with_iterations(tiny_run_args, 5), "run.checkpoint_every=100", "run.checkpoint_minutes=0", "run.name=p"]
    with pytest.raises(OSError, match="disk full"):
        main(["train", NAV, *args, "--quiet"])
    assert RunDir.open(tmp_path / "p").load_checkpoint()["iteration"] == 1


def test_plain_adam_keeps_no_inner_kl_weight_even_from_an_old_checkpoint(tiny_run_args):
    """Checkpoints written before the outer updates were objects stored ppo.inner_kl_coef for adam too."""
    config = cfg.load(NAV, [*tiny_run_args, "maml.outer=adam"])
    parts = build(config)
    saved = checkpoint_state(config, parts, 1, -5.0)
    old_style = {key: value for key, value in saved.items() if key != "outer"}
    old_style.update(optimizer=saved["outer"]["optimizer"], inner_kl_coef=5e-4)
    restore_state(parts, old_style)
    assert parts.outer.inner_kl_coef == 0.0 and "inner_kl_coef" not in parts.outer.state_dict()
    parts.close()


def test_a_kill_between_the_renames_of_a_rotation_leaves_last_readable(tmp_path, monkeypatch):
    """Rotation never moves last.pt away: at every moment it holds the old or the new checkpoint."""
    run = RunDir(tmp_path)
    state = {"iteration": 1, "policy": {}, "config": {}}
    run.save_checkpoint(state)
    real_replace, calls = os.replace, []

    def replace_then_die(src, dst):
        calls.append(Path(dst).name)
        if Path(dst).name == "last.pt":
            raise KeyboardInterrupt  # killed after previous.pt was made, before the new last.pt lands
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        run.save_checkpoint({**state, "iteration": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    assert calls == ["previous.pt", "last.pt"]
    assert run.load_checkpoint()["iteration"] == 1
    assert run.load_checkpoint(run.checkpoint(PREVIOUS_CHECKPOINT))["iteration"] == 1
