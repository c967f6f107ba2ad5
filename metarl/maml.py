"""MAML for RL: inner-loop policy-gradient adaptation and the TRPO meta-update.

One meta-iteration, for a batch of T tasks (all computed together, parameters stacked per task):

1. ``theta_0 = theta``; for each inner step k: sample episodes D_k with ``theta_k``,
   ``theta_{k+1} = theta_k - alpha * grad L_vpg(theta_k; D_k)`` (:func:`adapt`).
2. Sample validation episodes D' with the adapted ``theta_K``.
3. Meta-objective: the post-adaptation TRPO surrogate ``L(theta) = mean_T -E_D'[ratio * A]``,
   where ``ratio = pi_{theta_K(theta)}(a|s) / pi_old(a|s)``, differentiated through the adaptation
   (second order by default; first order treats each ``grad L_vpg`` as a constant).
4. TRPO: natural-gradient direction by conjugate gradient on exact Hessian-vector products of the
   mean post-adaptation KL (computed as ``J^T F J``, :func:`_meta_problem`), scaled to the KL bound,
   then a backtracking line search; the step is reverted when no candidate lowers the loss within
   the bound (:func:`trpo_meta_step`).

The loss is the mean over tasks rather than the sum: the TRPO step is the same either way (the
direction and its scaling to the KL bound cancel any constant factor), and per-task numbers are
easier to read in the logs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Normal

from metarl.episodes import Episodes
from metarl.policy import GaussianMLPPolicy, Params, expand_params
from metarl.returns import masked_mean
from metarl.trpo import backtracking_line_search, conjugate_gradient, flat, gaussian_kl


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


def lvc_loss(policy: GaussianMLPPolicy, params: Params, episodes: Episodes) -> Tensor:
    """ProMP's low-variance curvature loss per task, ``-sum_t m_t (pi / stop_grad(pi))(a_t|s_t) A_t / sum_t m_t``.

    Its gradient at the current parameters is :func:`vpg_loss`'s (the ratio is 1 and its gradient is
    ``grad log pi``), so the inner step is the same. Its Hessian is
    ``-mean_t A_t (grad^2 log pi_t + grad log pi_t grad log pi_t^T)``: it adds the per-step score
    term that REINFORCE's Hessian lacks (which biases MAML's meta-gradient), without DiCE's
    cross-time terms and their variance (Rothfuss et al., 2019). Only the second-order
    meta-gradient differs.
    """
    log_prob = log_probs(policy, params, episodes)
    return -masked_mean(torch.exp(log_prob - log_prob.detach()) * _advantages(episodes), episodes.mask)


def magic_box(x: Tensor) -> Tensor:
    """DiCE's operator ``exp(x - stop_grad(x))``: 1 in value, ``d box(x) = box(x) dx`` in every order."""
    return torch.exp(x - x.detach())


def segment_cumsum(values: Tensor, starts: Tensor, mask: Tensor) -> Tensor:
    """Cumulative sum along the last dim that restarts with every segment: ``out_t`` is the sum of the
    valid ``x_u`` with ``s_t <= u <= t``, and 0 where ``mask`` is 0.

    ``s_t`` (``starts``, same shape, integer) is the index of the first element of ``t``'s segment.
    Each segment is a contiguous run of valid elements from its start, as :meth:`Episodes.pack` lays
    out a row of episodes (its padding after them, each slot its own start); other layouts are not
    checked and give wrong sums.

    The values are put into a ``[rows, segments, longest segment]`` buffer and read back, each
    element into and out of its own slot, and summed there by ``cumsum``: every derivative, of any
    order, is then a sum in a fixed order. The shorter ``C_t - C_{s_t} + x_{s_t}`` (``C`` the
    row's cumulative sum) is not: on CUDA the backward of gathering ``C`` at the starts adds the
    many repeated indices with atomics in no fixed order, so two identical runs drift apart.
    """
    width = values.shape[-1]
    flat, starts, valid = values.reshape(-1, width), starts.reshape(-1, width), mask.reshape(-1, width).bool()
    row, col = valid.nonzero(as_tuple=True)
    if row.numel() == 0:
        return values.masked_fill(~mask.bool(), 0.0)  # zeros, still on values' graph
    offset = torch.arange(width, device=values.device) - starts  # place within the segment
    segment = torch.cumsum((valid & (offset == 0)).long(), dim=-1) - 1  # which segment of its row
    seg, off = segment[row, col], offset[row, col]
    lengths = torch.stack([seg.max(), off.max()]) + 1
    num_segments, longest = lengths.tolist()
    buffer = flat.new_zeros(flat.shape[0], num_segments, longest).index_put((row, seg, off), flat[row, col])
    summed = torch.cumsum(buffer, dim=-1)[row, seg, off]
    return flat.new_zeros(flat.shape).index_put((row, col), summed).reshape(values.shape)


