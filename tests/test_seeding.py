"""One random stream per purpose: training tasks, test tasks, samplers and baselines never share one."""

import numpy as np
import torch

from metarl import config as cfg
from metarl.run.factory import build, eval_tasks, make_sampler
from metarl.runtime import SEED_PURPOSES, generator, seed_stream

TINY = ["maml.meta_batch_size=5", "eval.num_tasks=5", "policy.hidden_sizes=[8]", "sampler.episodes_per_task=2",
        "sampler.horizon=10"]


def test_a_stream_is_the_spawned_child_of_its_purpose():
    for k, purpose in enumerate(SEED_PURPOSES):
        child = np.random.SeedSequence(7).spawn(len(SEED_PURPOSES))[k]
        assert np.array_equal(seed_stream(7, purpose).generate_state(4), child.generate_state(4))
    assert generator(7, "train_tasks").random() != generator(7, "test_tasks").random()


def test_equal_run_and_eval_seeds_keep_test_tasks_out_of_training():
    """run.seed == eval.seed used to make the first meta-batch the test tasks."""
    config = cfg.load(None, [*TINY, "run.seed=1000", "eval.seed=1000"])
    parts = build(config)
    train_tasks = parts.task_env.unwrapped.sample_tasks(5)
    assert not set(train_tasks) & set(eval_tasks(config))
    parts.close()


def test_training_and_evaluation_samplers_draw_different_noise_and_resets():
    config = cfg.load(None, [*TINY, "run.seed=1000", "eval.seed=1000"])
    train, evaluation = (make_sampler(config, torch.device("cpu"), p) for p in ("train_sampler", "eval_sampler"))
    (seed_a, noise_a), (seed_b, noise_b) = train.draw_round(2, 2), evaluation.draw_round(2, 2)
    assert seed_a != seed_b and not torch.equal(noise_a, noise_b)
    # ... and a sampler's resets and noise are two streams too
    assert not np.array_equal(seed_stream(1000, "train_sampler").spawn(2)[0].generate_state(2),
                              seed_stream(1000, "train_sampler").spawn(2)[1].generate_state(2))
    train.close()
    evaluation.close()


def test_same_seeds_same_streams():
    config = cfg.load(None, [*TINY, "run.seed=3"])
    a, b = build(config), build(config)
    assert a.task_env.unwrapped.sample_tasks(3) == b.task_env.unwrapped.sample_tasks(3)
    assert torch.equal(a.sampler.draw_round(2, 2)[1], b.sampler.draw_round(2, 2)[1])
    for p, q in zip(a.policy.parameters(), b.policy.parameters(), strict=True):
        assert torch.equal(p, q)
    assert eval_tasks(config) == eval_tasks(cfg.load(None, [*TINY, "run.seed=4"]))  # test tasks follow eval.seed only
    a.close()
    b.close()
