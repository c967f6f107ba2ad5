"""Every experiment script and config runs end to end with a tiny budget."""

import subprocess
import sys
from pathlib import Path

import pytest

from metarl import config as cfg

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_loads(path):
    cfg.load(path)


def test_paper_comparison_script_runs(tmp_path, tiny_run_args):
    proc = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "navigation2d_vs_paper.py"), *tiny_run_args, "run.name=paper"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "paper" / "vs_paper.md").read_text()
    assert "| metarl MAML (ours) |" in table and "| paper MAML | -40.41 ± 2.07 | -11.68 ± 1.12 | -3.33 ± 0.29 |" in table