def dice_loss(policy: GaussianMLPPolicy, params: Params, episodes: Episodes) -> Tensor:
    """DiCE loss per task, ``-sum_{e,t} m_t box(sum_{t' <= t} m_t' log pi_t') w_t / sum_t m_t``, ``[T]``.

    ``w_t`` are :attr:`Episodes.dice_weights`, the discounted rewards adjusted by the baseline,
    ``gamma^t (r_t + gamma b_{t+1} - b_t)``. The magic box of the cumulative log-probability makes
    every derivative an unbiased estimate of the discounted return's (Foerster et al., 2018),
    cross-time terms included: the Hessian that MAML's meta-gradient needs, at the price of more
    variance than :func:`lvc_loss`. The gradient is ``-mean_t grad log pi_t gamma^t (G_t - b_t)``:
    the inner step differs from VPG's (no GAE, the ``gamma^t`` factor, only scaled per task).
    """
    if episodes.dice_weights is None:
        raise ValueError("episodes have no DiCE weights; call episodes.compute_advantages(...) first")
    log_prob = log_probs(policy, params, episodes) * episodes.mask
    if episodes.episode_starts is None:
        cumulative = torch.cumsum(log_prob, dim=-1)
    else:  # packed: episodes follow each other in a row; sum within each
        cumulative = segment_cumsum(log_prob, episodes.episode_starts, episodes.mask)
    return -masked_mean(magic_box(cumulative) * episodes.dice_weights, episodes.mask)


#: Inner-loop losses (``maml.inner_loss``).
INNER_LOSSES = {"vpg": vpg_loss, "lvc": lvc_loss, "dice": dice_loss}


def check_inner_loss(inner_loss: str) -> None:
    if inner_loss not in INNER_LOSSES:
        raise ValueError(f"inner_loss must be one of {sorted(INNER_LOSSES)}, got {inner_loss!r}")


#: An inner step size: one number (MAML) or one tensor per parameter, shaped like it (Meta-SGD).
StepSize = float | Params


class MetaSGDStepSizes(nn.Module):
    """Meta-SGD's inner step sizes (Li et al., 2017): one learned value per entry of every policy
    parameter, meta-trained together with the initialisation. The inner step becomes
    ``theta - alpha * grad`` (elementwise); ``alpha`` starts at ``init`` everywhere and may change sign.
    """

    def __init__(self, params: Params, init: float):
        super().__init__()
        self.names = list(params)
        self.alphas = nn.ParameterList(nn.Parameter(torch.full_like(p.detach(), init)) for p in params.values())

    def as_params(self) -> Params:
        """The step sizes keyed by parameter name (an :data:`StepSize`), trainable."""
        return dict(zip(self.names, self.alphas, strict=True))


#: CAVIA's context parameter (``GaussianMLPPolicy(context_dim=...)``): zero at the start of every
#: task, adapted by the inner loop only, never by the outer loop.
CONTEXT = "context"


def _step_of(step_size: StepSize, name: str) -> float | Tensor:
    """The step size of parameter ``name``; a dict without it (CAVIA's ``{"context": lr}``) means 0."""
    return step_size.get(name, 0.0) if isinstance(step_size, dict) else step_size


def is_learned(step_size: StepSize) -> bool:
    """Meta-SGD's step sizes (tensors, meta-parameters) rather than fixed numbers."""
    return isinstance(step_size, dict) and any(isinstance(v, Tensor) for v in step_size.values())


def cavia_step_size(inner_lr: float) -> StepSize:
    """CAVIA's inner step: ``inner_lr`` on the context, nothing on the network."""
    return {CONTEXT: inner_lr}


def meta_names(theta: Params) -> list[str]:
    """The names of ``theta`` the outer loop updates: all but CAVIA's context."""
    return [name for name in theta if name != CONTEXT]


