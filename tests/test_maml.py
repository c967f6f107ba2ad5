"""MAML gradients against finite differences, batching against per-task computation, and the TRPO step."""

import pytest
import torch

import metarl.maml as maml
from conftest import assert_meta_problem_is_double_backprop, synthetic_episodes
from metarl.episodes import Episodes, concat_episodes
from metarl.maml import MetaBatch, adapt_steps, log_probs, surrogate_loss, trpo_meta_step
from metarl.policy import GaussianMLPPolicy, detach_params
from metarl.trpo import flat, gaussian_kl, hessian_vector_product

INNER_LR = 0.1


def tiny_policy():
    torch.manual_seed(0)
    return GaussianMLPPolicy(2, 2, hidden_sizes=(5,), nonlinearity="tanh", init_std=0.8).double()


def meta_loss(policy, theta, train, valid, old_log_prob, first_order, frozen=None):
    """Post-adaptation surrogate. ``frozen`` replaces adaptation by theta - lr * fixed gradients."""
    if frozen is None:
        params = adapt_steps(policy, theta, train, INNER_LR, first_order)
    else:
        params = {k: p.unsqueeze(0) - INNER_LR * frozen[k] for k, p in theta.items()}
    return surrogate_loss(log_probs(policy, params, valid), old_log_prob, valid.advantages, valid.mask).mean()


def finite_difference_gradient(fn, theta, eps=1e-6):
    names, base = list(theta), flat(list(theta.values())).detach()
    grad = torch.zeros_like(base)
    for i in range(base.numel()):
        values = []
        for sign in (1.0, -1.0):
            shifted = base.clone()
            shifted[i] += sign * eps
            offset, params = 0, {}
            for name in names:
                n = theta[name].numel()
                params[name] = shifted[offset : offset + n].view_as(theta[name])
                offset += n
            values.append(fn(params).item())
        grad[i] = (values[0] - values[1]) / (2 * eps)
    return grad


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_second_order_meta_gradient_matches_finite_differences(inner_steps):
    policy = tiny_policy()
    theta = policy.parameters_dict()
    train = [synthetic_episodes(seed=s) for s in range(inner_steps)]
    valid = synthetic_episodes(seed=10)
    old = log_probs(policy, detach_params(adapt_steps(policy, theta, train, INNER_LR)), valid).detach()

    loss = meta_loss(policy, theta, train, valid, old, first_order=False)
    analytic = flat(torch.autograd.grad(loss, list(theta.values())))
    numeric = finite_difference_gradient(
        lambda p: meta_loss(policy, p, train, valid, old, first_order=True), theta  # value only, full recompute
    )
    assert torch.allclose(analytic, numeric, atol=1e-7, rtol=1e-5)


def test_first_order_meta_gradient_matches_finite_differences_with_frozen_inner_gradient():
    policy = tiny_policy()
    theta = policy.parameters_dict()
    train, valid = [synthetic_episodes(seed=0)], synthetic_episodes(seed=10)
    old = log_probs(policy, detach_params(adapt_steps(policy, theta, train, INNER_LR)), valid).detach()

    loss = meta_loss(policy, theta, train, valid, old, first_order=True)
    analytic = flat(torch.autograd.grad(loss, list(theta.values())))
    # FOMAML differentiates theta -> theta - lr * g with g frozen at the current theta.
    adapted = adapt_steps(policy, theta, train, INNER_LR, first_order=True)
    frozen = {k: ((theta[k].unsqueeze(0) - adapted[k]) / INNER_LR).detach() for k in theta}
    numeric = finite_difference_gradient(lambda p: meta_loss(policy, p, train, valid, old, True, frozen), theta)
    assert torch.allclose(analytic, numeric, atol=1e-7, rtol=1e-5)

    second = flat(torch.autograd.grad(meta_loss(policy, theta, train, valid, old, first_order=False),
                                      list(theta.values())))
    assert not torch.allclose(analytic, second, atol=1e-4)  # the two estimators genuinely differ


