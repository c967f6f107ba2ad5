"""``metarl sweep``: the grid, the points' names and directories, skipping, resuming, failures."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from metarl import config as cfg
from metarl.cli import main
from metarl.config import ConfigError
from metarl.run.rundir import read_metrics
from metarl.sweep import Sweep, expand, parse_grid, resume_overrides, split_values

QUICK = str(Path(__file__).resolve().parents[1] / "experiments" / "navigation2d_quick.yaml")


def test_commas_split_values_outside_brackets_and_quotes():
    assert split_values("0,1, 2") == ["0", "1", "2"]
    assert split_values("[0.5,0.25]") == ["[0.5,0.25]"]
    assert split_values("[0.5,0.25],[0.1]") == ["[0.5,0.25]", "[0.1]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]


def test_grid_has_fixed_overrides_and_axes_in_order():
    fixed, axes = parse_grid(["maml.outer=trpo,promp", "run.iterations=5", "eval.step_sizes=[0.5,0.25]",
                              "run.seed=0,1"])
    assert fixed == ["run.iterations=5", "eval.step_sizes=[0.5,0.25]"]
    assert axes == {"maml.outer": ["trpo", "promp"], "run.seed": ["0", "1"]}
    points = expand(axes)
    assert [p.name for p in points] == ["outer-trpo__seed-0", "outer-trpo__seed-1", "outer-promp__seed-0",
                                        "outer-promp__seed-1"]
    assert points[1].overrides == ("maml.outer=trpo", "run.seed=1")
    assert [p.name for p in expand({})] == ["run"]
    # Keys sharing their last part are named in full.
    both = expand({"sampler.episodes_per_task": ["10", "20"], "eval.episodes_per_task": ["5", "6"]})
    assert both[0].name == "sampler-episodes_per_task-10__eval-episodes_per_task-5"


@pytest.mark.parametrize("arguments,message", [
    (["run.seed"], "key=value"),
    (["run.name=a,b"], "run.name: the sweep sets it"),
    (["run.output_dir=x"], "run.output_dir: the sweep sets it"),
    (["run.seed=0,1", "run.seed=2"], "given twice"),
    (["run.seed=0,,1"], "empty value"),
    (["run.seed=0,1,0"], "repeats"),
])
def test_bad_grids_are_refused(arguments, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid(arguments)


def _summary(out):
    return {p["name"]: p for p in json.loads((out / "summary.json").read_text())["points"]}


def _sweep(out, *arguments):
    return main(["sweep", QUICK, *arguments, "--out", str(out), "--quiet", "--jobs", "2"])


def test_sweep_runs_skips_extends_and_reports_failures(tmp_path, tiny_run_args, capsys):
    out = tmp_path / "sweep"
    args = [a for a in tiny_run_args if not a.startswith("run.output_dir=")]
    assert _sweep(out, *args, "run.seed=0,1") == 0
    summary = _summary(out)
    assert {name: p["status"] for name, p in summary.items()} == {"seed-0": "finished", "seed-1": "finished"}
    for seed in (0, 1):
        run = out / f"seed-{seed}"
        assert (run / "eval.json").is_file() and len(read_metrics(run)) == 2
        assert f"seed: {seed}" in (run / "config.yaml").read_text()
        assert "group: sweep" in (run / "config.yaml").read_text()  # one wandb group per sweep
        assert (out / "logs" / f"seed-{seed}.log").is_file()
    recorded = json.loads((out / "sweep.json").read_text())
    assert recorded["axes"] == {"run.seed": ["0", "1"]} and "run.iterations=2" in recorded["fixed"]
    first = (out / "seed-0" / "metrics.jsonl").read_text()
    # The sweep's report goes into the sweep directory.
    assert main(["report", str(out), "--reps", "200"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [g["seeds"] for g in report["groups"]] == [[0, 1]] and (out / "report.md").is_file()

    # The same command again: nothing to run.
    assert _sweep(out, *args, "run.seed=0,1") == 0
    assert {p["status"] for p in _summary(out).values()} == {"skipped"}
    assert (out / "seed-0" / "metrics.jsonl").read_text() == first

    # More iterations resume both runs; a new seed starts; a run that died before its first
    # checkpoint (a directory with only its config) is moved aside and started again.
    (out / "seed-2").mkdir()
    (out / "seed-2" / "config.yaml").write_text((out / "seed-0" / "config.yaml").read_text()
                                                .replace("seed: 0", "seed: 2"))
    longer = [a if a != "run.iterations=2" else "run.iterations=3" for a in args]
    assert _sweep(out, *longer, "run.seed=0,1,2") == 0
    assert {name: p["status"] for name, p in _summary(out).items()} == {
        "seed-0": "finished", "seed-1": "finished", "seed-2": "finished"}
    assert [len(read_metrics(out / f"seed-{s}")) for s in (0, 1, 2)] == [3, 3, 3]
    assert (out / "seed-0" / "metrics.jsonl").read_text().startswith(first)
    assert len(list((out / "abandoned").iterdir())) == 1

    # Another setting is another sweep.
    capsys.readouterr()
    assert _sweep(out, *longer, "maml.inner_lr=0.3", "run.seed=0,1,2") == 2
    assert "maml.inner_lr" in capsys.readouterr().err


def test_a_failed_point_does_not_stop_the_others(tmp_path, tiny_run_args):
    out = tmp_path / "sweep"
    args = [a for a in tiny_run_args if not a.startswith("run.output_dir=")]
    assert _sweep(out, *args, "env.id=metarl/Navigation2D-v0,nosuch/Env-v0") == 1
    summary = _summary(out)
    assert summary["id-metarl-Navigation2D-v0"]["status"] == "finished"
    failed = summary["id-nosuch-Env-v0"]
    assert failed["status"] == "failed" and failed["exit_code"] == 2 and "nosuch" in failed["error"]


def test_a_directory_holding_another_run_is_not_taken_for_a_point(tmp_path, tiny_run_args):
    out = tmp_path / "sweep"
    args = [a for a in tiny_run_args if not a.startswith("run.output_dir=")]
    assert main(["train", QUICK, *args, f"run.output_dir={out}", "run.name=seed-0", "maml.inner_lr=0.2",
                 "--quiet"]) == 0
    assert _sweep(out, *args, "run.seed=0,1") == 1
    summary = _summary(out)
    assert "holds another run (maml.inner_lr" in summary["seed-0"]["error"]
    assert summary["seed-1"]["status"] == "finished"
    with pytest.raises(SystemExit):
        main(["sweep", QUICK, "--out", str(out), "--jobs", "x"])
    assert main(["sweep", QUICK, "--out", str(tmp_path / "other"), "--jobs", "0"]) == 2


def with_cwd_on_path():
    """The environment of a ``python -m metarl.cli`` child: this checkout first on its path, before the
    PYTHONPATH it was given (where metarl's dependencies may be)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}


def test_ctrl_c_stops_every_run_at_a_checkpoint_and_a_rerun_continues(tmp_path, tiny_run_args):
    out = tmp_path / "sweep"
    args = [a for a in tiny_run_args if not a.startswith(("run.output_dir=", "run.iterations="))]
    command = [sys.executable, "-m", "metarl.cli", "sweep", QUICK, *args, "run.seed=0,1", "--jobs", "2",
               "--out", str(out), "--quiet"]
    sweep = subprocess.Popen([*command, "run.iterations=100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=with_cwd_on_path())
    deadline = time.monotonic() + 120
    while not all((out / f"seed-{s}" / "checkpoints" / "last.pt").is_file() for s in (0, 1)):
        assert time.monotonic() < deadline and sweep.poll() is None
        time.sleep(0.5)
    sweep.send_signal(signal.SIGINT)
    stdout, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, stderr
    assert "rerun the same command" in stderr
    assert {p["status"] for p in _summary(out).values()} == {"interrupted"}
    done = [len(read_metrics(out / f"seed-{s}")) for s in (0, 1)]
    # The rerun (with an iteration count within reach: a resume may change it) continues both runs.
    target = max(done) + 2
    assert main([*command[3:], f"run.iterations={target}"]) == 0
    assert {p["status"] for p in _summary(out).values()} == {"finished"}
    for s in (0, 1):
        metrics = read_metrics(out / f"seed-{s}")
        assert [m["iteration"] for m in metrics] == list(range(target))


def quick_copy(tmp_path):
    """A copy of the quick config for a test to edit."""
    config = tmp_path / "quick.yaml"
    config.write_text(Path(QUICK).read_text())
    return config


def test_an_edited_config_file_is_another_sweep_but_a_new_comment_is_not(tmp_path):
    config, out = quick_copy(tmp_path), tmp_path / "sweep"
    Sweep.open(out, config, ["run.iterations=5"], {"run.seed": ["0", "1"]}).save([])
    config.write_text(config.read_text() + "\n# a note\n")
    more = Sweep.open(out, config, ["run.iterations=7", "run.seed=2"], {})  # one more seed, longer runs
    assert [p.name for p in more.points] == ["seed-0", "seed-1", "seed-2"]
    assert more.fixed == ["run.iterations=7"]
    config.write_text(config.read_text().replace("inner_lr: 0.1", "inner_lr: 0.2"))
    with pytest.raises(ConfigError, match="maml.inner_lr in"):
        Sweep.open(out, config, ["run.iterations=7"], {"run.seed": ["0"]})


def test_a_field_the_record_lacks_is_compared_with_its_default(tmp_path):
    # A sweep recorded before sampler.action_range existed ran with its default (1): the config file
    # may leave it out, but setting it to 10 is another sweep.
    config, out = quick_copy(tmp_path), tmp_path / "sweep"
    Sweep.open(out, config, ["run.iterations=5"], {"run.seed": ["0"]}).save([])
    record = json.loads((out / "sweep.json").read_text())
    del record["base_config"]["sampler.action_range"]
    (out / "sweep.json").write_text(json.dumps(record))
    Sweep.open(out, config, ["run.iterations=5"], {"run.seed": ["0"]})
    config.write_text(config.read_text().replace("sampler:\n", "sampler:\n  action_range: 10\n"))
    with pytest.raises(ConfigError, match="sampler.action_range in"):
        Sweep.open(out, config, ["run.iterations=5"], {"run.seed": ["0"]})


def test_a_resumed_point_gets_the_config_files_edited_resumable_settings(tmp_path):
    config, out = quick_copy(tmp_path), tmp_path / "sweep"
    sweep = Sweep.open(out, config, ["run.iterations=5"], {"run.seed": ["0"]})
    sweep.save([])
    (point,) = sweep.points
    run_dir = sweep.run_dir(point)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(sweep.config(point))))
    unchanged = resume_overrides(sweep, point, run_dir)
    assert unchanged == ["run.iterations=5", "tracking.group=sweep"]  # run.seed and the run's place stay
    data = yaml.safe_load(config.read_text())
    data["eval"].update(train_tasks=4, step_sizes=[0.2, 0.1], tasks="paper")
    config.write_text(yaml.safe_dump(data))
    edited = Sweep.open(out, config, ["run.iterations=5"], {"run.seed": ["0"]})
    overrides = resume_overrides(edited, point, run_dir)
    assert overrides[:2] == unchanged
    assert sorted(overrides[2:]) == ['eval.step_sizes=[0.2, 0.1]', 'eval.tasks="paper"', "eval.train_tasks=4"]
    resumed = cfg.load(run_dir / "config.yaml", overrides[2:]).eval  # as metarl train --resume reads them
    assert (resumed.train_tasks, resumed.step_sizes, resumed.tasks) == (4, [0.2, 0.1], "paper")


def test_a_run_left_going_by_a_killed_sweep_is_never_started_twice(tmp_path, tiny_run_args):
    out = tmp_path / "sweep"
    args = [a for a in tiny_run_args if not a.startswith(("run.output_dir=", "run.iterations="))]
    command = ["sweep", QUICK, *args, "run.iterations=100000", "run.seed=0", "--out", str(out), "--quiet"]
    sweep = subprocess.Popen([sys.executable, "-m", "metarl.cli", *command], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=with_cwd_on_path())
    pid_file = out / "logs" / "run.pid"
    deadline = time.monotonic() + 120
    while not (out / "run" / "metrics.jsonl").is_file():
        assert time.monotonic() < deadline and sweep.poll() is None
        time.sleep(0.5)
    sweep.kill()  # SIGKILL: the sweep cannot pass it on, its run goes on
    sweep.wait()
    orphan = int(pid_file.read_text())
    try:
        assert main(command) == 1
        point = _summary(out)["run"]
        assert point["status"] == "busy" and f"process {orphan}" in point["error"]
    finally:
        os.kill(orphan, signal.SIGKILL)
