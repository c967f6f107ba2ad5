"""Resumable and interruptible runs: exact resumption, signals, best checkpoint, crash-safe saves."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import metarl.checkpoint as checkpoint
from conftest import without_timings
from metarl.checkpoint import load_checkpoint, save_checkpoint
from metarl.cli import main
from metarl.run.evaluation import evaluate_run
from metarl.run.rundir import BEST_CHECKPOINT, CHECKPOINT, read_metrics

NAV = str(Path(__file__).resolve().parents[1] / "experiments" / "navigation2d.yaml")
def with_iterations(args, n):
    return [a for a in args if not a.startswith("run.iterations=")] + [f"run.iterations={n}"]


def test_stopped_and_resumed_run_equals_an_uninterrupted_one(tmp_path, tiny_run_args):
    args = [*tiny_run_args, "eval.at_end=false"]
    assert main(["train", NAV, *with_iterations(args, 4), "run.name=whole", "--quiet"]) == 0
    assert main(["train", NAV, *with_iterations(args, 2), "run.name=parts", "--quiet"]) == 0
    assert load_checkpoint(tmp_path / "parts" / CHECKPOINT)["iteration"] == 2
    assert main(["train", "--resume", str(tmp_path / "parts"), "run.iterations=4", "--quiet"]) == 0
    whole, parts = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "parts")
    assert [m["iteration"] for m in parts] == [0, 1, 2, 3]
    assert without_timings(parts) == without_timings(whole)
    final = [load_checkpoint(tmp_path / name / CHECKPOINT)["policy"] for name in ("whole", "parts")]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])


def test_a_resume_may_change_how_episodes_are_stepped_and_trains_on_exactly(tmp_path, tiny_run_args):
    """A run started on one sampler path and resumed on another (here batched, then gymnasium's sync
    vector env) is the uninterrupted run: every path samples the same episodes."""
    args = [*tiny_run_args, "eval.at_end=false", "sampler.vectorization=batched"]
    assert main(["train", NAV, *with_iterations(args, 4), "run.name=whole", "--quiet"]) == 0
    assert main(["train", NAV, *with_iterations(args, 2), "run.name=parts", "--quiet"]) == 0
    assert main(["train", "--resume", str(tmp_path / "parts"), "run.iterations=4", "sampler.vectorization=sync",
                 "--quiet"]) == 0
    assert "vectorization: sync" in (tmp_path / "parts" / "config.yaml").read_text()
    assert without_timings(read_metrics(tmp_path / "parts")) == without_timings(read_metrics(tmp_path / "whole"))


def test_resume_drops_metrics_written_after_the_checkpoint(tmp_path, tiny_run_args):
    args = [*with_iterations(tiny_run_args, 3), "run.checkpoint_every=2", "eval.at_end=false"]
    assert main(["train", NAV, *args, "run.name=r", "--quiet"]) == 0
    run = tmp_path / "r"
    state = load_checkpoint(run / CHECKPOINT)
    save_checkpoint(run / CHECKPOINT, {**state, "iteration": 2})  # as if stopped after the checkpoint at 2
    assert main(["train", "--resume", str(run), "run.iterations=4", "--quiet"]) == 0
    assert [m["iteration"] for m in read_metrics(run)] == [0, 1, 2, 3]


def test_resume_rejects_changes_to_the_run_and_finished_runs(tmp_path, tiny_run_args, capsys):
    assert main(["train", NAV, *tiny_run_args, "eval.at_end=false", "run.name=r", "--quiet"]) == 0
    run = str(tmp_path / "r")
    assert main(["train", "--resume", run, "maml.inner_lr=0.5"]) == 2
    assert "only accepts overrides of run.iterations" in capsys.readouterr().err
    assert main(["train", "--resume", run]) == 2
    assert "already has 2 of 2 meta-iterations" in capsys.readouterr().err
    assert main(["train", NAV, "--resume", run]) == 2
    assert main(["train"]) == 2
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2


@pytest.mark.skipif(sys.platform == "win32", reason="the lock is POSIX flock")
def test_a_run_being_trained_by_another_process_is_not_resumed(tmp_path, tiny_run_args, capsys):
    args = [*with_iterations(tiny_run_args, 1), "eval.at_end=false"]
    assert main(["train", NAV, *args, "run.name=r", "--quiet"]) == 0
    run = tmp_path / "r"
    before = (run / "metrics.jsonl").read_bytes()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True)\n"
         "time.sleep(60)", str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert main(["train", "--resume", str(run), "run.iterations=2", "--quiet"]) == 2
        assert "is being trained by another process" in capsys.readouterr().err
        assert (run / "metrics.jsonl").read_bytes() == before
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", "--resume", str(run), "run.iterations=2", "--quiet"]) == 0  # its end released it
    assert [m["iteration"] for m in read_metrics(run)] == [0, 1]


@pytest.mark.skipif(sys.platform == "win32", reason="the lock is POSIX flock")
def test_a_forked_worker_neither_keeps_nor_drops_its_trainers_lock(tmp_path):
    import fcntl
    import multiprocessing

    from metarl.run.rundir import RunDir

    def try_lock():
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    context = multiprocessing.get_context("fork")
    started = context.Event()

    def work():
        started.set()
        time.sleep(30)

    worker = context.Process(target=work)
    with RunDir(tmp_path).training():
        worker.start()  # a sampler's worker process, forked while the run is held
        assert started.wait(10)
        assert not try_lock()  # its closing its copy did not release the trainer's lock
    try:
        assert try_lock()  # the trainer is done: the still running worker does not hold the run
    finally:
        worker.kill()
        worker.join()


def test_resume_and_evaluate_warn_when_the_checkpoint_had_other_package_versions(tmp_path, tiny_run_args, capsys,
                                                                                  monkeypatch):
    assert main(["train", NAV, *tiny_run_args, "eval.at_end=false", "run.name=r", "--quiet"]) == 0
    run = tmp_path / "r"
    assert main(["train", "--resume", str(run), "run.iterations=3", "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err  # same versions: nothing to say
    state = load_checkpoint(run / CHECKPOINT)
    here = checkpoint.versions()
    monkeypatch.setattr(checkpoint, "versions", lambda: {**here, "mujoco": "0.0.1"})
    save_checkpoint(run / CHECKPOINT, state)  # as if written under another mujoco
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "run.iterations=4", "--quiet"]) == 0
    assert f"other package versions (mujoco 0.0.1 there, {here['mujoco']} here)" in capsys.readouterr().err
    state = load_checkpoint(run / CHECKPOINT)
    monkeypatch.setattr(checkpoint, "versions", lambda: {**here, "torch": "1.0"})
    save_checkpoint(run / CHECKPOINT, state)
    monkeypatch.undo()
    evaluate_run(run, ["eval.num_tasks=2", "eval.episodes_per_task=2", "eval.num_steps=1"])
    assert f"(torch 1.0 there, {here['torch']} here)" in capsys.readouterr().err


def test_best_checkpoint_holds_the_best_post_adaptation_return(tmp_path, tiny_run_args):
    assert main(["train", NAV, *with_iterations(tiny_run_args, 4), "eval.at_end=false", "run.name=b", "--quiet"]) == 0
    metrics = read_metrics(tmp_path / "b")
    best = max(metrics, key=lambda m: m["post_return"])
    state = load_checkpoint(tmp_path / "b" / BEST_CHECKPOINT)
    assert state["best_post_return"] == best["post_return"]
    assert state["iteration"] == best["iteration"] + 1


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"iteration": 1, "policy": {"w": torch.ones(3)}, "config": {}})

    def crashing_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"iteration": 2, "policy": {"w": torch.zeros(3)}, "config": {}})
    assert load_checkpoint(path)["iteration"] == 1
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_writes_a_checkpoint_and_says_how_to_resume(tmp_path, tiny_run_args, signum):
    args = [*with_iterations(tiny_run_args, 500), "run.checkpoint_every=1000", "eval.at_end=false", "run.name=s"]
    proc = subprocess.Popen([sys.executable, "-m", "metarl.cli", "train", NAV, *args, "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    metrics = tmp_path / "s" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.kill(proc.pid, signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert f"resume with: metarl train --resume {tmp_path / 's'}" in err
    done = len(read_metrics(tmp_path / "s"))
    assert 2 <= done < 500
    assert load_checkpoint(tmp_path / "s" / CHECKPOINT)["iteration"] == done
    assert (tmp_path / "s" / "training.png").is_file()
    assert main(["train", "--resume", str(tmp_path / "s"), f"run.iterations={done + 1}", "--quiet"]) == 0
    assert len(read_metrics(tmp_path / "s")) == done + 1
    # the signalled and resumed run is the uninterrupted one
    whole = [*with_iterations(tiny_run_args, done + 1), "eval.at_end=false", "run.name=whole"]
    assert main(["train", NAV, *whole, "--quiet"]) == 0
    assert without_timings(read_metrics(tmp_path / "s")) == without_timings(read_metrics(tmp_path / "whole"))


@pytest.mark.parametrize("outer", ["promp", "adam"])
def test_gradient_meta_updates_train_and_resume_exactly_with_their_optimizer_state(tmp_path, tiny_run_args, outer):
    args = [*tiny_run_args, "eval.at_end=false", f"maml.outer={outer}", "maml.inner_loss=lvc",
            "ppo.inner_kl_target=1e-6"]
    assert main(["train", NAV, *with_iterations(args, 4), "run.name=whole", "--quiet"]) == 0
    assert main(["train", NAV, *with_iterations(args, 2), "run.name=parts", "--quiet"]) == 0
    assert load_checkpoint(tmp_path / "parts" / CHECKPOINT)["outer"]["optimizer"]["state"]
    assert main(["train", "--resume", str(tmp_path / "parts"), "run.iterations=4", "--quiet"]) == 0
    whole, parts = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "parts")
    assert without_timings(parts) == without_timings(whole)
    assert "inner_kl" in whole[0] and whole[0]["loss_after"] != whole[0]["loss_before"]
    if outer == "promp":  # the adaptive weight moved (its state resumes with the run, as the equality shows)
        assert len({m["inner_kl_coef"] for m in whole}) > 1


@pytest.mark.parametrize("outer,inner_loss", [("trpo", "vpg"), ("promp", "dice")])
def test_meta_sgd_learns_its_step_sizes_resumes_exactly_and_evaluates_with_them(
    tmp_path, tiny_run_args, outer, inner_loss
):
    args = [*tiny_run_args, "eval.at_end=false", "maml.meta_sgd=true", f"maml.outer={outer}",
            f"maml.inner_loss={inner_loss}"]
    assert main(["train", NAV, *with_iterations(args, 4), "run.name=whole", "--quiet"]) == 0
    assert main(["train", NAV, *with_iterations(args, 2), "run.name=parts", "--quiet"]) == 0
    assert main(["train", "--resume", str(tmp_path / "parts"), "run.iterations=4", "--quiet"]) == 0
    whole, parts = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "parts")
    assert without_timings(parts) == without_timings(whole)
    assert len({m["inner_lr_mean"] for m in whole}) == 4  # the step sizes move every iteration
    alphas = torch.cat([a.flatten() for a in load_checkpoint(tmp_path / "whole" / CHECKPOINT)["step_sizes"].values()])
    assert not torch.allclose(alphas, torch.full_like(alphas, 0.1))  # initialised at maml.inner_lr
    result = evaluate_run(tmp_path / "whole")
    assert result["step_sizes"] == ["learned"] * 2
