"""TRPO kernels: KL, conjugate gradient, Hessian-vector products, line search."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from metarl.trpo import backtracking_line_search, conjugate_gradient, flat, gaussian_kl, hessian_vector_product


def test_gaussian_kl_matches_torch_and_hand_value():
    mp, sp = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.5])
    mq, sq = torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.5])
    expected = kl_divergence(Normal(mp, sp), Normal(mq, sq)).sum()
    assert torch.allclose(gaussian_kl(mp, sp, mq, sq), expected)
    # dim 0 by hand: log 2 + (1 + 1) / 8 - 1/2; dim 1 is identical -> 0
    assert gaussian_kl(mp, sp, mq, sq).item() == pytest.approx(torch.log(torch.tensor(2.0)).item() + 0.25 - 0.5)


def test_conjugate_gradient_solves_small_spd_system():
    a = torch.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]], dtype=torch.float64)
    b = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    x, a_x = conjugate_gradient(lambda v: a @ v, b, iters=3)  # exact in n iterations for n x n
    assert torch.allclose(x, torch.linalg.solve(a, b), atol=1e-10)
    assert torch.allclose(a_x, b, atol=1e-10)
    partial, a_partial = conjugate_gradient(lambda v: a @ v, b, iters=1)
    assert not torch.allclose(partial, torch.linalg.solve(a, b), atol=1e-3)
    assert torch.allclose(a_partial, a @ partial, atol=1e-12)  # the returned product is A x, not b


def test_hessian_vector_product_matches_finite_differences():
    torch.manual_seed(0)
    w = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 3, dtype=torch.float64)

    def f(w, b):
        return (torch.tanh(x @ w + b) ** 2).sum() + (w**4).sum()

    hvp = hessian_vector_product(f(w, b), [w, b], damping=0.1)
    v = torch.randn(8, dtype=torch.float64)
    got = hvp(v)

    def grad_at(offset):
        w2 = (w.detach() + offset[:6].view(3, 2)).requires_grad_()
        b2 = (b.detach() + offset[6:]).requires_grad_()
        return flat(torch.autograd.grad(f(w2, b2), [w2, b2]))

    eps = 1e-6
    finite = (grad_at(eps * v) - grad_at(-eps * v)) / (2 * eps) + 0.1 * v
    assert torch.allclose(got, finite, atol=1e-6)
    assert torch.allclose(hvp(v), got)  # reusable, as conjugate gradient needs


def test_line_search_accepts_first_improving_step_within_kl():
    # loss improves only for fractions <= 0.5; kl exceeds the bound above fraction 0.3
    calls = []

    def evaluate(fraction):
        calls.append(fraction)
        return (1.0 - fraction if fraction <= 0.5 else 2.0), fraction / 10

    step, loss, kl = backtracking_line_search(evaluate, loss_before=1.0, max_kl=0.03, max_steps=10, backtrack_ratio=0.5)
    assert step == 2 and calls == [1.0, 0.5, 0.25]
    assert loss == pytest.approx(0.75) and kl == pytest.approx(0.025)


def test_line_search_rejects_when_nothing_improves():
    step, _, _ = backtracking_line_search(lambda f: (5.0, 0.0), loss_before=1.0, max_kl=0.01, max_steps=4)
    assert step is None
