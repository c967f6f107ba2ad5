"""Returns, advantages and the linear feature baseline: pure functions over padded episode batches.

Every function takes tensors shaped ``[..., H]`` (any leading batch dims, time last) together with a
``mask`` of the same shape that is 1.0 for steps that happened (up to and including the terminal
step) and 0.0 for padding after termination. Padded steps never leak into the results.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"shape mismatch: {shapes}")


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Reward-to-go ``G_t = m_t (r_t + gamma * G_{t+1})`` with ``G_H = 0``.

    Args:
        rewards, mask: ``[..., H]``.
        gamma: discount factor in [0, 1].
    Returns:
        ``[..., H]`` discounted returns, zero on padded steps.
    """
    _check_same_shape(rewards=rewards, mask=mask)
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = mask[..., t] * (rewards[..., t] + gamma * running)
        returns[..., t] = running
    return returns


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimation (Schulman et al., 2016).

    ``delta_t = r_t + gamma * m_{t+1} V_{t+1} - V_t`` and
    ``A_t = m_t (delta_t + gamma * lam * A_{t+1})``, with ``V_H = A_H = 0``: episodes are not
    bootstrapped at the horizon, as in the MAML reference implementations. With ``lam = 1`` this is
    ``G_t - V_t``.

    Args:
        rewards, values, mask: ``[..., H]``.
    Returns:
        ``[..., H]`` advantages, zero on padded steps.
    """
    _check_same_shape(rewards=rewards, values=values, mask=mask)
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    next_value = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        delta = rewards[..., t] + gamma * next_value - values[..., t]
        running = mask[..., t] * (delta + gamma * lam * running)
        advantages[..., t] = running
        next_value = values[..., t]
    return advantages


def _features(observations: Tensor, t: Tensor) -> Tensor:
    """``[o, o^2, t, t^2, t^3, 1]`` for observations ``[..., obs_dim]`` at scaled times ``t`` ``[...]``."""
    obs = observations.clamp(-10.0, 10.0)
    t = t.unsqueeze(-1).to(obs.dtype)
    return torch.cat([obs, obs**2, t, t**2, t**3, torch.ones_like(t)], dim=-1)


def baseline_features(observations: Tensor, mask: Tensor) -> Tensor:
    """Features of the linear baseline: ``[o, o^2, t, t^2, t^3, 1]`` with ``t = step / 100``.

    Observations are clipped to [-10, 10] as in the reference implementations.

    Args:
        observations: ``[..., H, obs_dim]``; mask: ``[..., H]``.
    Returns:
        ``[..., H, 2 * obs_dim + 4]``, zero on padded steps.
    """
    if observations.shape[:-1] != mask.shape:
        raise ValueError(f"observations {tuple(observations.shape)} do not match mask {tuple(mask.shape)}")
    horizon = mask.shape[-1]
    t = torch.arange(horizon, dtype=observations.dtype, device=observations.device) / 100.0
    return _features(observations, t.expand(mask.shape)) * mask.unsqueeze(-1)


def linear_feature_baseline(
    observations: Tensor, returns: Tensor, mask: Tensor, ridge: float = 1e-5, max_tries: int = 5,
    final_observations: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Per-task least-squares value estimate fitted on the task's own episodes.

    For each task (leading dim) solve ``(X^T X + c I) w = X^T G`` over that task's valid steps, where
    ``X`` are :func:`baseline_features` and ``G`` the returns; ``c`` starts at ``ridge`` and grows
    tenfold (up to ``max_tries`` times) while the system is numerically singular. The fit runs in
    float64.

    Args:
        observations: ``[T, E, H, obs_dim]``; returns, mask: ``[T, E, H]``.
        final_observations: optional ``[T, E, obs_dim]``, the observation each episode ended in
            (after its last valid step ``L - 1``).
    Returns:
        ``[T, E, H]`` baseline values ``X w``, zero on padded steps; with ``final_observations``
        also ``[T, E]`` the fitted value of each final observation at step ``L`` (its length).
    """
    _check_same_shape(returns=returns, mask=mask)
    if returns.dim() != 3:
        raise ValueError(f"expected [task, episode, time] returns, got shape {tuple(returns.shape)}")
    features = baseline_features(observations, mask).double()
    num_tasks, num_features = features.shape[0], features.shape[-1]
    x = features.reshape(num_tasks, -1, num_features)
    g = (returns * mask).double().reshape(num_tasks, -1, 1)
    xtx = x.transpose(1, 2) @ x
    xtg = x.transpose(1, 2) @ g
    eye = torch.eye(num_features, dtype=xtx.dtype, device=xtx.device)
    weights = torch.zeros(num_tasks, num_features, 1, dtype=xtx.dtype, device=xtx.device)
    pending = torch.ones(num_tasks, dtype=torch.bool, device=xtx.device)
    coeff = ridge
    for _ in range(max_tries):
        chol, info = torch.linalg.cholesky_ex(xtx + coeff * eye)
        solved = (info == 0) & pending
        if solved.any():
            weights[solved] = torch.cholesky_solve(xtg[solved], chol[solved])
            pending &= ~solved
        if not pending.any():
            break
        coeff *= 10.0
    if pending.any():
        raise FloatingPointError(
            f"linear baseline fit failed for tasks {pending.nonzero().flatten().tolist()} "
            f"even with ridge {coeff:g}; observations may contain NaN or inf"
        )
    values = (x @ weights).reshape(returns.shape).to(returns.dtype) * mask
    if final_observations is None:
        return values
    lengths = mask.sum(-1).double() / 100.0
    final = _features(final_observations.double(), lengths).reshape(num_tasks, -1, num_features) @ weights
    return values, final.reshape(mask.shape[:-1]).to(returns.dtype)


