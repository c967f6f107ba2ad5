"""Seeding and device resolution, done once per process.

Every random stream of a run is derived from a seed and a *purpose*: ``seed_stream(seed, purpose)``
is the ``numpy.random.SeedSequence`` child that ``SeedSequence(seed).spawn`` would give at the
purpose's index. Training tasks, test tasks, the training and evaluation samplers' resets and
action noise and the baselines therefore never share a stream, even when ``run.seed == eval.seed``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

#: The purposes with a stream of their own (the order fixes each one's stream: append, never reorder).
SEED_PURPOSES = ("global", "train_tasks", "train_sampler", "test_tasks", "eval_sampler", "baselines")


def seed_stream(seed: int, purpose: str) -> np.random.SeedSequence:
    """The random stream of ``purpose`` under ``seed`` (child ``k`` of ``SeedSequence(seed)``)."""
    if purpose not in SEED_PURPOSES:
        raise ValueError(f"purpose must be one of {SEED_PURPOSES}, got {purpose!r}")
    return np.random.SeedSequence(seed, spawn_key=(SEED_PURPOSES.index(purpose),))


def generator(seed: int, purpose: str) -> np.random.Generator:
    """A numpy generator on the stream of ``purpose``."""
    return np.random.Generator(np.random.PCG64(seed_stream(seed, purpose)))


def seed_env(env: Any, seed: int, purpose: str) -> None:
    """Reset ``env`` once with ``seed`` (gymnasium's seeding of the env and its wrappers), then put its
    generator, which draws its tasks and reset noise, on the stream of ``purpose``."""
    env.reset(seed=seed)
    env.unwrapped.np_random = generator(seed, purpose)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy's global generator and torch (CPU and CUDA).

    metarl itself draws from explicit generators (the task env's ``np_random``, the sampler's own
    generators); this covers parameter initialisation and any third-party code, from the "global"
    stream of ``seed``.
    """
    words = seed_stream(seed, "global").generate_state(2, np.uint32)
    random.seed(int(words[0]))
    np.random.seed(int(words[0]))
    torch.manual_seed(int(words[0]) << 32 | int(words[1]))


def rng_state() -> dict[str, Any]:
    """Python's, numpy's global and torch's CPU (and CUDA) random states, in checkpointable form."""
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {**numpy_state, "state": {"key": numpy_state["state"]["key"].tolist(),
                                           "pos": numpy_state["state"]["pos"]}},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(_as_tuple(state["python"]))
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {"key": np.asarray(numpy_state["state"]["key"], dtype=np.uint32),
                            "pos": numpy_state["state"]["pos"]}
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8).cpu() for s in state["cuda"]])


def _as_tuple(value: Any) -> Any:
    """``random.setstate`` wants nested tuples; a checkpoint may hand back lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda if available else cpu; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"run.device: {name!r} is not a device: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"run.device: {name!r} requested but CUDA is not available; use auto or cpu")
    return device

