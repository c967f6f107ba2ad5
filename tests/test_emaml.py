"""E-MAML: the exploration term's weights, its gradient against finite differences, and its place
in the TRPO, ProMP and Adam meta-updates (packed and padded alike), training and resuming."""

from pathlib import Path

import pytest
import torch

import metarl.maml as maml
from conftest import synthetic_episodes, without_timings
from metarl.checkpoint import load_checkpoint
from metarl.cli import main
from metarl.episodes import Episodes
from metarl.maml import (
    MetaBatch,
    MetaSGDStepSizes,
    exploration_loss,
    exploration_weights,
    ppo_meta_step,
    trpo_meta_step,
)
from metarl.policy import GaussianMLPPolicy
from metarl.run.rundir import CHECKPOINT, read_metrics
from metarl.trpo import flat

NAV = str(Path(__file__).resolve().parents[1] / "experiments" / "navigation2d.yaml")
INNER_LR = 0.1


def policy_and_batch(seed=0, tasks=3):
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(6,), nonlinearity="tanh").double()
    batch = MetaBatch([synthetic_episodes(num_tasks=tasks, horizon=5, seed=seed)],
                      synthetic_episodes(num_tasks=tasks, horizon=5, seed=seed + 50))
    return policy, batch


def test_exploration_weights_standardise_the_post_adaptation_rewards_over_the_batch():
    rewards = torch.tensor([[[1.0, 2.0, 9.0]], [[3.0, 4.0, 0.0]]])
    mask = torch.tensor([[[1.0, 1.0, 0.0]], [[1.0, 1.0, 1.0]]])  # task 0's last step is padding
    valid = Episodes(torch.zeros(2, 1, 3, 2), torch.zeros(2, 1, 3, 2), rewards * mask, mask, [0, 1])
    mu = (1 + 2 + 3 + 4 + 0) / 5
    sigma = (sum((r - mu) ** 2 for r in (1, 2, 3, 4, 0)) / 5) ** 0.5
    expected = [((1 - mu) + (2 - mu)) / 2 / sigma, ((3 - mu) + (4 - mu) + (0 - mu)) / 3 / sigma]
    assert exploration_weights(valid).tolist() == pytest.approx(expected)
    # the same on the packed batch
    assert exploration_weights(valid.pack()).tolist() == pytest.approx(expected)


def _finite_difference(fn, tensors, direction, eps=1e-6):
    with torch.no_grad():
        for p, d in zip(tensors, direction, strict=True):
            p.add_(eps * d)
        up = float(fn())
        for p, d in zip(tensors, direction, strict=True):
            p.sub_(2 * eps * d)
        down = float(fn())
        for p, d in zip(tensors, direction, strict=True):
            p.add_(eps * d)
    return (up - down) / (2 * eps)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("meta_sgd", [False, True])
def test_emaml_meta_gradient_matches_finite_differences_of_its_objective(first_order, meta_sgd):
    policy, batch = policy_and_batch()
    theta = policy.parameters_dict()
    step = MetaSGDStepSizes(theta, INNER_LR).double().as_params() if meta_sgd else INNER_LR
    explored = batch.with_exploration()
    problem = maml._meta_problem(policy, theta, explored, step, first_order)
    plain = maml._meta_problem(policy, theta, batch, step, first_order)
    tensors = maml.meta_parameters(theta, step)
    # The objective's value adds the exploration term; its gradient adds the term's own gradient.
    term = float(exploration_loss(policy, theta, explored).sum().detach())
    assert float(problem.loss - plain.loss) == pytest.approx(term)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in tensors]

        def objective():
            loss, _ = maml._meta_objective(policy, theta, explored, step, first_order, problem.old)
            return loss * batch.num_tasks

        analytic = float(sum((g * d).sum() for g, d in zip(problem.gradient, direction, strict=True)))
        if first_order:  # FOMAML's gradient is not the objective's; compare the exploration part alone
            analytic -= float(sum((g * d).sum() for g, d in zip(plain.gradient, direction, strict=True)))

            def objective():  # noqa: F811
                return exploration_loss(policy, theta, explored).sum()

        assert analytic == pytest.approx(_finite_difference(objective, tensors, direction), rel=1e-5, abs=1e-8)
    if meta_sgd:  # the term does not depend on the step sizes
        count = len(theta)
        for a, b in zip(problem.gradient[count:], plain.gradient[count:], strict=True):
            assert torch.equal(a, b)


def test_emaml_moves_the_trpo_step_within_the_same_kl_bound_packed_or_padded():
    results = {}
    for emaml in (False, True):
        for packed in (False, True):
            policy, batch = policy_and_batch(seed=3)
            stats = trpo_meta_step(policy, batch.pack() if packed else batch, INNER_LR, max_kl=1e-3, emaml=emaml)
            assert stats.accepted and stats.kl_after < 1e-3
            results[emaml, packed] = flat(list(policy.parameters_dict().values())).detach()
    assert torch.allclose(results[True, False], results[True, True], atol=1e-8)
    assert not torch.allclose(results[True, False], results[False, False], atol=1e-6)


@pytest.mark.parametrize("clip,epochs,coef", [(0.3, 3, 5e-4), (None, 1, 0.0)])
def test_emaml_adds_its_term_to_the_gradient_meta_updates(clip, epochs, coef):
    losses = {}
    for emaml in (False, True):
        policy, batch = policy_and_batch(seed=4)
        optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
        stats = ppo_meta_step(policy, optimizer, batch, INNER_LR, inner_loss="lvc", epochs=epochs, clip=clip,
                              inner_kl_coef=coef, emaml=emaml)
        losses[emaml] = stats.loss_before
    policy, batch = policy_and_batch(seed=4)
    term = exploration_loss(policy, policy.parameters_dict(), batch.with_exploration()).mean()
    assert losses[True] - losses[False] == pytest.approx(float(term.detach()))


@pytest.mark.parametrize("outer", ["trpo", "promp"])
def test_emaml_trains_and_resumes_exactly(tmp_path, tiny_run_args, outer):
    args = [*tiny_run_args, "maml.emaml=true", f"maml.outer={outer}", "eval.at_end=false"]
    whole = [a for a in args if not a.startswith("run.iterations=")]
    assert main(["train", NAV, *whole, "run.iterations=3", "run.name=whole", "--quiet"]) == 0
    assert main(["train", NAV, *whole, "run.iterations=2", "run.name=parts", "--quiet"]) == 0
    assert main(["train", "--resume", str(tmp_path / "parts"), "run.iterations=3", "--quiet"]) == 0
    assert without_timings(read_metrics(tmp_path / "parts")) == without_timings(read_metrics(tmp_path / "whole"))
    final = [load_checkpoint(tmp_path / name / CHECKPOINT)["policy"] for name in ("whole", "parts")]
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    assert main(["evaluate", str(tmp_path / "whole")]) == 0
