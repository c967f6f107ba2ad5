"""The run directory: created atomically, written so that no crash leaves it inconsistent.

Layout::

    RUN_DIR/config.yaml              the resolved config (written once, atomically, when the directory is claimed)
    RUN_DIR/metrics.jsonl            one line per meta-iteration (appended and flushed)
    RUN_DIR/metrics.csv              the same as a table (rewritten atomically)
    RUN_DIR/checkpoints/last.pt      the latest checkpoint; previous.pt the one before it
    RUN_DIR/checkpoints/best.pt      the best post-adaptation return so far
    RUN_DIR/training.png, eval.json, eval.png, videos/, wandb/

Two runs can never share a directory: the default name carries the time, the seed and a random
suffix, and a directory is claimed by creating its ``config.yaml`` with an exclusive link, which
exactly one process can win. While a process trains in it (new or resumed) it holds an exclusive
lock on the directory, released when that process ends however it ends, so a second
``metarl train --resume`` of the same run is refused instead of interleaving both runs' files.
Files are replaced by rename (temp file, fsync, ``os.replace``), so a crash or SIGKILL leaves the
previous version; a checkpoint that cannot be read, or that does not fit
the config, is an error that names the file and what to use instead.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from metarl import config as cfg
from metarl.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint

CHECKPOINT = Path("checkpoints") / "last.pt"
# Descriptors holding run directories' locks (RunDir.training). A forked child (a sampler's worker
# process) closes its copies, so a worker outliving a killed trainer never keeps the run locked.
_LOCKS: set[int] = set()


def _close_locks_in_child() -> None:
    for fd in _LOCKS:
        os.close(fd)  # the child's copy only: an flock lasts while any copy is open in the parent
    _LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_locks_in_child)
PREVIOUS_CHECKPOINT = Path("checkpoints") / "previous.pt"
BEST_CHECKPOINT = Path("checkpoints") / "best.pt"
#: What ``metarl train --resume RUN_DIR key=value`` may change: more iterations, the checkpoint
#: cadence, the device, how the episodes are stepped (vectorization, worker processes, Ray: every
#: path samples the episodes the local sync sampler would, as the sampler tests check, and the
#: checkpoint's random state is the same for all), the evaluation at the end and the tracking.
#: Everything else would no longer be the run that was started. (An entry ending in "." allows a
#: whole section.)
RESUME_OVERRIDES = ("run.iterations", "run.checkpoint_every", "run.checkpoint_minutes", "run.device",
                    "sampler.vectorization", "sampler.processes", "sampler.backend", "ray.", "eval.", "tracking.")
#: Fields that say where a run lives, not what it is: a run directory may be moved (e.g. into results/).
LOCATION_FIELDS = ("run.output_dir", "run.name")


def default_run_name(config: cfg.Config) -> str:
    """``{env}-{YYYYmmdd-HHMMSS}-s{seed}-{6 hex}``: unique even for runs started in the same second."""
    env = config.env.id.rpartition(":")[2].split("/")[-1]
    return f"{env}-{datetime.now():%Y%m%d-%H%M%S}-s{config.run.seed}-{secrets.token_hex(3)}"


def allowed(key: str, allowed_keys: tuple[str, ...]) -> bool:
    return any(key == a or (a.endswith(".") and key.startswith(a)) for a in allowed_keys)


class RunDir:
    """One run directory (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    # --- creation -----------------------------------------------------------------------------

    @classmethod
    def create(cls, config: cfg.Config) -> RunDir:
        """Claim a new run directory for ``config`` and write its ``config.yaml``.

        Raises:
            ConfigError: naming ``run.name`` when the directory already holds a run (or anything else).
        """
        name = config.run.name or default_run_name(config)
        run = cls(Path(config.run.output_dir) / name)
        run.path.mkdir(parents=True, exist_ok=True)
        if any(p.name != "config.yaml" for p in run.path.iterdir()):
            raise cfg.ConfigError(f"run.name: run directory {run.path} already exists and is not empty; "
                                  "choose another run.name")
        text = cfg.dumps(config).encode()
        fd, tmp = tempfile.mkstemp(dir=run.path, prefix=".config.yaml.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, run.config_path)  # fails if another process claimed the directory first
            except FileExistsError:
                raise
            except OSError:  # a filesystem without hard links: an exclusive create claims it as well
                with open(run.config_path, "xb") as f:
                    f.write(text)
        except FileExistsError:
            raise cfg.ConfigError(
                f"run.name: run directory {run.path} was claimed by another run; choose another run.name"
            ) from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        return run

    def remove(self) -> None:
        """Delete the directory (a run that failed before its first meta-iteration leaves nothing behind)."""
        shutil.rmtree(self.path, ignore_errors=True)

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """Hold the directory for training in this process (an ``flock`` on it, which the system drops
        when the process ends, even by SIGKILL).

        Raises:
            ConfigError: another process is training in it.
        """
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise cfg.ConfigError(
                    f"{self.path} is being trained by another process (metarl train, --resume or a sweep): "
                    "wait for it to finish or stop it (Ctrl-C checkpoints it), then resume"
                ) from None
            _LOCKS.add(fd)
            yield
        finally:
            _LOCKS.discard(fd)
            os.close(fd)  # releases the lock

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(path)
        if not run.config_path.is_file():
            raise cfg.ConfigError(f"{run.path} is not a run directory (no config.yaml)")
        return run

    # --- config -------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    def load_config(
        self, overrides: list[str] | None = None, allowed_keys: tuple[str, ...] = (), refusal: str = ""
    ) -> cfg.Config:
        """The run's resolved config, with ``overrides`` restricted to ``allowed_keys``; ``refusal``
        ends the error for any other key."""
        for text in overrides or []:
            key = text.partition("=")[0]
            if not allowed(key, allowed_keys):
                raise cfg.ConfigError(f"{key}: {refusal}")
        return cfg.load(self.config_path, overrides)

    def write_config(self, config: cfg.Config) -> None:
        atomic_write_bytes(self.config_path, lambda f: f.write(cfg.dumps(config).encode()))

    # --- metrics ------------------------------------------------------------------------------

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def read_metrics(self) -> list[dict[str, Any]]:
        """The lines of ``metrics.jsonl``; a last line cut short by a kill is ignored."""
        return read_metrics(self.path)

    def keep_metrics_before(self, iteration: int) -> list[dict[str, Any]]:
        """Drop the lines of iterations ``>= iteration`` (written after the checkpoint a resume starts from)."""
        kept = [m for m in self.read_metrics() if m["iteration"] < iteration]
        atomic_write_bytes(self.metrics_path, lambda f: f.write("".join(json.dumps(m) + "\n" for m in kept).encode()))
        return kept

    def write_metrics_csv(self, metrics: list[dict[str, Any]]) -> None:
        """``metrics.csv``: the lines of ``metrics.jsonl`` as a table (lists as JSON text)."""
        columns = list(dict.fromkeys(key for m in metrics for key in m))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        for m in metrics:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in m.items()})
        atomic_write_bytes(self.path / "metrics.csv", lambda f: f.write(text.getvalue().encode()))

    # --- checkpoints --------------------------------------------------------------------------

    def checkpoint(self, name: Path = CHECKPOINT) -> Path:
        return self.path / name

    def save_checkpoint(self, state: dict[str, Any], best: bool = False) -> None:
        """Write ``last.pt`` (the one it replaces becomes ``previous.pt``) or ``best.pt``, atomically."""
        if best:
            save_checkpoint(self.checkpoint(BEST_CHECKPOINT), state)
            return
        last, previous = self.checkpoint(CHECKPOINT), self.checkpoint(PREVIOUS_CHECKPOINT)
        save_checkpoint(last, state, keep_previous=previous)

    def alternatives(self, failed: Path) -> str:
        """What to use instead of the checkpoint ``failed``, as advice."""
        others = [self.checkpoint(n) for n in (PREVIOUS_CHECKPOINT, BEST_CHECKPOINT)]
        others = [p for p in others if p.is_file() and p.resolve() != failed.resolve()]
        if not others:
            return "no other checkpoint is left in this run; start a new run"
        return "use another checkpoint: " + " or ".join(f"--checkpoint {p}" for p in others)

    def load_checkpoint(
        self, path: str | Path | None = None, map_location: str | torch.device = "cpu"
    ) -> dict[str, Any]:
        """A checkpoint of this run (default ``last.pt``); errors name the file and the alternatives
        (see :func:`metarl.checkpoint.load_checkpoint`)."""
        path = Path(path) if path is not None else self.checkpoint()
        return load_checkpoint(path, map_location, advice=self.alternatives(path))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The lines of ``RUN_DIR/metrics.jsonl`` (empty if none); a last line cut short by a kill is ignored."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    metrics = []
    for i, line in enumerate(lines):
        try:
            metrics.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # the process was killed while writing it
            raise cfg.ConfigError(f"{path}: line {i + 1} is not JSON") from None
    return metrics


