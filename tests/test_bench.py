"""`metarl bench` on a tiny batch: every figure present, positive, and consistent with its ratios."""

import argparse
import json
from pathlib import Path

import pytest

from metarl.cli import main

KEYS = (
    "env", "limit_steps_per_s", "sampler_steps_per_s", "sync_vector_steps_per_s", "async_vector_steps_per_s",
    "meta_update_s", "meta_update_one_group_s", "meta_update_per_task_s", "iteration_s", "peak_rss_mb",
)
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_bench_json_reports_every_figure(capsys):
    args = ["bench", "--envs", "HalfCheetahVel", "Navigation2D", "--tasks", "2", "--episodes", "2",
            "--horizon", "5", "--repeats", "1", "--async-envs", "2", "--json"]
    assert main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["env"] for r in rows] == ["HalfCheetahVel", "Navigation2D"]
    cheetah, navigation = rows
    for row in rows:
        assert set(KEYS) <= set(row)
        for key in KEYS[2:]:
            assert row[key] > 0, key
        assert row["sampler_vs_sync"] == pytest.approx(row["sampler_steps_per_s"] / row["sync_vector_steps_per_s"])
    assert cheetah["limit_steps_per_s"] > 0 and cheetah["config"] == "2 tasks x 2 episodes x 5 steps"
    assert navigation["limit_steps_per_s"] is None and navigation["sampler_vs_limit"] is None


def test_bench_table_and_bad_options(capsys):
    assert main(["bench", "--envs", "Navigation2D", "--tasks", "2", "--episodes", "2", "--horizon", "5",
                 "--repeats", "1", "--async-envs", "0", "--no-update"]) == 0
    out = capsys.readouterr().out
    assert "Navigation2D" in out and "steps/s" in out
    assert main(["bench", "--envs", "Navigation2D", "--horizon", "0"]) == 2
    assert "--horizon must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--envs", "Pong"])


def test_bench_measures_any_config_file_as_it_trains(capsys):
    """--config: the file's own batch, outer update and budget; --eval times its evaluation."""
    configs = [str(EXPERIMENTS / "navigation2d_authors.yaml"), str(EXPERIMENTS / "halfcheetah_vel_promp.yaml")]
    args = ["bench", "--config", *configs, "--tasks", "2", "--episodes", "2", "--horizon", "5", "--repeats", "1",
            "--async-envs", "0", "--eval", "--json"]
    assert main(args) == 0
    authors, promp = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert authors["env"] == "navigation2d_authors"
    assert authors["config"] == "2 tasks x 2 episodes x 5 steps (step budget)"
    assert authors["meta_update_one_group_s"] > 0 and authors["eval_s"] > 0
    assert promp["env_id"] == "metarl/HalfCheetahVel-v0" and promp["meta_update_s"] > 0
    assert promp["meta_update_one_group_s"] is None  # a TRPO-only figure
    for row in (authors, promp):
        assert row["peak_rss_mb"] > 50 and row["update_peak_mb"] is not None
        assert row["update_gpu_mb"] is None  # measured on cuda only
    assert main(["bench", "--config", str(EXPERIMENTS / "missing.yaml")]) == 2


def test_bench_sets_config_fields_and_starts_from_a_checkpoint(tmp_path, capsys):
    authors = str(EXPERIMENTS / "navigation2d_authors.yaml")
    tiny = ["maml.meta_batch_size=2", "sampler.episodes_per_task=2", "sampler.horizon=5", "eval.at_end=false"]
    args = ["train", authors, *tiny, "run.iterations=1", f"run.output_dir={tmp_path}", "run.name=r", "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    args = ["bench", "--config", authors, "--tasks", "2", "--episodes", "2", "--horizon", "5", "--repeats", "1",
            "--async-envs", "0", "--set", "maml.pack_episodes=false", "--checkpoint",
            str(tmp_path / "r" / "checkpoints" / "last.pt"), "--json"]
    assert main(args) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["packed"] is False and row["checkpoint"].endswith("last.pt") and row["meta_update_s"] > 0
    assert main(["bench", "--config", authors, "--set", "maml.pack_episodes=maybe"]) == 2


def test_an_error_in_the_measuring_process_says_where_it_was_raised():
    from metarl.bench import MeasuringProcessError, bench_env

    args = argparse.Namespace(tasks=None, episodes=None, horizon=None, set=None, threads=0)  # torch refuses 0
    with pytest.raises(RuntimeError) as raised:
        bench_env("Navigation2D", args)
    cause = raised.value.__cause__
    assert isinstance(cause, MeasuringProcessError)
    assert "in the process measuring Navigation2D" in str(cause) and "in bench_row" in str(cause)
