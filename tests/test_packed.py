"""Packed episodes: the meta-update on valid steps only equals the one on the padded batch."""

import copy
import json
from pathlib import Path

import pytest
import torch

from conftest import synthetic_episodes, without_timings
from metarl import config as cfg
from metarl.cli import main
from metarl.episodes import Episodes
from metarl.maml import (
    INNER_LOSSES,
    MetaBatch,
    MetaSGDStepSizes,
    adapt,
    dice_loss,
    ppo_meta_step,
    segment_cumsum,
    trpo_meta_step,
)
from metarl.policy import GaussianMLPPolicy, expand_params
from metarl.run.rundir import read_metrics

QUICK = str(Path(__file__).resolve().parents[1] / "experiments" / "navigation2d_quick.yaml")


def test_pack_keeps_valid_steps_in_order_and_finds_episode_starts():
    # Task 0: episodes of 2 and 3 steps; task 1: episodes of 1 and 0 steps (an empty slot).
    mask = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    rewards = torch.arange(12.0).reshape(2, 2, 3) * mask
    observations = torch.arange(24.0).reshape(2, 2, 3, 2)
    batch = Episodes(observations, torch.zeros(2, 2, 3, 1), rewards, mask, ["a", "b"], advantages=rewards + 100 * mask)
    packed = batch.pack()
    assert packed.rewards.shape == (2, 1, 5) and packed.observations.shape == (2, 1, 5, 2)
    assert packed.rewards[:, 0].tolist() == [[0.0, 1.0, 3.0, 4.0, 5.0], [6.0, 0.0, 0.0, 0.0, 0.0]]
    assert packed.mask[:, 0].tolist() == [[1.0] * 5, [1.0, 0.0, 0.0, 0.0, 0.0]]
    assert packed.advantages[0, 0].tolist() == [100.0, 101.0, 103.0, 104.0, 105.0]
    assert packed.observations[0, 0, 2].tolist() == [6.0, 7.0]  # task 0, episode 1, step 0
    assert packed.episode_starts[0, 0, :5].tolist() == [0, 0, 2, 2, 2]
    assert packed.num_steps == batch.num_steps == 6
    with pytest.raises(ValueError, match="before pack"):
        packed.mean_return()


def test_segment_cumsum_restarts_at_each_episode_by_hand():
    # Row 0: episodes of 2 and 3 steps, one padding slot; row 1: one episode of 1 step; row 2: nothing valid.
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 9.0], [7.0, 9.0, 9.0, 9.0, 9.0, 9.0], [9.0] * 6])
    starts = torch.tensor([[0, 0, 2, 2, 2, 5], [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]])
    mask = torch.tensor([[1.0, 1, 1, 1, 1, 0], [1.0, 0, 0, 0, 0, 0], [0.0] * 6])
    out = segment_cumsum(values, starts, mask)
    assert out.tolist() == [[1.0, 3.0, 3.0, 7.0, 12.0, 0.0], [7.0, 0, 0, 0, 0, 0], [0.0] * 6]
    assert segment_cumsum(values, starts, torch.zeros_like(mask)).tolist() == [[0.0] * 6] * 3


