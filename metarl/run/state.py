"""A run's state in one place: what a checkpoint holds and how it is put back into fresh components."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from metarl import config as cfg
from metarl.checkpoint import CheckpointError
from metarl.run.factory import Components
from metarl.runtime import rng_state, set_rng_state


def checkpoint_state(
    config: cfg.Config, parts: Components, iteration: int, best_post_return: float, tracking_id: str | None = None,
    finished: bool = False,
) -> dict[str, Any]:
    """Everything a resumed run needs to continue exactly: the meta-parameters, the outer update's
    state, the iteration counter, the best post-adaptation return so far, every random state
    (global, sampler, training tasks), the device it ran on and whether the run finished (its
    end-of-run evaluation done). The linear baseline is refitted on every batch: nothing to keep."""
    return {
        "iteration": iteration,
        "finished": finished,
        "policy": parts.policy.state_dict(),
        "config": cfg.to_dict(config),
        "device": str(parts.device),
        "best_post_return": best_post_return,
        "rng": rng_state(),
        "sampler": parts.sampler.state_dict(),
        "task_sampler": parts.task_env.unwrapped.np_random.bit_generator.state,
        "tracking_id": tracking_id,
        "outer": parts.outer.state_dict(),
        "step_sizes": None if parts.step_sizes is None else parts.step_sizes.state_dict(),
    }


def load_meta_parameters(parts: Components, state: dict[str, Any], path: str | Path = "the checkpoint") -> None:
    """The meta-learned parameters of a checkpoint: the policy and, with Meta-SGD, the step sizes.

    Raises:
        CheckpointError: they do not fit the components built from the run's config (naming what).
    """
    try:
        parts.policy.load_state_dict(state["policy"])
        if parts.step_sizes is not None:
            if state.get("step_sizes") is None:
                raise RuntimeError("it has no Meta-SGD step sizes but the config sets maml.meta_sgd")
            parts.step_sizes.load_state_dict(state["step_sizes"])
    except (RuntimeError, KeyError) as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(
            f"{path} does not fit the run's config.yaml ({detail}): the policy was built with other sizes "
            "(policy.hidden_sizes, the env's spaces, maml.meta_sgd); restore config.yaml to the one the "
            "checkpoint was trained with, or use a checkpoint of this config"
        ) from exc


def restore_state(parts: Components, state: dict[str, Any], path: str | Path = "the checkpoint") -> list[str]:
    """Load what :func:`checkpoint_state` saved into freshly built components; returns one line per
    thing that could not be restored exactly (empty when the resumed run continues bit for bit)."""
    load_meta_parameters(parts, state, path)
    # Checkpoints written before the outer updates were objects kept their state at the top level.
    legacy = {key: state[key] for key in ("optimizer", "inner_kl_coef") if state.get(key) is not None}
    parts.outer.load_state_dict(state.get("outer", legacy))
    notes = []
    if "cuda" in state["rng"] and not torch.cuda.is_available():
        notes.append("the CUDA random state could not be restored (no CUDA here)")
    set_rng_state(state["rng"])
    notes += parts.sampler.load_state_dict(state["sampler"])
    parts.task_env.unwrapped.np_random.bit_generator.state = state["task_sampler"]
    return notes