def _task_slice(episodes: Episodes, t: int) -> Episodes:
    return Episodes(
        episodes.observations[t : t + 1], episodes.actions[t : t + 1], episodes.rewards[t : t + 1],
        episodes.mask[t : t + 1], episodes.tasks[t : t + 1], episodes.advantages[t : t + 1],
    )


def test_batched_meta_gradient_equals_sum_of_per_task_gradients():
    policy = tiny_policy()
    theta = policy.parameters_dict()
    train, valid = [synthetic_episodes(seed=0)], synthetic_episodes(seed=10)
    old = log_probs(policy, detach_params(adapt_steps(policy, theta, train, INNER_LR)), valid).detach()
    batched = flat(torch.autograd.grad(meta_loss(policy, theta, train, valid, old, False), list(theta.values())))
    per_task = sum(
        flat(torch.autograd.grad(
            meta_loss(policy, theta, [_task_slice(train[0], t)], _task_slice(valid, t), old[t : t + 1], False),
            list(theta.values()),
        ))
        for t in range(valid.num_tasks)
    ) / valid.num_tasks
    assert torch.allclose(batched, per_task, atol=1e-12)


@pytest.mark.parametrize("inner_steps,first_order", [(1, False), (2, False), (1, True)])
def test_structured_kl_hessian_product_equals_double_backprop_through_the_adaptation(inner_steps, first_order):
    # The update uses J^T F J (exact where the KL and its gradient vanish); the reference is plain
    # double backprop of the KL through the whole adaptation graph, third derivatives included.
    policy = tiny_policy()
    theta = policy.parameters_dict()
    batch = MetaBatch([synthetic_episodes(seed=s) for s in range(inner_steps)], synthetic_episodes(seed=10))
    problem = maml._meta_problem(policy, theta, batch, INNER_LR, first_order)
    loss, kl = maml._meta_objective(policy, theta, batch, INNER_LR, first_order, problem.old)
    assert_meta_problem_is_double_backprop(problem, loss, kl, batch.num_tasks, list(theta.values()))


@pytest.mark.parametrize("first_order", [False, True])
def test_trpo_step_is_the_same_for_any_grouping_of_the_tasks(first_order):
    # One stacked group of 5, task by task, and uneven groups of 2 (2 + 2 + 1).
    batch = MetaBatch([synthetic_episodes(num_tasks=5, horizon=6, seed=1)],
                      synthetic_episodes(num_tasks=5, horizon=6, seed=2))
    results = []
    for size in (5, 1, 2):
        policy = tiny_policy()
        stats = trpo_meta_step(policy, batch, INNER_LR, first_order, max_kl=1e-3, tasks_per_group=size)
        results.append((stats, flat(list(policy.parameters_dict().values())).detach()))
    (batched, theta_batched), *others = results
    assert batched.accepted
    for stats, theta in others:
        assert stats.line_search_step == batched.line_search_step
        assert stats.loss_after == pytest.approx(batched.loss_after, rel=1e-9, abs=1e-12)
        assert torch.allclose(theta, theta_batched, atol=1e-10)


def _trpo_result(batch, **kwargs):
    policy = tiny_policy()
    stats = trpo_meta_step(policy, batch, INNER_LR, max_kl=1e-3, **kwargs)
    return stats, flat(list(policy.parameters_dict().values())).detach()


def test_cg_subsample_estimates_the_curvature_on_the_first_tasks():
    half = MetaBatch([synthetic_episodes(num_tasks=2, horizon=6, seed=1)], synthetic_episodes(num_tasks=2, horizon=6,
                                                                                              seed=2))
    other = MetaBatch([synthetic_episodes(num_tasks=2, horizon=6, seed=3)], synthetic_episodes(num_tasks=2, horizon=6,
                                                                                               seed=4))

    def joined(a, b):
        return MetaBatch([concat_episodes([a.train[0], b.train[0]])], concat_episodes([a.valid, b.valid]))

    # Twice the same two tasks: the first half's curvature is the whole batch's, so the step is exact.
    exact_stats, exact = _trpo_result(joined(half, half))
    for groups in (None, 1, 3):
        stats, theta = _trpo_result(joined(half, half), cg_subsample=0.5, tasks_per_group=groups)
        assert stats.line_search_step == exact_stats.line_search_step
        assert torch.allclose(theta, exact, atol=1e-9)
    # Different tasks after the subset: another direction, and the KL bound still holds on all tasks.
    mixed = joined(half, other)
    exact_stats, exact = _trpo_result(mixed)
    stats, theta = _trpo_result(mixed, cg_subsample=0.5)
    assert stats.accepted and stats.kl_after < 1e-3
    assert not torch.allclose(theta, exact, atol=1e-6)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="cg_subsample must be in"):
            _trpo_result(mixed, cg_subsample=bad)


