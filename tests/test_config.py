"""Typed config: YAML loading, dotted overrides and clear errors."""

from pathlib import Path

import pytest

from metarl import config as cfg

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_defaults_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("maml:\n  inner_lr: 0.5\nenv:\n  kwargs: {goal_low: -1.0}\n")
    config = cfg.load(path, ["run.iterations=7", "policy.hidden_sizes=[8, 8]", "trpo.max_kl=1",
                             "env.kwargs.goal_high=2"])
    assert config.maml.inner_lr == 0.5 and config.run.iterations == 7
    assert config.policy.hidden_sizes == [8, 8]
    assert config.trpo.max_kl == 1.0 and isinstance(config.trpo.max_kl, float)
    assert config.env.kwargs == {"goal_low": -1.0, "goal_high": 2}
    assert config.maml.meta_batch_size == cfg.MAMLConfig().meta_batch_size


def test_round_trip_through_yaml(tmp_path):
    config = cfg.load(EXPERIMENTS / "navigation2d.yaml", ["sampler.horizon=50", "run.name=x"])
    cfg.dump(config, tmp_path / "out.yaml")
    assert cfg.load(tmp_path / "out.yaml") == config


@pytest.mark.parametrize(
    "override, message",
    [
        ("maml.inner_rate=0.1", "unknown key maml.inner_rate; allowed in maml: meta_batch_size, inner_steps"),
        ("mmal.inner_lr=0.1", "unknown key mmal; allowed in config: env, policy"),
        ("run.iterations=ten", "run.iterations: expected int, got 'ten'"),
        ("run.iterations=1.5", "run.iterations: expected int"),
        ("maml.first_order=1", "maml.first_order: expected bool"),
        ("policy.hidden_sizes=[64, x]", r"policy.hidden_sizes\[1\]: expected int"),
        ("policy.nonlinearity=sigmoid", "policy.nonlinearity: must be one of relu, tanh"),
        ("maml.gamma=1.5", r"maml.gamma: must be in \[0, 1\]"),
        ("trpo.max_kl=0", "trpo.max_kl: must be > 0"),
        ("sampler.vectorization=threads",
         "sampler.vectorization: must be one of auto, batched, vector_entry_point, sync, async"),
        ("run.device=tpu", "run.device: must be auto, cpu, cuda or cuda:N"),
        ("run.device=cuda:abc", "run.device: must be auto, cpu, cuda or cuda:N"),
        ("run.seed=-1", r"run.seed: must be in \[0, 2\*\*32\)"),
        ("eval.seed=4294967296", r"eval.seed: must be in \[0, 2\*\*32\)"),
        ("trpo.backtrack_ratio=1.0", r"trpo.backtrack_ratio: must be in \(0, 1\)"),
        ("maml.baseline_ridge=0", "maml.baseline_ridge: must be > 0"),
        ("maml.inner_steps=0", "maml.inner_steps: must be > 0"),
        ("sampler.action_range=-10", "sampler.action_range: must be > 0"),
        ("eval.train_tasks=-1", "eval.train_tasks: must be >= 0"),
        ("run.iterations", "expected dotted.key=value"),
    ],
)
def test_bad_input_names_the_field(override, message):
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.load(None, [override])


def test_action_range_needs_rescaled_actions():
    assert cfg.load(None, ["sampler.action_range=10"]).sampler.action_range == 10.0
    with pytest.raises(cfg.ConfigError, match="sampler.action_range: applies only with sampler.rescale_actions=true"):
        cfg.load(None, ["sampler.action_range=10", "sampler.rescale_actions=false"])


def test_bad_yaml_file_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("maml:\n  inner_lr: 0.1\n  bogus: 3\n")
    with pytest.raises(cfg.ConfigError, match="unknown key maml.bogus"):
        cfg.load(path)
    with pytest.raises(cfg.ConfigError, match="not found"):
        cfg.load(tmp_path / "missing.yaml")


def test_exponent_notation_without_a_dot_is_a_float():
    config = cfg.load(None, ["ppo.inner_kl_target=1e-6", "trpo.cg_damping=2E-5"])
    assert config.ppo.inner_kl_target == 1e-6 and config.trpo.cg_damping == 2e-5
    with pytest.raises(cfg.ConfigError, match="ppo.lr: expected float"):
        cfg.load(None, ["ppo.lr=fast"])