def config_differences(stored: dict[str, Any], current: cfg.Config, allowed_keys: tuple[str, ...]) -> list[str]:
    """The fields where ``current`` differs from the checkpoint's ``stored`` config (its dict form),
    other than ``allowed_keys`` and where the run lives, as ``"key: checkpoint X, config.yaml Y"``."""
    try:
        stored_flat = cfg.to_flat_dict(cfg.from_dict(stored))
    except cfg.ConfigError:  # written by another metarl version: compare what both know
        stored_flat = {f"{section}.{key}": value for section, values in stored.items() if isinstance(values, dict)
                       for key, value in values.items()}
    current_flat = cfg.to_flat_dict(current)
    return [f"{key}: checkpoint {stored_flat[key]!r}, config.yaml {current_flat[key]!r}"
            for key in changed_fields(stored_flat, current_flat, allowed_keys)]


def changed_fields(then: dict[str, Any], now: dict[str, Any], allowed_keys: tuple[str, ...]) -> list[str]:
    """The keys of the flat config ``now`` (:func:`metarl.config.to_flat_dict`) whose value in ``then``
    differs, other than ``allowed_keys`` and where the run lives; keys ``then`` does not have
    (written by another metarl version) are skipped."""
    return [key for key, value in now.items()
            if key not in LOCATION_FIELDS and not allowed(key, allowed_keys) and key in then and then[key] != value]