def test_default_groups_hold_about_8k_steps():
    def batch(num_tasks, episodes, horizon):
        return MetaBatch([], synthetic_episodes(num_tasks=num_tasks, num_episodes=episodes, horizon=horizon))

    assert maml.default_tasks_per_group(batch(40, 20, 100)) == 4
    assert maml.default_tasks_per_group(batch(3, 2, 5)) == 3  # never more than the batch
    assert maml.default_tasks_per_group(batch(4, 200, 100)) == 1
    on_gpu = batch(40, 20, 100)  # a GPU has no cache to fit: one group up to GPU_GROUP_STEPS
    on_gpu.valid.rewards = on_gpu.valid.rewards.to("meta")
    assert maml.default_tasks_per_group(on_gpu) == 40
    on_gpu.valid.rewards = torch.empty(300, 20, 1000, device="meta")
    assert maml.default_tasks_per_group(on_gpu) == 13  # 2**18 / 20000 steps


def _post_adaptation_kl(policy, theta_old, theta_new, batch):
    old = adapt_steps(policy, theta_old, batch.train, INNER_LR, first_order=True)
    new = adapt_steps(policy, theta_new, batch.train, INNER_LR, first_order=True)
    obs = batch.valid.observations.reshape(batch.valid.num_tasks, -1, 2)
    (mo, so), (mn, sn) = policy.mean_std(obs, old), policy.mean_std(obs, new)
    kl = gaussian_kl(mo, so, mn, sn).reshape(batch.valid.rewards.shape)
    return ((kl * batch.valid.mask).sum((1, 2)) / batch.valid.mask.sum((1, 2))).mean().item()


@pytest.mark.parametrize("first_order", [False, True])
def test_trpo_step_respects_the_kl_bound_and_lowers_the_loss(first_order):
    policy = tiny_policy()
    batch = MetaBatch([synthetic_episodes(num_tasks=4, horizon=6, seed=1)],
                      synthetic_episodes(num_tasks=4, horizon=6, seed=2))
    before = detach_params({k: v.clone() for k, v in policy.parameters_dict().items()})
    max_kl = 1e-3
    stats = trpo_meta_step(policy, batch, INNER_LR, first_order=first_order, max_kl=max_kl, cg_iters=10)
    assert stats.accepted
    assert stats.loss_after < stats.loss_before
    kl = _post_adaptation_kl(policy, before, detach_params(policy.parameters_dict()), batch)
    assert 0 < kl < max_kl
    assert kl == pytest.approx(stats.kl_after, rel=1e-6)


@pytest.mark.parametrize("first_order", [False, True])
def test_full_trpo_step_is_scaled_to_the_kl_bound(first_order):
    # For a small bound the quadratic model of the KL is accurate: the full step (fraction 1) is
    # accepted and lands on the bound, 0.5 * s^T F s = max_kl.
    policy = tiny_policy()
    batch = MetaBatch([synthetic_episodes(num_tasks=4, horizon=6, seed=1)],
                      synthetic_episodes(num_tasks=4, horizon=6, seed=2))
    max_kl = 1e-5
    stats = trpo_meta_step(policy, batch, INNER_LR, first_order=first_order, max_kl=max_kl, cg_iters=10)
    assert stats.line_search_step == 0
    assert stats.kl_after == pytest.approx(max_kl, rel=0.1)


