"""Returns, GAE, baseline and normalisation against values computed by hand."""

import pytest
import torch

from metarl.returns import (
    baseline_features,
    bootstrap_rewards,
    dice_weights,
    discounted_returns,
    gae,
    linear_feature_baseline,
    masked_mean,
    normalize_advantages,
)


def test_discounted_returns_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # second episode ended after 2 steps
    got = discounted_returns(rewards, mask, gamma=0.5)
    # row 0: G2 = 3, G1 = 2 + 0.5*3 = 3.5, G0 = 1 + 0.5*3.5 = 2.75
    # row 1: padded reward 5 must not leak: G1 = 1, G0 = 1 + 0.5 = 1.5
    assert torch.allclose(got, torch.tensor([[2.75, 3.5, 3.0], [1.5, 1.0, 0.0]]))


def test_gae_by_hand_and_lambda_one_is_returns_minus_values():
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 1.0, 1.5]])
    mask = torch.ones(1, 3)
    gamma, lam = 0.9, 0.5
    # deltas: d2 = 2 - 1.5 = 0.5; d1 = 0 + 0.9*1.5 - 1 = 0.35; d0 = 1 + 0.9*1 - 0.5 = 1.4
    # A2 = 0.5; A1 = 0.35 + 0.45*0.5 = 0.575; A0 = 1.4 + 0.45*0.575 = 1.65875
    got = gae(rewards, values, mask, gamma, lam)
    assert torch.allclose(got, torch.tensor([[1.65875, 0.575, 0.5]]))
    full = gae(rewards, values, mask, gamma, 1.0)
    assert torch.allclose(full, discounted_returns(rewards, mask, gamma) - values)


