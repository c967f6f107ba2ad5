"""Learning checks. The default suite runs a reduced quickstart (about 15 s), which fails if MAML stops
adapting or stops meta-learning; the full quickstart takes minutes and runs with `make test-slow`."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from metarl.cli import main
from metarl.run.rundir import read_metrics

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "experiments" / "navigation2d_quick.yaml")


def test_reduced_quickstart_meta_learns_to_adapt(tmp_path):
    """15 meta-iterations of 10 tasks x 10 episodes. Three things must hold, each by a wide margin on
    this seed: one inner step helps on held-out tasks (per task, not only on average), the
    post-adaptation return improved over training, and adaptation gains more at the end than
    at the start."""
    args = ["run.iterations=15", "maml.meta_batch_size=10", "sampler.episodes_per_task=10", "eval.num_tasks=10",
            "eval.episodes_per_task=10", "eval.num_steps=1", f"run.output_dir={tmp_path}", "run.name=learn"]
    assert main(["train", QUICK, *args, "--quiet"]) == 0
    result = json.loads((tmp_path / "learn" / "eval.json").read_text())
    before, after = result["per_task_returns"]
    gains = [b - a for a, b in zip(before, after, strict=True)]
    se = statistics.stdev(gains) / len(gains) ** 0.5
    assert statistics.mean(gains) > max(5.0, 2 * se), gains
    metrics = read_metrics(tmp_path / "learn")
    first, last = metrics[:3], metrics[-3:]
    mean = lambda rows, key: statistics.mean(m[key] for m in rows)  # noqa: E731
    assert mean(last, "post_return") > mean(first, "post_return") + 20
    assert (mean(last, "post_return") - mean(last, "pre_return")
            > mean(first, "post_return") - mean(first, "pre_return") + 10)


@pytest.mark.slow
def test_quickstart_job_adapts(tmp_path):
    """The quickstart config meta-learns: one VPG step clearly improves the return on held-out tasks."""
    proc = subprocess.run(
        [sys.executable, "-m", "metarl.cli", "train", QUICK, f"run.output_dir={tmp_path}", "run.name=quick", "--quiet"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "quick" / "eval.json").read_text())
    before, after = result["mean_return"][0], result["mean_return"][1]
    assert after - before > 3 * (result["stderr"][0] + result["stderr"][1]), result
