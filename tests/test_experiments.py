"""Every experiment script and config runs end to end with a tiny budget."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metarl import config as cfg
from metarl.cli import main
from metarl.run.factory import build
from metarl.run.rundir import RunDir, read_metrics

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


CONFIGS = sorted(EXPERIMENTS.glob("*.yaml"))
TINY = ["run.iterations=1", "maml.meta_batch_size=2", "sampler.episodes_per_task=2", "sampler.horizon=10",
        "policy.hidden_sizes=[8]", "trpo.cg_iters=2", "eval.num_tasks=2", "eval.episodes_per_task=2",
        "eval.num_steps=1"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_trains_through_the_cli_with_a_tiny_budget(path, tmp_path):
    assert main(["train", str(path), *TINY, f"run.output_dir={tmp_path}", "run.name=tiny", "--quiet"]) == 0
    run = RunDir.open(tmp_path / "tiny")
    metrics = read_metrics(run.path)
    assert len(metrics) == 1 and metrics[0]["env_steps"] > 0
    assert all(math.isfinite(metrics[0][k]) for k in ("pre_return", "post_return", "loss_before", "loss_after"))
    config = run.load_config()
    assert cfg.load(path).env.id == config.env.id
    # the meta-update moved the initialisation: the trained policy is not the one the run started from
    start = build(config)
    trained = run.load_checkpoint()["policy"]
    assert any(not torch.equal(p, trained[name]) for name, p in start.policy.state_dict().items())
    start.close()


def test_paper_comparison_script_runs(tmp_path, tiny_run_args):
    proc = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "navigation2d_vs_paper.py"), *tiny_run_args, "run.name=paper"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "paper" / "vs_paper.md").read_text()
    assert ("| metarl MAML (ours) |" in table
            and "| paper MAML | -40.41 ± 2.07 | -11.68 ± 1.12 | -3.33 ± 0.28 |" in table)
