"""The DiCE inner loss: its gradient in closed form, its Hessian against LVC's on one-step episodes,
and its first two derivatives against the exact expected return of a small problem (brute force)."""

import pytest
import torch

import metarl.maml as maml
from conftest import synthetic_episodes
from metarl.episodes import Episodes
from metarl.policy import GaussianMLPPolicy
from metarl.returns import masked_mean
from metarl.trpo import flat


def tiny_policy(obs_dim=2, hidden_sizes=(5,)):
    torch.manual_seed(0)
    return GaussianMLPPolicy(obs_dim, obs_dim, hidden_sizes=hidden_sizes, nonlinearity="tanh", init_std=0.8).double()


def leaves_of(policy, num_tasks=1):
    return {k: v.detach().expand(num_tasks, *v.shape).clone().requires_grad_()
            for k, v in policy.parameters_dict().items()}


def gradient(loss, leaves, create_graph=False):
    return torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph)


def hessian(grads, leaves):
    """The full Hessian from the gradient's graph, one Hessian-vector product per coordinate."""
    g = flat(list(grads))
    rows = [flat(list(torch.autograd.grad(g[i], list(leaves.values()), retain_graph=True))) for i in range(g.numel())]
    return torch.stack(rows)


def test_dice_gradient_is_reinforce_with_discounted_advantages_and_equals_vpg_at_gamma_one():
    policy = tiny_policy()
    episodes = synthetic_episodes(num_tasks=2, num_episodes=3, horizon=5, seed=3)
    leaves = leaves_of(policy, 2)
    # grad = -mean_t grad log pi_t * sum_{t' >= t} w_t' (= gamma^t (G_t - b_t), scaled)
    to_go = episodes.dice_weights.flip(-1).cumsum(-1).flip(-1)
    reinforce = -masked_mean(maml.log_probs(policy, leaves, episodes) * to_go, episodes.mask).sum()
    dice = maml.dice_loss(policy, leaves, episodes).sum()
    assert all(torch.allclose(a, b, atol=1e-12)
               for a, b in zip(gradient(dice, leaves), gradient(reinforce, leaves), strict=True))
    # With gamma = 1, lambda = 1 and no scaling, DiCE's inner step is exactly VPG's (theory: both
    # are REINFORCE with the same baseline); their Hessians differ (DiCE adds the score terms).
    episodes.compute_advantages(gamma=1.0, gae_lambda=1.0, normalize=False)
    g_dice = gradient(maml.dice_loss(policy, leaves, episodes).sum(), leaves, create_graph=True)
    g_vpg = gradient(maml.vpg_loss(policy, leaves, episodes).sum(), leaves, create_graph=True)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(g_dice, g_vpg, strict=True))
    assert not torch.allclose(hessian(g_dice, leaves), hessian(g_vpg, leaves), atol=1e-6)


def test_dice_hessian_equals_lvc_on_one_step_episodes():
    # With one step there are no cross-time terms: DiCE's Hessian is LVC's exactly.
    policy = tiny_policy()
    episodes = synthetic_episodes(num_tasks=2, num_episodes=4, horizon=1, seed=5)
    episodes.compute_advantages(gamma=0.9, gae_lambda=1.0, normalize=False)
    leaves = leaves_of(policy, 2)
    g_dice = gradient(maml.dice_loss(policy, leaves, episodes).sum(), leaves, create_graph=True)
    g_lvc = gradient(maml.lvc_loss(policy, leaves, episodes).sum(), leaves, create_graph=True)
    assert torch.allclose(hessian(g_dice, leaves), hessian(g_lvc, leaves), atol=1e-12)


TARGET = 1.0


def expected_return(w, b, log_std, gamma):
    """Exact J of the two-step problem below: a_0 ~ N(b, s^2) from observation 0, a_1 ~ N(w a_0 + b, s^2)
    from observation a_0, r_t = -(a_t - c)^2: ``-((b - c)^2 + s^2) - gamma ((w b + b - c)^2 + w^2 s^2 + s^2)``."""
    s2 = torch.exp(2 * log_std)
    return -((b - TARGET) ** 2 + s2) - gamma * ((w * b + b - TARGET) ** 2 + w**2 * s2 + s2)


def two_step_episodes(w, b, log_std, gamma, num_episodes, generator):
    noise = torch.randn(num_episodes, 2, generator=generator, dtype=torch.float64) * log_std.exp()
    a0 = b + noise[:, 0]
    a1 = w * a0 + b + noise[:, 1]
    actions = torch.stack([a0, a1], dim=-1)[None, :, :, None]
    observations = torch.stack([torch.zeros_like(a0), a0], dim=-1)[None, :, :, None]
    rewards = -((actions[..., 0] - TARGET) ** 2)
    episodes = Episodes(observations, actions, rewards, torch.ones_like(rewards), [None])
    episodes.compute_advantages(gamma, gae_lambda=1.0, normalize=False)
    return episodes


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_dice_gradient_and_hessian_are_unbiased_and_lvc_hessian_is_not(gamma):
    # Brute force: 20 independent batches of 10k episodes; each estimate's mean over batches must lie
    # within 4 standard errors of the exact derivatives of J. The second action depends on the first,
    # so the cross-time terms that DiCE keeps and LVC drops are non-zero here. With gamma < 1 the
    # gamma^t factor matters too (LVC's advantages, like VPG's, have none).
    policy = GaussianMLPPolicy(1, 1, hidden_sizes=(), init_std=0.5).double()
    with torch.no_grad():
        policy.mean.weight.fill_(0.5)
        policy.mean.bias.fill_(0.2)
    w, b, log_std = (policy.mean.weight[0, 0].detach(), policy.mean.bias[0].detach(), policy.log_std[0].detach())
    # in the order of policy.parameters_dict(): log_std (the module's own), mean.weight, mean.bias
    exact_grad = torch.func.grad(lambda x: expected_return(x[1], x[2], x[0], gamma))(torch.stack([log_std, w, b]))
    exact_hessian = torch.func.hessian(lambda x: expected_return(x[1], x[2], x[0], gamma))(torch.stack([log_std, w, b]))
    generator = torch.Generator().manual_seed(0)
    estimates = {"dice": ([], []), "lvc": ([], [])}
    for _ in range(20):
        episodes = two_step_episodes(w, b, log_std, gamma, 10_000, generator)
        for name, (grads, hessians) in estimates.items():
            leaves = leaves_of(policy)
            # the losses are means over the 2 steps of every episode, so -2 * loss estimates J
            g = gradient(-2 * maml.INNER_LOSSES[name](policy, leaves, episodes).sum(), leaves, create_graph=True)
            grads.append(flat(list(g)).detach())
            hessians.append(hessian(g, leaves).detach())

    def within(samples, exact):
        samples = torch.stack(samples)
        stderr = samples.std(0) / len(samples) ** 0.5
        return bool(((samples.mean(0) - exact).abs() <= 4 * stderr + 1e-9).all())

    assert within(estimates["dice"][0], exact_grad)
    assert within(estimates["dice"][1], exact_hessian)
    if gamma == 1.0:
        assert within(estimates["lvc"][0], exact_grad)  # REINFORCE's gradient: unbiased without discount
    assert not within(estimates["lvc"][1], exact_hessian)
