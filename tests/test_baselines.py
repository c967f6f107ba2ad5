"""The paper's baselines: PPO's actor copied into metarl's policy, the task-distribution wrapper, the script."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl import config as cfg
from metarl.baselines import (
    TaskDistribution,
    gap_closed,
    make_training_env,
    policy_from_ppo,
    train_ppo,
    train_ppo_until_plateau,
)
from metarl.cli import main

ROOT = Path(__file__).resolve().parents[1]


def cheetah_config(**overrides):
    items = [f"{k}={v}" for k, v in overrides.items()]
    return cfg.load(ROOT / "experiments" / "halfcheetah_vel.yaml",
                    ["policy.hidden_sizes=[8,8]", "sampler.horizon=10", *items])


def test_ppo_actor_copied_into_the_policy_gives_the_same_distribution(capsys):
    config = cheetah_config()
    model = train_ppo(config, timesteps=64, seed=0)
    assert "pretrained PPO: 100%" in capsys.readouterr().err  # the progress bar, filled at the end
    policy = policy_from_ppo(model, config)
    obs = torch.randn(5, 17)
    with torch.no_grad():
        theirs = model.policy.get_distribution(obs).distribution
        mean, std = policy.mean_std(obs)
    assert torch.allclose(mean, theirs.mean, atol=1e-6) and torch.allclose(std, theirs.stddev, atol=1e-6)


def test_task_distribution_draws_a_task_per_episode_reproducibly():
    tasks = []
    for _ in range(2):
        env = make_training_env(cheetah_config())
        assert isinstance(env, TaskDistribution)
        env.reset(seed=3)
        drawn = [env.unwrapped.get_task()]
        for _ in range(3):
            env.reset()
            drawn.append(env.unwrapped.get_task())
        tasks.append(drawn)
        env.close()
    assert tasks[0] == tasks[1] and len(set(tasks[0])) == 4


def test_navigation_actions_are_rescaled_for_ppo_and_it_has_no_oracle():
    config = cfg.load(ROOT / "experiments" / "navigation2d.yaml")
    env = make_training_env(config)
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    with pytest.raises(cfg.ConfigError, match="has no oracle option"):
        make_training_env(config, oracle=True)


def test_gap_closed():
    assert gap_closed(maml=-20.0, pretrained=-40.0, oracle=-10.0) == pytest.approx(2 / 3)


def test_baselines_script_writes_the_table(tmp_path):
    tiny = ["run.iterations=1", "maml.meta_batch_size=2", "sampler.episodes_per_task=2", "sampler.horizon=10",
            "policy.hidden_sizes=[8]", "trpo.cg_iters=2", "eval.num_tasks=2", "eval.episodes_per_task=2",
            "eval.num_steps=1", f"run.output_dir={tmp_path}", "run.name=hc"]
    assert main(["train", str(ROOT / "experiments" / "halfcheetah_vel.yaml"), *tiny, "--quiet"]) == 0
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "baselines.py"), str(tmp_path / "hc"),
                           "--timesteps", "64"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "hc" / "baselines.md").read_text()
    for row in ("| MAML |", "| random |", "| pretrained |", "| oracle |", "pretrained-to-oracle gap"):
        assert row in text
    assert (tmp_path / "hc" / "baselines.png").is_file() and (tmp_path / "hc" / "baselines.json").is_file()
    first = json.loads((tmp_path / "hc" / "baselines.json").read_text())
    assert first["oracle"]["timesteps"] == first["pretrained"]["timesteps"] == 64
    # --only recomputes the oracle (longer) and keeps the others
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "baselines.py"), str(tmp_path / "hc"),
                           "--only", "oracle", "--oracle-timesteps", "128"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    second = json.loads((tmp_path / "hc" / "baselines.json").read_text())
    assert second["oracle"]["timesteps"] == 128 and second["pretrained"] == first["pretrained"]
    assert second["random"] == first["random"]
    assert "pretrained-to-oracle gap" in (tmp_path / "hc" / "baselines.md").read_text()
    assert "warning" not in proc.stderr
    # eval.* overrides change the baselines' protocol; a MAML row evaluated otherwise is flagged.
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "baselines.py"), str(tmp_path / "hc"),
                           "eval.episodes_per_task=3", "--only", "random"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "warning" in proc.stderr and "episodes_per_task: 2 there, 3 here" in proc.stderr
    assert json.loads((tmp_path / "hc" / "baselines.json").read_text())["random"]["episodes_per_task"] == 3
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "baselines.py"), str(tmp_path / "hc"),
                           "policy.hidden_sizes=[4]", "--only", "random"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "only eval.* overrides" in proc.stderr
    # --out: baselines for a whole family (a sweep directory), the run only gives the config.
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "baselines.py"), str(tmp_path / "hc"),
                           "--only", "random", "--out", str(tmp_path / "family")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    family = json.loads((tmp_path / "family" / "baselines.json").read_text())
    assert set(family) == {"MAML", "random"} and (tmp_path / "family" / "baselines.md").is_file()
    # Each baseline is written as soon as it is done: one that fails later (here a bad --chunk)
    # does not take the finished ones with it.
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "baselines.py"), str(tmp_path / "hc"),
                           "--only", "random", "oracle", "--seed", "5", "--oracle-plateau", "--chunk", "0",
                           "--out", str(tmp_path / "crash")], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "plateau: need" in proc.stderr
    assert json.loads((tmp_path / "crash" / "baselines.json").read_text())["random"]["seed"] == 5


def test_oracle_trains_until_its_return_stops_improving_and_resumes(tmp_path, monkeypatch, capsys):
    import metarl.baselines as baselines

    config = cheetah_config(**{"eval.num_tasks": 2, "eval.episodes_per_task": 1})
    scores = iter([1.0, 3.0, 3.05, 2.0, 9.0])  # evaluated returns, s.e. 0.1: the 3rd and 4th do not beat 3.0 + 0.1
    monkeypatch.setattr(baselines, "evaluate_policy",
                        lambda config, policy, oracle: {"mean_return": [next(scores)], "stderr": [0.1]})
    # Chunks of one PPO rollout (2048 steps, its smallest learn() unit)
    model, training = train_ppo_until_plateau(config, chunk=2048, patience=2, max_timesteps=20480,
                                              state_dir=tmp_path, oracle=True, say=lambda text: None)
    assert [p["mean_return"] for p in training["curve"]] == [1.0, 3.0, 3.05, 2.0]
    assert training["stopped"] == "plateau" and training["timesteps"] == 3 * 2048
    assert training["trained_timesteps"] == 4 * 2048
    assert (tmp_path / "best.zip").is_file() and (tmp_path / "latest.zip").is_file()
    # Called again: it has stopped already, and returns the best model without training.
    _, again = train_ppo_until_plateau(config, chunk=2048, patience=2, max_timesteps=20480, state_dir=tmp_path,
                                       oracle=True, say=lambda text: None)
    assert again["curve"] == training["curve"]
    # A longer patience continues from the saved model and curve, here up to the most steps allowed.
    _, longer = train_ppo_until_plateau(config, chunk=2048, patience=3, max_timesteps=5 * 2048, state_dir=tmp_path,
                                        oracle=True, say=lambda text: None)
    assert [p["timesteps"] for p in longer["curve"]] == [2048 * k for k in range(1, 6)]
    assert longer["timesteps"] == 5 * 2048 and longer["stopped"] == "max_timesteps"
    # Each chunk's progress bar counts from the steps already done to the chunk's end.
    assert "oracle PPO, chunk 5: 100%" in capsys.readouterr().err.replace("\r", "\n")
    with pytest.raises(ValueError, match="plateau: need"):
        train_ppo_until_plateau(config, chunk=0, patience=1, max_timesteps=10, state_dir=tmp_path)
