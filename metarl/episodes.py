"""The typed batch of episodes that flows from the sampler to the losses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from metarl.returns import dice_weights, discounted_returns, gae, linear_feature_baseline, normalize_advantages


@dataclass
class Episodes:
    """Episodes of several tasks, padded to a fixed horizon.

    Shapes use T = tasks, E = episodes per task, H = horizon. Step ``h`` of an episode is valid
    (``mask == 1``) if the episode had not terminated before it; the terminal step itself is valid.

    Attributes:
        observations: ``[T, E, H, obs_dim]`` observation the action was taken in.
        actions: ``[T, E, H, act_dim]`` actions as sampled by the policy (before any env clipping).
        rewards: ``[T, E, H]``.
        mask: ``[T, E, H]`` 1.0 for valid steps, 0.0 for padding after termination.
        tasks: the T tasks, in order.
        advantages: ``[T, E, H]``, filled in by :meth:`compute_advantages`.
        dice_weights: ``[T, E, H]`` per-step weights of the DiCE inner loss
            (:func:`metarl.returns.dice_weights`), filled in by :meth:`compute_advantages`.
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    tasks: list[Any]
    advantages: Tensor | None = field(default=None)
    dice_weights: Tensor | None = field(default=None)

    def __post_init__(self) -> None:
        num_tasks, num_episodes, horizon = self.rewards.shape
        if self.mask.shape != self.rewards.shape:
            raise ValueError(f"mask {tuple(self.mask.shape)} != rewards {tuple(self.rewards.shape)}")
        for name in ("observations", "actions"):
            if getattr(self, name).shape[:3] != self.rewards.shape:
                raise ValueError(f"{name} {tuple(getattr(self, name).shape)} do not start with {tuple(self.rewards.shape)}")
        if len(self.tasks) != num_tasks:
            raise ValueError(f"{len(self.tasks)} tasks for {num_tasks} rows of episodes")

    @property
    def num_tasks(self) -> int:
        return self.rewards.shape[0]

    @property
    def num_steps(self) -> int:
        """Number of valid environment steps in the batch."""
        return int(self.mask.sum().item())

    def task_slice(self, start: int, stop: int) -> Episodes:
        """The episodes of tasks ``start:stop`` (views, not copies)."""
        def rows(x: Tensor | None) -> Tensor | None:
            return None if x is None else x[start:stop]

        return Episodes(
            self.observations[start:stop], self.actions[start:stop], self.rewards[start:stop],
            self.mask[start:stop], self.tasks[start:stop], rows(self.advantages), rows(self.dice_weights),
        )

    def episode_returns(self) -> Tensor:
        """Undiscounted return of every episode, ``[T, E]`` (zero for an episode with no valid step)."""
        return (self.rewards * self.mask).sum(-1)

    @property
    def episode_mask(self) -> Tensor:
        """``[T, E]`` 1.0 for the episodes in the batch; 0.0 for slots left empty (no valid step),
        which a step budget leaves when a task needed fewer episodes than others."""
        return self.mask[..., 0]

    def task_mean_returns(self) -> Tensor:
        """Average undiscounted return of each task's episodes, ``[T]``."""
        kept = self.episode_mask
        return (self.episode_returns() * kept).sum(1) / kept.sum(1).clamp(min=1.0)

    def mean_return(self) -> float:
        """Average undiscounted episode return over all tasks and episodes."""
        kept = self.episode_mask
        return float(((self.episode_returns() * kept).sum() / kept.sum().clamp(min=1.0)).item())

    def compute_advantages(self, gamma: float, gae_lambda: float, ridge: float = 1e-5, normalize: bool = True) -> Tensor:
        """GAE advantages against a per-task linear feature baseline, normalised per task (also
        the DiCE weights against the same baseline, scaled per task when ``normalize``)."""
        returns = discounted_returns(self.rewards, self.mask, gamma)
        values = linear_feature_baseline(self.observations, returns, self.mask, ridge=ridge)
        advantages = gae(self.rewards, values, self.mask, gamma, gae_lambda)
        if normalize:
            advantages = normalize_advantages(advantages, self.mask)
        self.advantages = advantages
        self.dice_weights = dice_weights(self.rewards, values, self.mask, gamma, normalize, returns=returns)
        return advantages