def meta_parameters(theta: Params, step_size: StepSize) -> list[Tensor]:
    """What the outer loop updates: ``theta``'s tensors (CAVIA's context aside), then Meta-SGD's
    step sizes if learned."""
    return [*(theta[name] for name in meta_names(theta)), *(step_size.values() if is_learned(step_size) else [])]


def task_kls(old_mean: Tensor, old_std: Tensor, mean: Tensor, std: Tensor, episodes: Episodes) -> Tensor:
    """``KL(old || new)`` of the Gaussian policies averaged over each task's valid steps, ``[T]``."""
    return masked_mean(gaussian_kl(old_mean, old_std, mean, std).reshape(episodes.rewards.shape), episodes.mask)


def adapt(
    policy: GaussianMLPPolicy,
    params: Params,
    episodes: Episodes,
    step_size: StepSize,
    first_order: bool = False,
    inner_loss: str = "vpg",
) -> Params:
    """One inner policy-gradient step per task: ``theta' = theta - step_size * grad L(theta; D_task)``.

    Args:
        params: per-task parameters ``[T, ...]`` (use :func:`expand_params` on shared ones).
        step_size: a number, or per-parameter tensors shaped like ``theta`` (Meta-SGD; shared by
            the tasks, differentiable).
        first_order: if True the gradient is treated as a constant (FOMAML); otherwise the graph of
            the gradient is kept so that the result can be differentiated twice.
        inner_loss: a key of :data:`INNER_LOSSES` (vpg and lvc give the same step and differ in the
            second-order meta-gradient; dice's step uses discounted returns instead of GAE).
    Returns:
        New per-task parameters; ``params`` is not modified.
    """
    if not torch.is_grad_enabled() or not all(p.requires_grad for p in params.values()):
        # A value-only call (e.g. under no_grad): differentiate w.r.t. fresh leaves instead.
        params = {name: p.detach().requires_grad_() for name, p in params.items()}
    # Parameters with a fixed zero step (CAVIA's network) are not adapted: no gradient is taken for them.
    adapted = [name for name in params if not (isinstance(s := _step_of(step_size, name), float) and s == 0.0)]
    with torch.enable_grad():
        loss = INNER_LOSSES[inner_loss](policy, params, episodes).sum()  # tasks are independent: sum = per-task grads
        grads = dict(zip(adapted, torch.autograd.grad(loss, [params[n] for n in adapted], create_graph=not first_order),
                         strict=True))
    return {name: p - _step_of(step_size, name) * grads[name] if name in grads else p for name, p in params.items()}


def adapt_steps(
    policy: GaussianMLPPolicy,
    theta: Params,
    train_episodes: list[Episodes],
    step_size: StepSize,
    first_order: bool = False,
    inner_loss: str = "vpg",
) -> Params:
    """Apply one :func:`adapt` step per batch of ``train_episodes``, starting from shared ``theta``."""
    params = expand_params(theta, train_episodes[0].num_tasks)
    for episodes in train_episodes:
        params = adapt(policy, params, episodes, step_size, first_order, inner_loss)
    return params


