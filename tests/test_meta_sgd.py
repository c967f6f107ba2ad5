"""Meta-SGD: learned per-parameter inner step sizes, differentiated with the initialisation."""

import pytest
import torch

import metarl.maml as maml
from conftest import assert_meta_problem_is_double_backprop, synthetic_episodes
from metarl.maml import MetaBatch, MetaSGDStepSizes, adapt_steps, log_probs, surrogate_loss, trpo_meta_step
from metarl.policy import GaussianMLPPolicy, detach_params
from metarl.trpo import flat, gaussian_kl


def tiny_setup(inner_steps=1):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(5,), nonlinearity="tanh", init_std=0.8).double()
    step_sizes = MetaSGDStepSizes(policy.parameters_dict(), 0.1).double()
    with torch.no_grad():  # distinct step sizes, so that a wrong pairing of alpha with theta shows
        for alpha in step_sizes.alphas:
            alpha.uniform_(0.05, 0.2)
    batch = MetaBatch([synthetic_episodes(seed=s) for s in range(inner_steps)], synthetic_episodes(seed=10))
    return policy, step_sizes, batch


def meta_loss(policy, theta, alpha, batch, old_log_prob, first_order):
    params = adapt_steps(policy, theta, batch.train, alpha, first_order)
    return surrogate_loss(log_probs(policy, params, batch.valid), old_log_prob, batch.valid.advantages,
                          batch.valid.mask).mean()


def test_step_sizes_are_per_parameter_and_scale_the_inner_gradient():
    policy, step_sizes, batch = tiny_setup()
    alpha = step_sizes.as_params()
    assert list(alpha) == list(policy.parameters_dict())
    assert all(a.shape == p.shape for a, p in zip(alpha.values(), policy.parameters_dict().values(), strict=True))
    theta = policy.parameters_dict()
    plain = adapt_steps(policy, theta, batch.train, 1.0, first_order=True)  # theta - grad
    learned = adapt_steps(policy, theta, batch.train, alpha, first_order=True)
    for name in theta:
        gradient = theta[name].unsqueeze(0) - plain[name]
        assert torch.allclose(learned[name], theta[name].unsqueeze(0) - alpha[name] * gradient, atol=1e-12)


def inner_gradients(policy, theta, alpha, batch):
    """The inner gradients of each step along the adaptation, as values."""
    gradients, params = [], maml.expand_params(detach_params(theta), batch.num_tasks)
    for episodes in batch.train:
        adapted = maml.adapt(policy, params, episodes, 1.0, first_order=True)
        gradients.append({k: params[k] - adapted[k] for k in params})
        params = {k: params[k] - alpha[k].detach() * gradients[-1][k] for k in params}
    return gradients


@pytest.mark.parametrize("inner_steps,first_order", [(1, False), (2, False), (2, True)])
def test_meta_gradient_in_theta_and_alpha_matches_finite_differences(inner_steps, first_order):
    policy, step_sizes, batch = tiny_setup(inner_steps)
    theta, alpha = policy.parameters_dict(), step_sizes.as_params()
    old = log_probs(policy, detach_params(adapt_steps(policy, theta, batch.train, alpha)), batch.valid).detach()
    loss = meta_loss(policy, theta, alpha, batch, old, first_order)
    analytic = flat(torch.autograd.grad(loss, [*theta.values(), *alpha.values()]))
    # FOMAML differentiates theta - sum_k alpha * g_k with the g_k frozen at the current point.
    frozen = inner_gradients(policy, theta, alpha, batch) if first_order else None

    def value() -> float:
        if frozen is None:
            return float(meta_loss(policy, theta, alpha, batch, old, True))  # value only, full recompute
        params = maml.expand_params(theta, batch.num_tasks)
        for g in frozen:
            params = {k: params[k] - alpha[k] * g[k] for k in params}
        return float(surrogate_loss(log_probs(policy, params, batch.valid), old, batch.valid.advantages,
                                    batch.valid.mask).mean())

    numeric, eps = [], 1e-6
    with torch.no_grad():
        for tensor in [*theta.values(), *alpha.values()]:
            for i in range(tensor.numel()):
                tensor.view(-1)[i] += eps
                plus = value()
                tensor.view(-1)[i] -= 2 * eps
                minus = value()
                tensor.view(-1)[i] += eps
                numeric.append((plus - minus) / (2 * eps))
    assert torch.allclose(analytic, torch.tensor(numeric, dtype=torch.float64), atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("inner_steps,first_order", [(1, False), (2, False), (1, True)])
def test_structured_products_with_learned_step_sizes_equal_double_backprop(inner_steps, first_order):
    policy, step_sizes, batch = tiny_setup(inner_steps)
    theta, alpha = policy.parameters_dict(), step_sizes.as_params()
    meta_params = [*theta.values(), *alpha.values()]
    problem = maml._meta_problem(policy, theta, batch, alpha, first_order)
    loss, kl = maml._meta_objective(policy, theta, batch, alpha, first_order, problem.old)
    assert_meta_problem_is_double_backprop(problem, loss, kl, batch.num_tasks, meta_params)


def test_trpo_and_gradient_meta_steps_update_the_step_sizes_within_their_trust_regions():
    policy, step_sizes, batch = tiny_setup()
    before = flat(list(step_sizes.parameters())).detach().clone()
    stats = trpo_meta_step(policy, batch, step_sizes.as_params(), max_kl=1e-3)
    assert stats.accepted and stats.loss_after < stats.loss_before and stats.kl_after <= 1e-3
    after = flat(list(step_sizes.parameters())).detach()
    assert not torch.allclose(before, after)
    # the kept KL is the one of the policies adapted with the new step sizes
    with torch.no_grad():
        params = adapt_steps(policy, policy.parameters_dict(), batch.train, step_sizes.as_params(), True)
        mean, std = maml.policy_outputs(policy, params, batch.valid)
    kl = (gaussian_kl(*stats_old(policy, batch), mean, std).reshape(batch.valid.rewards.shape) * batch.valid.mask)
    assert float((kl.sum((1, 2)) / batch.valid.mask.sum((1, 2))).mean()) == pytest.approx(stats.kl_after, rel=1e-6)

    policy, step_sizes, batch = tiny_setup()
    optimizer = torch.optim.Adam([*policy.parameters(), *step_sizes.parameters()], lr=1e-3)
    maml.ppo_meta_step(policy, optimizer, batch, step_sizes.as_params(), inner_loss="lvc", epochs=3, clip=0.3)
    assert not torch.allclose(before, flat(list(step_sizes.parameters())).detach())


def stats_old(policy, batch):
    """Mean and std of the post-adaptation policies before the step (tiny_setup's initial state)."""
    fresh, step_sizes, _ = tiny_setup()
    with torch.no_grad():
        params = adapt_steps(fresh, fresh.parameters_dict(), batch.train, step_sizes.as_params(), True)
        return maml.policy_outputs(fresh, params, batch.valid)
