"""The typed batch of episodes that flows from the sampler to the losses."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from metarl.returns import (
    bootstrap_rewards,
    dice_weights,
    discounted_returns,
    gae,
    linear_feature_baseline,
    normalize_advantages,
)


@dataclass
class Episodes:
    """Episodes of several tasks, padded to a fixed horizon.

    Shapes use T = tasks, E = episodes per task, H = horizon. Step ``h`` of an episode is valid
    (``mask == 1``) if the episode had not ended before it; its last step itself is valid. An episode
    ends by termination (a terminal state: nothing follows) or truncation (cut off by a time limit,
    the env's or the sampler's horizon: it could have gone on); the sampler keeps the two apart.

    Attributes:
        observations: ``[T, E, H, obs_dim]`` observation the action was taken in.
        actions: ``[T, E, H, act_dim]`` actions as sampled by the policy (before any env clipping).
        rewards: ``[T, E, H]``.
        mask: ``[T, E, H]`` 1.0 for valid steps, 0.0 for padding after termination. The sampler's
            padding is zeros in every per-step field.
        tasks: the T tasks, in order.
        advantages: ``[T, E, H]``, filled in by :meth:`compute_advantages`.
        dice_weights: ``[T, E, H]`` per-step weights of the DiCE inner loss
            (:func:`metarl.returns.dice_weights`), filled in by :meth:`compute_advantages`.
        terminated, truncated: ``[T, E]`` bool, how each episode ended (both False for an empty
            slot); None for batches built without them (treated as terminated).
        final_observations: ``[T, E, obs_dim]`` the observation a truncated episode was cut off in.
        success: ``[T, E]`` bool, whether any step of the episode reported ``info["success"]`` (envs
            with a success criterion, e.g. Meta-World); None for envs without one.
        episode_starts: None for the padded layout (every row ``[t, e]`` is one episode). In a packed
            batch (:meth:`pack`) ``[T, 1, S]``: for each step, the index along the last axis of
            its episode's first step.
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    tasks: list[Any]
    advantages: Tensor | None = field(default=None)
    dice_weights: Tensor | None = field(default=None)
    terminated: Tensor | None = field(default=None)
    truncated: Tensor | None = field(default=None)
    final_observations: Tensor | None = field(default=None)
    success: Tensor | None = field(default=None)
    episode_starts: Tensor | None = field(default=None)

    def __post_init__(self) -> None:
        num_tasks, num_episodes, horizon = self.rewards.shape
        if self.mask.shape != self.rewards.shape:
            raise ValueError(f"mask {tuple(self.mask.shape)} != rewards {tuple(self.rewards.shape)}")
        for name in ("observations", "actions"):
            if getattr(self, name).shape[:3] != self.rewards.shape:
                raise ValueError(f"{name} {tuple(getattr(self, name).shape)} "
                                 f"do not start with {tuple(self.rewards.shape)}")
        if len(self.tasks) != num_tasks:
            raise ValueError(f"{len(self.tasks)} tasks for {num_tasks} rows of episodes")

    @property
    def num_tasks(self) -> int:
        return self.rewards.shape[0]

    @property
    def num_steps(self) -> int:
        """Number of valid environment steps in the batch."""
        return int(self.mask.sum().item())

    def _map(self, fn: Any, tasks: list[Any] | None = None) -> Episodes:
        """A batch with ``fn`` applied to every tensor field (None stays None)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "tasks"}
        values = {name: None if x is None else fn(x) for name, x in values.items()}
        return replace(self, tasks=self.tasks if tasks is None else tasks, **values)

    def task_slice(self, start: int, stop: int) -> Episodes:
        """The episodes of tasks ``start:stop`` (views, not copies)."""
        return self._map(lambda x: x[start:stop], self.tasks[start:stop])

    def episode_slice(self, start: int, stop: int) -> Episodes:
        """Episodes ``start:stop`` of every task (views)."""
        return self._map(lambda x: x[:, start:stop])

    def keep_episodes(self, kept: Tensor) -> Episodes:
        """The batch with the episodes where ``kept`` (``[T, E]`` bool) is False emptied: zero steps and
        mask, neither terminated nor truncated."""
        weight = kept.to(self.mask.dtype)[..., None]
        out = replace(self, rewards=self.rewards * weight, mask=self.mask * weight,
                      observations=self.observations * weight[..., None], actions=self.actions * weight[..., None])
        if self.terminated is not None:
            out.terminated, out.truncated = self.terminated & kept, self.truncated & kept
        if self.success is not None:
            out.success = self.success & kept
        return out

    def to(self, device: torch.device | str) -> Episodes:
        return self._map(lambda x: x.to(device))

    @property
    def packed(self) -> bool:
        return self.episode_starts is not None

    def _check_padded(self, what: str) -> None:
        if self.packed:
            raise ValueError(f"{what} needs the episodes: take it from the padded batch, before pack()")

    def pack(self) -> Episodes:
        """The same steps with the padding left out: ``[T, 1, S]``, ``S`` the most valid steps of any task.

        Why this layout: everything after the advantages (the inner losses, the adaptation, the KL,
        the meta-objective and TRPO's curvature products) is a masked mean of per-step terms per
        task, so it only needs each task's valid steps, in any order, and a mask; one row per task
        keeps the per-task parameters' batched forward (``[T, S, obs_dim]`` against ``[T, ...]``
        weights) exactly as on the padded layout, with ``S`` valid steps instead of ``E x H``
        slots. A flat ragged layout would need a gather of the parameters per step. The only
        term that needs the episodes, DiCE's cumulative log-probability, finds them through
        :attr:`episode_starts`. Returns, GAE and the baseline fit recurse over time and stay on
        the padded layout (loops over ``H``, cheap next to the policy's matmuls): compute the
        advantages first, then pack once.

        Steps keep their order (episode by episode); slots past a task's ``S_t`` valid steps are
        zero with a zero mask. Per-episode fields (how an episode ended) are dropped.
        """
        self._check_padded("pack()")
        num_tasks = self.num_tasks
        flat_mask = self.mask.reshape(num_tasks, -1)
        counts = flat_mask.sum(1).long()
        width = max(1, int(counts.max().item()))
        # Valid steps first, in their order: a stable sort of "not valid".
        order = torch.argsort((flat_mask == 0).to(torch.int8), dim=1, stable=True)[:, :width]
        mask = (torch.arange(width, device=self.mask.device) < counts[:, None]).to(self.mask.dtype)

        def gather(x: Tensor | None) -> Tensor | None:
            if x is None:
                return None
            flat = x.reshape(num_tasks, flat_mask.shape[1], *x.shape[3:])
            index = order.reshape(num_tasks, width, *([1] * (x.dim() - 3))).expand(num_tasks, width, *x.shape[3:])
            picked = flat.gather(1, index)
            return (picked * mask.reshape(num_tasks, width, *([1] * (x.dim() - 3)))).unsqueeze(1)

        lengths = self.mask.sum(-1).long()  # [T, E]
        offsets = torch.cumsum(lengths, dim=1) - lengths  # each episode's first packed index
        episode = torch.div(order, self.rewards.shape[-1], rounding_mode="floor")
        starts = torch.where(mask.bool(), offsets.gather(1, episode), torch.arange(width, device=mask.device))
        return Episodes(gather(self.observations), gather(self.actions), gather(self.rewards), mask.unsqueeze(1),
                        list(self.tasks), advantages=gather(self.advantages), dice_weights=gather(self.dice_weights),
                        episode_starts=starts.unsqueeze(1))

    def episode_returns(self) -> Tensor:
        """Undiscounted return of every episode, ``[T, E]`` (zero for an episode with no valid step)."""
        self._check_padded("episode_returns()")
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
        return self._episode_mean(self.episode_returns())

    def mean_length(self) -> float:
        """Average episode length in steps over all tasks and episodes."""
        self._check_padded("mean_length()")
        return self._episode_mean(self.mask.sum(-1))

    def terminated_rate(self) -> float | None:
        """Fraction of the episodes that ended by termination (a fall, a goal reached) rather than
        by a time limit; None for batches built without how their episodes ended."""
        return None if self.terminated is None else self._episode_mean(self.terminated.to(self.mask.dtype))

    def task_success_rates(self) -> Tensor | None:
        """Fraction of each task's episodes that succeeded, ``[T]``; None for an env without success."""
        if self.success is None:
            return None
        self._check_padded("task_success_rates()")
        kept = self.episode_mask
        return (self.success.to(kept.dtype) * kept).sum(1) / kept.sum(1).clamp(min=1.0)

    def success_rate(self) -> float | None:
        """Fraction of all episodes that succeeded; None for an env without success."""
        return None if self.success is None else self._episode_mean(self.success.to(self.mask.dtype))

    def _episode_mean(self, values: Tensor) -> float:
        """Mean of a per-episode ``[T, E]`` quantity over the episodes in the batch."""
        kept = self.episode_mask
        return float(((values * kept).sum() / kept.sum().clamp(min=1.0)).item())

    def compute_advantages(
        self, gamma: float, gae_lambda: float, ridge: float = 1e-5, normalize: bool = True,
        bootstrap_truncated: bool = False
    ) -> Tensor:
        """GAE advantages against a per-task linear feature baseline, normalised per task (also
        the DiCE weights against the same baseline, scaled per task when ``normalize``).

        ``bootstrap_truncated``: a truncated episode's return continues with ``gamma V(s_L)``, the
        baseline's value of the observation it was cut off in (:func:`metarl.returns.bootstrap_rewards`;
        the baseline is fitted once without the bootstrap to value that observation, then refitted
        on the bootstrapped returns). Off: every episode ends where it stops, as in the MAML papers.
        The recorded rewards (and so the reported returns) never change.
        """
        self._check_padded("compute_advantages()")
        rewards = self.rewards
        if bootstrap_truncated and self.truncated is not None and bool(self.truncated.any()):
            returns = discounted_returns(rewards, self.mask, gamma)
            _, final_values = linear_feature_baseline(self.observations, returns, self.mask, ridge=ridge,
                                                      final_observations=self.final_observations)
            rewards = bootstrap_rewards(rewards, self.mask, self.truncated, final_values, gamma)
        returns = discounted_returns(rewards, self.mask, gamma)
        values = linear_feature_baseline(self.observations, returns, self.mask, ridge=ridge)
        advantages = gae(rewards, values, self.mask, gamma, gae_lambda)
        if normalize:
            advantages = normalize_advantages(advantages, self.mask)
        self.advantages = advantages
        self.dice_weights = dice_weights(rewards, values, self.mask, gamma, normalize, returns=returns)
        return advantages


@dataclass
class ValidSteps:
    """A padded :class:`Episodes` batch reduced to what happened, for shipping between processes.

    The per-step fields keep only the valid steps (``x[mask]``, in order); the mask itself travels
    as bytes. A rollout worker sends this instead of the padded batch: on 2D navigation with a
    trained policy, where episodes end at the goal after 10-30 of their 100 steps, that is a few
    times fewer bytes. :meth:`episodes` rebuilds the padded batch exactly (the zeros of the
    padding included), since the advantages and the reported returns are computed on it.
    """

    mask: Tensor  # [T, E, H] bool
    observations: Tensor  # [N, obs_dim], N valid steps
    actions: Tensor  # [N, act_dim]
    rewards: Tensor  # [N]
    tasks: list[Any]
    per_episode: dict[str, Tensor]  # terminated, truncated, final_observations, success: small, sent as is
    dtype: torch.dtype

    @classmethod
    def of(cls, episodes: Episodes) -> ValidSteps:
        episodes._check_padded("ValidSteps.of()")
        if episodes.advantages is not None:
            raise ValueError("ValidSteps carries sampled episodes only: compute the advantages after rebuilding")
        valid = episodes.mask.bool()
        names = ("terminated", "truncated", "final_observations", "success")
        per_episode = {name: getattr(episodes, name) for name in names
                       if getattr(episodes, name) is not None}
        return cls(valid, episodes.observations[valid], episodes.actions[valid], episodes.rewards[valid],
                   list(episodes.tasks), per_episode, episodes.mask.dtype)

    def episodes(self) -> Episodes:
        """The padded batch this was made from."""
        def scatter(values: Tensor) -> Tensor:
            out = values.new_zeros(*self.mask.shape, *values.shape[1:])
            out[self.mask] = values
            return out

        return Episodes(scatter(self.observations), scatter(self.actions), scatter(self.rewards),
                        self.mask.to(self.dtype), list(self.tasks), **self.per_episode)


def concat_episodes(parts: list[Episodes], dim: int = 0) -> Episodes:
    """Batches joined along tasks (``dim=0``: shards of one round) or episodes (``dim=1``: rounds of
    the same tasks). Fields missing (None) in any part are None in the result, except ``success``:
    where some parts have it, a part without it (no step of it reported success) did not succeed."""
    if any(p.success is not None for p in parts):
        parts = [p if p.success is not None else replace(p, success=torch.zeros_like(p.episode_mask, dtype=torch.bool))
                 for p in parts]

    def cat(name: str) -> Tensor | None:
        values = [getattr(p, name) for p in parts]
        return None if any(v is None for v in values) else torch.cat(values, dim=dim)

    tasks = [t for p in parts for t in p.tasks] if dim == 0 else parts[0].tasks
    return Episodes(**{f.name: cat(f.name) for f in fields(Episodes) if f.name != "tasks"}, tasks=tasks)