def surrogate_loss(log_prob_new: Tensor, log_prob_old: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """TRPO surrogate per task, ``-sum_t m_t exp(logp_new - logp_old) A_t / sum_t m_t``, ``[T]``."""
    return -masked_mean(torch.exp(log_prob_new - log_prob_old) * advantages, mask)


def exploration_weights(valid: Episodes, eps: float = 1e-8) -> Tensor:
    """E-MAML's credit per task, ``[T]``: the post-adaptation rewards standardised over every valid
    step of the meta-batch, ``(r - mu) / (sigma + eps)``, averaged over the task's valid steps.
    (How ProMP's code weights E-MAML's term; a task whose adapted policy did better than the batch
    gets a positive weight.)"""
    mask = valid.mask
    count = mask.sum().clamp_min(1.0)
    mu = (valid.rewards * mask).sum() / count
    sigma = torch.sqrt((((valid.rewards - mu) * mask) ** 2).sum() / count)
    return masked_mean((valid.rewards - mu) / (sigma + eps), mask)


def exploration_loss(policy: GaussianMLPPolicy, theta: Params, batch: MetaBatch) -> Tensor:
    """E-MAML's exploration term per task, ``-w_T mean_t log pi_theta(a_t | s_t)`` over the pre-update
    episodes (the first inner batch, sampled with ``theta``), ``[T]``; ``w`` are the batch's
    :attr:`MetaBatch.exploration` weights.

    MAML differentiates the post-adaptation return only through the adapted parameters. The
    return also depends on ``theta`` through the distribution of the pre-update episodes the
    adaptation used: ``grad J = E[grad_theta theta' ... ] + E[R(tau') grad log pi_theta(tau)]``.
    E-MAML (Stadie et al., 2018, "Some Considerations on Learning to Explore via Meta-Reinforcement
    Learning") adds that second, score-function term, which credits the pre-update (exploration)
    behaviour with the return after adaptation. As in ProMP's implementation the return is the
    standardised post-adaptation reward of the task (:func:`exploration_weights`) and the score
    the mean log-likelihood of its pre-update steps.
    """
    pre = batch.train[0]
    log_prob = log_probs(policy, expand_params(theta, pre.num_tasks), pre)
    return -batch.exploration * masked_mean(log_prob, pre.mask)


@dataclass
class MetaBatch:
    """Everything a meta-update needs: per inner step the episodes adapted on, and the validation
    episodes; with E-MAML also the per-task weights of the exploration term."""

    train: list[Episodes]
    valid: Episodes
    #: E-MAML's per-task weights (:func:`exploration_weights` of the whole meta-batch), or None (MAML).
    exploration: Tensor | None = None

    @property
    def num_tasks(self) -> int:
        return self.valid.num_tasks

    def task_slice(self, start: int, stop: int) -> MetaBatch:
        """The same batch restricted to tasks ``start:stop``."""
        return MetaBatch([e.task_slice(start, stop) for e in self.train], self.valid.task_slice(start, stop),
                         None if self.exploration is None else self.exploration[start:stop])

    def pack(self) -> MetaBatch:
        """Every batch packed (:meth:`Episodes.pack`): the meta-update then pays for valid steps only."""
        return MetaBatch([e.pack() for e in self.train], self.valid.pack(), self.exploration)

    def with_exploration(self) -> MetaBatch:
        """The batch with E-MAML's weights, standardised over all of its tasks."""
        return MetaBatch(self.train, self.valid, exploration_weights(self.valid))


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
    step_size: StepSize,
    first_order: bool,
    old: tuple[Tensor, Tensor, Tensor],
    inner_loss: str = "vpg",
) -> tuple[Tensor, Tensor]:
    """Mean post-adaptation surrogate loss and mean KL(old || new) over tasks at ``theta``."""
    valid = batch.valid
    params = adapt_steps(policy, theta, batch.train, step_size, first_order, inner_loss)
    mean, std = policy_outputs(policy, params, valid)
    log_prob = _log_prob(mean, std, valid)
    old_mean, old_std, old_log_prob = old
    loss = surrogate_loss(log_prob, old_log_prob, _advantages(valid), valid.mask).mean()
    if batch.exploration is not None:
        loss = loss + exploration_loss(policy, theta, batch).mean()
    kl = task_kls(old_mean, old_std, mean, std, valid).mean()
    return loss, kl


