"""MAML for RL: inner-loop policy-gradient adaptation and the TRPO meta-update.

One meta-iteration, for a batch of T tasks (all computed together, parameters stacked per task):

1. ``theta_0 = theta``; for each inner step k: sample episodes D_k with ``theta_k``,
   ``theta_{k+1} = theta_k - alpha * grad L_vpg(theta_k; D_k)`` (:func:`adapt`).
2. Sample validation episodes D' with the adapted ``theta_K``.
3. Meta-objective: the post-adaptation TRPO surrogate ``L(theta) = mean_T -E_D'[ratio * A]``,
   where ``ratio = pi_{theta_K(theta)}(a|s) / pi_old(a|s)``, differentiated through the adaptation
   (second order by default; first order treats each ``grad L_vpg`` as a constant).
4. TRPO: natural-gradient direction by conjugate gradient on exact Hessian-vector products of the
   mean post-adaptation KL, scaled to the KL bound, then a backtracking line search; the step is
   reverted when no candidate lowers the loss within the bound (:func:`trpo_meta_step`).

The loss is the mean over tasks rather than the sum: the TRPO step is the same either way (the
direction and its scaling to the KL bound cancel any constant factor), and per-task numbers are
easier to read in the logs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Normal

from metarl.episodes import Episodes
from metarl.policy import GaussianMLPPolicy, Params, expand_params
from metarl.returns import masked_mean
from metarl.trpo import backtracking_line_search, conjugate_gradient, flat, gaussian_kl, hessian_vector_product


def _flatten_steps(episodes: Episodes) -> tuple[Tensor, Tensor]:
    num_tasks = episodes.num_tasks
    obs = episodes.observations.reshape(num_tasks, -1, episodes.observations.shape[-1])
    actions = episodes.actions.reshape(num_tasks, -1, episodes.actions.shape[-1])
    return obs, actions


def policy_outputs(policy: GaussianMLPPolicy, params: Params, episodes: Episodes) -> tuple[Tensor, Tensor]:
    """Mean and std of the policy on every step, ``[T, E*H, act_dim]``; ``params`` shared or ``[T, ...]``."""
    obs, _ = _flatten_steps(episodes)
    return policy.mean_std(obs, params)


def _log_prob(mean: Tensor, std: Tensor, episodes: Episodes) -> Tensor:
    _, actions = _flatten_steps(episodes)
    return Normal(mean, std).log_prob(actions).sum(-1).reshape(episodes.rewards.shape)


def log_probs(policy: GaussianMLPPolicy, params: Params, episodes: Episodes) -> Tensor:
    """``log pi(a_t | s_t)`` of the recorded actions under ``params``, ``[T, E, H]``."""
    return _log_prob(*policy_outputs(policy, params, episodes), episodes)


def _advantages(episodes: Episodes) -> Tensor:
    if episodes.advantages is None:
        raise ValueError("episodes have no advantages; call episodes.compute_advantages(...) first")
    return episodes.advantages


def vpg_loss(policy: GaussianMLPPolicy, params: Params, episodes: Episodes) -> Tensor:
    """REINFORCE loss per task, ``-sum_t m_t log pi(a_t|s_t) A_t / sum_t m_t``, ``[T]``."""
    return -masked_mean(log_probs(policy, params, episodes) * _advantages(episodes), episodes.mask)


def adapt(
    policy: GaussianMLPPolicy, params: Params, episodes: Episodes, step_size: float, first_order: bool = False
) -> Params:
    """One inner VPG step per task: ``theta' = theta - step_size * grad L_vpg(theta; D_task)``.

    Args:
        params: per-task parameters ``[T, ...]`` (use :func:`expand_params` on shared ones).
        first_order: if True the gradient is treated as a constant (FOMAML); otherwise the graph of
            the gradient is kept so that the result can be differentiated twice.
    Returns:
        New per-task parameters; ``params`` is not modified.
    """
    if not torch.is_grad_enabled() or not all(p.requires_grad for p in params.values()):
        # A value-only call (e.g. under no_grad): differentiate w.r.t. fresh leaves instead.
        params = {name: p.detach().requires_grad_() for name, p in params.items()}
    with torch.enable_grad():
        loss = vpg_loss(policy, params, episodes).sum()  # tasks are independent: sum = per-task grads
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order)
    return {name: p - step_size * g for (name, p), g in zip(params.items(), grads)}


def adapt_steps(
    policy: GaussianMLPPolicy,
    theta: Params,
    train_episodes: list[Episodes],
    step_size: float,
    first_order: bool = False,
) -> Params:
    """Apply one :func:`adapt` step per batch of ``train_episodes``, starting from shared ``theta``."""
    params = expand_params(theta, train_episodes[0].num_tasks)
    for episodes in train_episodes:
        params = adapt(policy, params, episodes, step_size, first_order)
    return params


def surrogate_loss(log_prob_new: Tensor, log_prob_old: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """TRPO surrogate per task, ``-sum_t m_t exp(logp_new - logp_old) A_t / sum_t m_t``, ``[T]``."""
    return -masked_mean(torch.exp(log_prob_new - log_prob_old) * advantages, mask)


@dataclass
class MetaBatch:
    """Everything a meta-update needs: per inner step the episodes adapted on, and the validation episodes."""

    train: list[Episodes]
    valid: Episodes


@dataclass
class TRPOStats:
    loss_before: float
    loss_after: float
    kl_after: float
    grad_norm: float
    #: index k of the accepted step fraction ``backtrack_ratio ** k``, or None when reverted.
    line_search_step: int | None

    @property
    def accepted(self) -> bool:
        return self.line_search_step is not None


def _meta_objective(
    policy: GaussianMLPPolicy,
    theta: Params,
    batch: MetaBatch,
    step_size: float,
    first_order: bool,
    old: tuple[Tensor, Tensor, Tensor],
) -> tuple[Tensor, Tensor]:
    """Mean post-adaptation surrogate loss and mean KL(old || new) over tasks at ``theta``."""
    valid = batch.valid
    params = adapt_steps(policy, theta, batch.train, step_size, first_order)
    mean, std = policy_outputs(policy, params, valid)
    log_prob = _log_prob(mean, std, valid)
    old_mean, old_std, old_log_prob = old
    loss = surrogate_loss(log_prob, old_log_prob, _advantages(valid), valid.mask).mean()
    kl = masked_mean(gaussian_kl(old_mean, old_std, mean, std).reshape(valid.rewards.shape), valid.mask).mean()
    return loss, kl


def trpo_meta_step(
    policy: GaussianMLPPolicy,
    batch: MetaBatch,
    inner_step_size: float,
    first_order: bool = False,
    max_kl: float = 0.01,
    cg_iters: int = 10,
    cg_damping: float = 1e-5,
    line_search_steps: int = 15,
    backtrack_ratio: float = 0.8,
) -> TRPOStats:
    """One TRPO meta-update of ``policy``'s parameters in place (see the module docstring)."""
    theta = policy.parameters_dict()
    tensors = list(theta.values())

    with torch.no_grad():
        old_params = adapt_steps(policy, theta, batch.train, inner_step_size, first_order=True)
        old_params = {name: p.detach() for name, p in old_params.items()}
        old_mean, old_std = policy_outputs(policy, old_params, batch.valid)
        old_log_prob = _log_prob(old_mean, old_std, batch.valid)
    old = (old_mean, old_std, old_log_prob)

    loss, kl = _meta_objective(policy, theta, batch, inner_step_size, first_order, old)
    grad = flat(torch.autograd.grad(loss, tensors, retain_graph=True))
    fisher_product = hessian_vector_product(kl, tensors, damping=cg_damping)
    direction, fisher_direction = conjugate_gradient(fisher_product, grad, iters=cg_iters)
    curvature = 0.5 * (direction @ fisher_direction)
    loss_before = float(loss.item())
    grad_norm = float(grad.norm().item())
    if not torch.isfinite(curvature) or curvature <= 0:
        return TRPOStats(loss_before, loss_before, 0.0, grad_norm, None)
    full_step = direction / torch.sqrt(curvature / max_kl)

    start = flat(tensors).detach().clone()

    def set_flat(vector: Tensor) -> None:
        with torch.no_grad():
            offset = 0
            for p in tensors:
                p.copy_(vector[offset : offset + p.numel()].view_as(p))
                offset += p.numel()

    def evaluate(fraction: float) -> tuple[float, float]:
        set_flat(start - fraction * full_step)
        with torch.no_grad():
            candidate = policy.parameters_dict()
            # The value of the adapted parameters does not depend on the order; first-order skips the graph.
            new_loss, new_kl = _meta_objective(policy, candidate, batch, inner_step_size, True, old)
        return float(new_loss.item()), float(new_kl.item())

    step, loss_after, kl_after = backtracking_line_search(
        evaluate, loss_before, max_kl, max_steps=line_search_steps, backtrack_ratio=backtrack_ratio
    )
    if step is None:  # reverted: report the parameters actually kept
        set_flat(start)
        loss_after, kl_after = loss_before, 0.0
    return TRPOStats(loss_before, loss_after, kl_after, grad_norm, step)

