"""Checkpoints: written atomically (temp file, then rename), loaded with ``weights_only=True``."""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from metarl.config import ConfigError

PACKAGES = ("metarl", "torch", "gymnasium", "mujoco", "numpy")


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def version_changes(recorded: dict[str, str] | None) -> str:
    """The packages whose version differs between a checkpoint (its ``versions``) and this process,
    as "mujoco 3.3.7 there, 3.3.0 here, ..." ("" when none does, or the checkpoint recorded none).
    The simulator's and torch's floating point may differ between versions: episodes then diverge
    from the recorded ones within a few steps, so a resumed run is no longer bit-identical to an
    uninterrupted one and a re-evaluation matches ``eval.json`` only statistically."""
    if not recorded:
        return ""
    here = versions()
    return ", ".join(f"{name} {recorded[name]} there, {here[name]} here"
                     for name in PACKAGES if name in recorded and recorded[name] != here[name])


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: unreadable, truncated, or not fitting the run's config."""


def atomic_write_bytes(path: str | Path, write: Any, keep_previous: str | Path | None = None) -> None:
    """Call ``write(file_object)`` on a temp file beside ``path``, then rename it over ``path``.

    A crash before the rename leaves the previous file intact. ``keep_previous``: the file being
    replaced is kept there too; ``path`` exists at every moment (old or new), so a kill at any
    point leaves a readable ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and path.is_file():
            _keep(path, Path(keep_previous))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _keep(path: Path, copy: Path) -> None:
    """Make ``copy`` a second name of ``path``'s current content, atomically (a hard link renamed
    over ``copy``; a byte copy where the filesystem has no hard links)."""
    fd, tmp = tempfile.mkstemp(dir=copy.parent, prefix=f".{copy.name}.", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)
    try:
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
        os.replace(tmp, copy)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | Path, state: dict[str, Any], keep_previous: str | Path | None = None) -> None:
    """Save ``state`` (tensors, state dicts and plain Python data) atomically, adding package versions
    (``keep_previous``: see :func:`atomic_write_bytes`)."""
    state = {**state, "versions": versions()}
    atomic_write_bytes(path, lambda f: torch.save(state, f), keep_previous)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", advice: str = "") -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`, loaded with ``weights_only=True``.

    Raises:
        FileNotFoundError: there is no file at ``path``.
        CheckpointError: it cannot be read (truncated, corrupt) or is not a metarl checkpoint;
            ``advice`` (what to use instead) ends the message.
    """
    path = Path(path)
    advice = f"; {advice}" if advice else ""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}{advice}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"{path} cannot be read ({type(exc).__name__}: {first_line}): it is truncated or corrupt"
                              f"{advice}") from exc
    missing = [key for key in ("iteration", "policy", "config") if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a metarl checkpoint (it has no {', '.join(missing)}){advice}")
    return state