class AdaptationJacobian:
    """The inner adaptation ``theta -> theta_K`` of T tasks, linearised at the current ``theta``.

    One step is ``theta_k = theta_{k-1} - alpha * g_k(theta_{k-1})``, so its Jacobian is
    ``J_k = I - alpha H_k``, with ``H_k`` the Hessian of task k's inner loss at ``theta_{k-1}``
    (block diagonal over tasks, symmetric; ``alpha`` a number or, for Meta-SGD, a diagonal).
    ``J = J_K ... J_1``; products with ``J`` and ``J^T`` are chains of Hessian-vector products on
    the inner episodes, each one backward pass through the inner gradients' graph, for all tasks at
    once. First order (FOMAML) has ``J = I``.

    With Meta-SGD the step sizes are meta-parameters too: ``d theta_k / d alpha = -diag(g_k)``, so
    the tangents and cotangents gain an ``alpha`` part (after ``theta``'s, in the same order),
    built from the inner gradients' values; still no third derivatives.

    Attributes:
        adapted: the adapted per-task parameters ``theta_K`` (``[T, ...]``, detached).
    """

    def __init__(
        self,
        policy: GaussianMLPPolicy,
        theta: Params,
        train: list[Episodes],
        step_size: StepSize,
        first_order: bool,
        inner_loss: str = "vpg",
    ):
        self.learned = is_learned(step_size)
        self.step_size = {k: v.detach() for k, v in step_size.items()} if self.learned else step_size
        self.names, self.num_tasks, self.first_order = list(theta), train[0].num_tasks, first_order
        self._hessians: list[tuple[list[Tensor], tuple[Tensor, ...]]] = []
        self._gradients: list[list[Tensor]] = []  # inner gradients' values, for d theta_k / d alpha
        params = expand_params({name: p.detach() for name, p in theta.items()}, self.num_tasks)
        for episodes in train:
            leaves = {name: p.detach().requires_grad_() for name, p in params.items()}
            with torch.enable_grad():
                loss = INNER_LOSSES[inner_loss](policy, leaves, episodes).sum()
                grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=not first_order)
            if not first_order:
                self._hessians.append((list(leaves.values()), grads))
            self._gradients.append([g.detach() for g in grads])
            params = {name: (p - _step_of(self.step_size, name) * g).detach()
                      for (name, p), g in zip(leaves.items(), grads, strict=True)}
        self.adapted = params

    def _scaled(self, vectors: list[Tensor]) -> list[Tensor]:
        return [_step_of(self.step_size, name) * w for name, w in zip(self.names, vectors, strict=True)]

    def _hessian(self, k: int, vectors: list[Tensor]) -> list[Tensor]:
        """``H_k w`` for per-task ``w``."""
        leaves, grads = self._hessians[k]
        return list(torch.autograd.grad(sum((g * w).sum() for g, w in zip(grads, vectors, strict=True)), leaves,
                                        retain_graph=True))

    def jvp(self, vectors: list[Tensor]) -> list[Tensor]:
        """``J v`` for a shared tangent ``v`` (shapes of ``theta``, then of ``alpha`` with Meta-SGD);
        returns per-task ``[T, ...]`` tangents of ``theta_K``."""
        count = len(self.names)
        tangent_alpha = vectors[count:]
        out = [v.unsqueeze(0).expand(self.num_tasks, *v.shape) for v in vectors[:count]]
        for k in range(len(self._gradients)):
            if not self.first_order:  # J_k w = w - alpha H_k w
                out = [w - aw for w, aw in zip(out, self._scaled(self._hessian(k, out)), strict=True)]
            if self.learned:
                out = [w - va * g for w, va, g in zip(out, tangent_alpha, self._gradients[k], strict=True)]
        return out

    def vjp(self, cotangents: list[Tensor]) -> list[Tensor]:
        """``J^T u`` for per-task ``u`` (``[T, ...]``), summed over tasks into the shapes of ``theta``
        (followed by those of ``alpha`` with Meta-SGD)."""
        out = list(cotangents)
        alpha = [torch.zeros_like(u[0]) for u in out] if self.learned else []
        for k in reversed(range(len(self._gradients))):
            if self.learned:
                alpha = [a - (g * u).sum(0) for a, g, u in zip(alpha, self._gradients[k], out, strict=True)]
            if not self.first_order:  # J_k^T u = u - H_k (alpha u)
                out = [u - hu for u, hu in zip(out, self._hessian(k, self._scaled(out)), strict=True)]
        return [u.sum(0) for u in out] + alpha


@dataclass
class _MetaProblem:
    """The TRPO quantities of one group of tasks at the current ``theta``."""

    loss: Tensor
    gradient: list[Tensor]
    product: Callable[[list[Tensor]], list[Tensor]]
    old: tuple[Tensor, Tensor, Tensor]


