"""TRPO kernels: Gaussian KL, conjugate gradient, Hessian-vector products and backtracking line search."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor


def gaussian_kl(mean_p: Tensor, std_p: Tensor, mean_q: Tensor, std_q: Tensor) -> Tensor:
    """``KL(p || q)`` of diagonal Gaussians, summed over the last (action) dim.

    ``sum_d [ log(s_q / s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2 ]``

    Args:
        mean_p, std_p, mean_q, std_q: ``[..., act_dim]``.
    Returns:
        ``[...]``.
    """
    if not (mean_p.shape == std_p.shape == mean_q.shape == std_q.shape):
        raise ValueError(
            f"shape mismatch: {tuple(mean_p.shape)}, {tuple(std_p.shape)}, {tuple(mean_q.shape)}, {tuple(std_q.shape)}"
        )
    var_p, var_q = std_p**2, std_q**2
    kl = torch.log(std_q / std_p) + (var_p + (mean_p - mean_q) ** 2) / (2.0 * var_q) - 0.5
    return kl.sum(-1)


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10, residual_tol: float = 1e-10
) -> tuple[Tensor, Tensor]:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given only ``v -> A v``.

    Standard CG from ``x_0 = 0``: ``alpha_k = r_k^T r_k / p_k^T A p_k``, ``x += alpha p``,
    ``r -= alpha A p``, ``p = r + (r_new^T r_new / r^T r) p``; stops after ``iters`` products or once
    ``r^T r < residual_tol``.

    Args:
        matvec: the product ``v -> A v`` on flat vectors.
        b: flat right-hand side ``[n]``.
    Returns:
        ``x`` and ``A x``, each ``[n]``. ``A x = sum_k alpha_k A p_k`` is accumulated from the products
        CG already made, which saves TRPO one more (expensive) product when it scales the step.
    """
    if b.dim() != 1:
        raise ValueError(f"b must be a flat vector, got shape {tuple(b.shape)}")
    x = torch.zeros_like(b)
    a_x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    r_dot_r = r @ r
    for _ in range(iters):
        if r_dot_r < residual_tol:
            break
        a_p = matvec(p)
        alpha = r_dot_r / (p @ a_p)
        x = x + alpha * p
        a_x = a_x + alpha * a_p
        r = r - alpha * a_p
        new_r_dot_r = r @ r
        p = r + (new_r_dot_r / r_dot_r) * p
        r_dot_r = new_r_dot_r
    return x, a_x


def flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def hessian_vector_product(
    scalar: Tensor, inputs: Sequence[Tensor], damping: float = 0.0
) -> Callable[[Tensor], Tensor]:
    """``v -> (d^2 scalar / d inputs^2) v + damping * v`` by double backprop (exact, no finite differences).

    The first gradient is built once with ``create_graph=True``; each product is one more backward
    pass through it, so the returned function can be called many times (as conjugate gradient does).
    """
    grads = flat(torch.autograd.grad(scalar, inputs, create_graph=True))

    def product(v: Tensor) -> Tensor:
        hv = torch.autograd.grad(grads @ v, inputs, retain_graph=True)
        return flat(hv) + damping * v

    return product


def backtracking_line_search(
    evaluate: Callable[[float], tuple[float, float]],
    loss_before: float,
    max_kl: float,
    max_steps: int = 15,
    backtrack_ratio: float = 0.8,
) -> tuple[int | None, float, float]:
    """Try step fractions ``1, r, r^2, ...`` until one lowers the loss and keeps ``KL < max_kl``.

    Args:
        evaluate: fraction -> (loss, kl) with the parameters moved by that fraction of the full step.
        loss_before: loss at the current parameters.
    Returns:
        ``(k, loss, kl)`` for the first accepted fraction ``r^k``, or ``(None, loss, kl)`` of the last
        candidate tried when none was accepted (the caller then reverts the step).
    """
    loss, kl = loss_before, 0.0
    for k in range(max_steps):
        loss, kl = evaluate(backtrack_ratio**k)
        if loss < loss_before and kl < max_kl:
            return k, loss, kl
    return None, loss, kl