def test_trpo_step_reverts_parameters_when_line_search_fails(monkeypatch):
    policy = tiny_policy()
    batch = MetaBatch([synthetic_episodes(seed=1)], synthetic_episodes(seed=2))
    before = flat(list(policy.parameters_dict().values())).detach().clone()

    def failing_search(evaluate, loss_before, max_kl, **kwargs):
        evaluate(1.0)  # moves the parameters...
        return None, 0.0, 1.0  # ...but nothing was accepted

    monkeypatch.setattr(maml, "backtracking_line_search", failing_search)
    stats = trpo_meta_step(policy, batch, INNER_LR)
    assert not stats.accepted
    assert torch.equal(flat(list(policy.parameters_dict().values())).detach(), before)


def test_policy_functional_call_with_per_task_parameters_matches_module():
    policy = tiny_policy()
    obs = torch.randn(3, 7, 2, dtype=torch.float64)
    params = {k: torch.stack([v.detach() + 0.1 * t for t in range(3)]) for k, v in policy.parameters_dict().items()}
    mean, std = policy.mean_std(obs, params)
    for t in range(3):
        single = {k: v[t] for k, v in params.items()}
        m, s = policy.mean_std(obs[t], single)
        assert torch.allclose(mean[t], m) and torch.allclose(std[t], s)
    assert policy.mean_std(obs[0], policy.parameters_dict())[0].shape == (7, 2)


def test_lvc_loss_matches_vpg_to_first_order_and_adds_the_score_outer_product_to_second():
    policy = tiny_policy()
    episodes = synthetic_episodes(num_tasks=1, num_episodes=2, horizon=3, seed=4)
    params = {k: v.detach().unsqueeze(0).clone().requires_grad_() for k, v in policy.parameters_dict().items()}
    leaves = list(params.values())
    vpg, lvc = maml.vpg_loss(policy, params, episodes).sum(), maml.lvc_loss(policy, params, episodes).sum()
    g_vpg = torch.autograd.grad(vpg, leaves, create_graph=True)
    g_lvc = torch.autograd.grad(lvc, leaves, create_graph=True)
    assert all(torch.allclose(a, b, atol=1e-14) for a, b in zip(g_vpg, g_lvc, strict=True))
    v = [torch.randn_like(p) for p in leaves]
    h_vpg = flat(torch.autograd.grad(sum((g * w).sum() for g, w in zip(g_vpg, v, strict=True)), leaves,
                                     retain_graph=True))
    h_lvc = flat(torch.autograd.grad(sum((g * w).sum() for g, w in zip(g_lvc, v, strict=True)), leaves,
                                     retain_graph=True))
    # (H_lvc - H_vpg) v = -sum_t m_t A_t g_t (g_t . v) / sum_t m_t, with g_t the score of step t
    log_prob = maml.log_probs(policy, params, episodes)[0]
    adv, mask = episodes.advantages[0], episodes.mask[0]
    expected = torch.zeros_like(h_vpg)
    for e in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[e, t]:
                score = flat(torch.autograd.grad(log_prob[e, t], leaves, retain_graph=True))
                expected -= adv[e, t] * score * (score @ flat(v))
    expected /= mask.sum()
    assert torch.allclose(h_lvc - h_vpg, expected, atol=1e-10)
    assert not torch.allclose(h_lvc, h_vpg, atol=1e-6)