def test_segment_cumsum_has_the_derivatives_of_a_sum_per_episode():
    # A packed batch's starts; first and second derivatives against finite differences.
    packed = synthetic_episodes(2, 3, 5, obs_dim=1, act_dim=1, seed=3).pack()
    starts, mask = packed.episode_starts, packed.mask
    values = torch.randn(mask.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * mask
    weights = torch.randn(mask.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    # a smooth function of the sums, as DiCE's magic box is
    fn = lambda x: (torch.exp(0.3 * segment_cumsum(x, starts, mask)) * weights).sum()  # noqa: E731
    values.requires_grad_()
    assert torch.autograd.gradcheck(fn, (values,))
    assert torch.autograd.gradgradcheck(fn, (values,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the adds in no fixed order it rules out are CUDA's")
def test_packed_dice_derivatives_are_the_same_every_time_on_cuda():
    packed = synthetic_episodes(8, 10, 50, obs_dim=3, act_dim=2, seed=0, dtype=torch.float32).pack().to("cuda")
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, hidden_sizes=(32, 32), nonlinearity="tanh").cuda()

    def derivatives():
        params = expand_params(policy.parameters_dict(), packed.num_tasks)
        grads = torch.autograd.grad(dice_loss(policy, params, packed).sum(), list(params.values()), create_graph=True)
        second = torch.autograd.grad(sum(g.square().sum() for g in grads), list(params.values()))
        return [g.detach() for g in grads] + list(second)

    first = derivatives()
    for _ in range(5):
        assert all(torch.equal(a, b) for a, b in zip(first, derivatives(), strict=True))


def _batches(seed: int, tasks: int = 3, inner_steps: int = 1):
    """Synthetic ragged batches (train per inner step, valid) and a policy, in float64: the second-order
    updates on random advantages are ill-conditioned, and float32 rounding alone moves them by 1e-2."""
    train = [synthetic_episodes(tasks, 4, 6, obs_dim=3, act_dim=2, seed=seed + k)
             for k in range(inner_steps)]
    valid = synthetic_episodes(tasks, 4, 6, obs_dim=3, act_dim=2, seed=seed + 100)
    torch.manual_seed(seed)
    return MetaBatch(train, valid), GaussianMLPPolicy(3, 2, hidden_sizes=(8, 8), nonlinearity="tanh").double()


@pytest.mark.parametrize("inner_loss", list(INNER_LOSSES))
def test_inner_losses_and_adaptation_are_the_same_packed(inner_loss):
    batch, policy = _batches(0)
    episodes, packed = batch.train[0], batch.train[0].pack()
    params = expand_params(policy.parameters_dict(), episodes.num_tasks)
    loss = INNER_LOSSES[inner_loss]
    assert torch.allclose(loss(policy, params, episodes), loss(policy, params, packed), atol=1e-6)
    a = adapt(policy, params, episodes, 0.1, inner_loss=inner_loss)
    b = adapt(policy, params, packed, 0.1, inner_loss=inner_loss)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


def _parameters(policy, step_sizes=None):
    tensors = [p.detach().clone() for p in policy.parameters()]
    return tensors + ([a.detach().clone() for a in step_sizes.parameters()] if step_sizes is not None else [])


@pytest.mark.parametrize("inner_loss", list(INNER_LOSSES))
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("meta_sgd", [False, True])
def test_trpo_meta_step_is_the_same_packed(inner_loss, first_order, meta_sgd):
    batch, policy = _batches(1, inner_steps=2)
    step_sizes = MetaSGDStepSizes(policy.parameters_dict(), 0.1) if meta_sgd else None
    start = copy.deepcopy((policy.state_dict(), step_sizes and step_sizes.state_dict()))
    results = []
    for layout in (batch, batch.pack()):
        policy.load_state_dict(start[0])
        if step_sizes is not None:
            step_sizes.load_state_dict(start[1])
        step = step_sizes.as_params() if step_sizes is not None else 0.1
        stats = trpo_meta_step(policy, layout, step, first_order=first_order, inner_loss=inner_loss, max_kl=0.05)
        results.append((stats, _parameters(policy, step_sizes)))
    (padded, after_padded), (packed, after_packed) = results
    assert padded.line_search_step == packed.line_search_step
    assert packed.loss_before == pytest.approx(padded.loss_before, rel=1e-10)
    for a, b in zip(after_padded, after_packed, strict=True):
        assert torch.allclose(a, b, atol=1e-8), (inner_loss, first_order, meta_sgd)


@pytest.mark.parametrize("clip, epochs, coef", [(0.2, 3, 5e-4), (None, 1, 0.0)])  # ProMP, plain Adam
def test_gradient_meta_updates_are_the_same_packed(clip, epochs, coef):
    batch, policy = _batches(2)
    start = copy.deepcopy(policy.state_dict())
    after = []
    for layout in (batch, batch.pack()):
        policy.load_state_dict(start)
        optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
        ppo_meta_step(policy, optimizer, layout, 0.1, inner_loss="lvc", epochs=epochs, clip=clip, inner_kl_coef=coef)
        after.append(_parameters(policy))
    for a, b in zip(*after, strict=True):
        assert torch.allclose(a, b, atol=1e-8)


def test_grouped_packed_update_is_the_same_as_one_group():
    batch, policy = _batches(3, tasks=5)
    packed = batch.pack()
    start = copy.deepcopy(policy.state_dict())
    after = []
    for groups in (1, 5):
        policy.load_state_dict(start)
        trpo_meta_step(policy, packed, 0.1, tasks_per_group=groups)
        after.append(_parameters(policy))
    for a, b in zip(*after, strict=True):
        assert torch.allclose(a, b, atol=1e-8)


def test_a_whole_run_gives_the_same_metrics_packed_or_padded(tmp_path):
    # One meta-iteration and the evaluation. They differ only by rounding (sums in another order).
    # Over more iterations float32 runs drift apart: parameters that differ in the last bits can
    # move where an episode ends (over three iterations with one torch thread, post-adaptation
    # returns differed by 6%); the float64 tests above are the exact comparison.
    args = ["run.iterations=1", "maml.meta_batch_size=6", "sampler.episodes_per_task=6", "eval.num_tasks=4",
            "eval.episodes_per_task=4", "eval.num_steps=1", f"run.output_dir={tmp_path}", "--quiet"]
    for name, pack in (("packed", "true"), ("padded", "false")):
        assert main(["train", QUICK, *args, f"run.name={name}", f"maml.pack_episodes={pack}"]) == 0
    (a,), (b,) = (without_timings(read_metrics(tmp_path / n)) for n in ("packed", "padded"))
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], float):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), key
        else:
            assert a[key] == b[key], key
    evaluations = [json.loads((tmp_path / n / "eval.json").read_text()) for n in ("packed", "padded")]
    assert evaluations[0]["mean_return"] == pytest.approx(evaluations[1]["mean_return"], rel=1e-3)
    assert cfg.load(tmp_path / "packed" / "config.yaml").maml.pack_episodes