def _meta_problem(
    policy: GaussianMLPPolicy, theta: Params, batch: MetaBatch, step_size: StepSize, first_order: bool,
    inner_loss: str = "vpg"
) -> _MetaProblem:
    """Surrogate gradient and KL Hessian-vector product through the adaptation, at ``theta``.

    At the current parameters the KL and its gradient in the adapted parameters vanish, so the
    Hessian of ``theta -> KL(theta_K(theta))`` is exactly ``J^T F J``, with ``F`` the Hessian of the
    KL in ``theta_K`` (the Fisher matrix of the post-adaptation policies on the validation episodes):
    no third derivatives are needed. The surrogate's gradient is ``J^T grad_{theta_K} L``. Both
    are summed over tasks (the caller divides by the number of tasks). With Meta-SGD step sizes
    the meta-parameters are ``theta`` then ``alpha``. CAVIA's context is adapted but is no
    meta-parameter: its tangent is zero (it starts at zero for every task) and its part of ``J^T``
    products is dropped, so ``J`` is the context adaptation's Jacobian in the network's parameters.
    """
    names, meta = list(theta), meta_names(theta)

    def to_full(vectors: list[Tensor]) -> list[Tensor]:
        """Meta-parameter vectors in the order of all of ``theta`` (zero for the context), then alpha's."""
        given = dict(zip(meta, vectors[:len(meta)], strict=True))
        return [given[n] if n in given else torch.zeros_like(theta[n]) for n in names] + list(vectors[len(meta):])

    def to_meta(vectors: list[Tensor]) -> list[Tensor]:
        """The meta-parameters' part of vectors in the order of all of ``theta`` (then alpha's)."""
        full = dict(zip(names, vectors[:len(names)], strict=True))
        return [full[n] for n in meta] + list(vectors[len(names):])

    jacobian = AdaptationJacobian(policy, theta, batch.train, step_size, first_order, inner_loss)
    adapted = {name: p.requires_grad_() for name, p in jacobian.adapted.items()}
    leaves = list(adapted.values())
    valid = batch.valid
    with torch.enable_grad():
        mean, std = policy_outputs(policy, adapted, valid)
        log_prob = _log_prob(mean, std, valid)
        old = (mean.detach(), std.detach(), log_prob.detach())
        loss = surrogate_loss(log_prob, old[2], _advantages(valid), valid.mask).sum()
        kl = task_kls(old[0], old[1], mean, std, valid).sum()
        loss_grad = torch.autograd.grad(loss, leaves, retain_graph=True)
        kl_grad = torch.autograd.grad(kl, leaves, create_graph=True)

    def product(vectors: list[Tensor]) -> list[Tensor]:
        tangent = jacobian.jvp(to_full(vectors))
        fisher = torch.autograd.grad(sum((g * t).sum() for g, t in zip(kl_grad, tangent, strict=True)), leaves,
                                     retain_graph=True)
        return to_meta(jacobian.vjp(list(fisher)))

    gradient = to_meta(jacobian.vjp(list(loss_grad)))
    if batch.exploration is not None:  # E-MAML: theta's direct part, no curvature (the KL bound is unchanged)
        shared = {name: p.detach().requires_grad_() for name, p in theta.items()}
        with torch.enable_grad():
            explore = exploration_loss(policy, shared, batch).sum()
            direct = to_meta(list(torch.autograd.grad(explore, list(shared.values()))))
        gradient = [g + d for g, d in zip(gradient, direct, strict=False)] + gradient[len(direct):]
        loss = loss + explore
    return _MetaProblem(loss.detach(), gradient, product, old)


#: Default group size of the meta-update on the CPU, in sampled steps: tasks are stacked in groups of
#: about this many steps, small enough for the activations to stay in cache (see :func:`trpo_meta_step`).
GROUP_STEPS = 8192
#: The same on a GPU, where there is no cache to fit and each group costs kernel launches: the fewer
#: groups the faster. Measured (``metarl bench --config experiments/halfcheetah_vel.yaml --set
#: run.device=cuda``, an H200; README "Installing for a GPU"): all 40 tasks (80k steps) in one group
#: 0.11-0.15 s, groups of 8192 steps 1.31 s; one group of 264k steps of that 64-64 policy peaked at
#: 1.2 GiB. Every group's graph is kept through the conjugate gradient whatever the grouping, so
#: this bounds only each curvature product's temporaries, not the update's memory.
GPU_GROUP_STEPS = 2**18


def default_tasks_per_group(batch: MetaBatch) -> int:
    """Tasks per group so that a group holds about :data:`GROUP_STEPS` steps of one episode batch
    (:data:`GPU_GROUP_STEPS` where the batch is on a GPU), at least one task."""
    steps_per_task = batch.valid.rewards[0].numel()
    budget = GROUP_STEPS if batch.valid.rewards.device.type == "cpu" else GPU_GROUP_STEPS
    return max(1, min(batch.num_tasks, round(budget / steps_per_task)))