@pytest.mark.parametrize("inner_steps", [1, 2])
@pytest.mark.parametrize("inner_loss", ["lvc", "dice"])
def test_structured_product_with_other_inner_losses_equals_double_backprop(inner_steps, inner_loss):
    policy = tiny_policy()
    theta = policy.parameters_dict()
    batch = MetaBatch([synthetic_episodes(seed=s) for s in range(inner_steps)], synthetic_episodes(seed=10))
    problem = maml._meta_problem(policy, theta, batch, INNER_LR, False, inner_loss)
    valid = batch.valid
    params = adapt_steps(policy, theta, batch.train, INNER_LR, False, inner_loss)
    mean, std = maml.policy_outputs(policy, params, valid)
    kl = (gaussian_kl(problem.old[0], problem.old[1], mean, std).reshape(valid.rewards.shape) * valid.mask).sum((1, 2))
    kl = (kl / valid.mask.sum((1, 2))).sum()
    reference = hessian_vector_product(kl, list(theta.values()))
    loss = surrogate_loss(maml._log_prob(mean, std, valid), problem.old[2], valid.advantages, valid.mask).sum()
    reference_grad = flat(torch.autograd.grad(loss, list(theta.values()), retain_graph=True))
    assert torch.allclose(flat(problem.gradient), reference_grad, atol=1e-12)
    v = torch.randn(reference(torch.zeros(sum(p.numel() for p in theta.values()), dtype=torch.float64)).shape,
                    dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    vectors = [chunk.view_as(p)
               for chunk, p in zip(torch.split(v, [p.numel() for p in theta.values()]), theta.values(), strict=True)]
    assert torch.allclose(flat(problem.product(vectors)), reference(v), atol=1e-10)
    vpg_problem = maml._meta_problem(policy, theta, batch, INNER_LR, False, "vpg")
    assert not torch.allclose(flat(vpg_problem.gradient), flat(problem.gradient), atol=1e-8)


def test_trpo_step_with_lvc_and_a_bad_inner_loss():
    batch = MetaBatch([synthetic_episodes(num_tasks=4, horizon=6, seed=1)],
                      synthetic_episodes(num_tasks=4, horizon=6, seed=2))
    stats = trpo_meta_step(tiny_policy(), batch, INNER_LR, max_kl=1e-3, inner_loss="lvc")
    assert stats.accepted and stats.loss_after < stats.loss_before
    with pytest.raises(ValueError, match="inner_loss must be one of"):
        trpo_meta_step(tiny_policy(), batch, INNER_LR, inner_loss="reinforce")


def test_gradient_meta_step_follows_the_finite_difference_checked_meta_gradient():
    # With plain SGD, one epoch, no clip and no penalty, the step is -lr times the meta-gradient.
    policy = tiny_policy()
    batch = MetaBatch([synthetic_episodes(seed=0)], synthetic_episodes(seed=10))
    theta = {k: v.detach().clone() for k, v in policy.parameters_dict().items()}
    old = log_probs(policy, detach_params(adapt_steps(policy, policy.parameters_dict(), batch.train, INNER_LR)),
                    batch.valid).detach()
    loss = meta_loss(policy, policy.parameters_dict(), batch.train, batch.valid, old, first_order=False)
    expected = flat(torch.autograd.grad(loss, list(policy.parameters_dict().values())))
    lr = 0.01
    stats = maml.ppo_meta_step(policy, torch.optim.SGD(policy.parameters(), lr=lr), batch, INNER_LR,
                               inner_loss="vpg", epochs=1, clip=None, inner_kl_coef=0.0)
    step = flat(list(policy.parameters_dict().values())).detach() - flat(list(theta.values()))
    assert torch.allclose(step, -lr * expected, atol=1e-12)
    assert stats.grad_norm == pytest.approx(float(expected.norm()))


def test_promp_meta_step_lowers_its_loss_and_reports_the_trust_regions():
    policy = tiny_policy()
    batch = MetaBatch([synthetic_episodes(num_tasks=4, horizon=6, seed=1)],
                      synthetic_episodes(num_tasks=4, horizon=6, seed=2))
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    stats = maml.ppo_meta_step(policy, optimizer, batch, INNER_LR, inner_loss="lvc", epochs=5, clip=0.3,
                               inner_kl_coef=5e-4)
    assert stats.loss_after < stats.loss_before
    assert stats.kl_after > 0 and stats.inner_kl > 0 and stats.epochs == 5
    assert len(optimizer.state) > 0  # Adam moments, checkpointed with the run


def test_adaptive_inner_kl_coefficient():
    assert maml.adapt_kl_coef(1e-3, inner_kl=0.001, target=0.01) == pytest.approx(5e-4)
    assert maml.adapt_kl_coef(1e-3, inner_kl=0.02, target=0.01) == pytest.approx(2e-3)
    assert maml.adapt_kl_coef(1e-3, inner_kl=0.01, target=0.01) == 1e-3
