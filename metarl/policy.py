"""Gaussian MLP policy whose parameters can be swapped functionally, one set per task if needed."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal
from torch.func import functional_call

NONLINEARITIES = {"relu": torch.relu, "tanh": torch.tanh}

Params = dict[str, Tensor]


def _linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x W^T + b`` for shared ``W: [out, in]`` or per-task ``W: [T, out, in]`` with ``x: [T, N, in]``."""
    if weight.dim() == 3:
        return torch.baddbmm(bias.unsqueeze(-2), x, weight.transpose(-1, -2))
    return torch.nn.functional.linear(x, weight, bias)


class GaussianMLPPolicy(nn.Module):
    """``pi(a|s) = N(mu_theta(s), diag(exp(log_std)^2))``: an MLP mean and a state-independent log-std.

    ``forward`` reads its weights as attributes, so ``torch.func.functional_call(policy, params,
    (obs,))`` evaluates it at any ``params`` dict (see :meth:`distribution`). Each tensor in such a
    dict may carry an extra leading task dim ``T``; the observations are then ``[T, N, obs_dim]`` and
    task ``t``'s observations go through task ``t``'s parameters (one batched matmul per layer).

    With ``context_dim > 0`` (CAVIA, Zintgraf et al. 2019) the parameters include ``context``, a
    vector concatenated to the observation at the input (one per task in a per-task ``params``
    dict); it is zero in the module and CAVIA's inner loop adapts only it.

    Args:
        obs_dim, act_dim: sizes of the flat observation and action vectors.
        hidden_sizes: widths of the hidden layers.
        nonlinearity: one of ``NONLINEARITIES`` ("relu", "tanh").
        init_std: initial standard deviation of every action dimension.
        context_dim: size of CAVIA's context vector (0: none).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: tuple[int, ...] = (100, 100),
        nonlinearity: str = "relu",
        init_std: float = 1.0,
        context_dim: int = 0,
    ):
        super().__init__()
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {sorted(NONLINEARITIES)}, got {nonlinearity!r}")
        if init_std <= 0:
            raise ValueError(f"init_std must be positive, got {init_std}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.hidden_sizes = tuple(hidden_sizes)
        self.nonlinearity = nonlinearity
        self.context_dim = context_dim
        sizes = (obs_dim + context_dim, *self.hidden_sizes)
        self.hidden = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:], strict=True))
        self.mean = nn.Linear(sizes[-1], act_dim)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))
        for layer in [*self.hidden, self.mean]:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        if context_dim > 0:
            self.context = nn.Parameter(torch.zeros(context_dim))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation of the action distribution, each ``[..., act_dim]``."""
        act = NONLINEARITIES[self.nonlinearity]
        x = obs
        if self.context_dim:
            context = self.context.unsqueeze(-2) if self.context.dim() == 2 and obs.dim() == 3 else self.context
            x = torch.cat([obs, context.expand(*obs.shape[:-1], self.context_dim)], dim=-1)
        for layer in self.hidden:
            x = act(_linear(x, layer.weight, layer.bias))
        mean = _linear(x, self.mean.weight, self.mean.bias)
        log_std = self.log_std.unsqueeze(-2) if self.log_std.dim() == 2 else self.log_std
        return mean, log_std.exp().expand_as(mean)

    def mean_std(self, obs: Tensor, params: Params | None = None) -> tuple[Tensor, Tensor]:
        """Mean and std at ``params`` (the module's own parameters when ``None``)."""
        return self(obs) if params is None else functional_call(self, params, (obs,))

    def distribution(self, obs: Tensor, params: Params | None = None) -> Independent:
        """The action distribution at ``params`` (the module's own parameters when ``None``)."""
        return Independent(Normal(*self.mean_std(obs, params)), 1)

    def parameters_dict(self) -> Params:
        """The module's parameters as a name -> tensor dict (the functional form of ``theta``)."""
        return dict(self.named_parameters())


def expand_params(params: Params, num_tasks: int) -> Params:
    """One copy of ``params`` per task, ``[T, ...]``; gradients flow back to the shared tensors."""
    return {name: p.unsqueeze(0).expand(num_tasks, *p.shape) for name, p in params.items()}


def detach_params(params: Params) -> Params:
    return {name: p.detach() for name, p in params.items()}
