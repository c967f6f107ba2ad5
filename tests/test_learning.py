"""Learning checks that take minutes: run with `make test-slow` (or `pytest -m slow`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_job_adapts(tmp_path):
    """The quickstart config meta-learns: one VPG step clearly improves the return on held-out tasks."""
    proc = subprocess.run(
        [sys.executable, "-m", "metarl.cli", "train", str(ROOT / "experiments" / "navigation2d_quick.yaml"),
         f"run.output_dir={tmp_path}", "run.name=quick", "--quiet"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "quick" / "eval.json").read_text())
    before, after = result["mean_return"][0], result["mean_return"][1]
    assert after - before > 3 * (result["stderr"][0] + result["stderr"][1]), result