def test_gae_ignores_values_and_rewards_after_termination():
    rewards = torch.tensor([[1.0, 1.0, 9.0]])
    values = torch.tensor([[0.0, 0.5, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    got = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # no bootstrap from the padded step: A1 = 1 - 0.5, A0 = 1 + 1 - 0
    assert torch.allclose(got, torch.tensor([[2.0, 0.5, 0.0]]))


def test_baseline_features_layout():
    obs = torch.tensor([[[2.0], [-1.0]]])  # [E=1, H=2, obs_dim=1]
    mask = torch.tensor([[1.0, 1.0]])
    feats = baseline_features(obs, mask)
    t1 = 0.01
    expected = torch.tensor([[[2.0, 4.0, 0.0, 0.0, 0.0, 1.0], [-1.0, 1.0, t1, t1**2, t1**3, 1.0]]])
    assert torch.allclose(feats, expected)


def test_linear_baseline_recovers_a_linear_target_per_task():
    torch.manual_seed(0)
    obs = torch.randn(2, 3, 5, 2, dtype=torch.float64)
    mask = torch.ones(2, 3, 5, dtype=torch.float64)
    mask[1, 0, 3:] = 0.0
    feats = baseline_features(obs, mask)
    w = torch.randn(2, feats.shape[-1], dtype=torch.float64)  # a different target per task
    returns = torch.einsum("tehf,tf->teh", feats, w)
    values = linear_feature_baseline(obs, returns, mask, ridge=1e-10)
    assert torch.allclose(values, returns * mask, atol=1e-6)
    assert torch.all(values[1, 0, 3:] == 0)


def test_linear_baseline_ridge_solution_by_hand():
    # One task, one feature-degenerate episode: features x = [o, o^2, t, t^2, t^3, 1] with o = 0 and
    # a single step (t = 0) reduce to x = e_6 (the bias); the ridge solution is w_6 = G / (1 + c).
    obs = torch.zeros(1, 1, 1, 1)
    returns = torch.tensor([[[3.0]]])
    mask = torch.ones(1, 1, 1)
    c = 0.5
    values = linear_feature_baseline(obs, returns, mask, ridge=c)
    assert values.item() == pytest.approx(3.0 / (1.0 + c))


def test_normalize_advantages_per_task_over_valid_steps():
    adv = torch.tensor([[[1.0, 3.0, 100.0]], [[2.0, 2.0, 4.0]]])
    mask = torch.tensor([[[1.0, 1.0, 0.0]], [[1.0, 1.0, 1.0]]])
    got = normalize_advantages(adv, mask, eps=0.0)
    # task 0: valid {1, 3}: mean 2, std 1 -> [-1, 1, 0]; task 1: {2, 2, 4}: mean 8/3, std sqrt(8/9)
    s = (8 / 9) ** 0.5
    expected = torch.tensor([[[-1.0, 1.0, 0.0]], [[(2 - 8 / 3) / s, (2 - 8 / 3) / s, (4 - 8 / 3) / s]]])
    assert torch.allclose(got, expected)


def test_masked_mean_per_task():
    x = torch.tensor([[1.0, 2.0, 30.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert torch.allclose(masked_mean(x, mask), torch.tensor([1.5, 5.0]))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape mismatch"):
        discounted_returns(torch.zeros(2, 3), torch.zeros(2, 4), 0.9)


def test_dice_weights_by_hand_telescope_to_discounted_advantages():
    rewards = torch.tensor([[[1.0, 2.0, 3.0]]])
    values = torch.tensor([[[0.5, 1.0, 1.5]]])
    mask = torch.tensor([[[1.0, 1.0, 0.0]]])  # ended after 2 steps: b_2 and r_2 must not count
    got = dice_weights(rewards, values, mask, gamma=0.5)
    # w_0 = 1 * (1 + 0.5 * 1.0 - 0.5) = 1.0; w_1 = 0.5 * (2 + 0.5 * 0 - 1.0) = 0.5; w_2 = 0
    assert torch.allclose(got, torch.tensor([[[1.0, 0.5, 0.0]]]))
    # sum_{t' >= t} w_t' = gamma^t (G_t - b_t): G = [2, 2], so [1.5, 0.5 * 1.0]
    to_go = got.flip(-1).cumsum(-1).flip(-1)
    assert torch.allclose(to_go, torch.tensor([[[1.5, 0.5, 0.0]]]))
    # normalised: divided by the std of G_t - b_t = [1.5, 1.0] over valid steps, 0.25
    assert torch.allclose(dice_weights(rewards, values, mask, 0.5, normalize=True), torch.tensor([[[4.0, 2.0, 0.0]]]))


def test_bootstrap_rewards_adds_the_value_of_the_cut_off_state_at_the_last_step():
    # Two episodes of horizon 4: the first truncated after 2 steps, the second terminated after 3.
    rewards = torch.tensor([[1.0, 2.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    truncated = torch.tensor([True, False])
    final_values = torch.tensor([10.0, 50.0])
    out = bootstrap_rewards(rewards, mask, truncated, final_values, gamma=0.5)
    assert torch.equal(out, torch.tensor([[1.0, 2.0 + 0.5 * 10.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]]))
    # the discounted return then continues past the cut: G_0 = 1 + 0.5 * (2 + 0.5 * 10)
    assert discounted_returns(out, mask, 0.5)[0, 0] == pytest.approx(1 + 0.5 * (2 + 5))
    # an empty slot (no valid step) gains nothing even if flagged
    empty = bootstrap_rewards(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([True]), torch.tensor([7.0]), 0.9)
    assert torch.equal(empty, torch.zeros(1, 3))


def test_linear_baseline_values_final_observations_at_the_episode_length():
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(1, 3, 5, 2, generator=g)
    mask = torch.ones(1, 3, 5)
    returns = torch.randn(1, 3, 5, generator=g)
    final_obs = torch.randn(1, 3, 2, generator=g)
    values, final = linear_feature_baseline(obs, returns, mask, final_observations=final_obs)
    assert torch.allclose(values, linear_feature_baseline(obs, returns, mask))
    # the same fit applied to the final observation at step 5: extend the batch by one step of weight ~0
    longer_obs = torch.cat([obs, final_obs[:, :, None]], dim=2)
    features = baseline_features(longer_obs, torch.ones(1, 3, 6))[:, :, 5]
    x = baseline_features(obs, mask).reshape(-1, features.shape[-1]).double()
    w = torch.linalg.solve(x.T @ x + 1e-5 * torch.eye(x.shape[1], dtype=x.dtype), x.T @ returns.reshape(-1).double())
    assert torch.allclose(final.double(), features.double() @ w, atol=1e-4)
