"""The outer loop: one object per meta-update algorithm, behind one small interface.

Every outer update takes the sampled :class:`~metarl.maml.MetaBatch` of a meta-iteration and moves
the meta-parameters (the policy's initialisation and, with Meta-SGD, the inner step sizes) in
place:

- :class:`TRPOUpdate`: the MAML paper's TRPO step on the post-adaptation surrogate
  (:func:`metarl.maml.trpo_meta_step`); keeps no state between iterations.
- :class:`AdamUpdate`: one Adam step on the meta-loss (:func:`metarl.maml.ppo_meta_step` without
  clipping or penalty); its state is Adam's moments.
- :class:`ProMPUpdate`: ProMP's PPO-clipped objective with the inner KL penalty, several Adam epochs,
  and optionally an adaptive penalty weight; its state adds that weight.

``make_outer_update(config, meta_parameters)`` picks one by ``maml.outer``. The maths lives in
:mod:`metarl.maml`; these objects only hold each algorithm's settings and state, so the training
loop never branches on the algorithm.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from metarl import config as cfg
from metarl.maml import MetaBatch, StepSize, adapt_kl_coef, ppo_meta_step, trpo_meta_step
from metarl.policy import GaussianMLPPolicy


class OuterUpdate(ABC):
    """A meta-update: ``step`` changes the meta-parameters in place and returns its metrics."""

    name: str

    def __init__(self, config: cfg.Config):
        self.first_order, self.inner_loss = config.maml.first_order, config.maml.inner_loss
        self.emaml = config.maml.emaml

    @abstractmethod
    def step(self, policy: GaussianMLPPolicy, batch: MetaBatch, inner_step_size: StepSize) -> dict[str, Any]:
        """One meta-update. Returns ``loss_before``, ``loss_after``, ``kl`` (post-adaptation KL
        between the sampling and the updated policy), ``grad_norm``, ``line_search_step`` and
        ``step_accepted``, plus the algorithm's own metrics."""

    def state_dict(self) -> dict[str, Any]:
        """What must survive a checkpoint for an exact resume (nothing by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional: nothing to do by default)
        """Restore :meth:`state_dict`."""


class TRPOUpdate(OuterUpdate):
    """MAML-TRPO (section ``trpo`` of the config)."""

    name = "trpo"

    def __init__(self, config: cfg.Config):
        super().__init__(config)
        self.trpo = config.trpo

    def step(self, policy: GaussianMLPPolicy, batch: MetaBatch, inner_step_size: StepSize) -> dict[str, Any]:
        trpo = self.trpo
        stats = trpo_meta_step(
            policy, batch, inner_step_size, first_order=self.first_order, max_kl=trpo.max_kl, cg_iters=trpo.cg_iters,
            cg_damping=trpo.cg_damping, line_search_steps=trpo.line_search_steps,
            backtrack_ratio=trpo.backtrack_ratio, tasks_per_group=trpo.tasks_per_group or None,
            cg_subsample=trpo.cg_subsample, emaml=self.emaml,
            inner_loss=self.inner_loss,
        )
        return {"loss_before": stats.loss_before, "loss_after": stats.loss_after, "kl": stats.kl_after,
                "grad_norm": stats.grad_norm, "line_search_step": stats.line_search_step,
                "step_accepted": stats.accepted}


class AdamUpdate(OuterUpdate):
    """One Adam step per meta-iteration on the post-adaptation objective (``ppo.lr``)."""

    name = "adam"
    epochs, clip = 1, None

    def __init__(self, config: cfg.Config, meta_parameters: list[Tensor]):
        super().__init__(config)
        self.optimizer = torch.optim.Adam(meta_parameters, lr=config.ppo.lr)
        self.inner_kl_coef = 0.0  # plain meta-gradient descent: no inner trust region

    def step(self, policy: GaussianMLPPolicy, batch: MetaBatch, inner_step_size: StepSize) -> dict[str, Any]:
        stats = ppo_meta_step(policy, self.optimizer, batch, inner_step_size, first_order=self.first_order,
                              inner_loss=self.inner_loss, epochs=self.epochs, clip=self.clip,
                              inner_kl_coef=self.inner_kl_coef, emaml=self.emaml)
        return {"loss_before": stats.loss_before, "loss_after": stats.loss_after, "kl": stats.kl_after,
                "grad_norm": stats.grad_norm, "line_search_step": 0, "step_accepted": True,
                "inner_kl": stats.inner_kl}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("optimizer"):
            self.optimizer.load_state_dict(state["optimizer"])


class ProMPUpdate(AdamUpdate):
    """ProMP (section ``ppo``): ``ppo.epochs`` Adam steps on the clipped objective plus
    ``inner_kl_coef * KL`` on the pre-update episodes; with ``ppo.inner_kl_target`` the weight is
    halved or doubled after every iteration (:func:`metarl.maml.adapt_kl_coef`)."""

    name = "promp"

    def __init__(self, config: cfg.Config, meta_parameters: list[Tensor]):
        super().__init__(config, meta_parameters)
        ppo = config.ppo
        self.epochs, self.clip, self.inner_kl_coef, self.inner_kl_target = (
            ppo.epochs, ppo.clip, ppo.inner_kl_coef, ppo.inner_kl_target)

    def step(self, policy: GaussianMLPPolicy, batch: MetaBatch, inner_step_size: StepSize) -> dict[str, Any]:
        metrics = {**super().step(policy, batch, inner_step_size), "inner_kl_coef": self.inner_kl_coef}
        if self.inner_kl_target:
            self.inner_kl_coef = adapt_kl_coef(self.inner_kl_coef, metrics["inner_kl"], self.inner_kl_target)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "inner_kl_coef": self.inner_kl_coef}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.inner_kl_coef = float(state.get("inner_kl_coef", self.inner_kl_coef))


def make_outer_update(config: cfg.Config, meta_parameters: list[Tensor]) -> OuterUpdate:
    """The outer update named by ``maml.outer``, over ``meta_parameters`` (for the optimizers)."""
    if config.maml.outer == "trpo":
        return TRPOUpdate(config)
    if config.maml.outer == "adam":
        return AdamUpdate(config, meta_parameters)
    if config.maml.outer == "promp":
        return ProMPUpdate(config, meta_parameters)
    raise cfg.ConfigError(f"maml.outer: must be one of {', '.join(cfg.OUTER_UPDATES)}, got {config.maml.outer!r}")