def trpo_meta_step(
    policy: GaussianMLPPolicy,
    batch: MetaBatch,
    inner_step_size: StepSize,
    first_order: bool = False,
    max_kl: float = 0.01,
    cg_iters: int = 10,
    cg_damping: float = 1e-5,
    line_search_steps: int = 15,
    backtrack_ratio: float = 0.8,
    tasks_per_group: int | None = None,
    inner_loss: str = "vpg",
    cg_subsample: float = 1.0,
    emaml: bool = False,
) -> TRPOStats:
    """One TRPO meta-update of ``policy``'s parameters in place (see the module docstring).

    Tasks are computed in groups of ``tasks_per_group`` (parameters stacked per task, one batched
    matmul per layer for the whole group), and the groups' gradients and curvature products are
    summed. The update is the same for any grouping (tested); only the speed differs. ``None``
    picks groups of about :data:`GROUP_STEPS` steps, whose activations stay in cache (on a GPU,
    :data:`GPU_GROUP_STEPS`); ``metarl bench`` compares it with one group of all tasks and with
    task by task (as the reference implementations compute it). Meta-SGD step sizes (a dict of the
    :class:`MetaSGDStepSizes`' parameters) are updated in place with ``theta``, under the same KL
    bound.

    ``cg_subsample < 1`` estimates the KL Hessian on the first ``ceil(cg_subsample * T)`` tasks
    only (the tasks are drawn independently, so any fixed subset is a uniform one), as rllab's
    conjugate-gradient optimiser could: the curvature products, most of the update's time, get that
    much cheaper, while the gradient and the line search (loss decrease, KL bound) use every task.

    ``emaml`` adds E-MAML's exploration term (:func:`exploration_loss`) to the objective: its
    gradient joins the meta-gradient and its value the line search's loss; the trust region stays
    the post-adaptation KL.
    """
    check_inner_loss(inner_loss)
    if emaml:
        batch = batch.with_exploration()
    num_tasks = batch.num_tasks
    size = tasks_per_group or default_tasks_per_group(batch)
    if size < 1:
        raise ValueError(f"tasks_per_group must be >= 1, got {size}")
    if not 0.0 < cg_subsample <= 1.0:
        raise ValueError(f"cg_subsample must be in (0, 1], got {cg_subsample}")
    curvature_tasks = max(1, math.ceil(cg_subsample * num_tasks - 1e-9))
    # Groups never straddle the curvature subset's end, so its products are those of whole groups.
    bounds = [(t, min(t + size, curvature_tasks)) for t in range(0, curvature_tasks, size)]
    bounds += [(t, min(t + size, num_tasks)) for t in range(curvature_tasks, num_tasks, size)]
    groups = [batch.task_slice(start, stop) for start, stop in bounds] if len(bounds) > 1 else [batch]
    theta = policy.parameters_dict()
    tensors = meta_parameters(theta, inner_step_size)
    problems = [_meta_problem(policy, theta, group, inner_step_size, first_order, inner_loss) for group in groups]

    def total(parts: list[list[Tensor]]) -> Tensor:
        return flat([sum(p[i] for p in parts) for i in range(len(tensors))]) / num_tasks

    def unflatten(vector: Tensor) -> list[Tensor]:
        chunks = torch.split(vector, [p.numel() for p in tensors])
        return [chunk.view_as(p) for chunk, p in zip(chunks, tensors, strict=True)]

    curvature_problems = [problem for problem, (start, _) in zip(problems, bounds, strict=True)
                          if start < curvature_tasks]

    def fisher_product(vector: Tensor) -> Tensor:
        vectors = unflatten(vector)
        products = [problem.product(vectors) for problem in curvature_problems]
        return total(products) * (num_tasks / curvature_tasks) + cg_damping * vector

    loss_before = float(sum(problem.loss for problem in problems)) / num_tasks
    grad = total([problem.gradient for problem in problems])
    direction, fisher_direction = conjugate_gradient(fisher_product, grad, iters=cg_iters)
    curvature = 0.5 * (direction @ fisher_direction)
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
        set_flat(start - fraction * full_step)  # theta's (and alpha's) tensors are the modules' parameters
        with torch.no_grad():
            # The value of the adapted parameters does not depend on the order; first-order skips the graph.
            values = [
                _meta_objective(policy, theta, group, inner_step_size, True, problem.old, inner_loss)
                for group, problem in zip(groups, problems, strict=True)
            ]
        return (
            sum(float(loss) * g.num_tasks for (loss, _), g in zip(values, groups, strict=True)) / num_tasks,
            sum(float(kl) * g.num_tasks for (_, kl), g in zip(values, groups, strict=True)) / num_tasks,
        )

    step, loss_after, kl_after = backtracking_line_search(
        evaluate, loss_before, max_kl, max_steps=line_search_steps, backtrack_ratio=backtrack_ratio
    )
    if step is None:  # reverted: report the parameters actually kept
        set_flat(start)
        loss_after, kl_after = loss_before, 0.0
    return TRPOStats(loss_before, loss_after, kl_after, grad_norm, step)