def bootstrap_rewards(rewards: Tensor, mask: Tensor, truncated: Tensor, final_values: Tensor, gamma: float) -> Tensor:
    """Rewards with a truncated episode's value added at its last step: ``r'_{L-1} = r_{L-1} + gamma V(s_L)``.

    An episode cut off by a time limit (``truncated``) did not reach a terminal state: its return
    continues past the cut, estimated by the value ``V(s_L)`` of the observation it was cut off in.
    Added to the last valid reward, every return, GAE and DiCE computation downstream
    (which stop at the end of the mask) then bootstraps from it. Terminated episodes are unchanged.

    Args:
        rewards, mask: ``[..., H]``; truncated (bool), final_values: ``[...]``.
    Returns:
        ``[..., H]``.
    """
    _check_same_shape(rewards=rewards, mask=mask)
    if truncated.shape != rewards.shape[:-1] or final_values.shape != rewards.shape[:-1]:
        raise ValueError(f"truncated {tuple(truncated.shape)} and final_values {tuple(final_values.shape)} must be "
                         f"{tuple(rewards.shape[:-1])}")
    lengths = mask.sum(-1).long()
    last = (lengths - 1).clamp_min(0)
    bonus = (gamma * final_values * (truncated & (lengths > 0)).to(rewards.dtype)).unsqueeze(-1)
    return rewards.scatter_add(-1, last.unsqueeze(-1), bonus)


def _masked_moments(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-task mean and population std over valid steps (all dims but the first), kept as dims."""
    dims = tuple(range(1, values.dim()))
    count = mask.sum(dim=dims, keepdim=True).clamp_min(1.0)
    mean = (values * mask).sum(dim=dims, keepdim=True) / count
    var = (((values - mean) * mask) ** 2).sum(dim=dims, keepdim=True) / count
    return mean, var.sqrt()


def normalize_advantages(advantages: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Standardise advantages per task over its valid steps: ``(A - mean) / (std + eps)``.

    Args:
        advantages, mask: ``[T, ...]``; statistics are taken over all dims but the first.
    Returns:
        Same shape, zero on padded steps. ``std`` is the population standard deviation.
    """
    _check_same_shape(advantages=advantages, mask=mask)
    mean, std = _masked_moments(advantages, mask)
    return (advantages - mean) / (std + eps) * mask


def dice_weights(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float,
    normalize: bool = False,
    eps: float = 1e-8,
    returns: Tensor | None = None,
) -> Tensor:
    """Per-step weights of the DiCE objective with a baseline (Foerster et al., 2018; Mao et al., 2019).

    ``w_t = m_t gamma^t (r_t + gamma m_{t+1} b_{t+1} - b_t)`` with ``b_H = 0`` (no bootstrap at the
    horizon, as :func:`gae`). Their sum from ``t`` on telescopes to ``gamma^t (G_t - b_t)``, so
    ``sum_t box(sum_{t' <= t} log pi_t') w_t`` is the discounted return minus ``b_0`` (a constant of
    the start state) with every derivative of the return: the baseline lowers the variance
    without biasing any order. ``normalize`` divides a task's weights by the std of its
    ``G_t - b_t`` over valid steps: a positive constant per task (no mean is subtracted; that would
    bias the objective where episodes terminate), which puts DiCE's inner step on the scale of
    :func:`normalize_advantages`' VPG step.

    Args:
        rewards, values, mask: ``[T, ..., H]``; ``values`` are the baseline's ``b_t``.
        returns: :func:`discounted_returns` of ``rewards`` when the caller has them (for
            ``normalize``; computed otherwise).
    Returns:
        ``[T, ..., H]`` weights, zero on padded steps.
    """
    _check_same_shape(rewards=rewards, values=values, mask=mask)
    values = values * mask
    next_values = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    discount = gamma ** torch.arange(rewards.shape[-1], dtype=rewards.dtype, device=rewards.device)
    weights = discount * (rewards + gamma * next_values - values) * mask
    if normalize:
        returns = discounted_returns(rewards, mask, gamma) if returns is None else returns
        _, std = _masked_moments(returns - values, mask)
        weights = weights / (std + eps)
    return weights


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over valid steps per task: ``sum(m * x) / sum(m)`` over all dims but the first -> ``[T]``."""
    _check_same_shape(values=values, mask=mask)
    dims = tuple(range(1, values.dim()))
    return (values * mask).sum(dim=dims) / mask.sum(dim=dims).clamp_min(1.0)
