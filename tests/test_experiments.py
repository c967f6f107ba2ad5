"""Every experiment script and config runs end to end with a tiny budget."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config_run
from metarl import config as cfg
from metarl.envs import metaworld

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


# Meta-World's configs need their extra: tests/test_metaworld.py runs them where it is installed.
CONFIGS = [p for p in sorted(EXPERIMENTS.glob("*.yaml")) if cfg.load(p).env.id not in metaworld.IDS]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_trains_through_the_cli_with_a_tiny_budget(path, tmp_path):
    tiny_config_run(path, tmp_path)


def test_paper_comparison_script_runs(tmp_path, tiny_run_args):
    proc = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "navigation2d_vs_paper.py"), *tiny_run_args, "run.name=paper"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "paper" / "vs_paper.md").read_text()
    assert ("| metarl MAML (ours) |" in table
            and "| paper MAML | -40.41 ± 2.07 | -11.68 ± 1.12 | -3.33 ± 0.28 |" in table)


def test_step_size_probe_writes_beside_the_run_and_reproduces_its_evaluation(tmp_path, tiny_run_args):
    from metarl.cli import main

    assert main(["train", str(EXPERIMENTS / "navigation2d.yaml"), *tiny_run_args, "run.name=probe", "--quiet",
                 "eval.num_steps=1", "eval.num_tasks=4"]) == 0
    run_dir, probe = tmp_path / "probe", [sys.executable, str(EXPERIMENTS / "probe_step_sizes.py")]
    trained_with = cfg.load(run_dir / "config.yaml").maml.inner_lr
    proc = subprocess.run([*probe, str(run_dir), "0.01", str(trained_with)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 0")]
    assert len(rows) == 2 and "(trained with)" in rows[1]
    again = tmp_path / "step_sizes" / f"paper_{trained_with:g}.json"
    own, again = (json.loads(p.read_text()) for p in (run_dir / "eval.json", again))
    assert again["per_task_returns"] == own["per_task_returns"]  # the trained size, evaluated again: the same
    assert (tmp_path / "step_sizes" / "paper_0.01.png").is_file()
    rerun = subprocess.run([*probe, str(run_dir), "0.01", str(trained_with)], capture_output=True, text=True)
    assert rerun.stdout == proc.stdout and "evaluating" not in rerun.stderr  # read, not rerun
    bad = subprocess.run([*probe, str(run_dir), "0.01", "--set", "maml.inner_lr=1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--set only takes eval.* fields" in bad.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="would run the GPU checks (the whole suite) here")
def test_gpu_check_script_refuses_a_machine_without_cuda(tmp_path):
    proc = subprocess.run(["bash", str(EXPERIMENTS / "gpu_check.sh"), str(tmp_path / "out")], capture_output=True,
                          text=True, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