@dataclass
class PPOStats:
    """One gradient-based meta-update (ProMP or Adam): the meta-loss before the first and after the
    last epoch, the post-adaptation KL reached, the gradient norm of the first epoch, and the
    pre-update KL (ProMP's inner trust region)."""

    loss_before: float
    loss_after: float
    kl_after: float
    grad_norm: float
    inner_kl: float
    epochs: int


def adapt_kl_coef(coef: float, inner_kl: float, target: float) -> float:
    """ProMP's adaptive inner-KL weight: halve below ``target / 1.5``, double above ``target * 1.5``."""
    if inner_kl < target / 1.5:
        return coef / 2.0
    if inner_kl > target * 1.5:
        return coef * 2.0
    return coef


def ppo_meta_step(
    policy: GaussianMLPPolicy,
    optimizer: torch.optim.Optimizer,
    batch: MetaBatch,
    inner_step_size: StepSize,
    first_order: bool = False,
    inner_loss: str = "lvc",
    epochs: int = 5,
    clip: float | None = 0.2,
    inner_kl_coef: float = 0.0,
    emaml: bool = False,
) -> PPOStats:
    """Gradient-based meta-update: ``epochs`` optimizer steps on the post-adaptation objective,
    differentiated through the adaptation each epoch.

    ProMP (Rothfuss et al., 2019) is ``clip`` set (PPO's clipped ratio ``min(r A, clip(r, 1 +- clip) A)``
    against the sampling policy), the LVC inner loss and ``inner_kl_coef * KL(pi_old || pi_theta)`` on
    the pre-update episodes; plain meta-gradient descent is ``clip=None``, no penalty, one epoch.
    Losses are means over tasks (of masked means over steps). Meta-SGD step sizes are trained by
    ``optimizer`` too when it holds them. ``emaml`` adds E-MAML's exploration term
    (:func:`exploration_loss`) to the loss.
    """
    check_inner_loss(inner_loss)
    if emaml:
        batch = batch.with_exploration()
    theta = policy.parameters_dict()
    valid, pre = batch.valid, batch.train[0]
    with torch.no_grad():
        old_post = adapt_steps(policy, theta, batch.train, inner_step_size, True, inner_loss)
        old_mean, old_std = policy_outputs(policy, {k: v.detach() for k, v in old_post.items()}, valid)
        old_log_prob = _log_prob(old_mean, old_std, valid)
        old_pre_mean, old_pre_std = policy_outputs(policy, expand_params(theta, pre.num_tasks), pre)
    advantages = _advantages(valid)

    def objective() -> tuple[Tensor, Tensor, Tensor]:
        params = adapt_steps(policy, theta, batch.train, inner_step_size, first_order, inner_loss)
        mean, std = policy_outputs(policy, params, valid)
        ratio = torch.exp(_log_prob(mean, std, valid) - old_log_prob)
        gain = ratio * advantages
        if clip is not None:
            gain = torch.minimum(gain, ratio.clamp(1.0 - clip, 1.0 + clip) * advantages)
        loss = -masked_mean(gain, valid.mask).mean()
        if batch.exploration is not None:
            loss = loss + exploration_loss(policy, theta, batch).mean()
        kl = task_kls(old_mean, old_std, mean, std, valid).mean()
        pre_mean, pre_std = policy_outputs(policy, expand_params(theta, pre.num_tasks), pre)
        inner_kl = task_kls(old_pre_mean, old_pre_std, pre_mean, pre_std, pre).mean()
        return loss, kl, inner_kl

    loss_before, grad_norm = None, 0.0
    for epoch in range(epochs):
        optimizer.zero_grad()
        loss, _, inner_kl = objective()
        total = loss + inner_kl_coef * inner_kl if inner_kl_coef else loss
        total.backward()
        if epoch == 0:
            loss_before = float(loss.item())
            grad_norm = float(flat([p.grad for p in meta_parameters(theta, inner_step_size)]).norm().item())
        optimizer.step()
    with torch.no_grad():
        loss_after, kl_after, inner_kl = objective()
    return PPOStats(loss_before, float(loss_after), float(kl_after), grad_norm, float(inner_kl), epochs)
