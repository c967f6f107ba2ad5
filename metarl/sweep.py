"""``metarl sweep``: one experiment config over a grid of overrides, one run directory per point.

    metarl sweep CONFIG [key=v1,v2 ...] [key=value ...] [--jobs N] [--out DIR] [--backend local|ray]

Every ``key=value`` is a ``metarl train`` override; a value with commas (outside brackets, so
``eval.step_sizes=[0.5,0.25]`` is one value) is an axis of the grid, and the grid is every
combination of the axes' values, in the order given. Each point is one ``metarl train`` process,
whose run directory is ``DIR/NAME`` with NAME made of the values that vary (``seed-3``,
``outer-promp__seed-0``). ``DIR/sweep.json`` records the config, the fixed overrides, the axes and
the points; ``DIR/summary.json`` how each point ended; ``DIR/logs/NAME.log`` each run's output.

Running the same command again skips the finished points, resumes the interrupted ones from their
last checkpoint (``metarl train --resume``) and restarts the ones that died before their first
checkpoint (their directory is moved to ``DIR/abandoned/``). The axes may gain values (more seeds),
and the fixed overrides and config file settings that a resume accepts may change
(``run.iterations=N`` extends every run; an edited ``eval`` section reaches the resumed runs too);
any other change to the config or the fixed overrides is refused: that is another sweep (``--out``).

A point that fails is reported with its error and does not stop the others; the exit code is 1 if
any failed. A point still being trained by a process of an earlier sweep (one killed with SIGKILL,
which cannot pass the signal on) is left alone and reported, never started twice. Ctrl-C or
SIGTERM is passed on once to every running run, which finishes its meta-iteration and checkpoints
(rerun the command to continue); a second one stops them at once.

Cores: ``--jobs N`` runs at most N points at a time, and each gets ``cores / N`` threads for its
simulator and for torch (``METARL_SIM_THREADS``, ``OMP_NUM_THREADS``; ``--threads`` sets another
number), so that they do not oversubscribe the machine. ``--backend ray`` runs each point as a Ray
task on the cluster (``--ray-address`` or ``$RAY_ADDRESS``; the working directory and the sweep
directory must be on a filesystem every node shares, at the same path); a point whose own sampler
uses Ray (``sampler.backend=ray``) needs its driver's CPUs plus ``ray.workers x
ray.cpus_per_worker`` for its rollout workers, and the sweep starts a point only when the cluster
has all of them free beyond what running points hold, so a run's workers can always be scheduled
and the sweep cannot deadlock itself.

With ``tracking.wandb=true`` every run of the sweep joins one wandb group named after the sweep
directory (unless ``tracking.group`` is set).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from metarl import config as cfg
from metarl.checkpoint import atomic_write_bytes
from metarl.envs.batched import cpu_cores
from metarl.run.rundir import (
    CHECKPOINT,
    LOCATION_FIELDS,
    PREVIOUS_CHECKPOINT,
    RESUME_OVERRIDES,
    RunDir,
    allowed,
    changed_fields,
)

SWEEP_FILE = "sweep.json"
SUMMARY_FILE = "summary.json"
#: Fields the sweep sets for every point.
RESERVED = ("run.output_dir", "run.name")


def split_values(text: str) -> list[str]:
    """``"0,1,[2,3]"`` -> ``["0", "1", "[2,3]"]``: commas split values only outside brackets and quotes."""
    values, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(text[start:i])
            start = i + 1
    values.append(text[start:])
    return [v.strip() for v in values]


def parse_grid(arguments: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Split ``key=value`` arguments into fixed overrides and the grid's axes (``key -> values``)."""
    fixed: list[str] = []
    axes: dict[str, list[str]] = {}
    seen: set[str] = set()
    for text in arguments:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise cfg.ConfigError(f"sweep arguments are key=value or key=v1,v2,...; got {text!r}")
        if key in RESERVED:
            raise cfg.ConfigError(f"{key}: the sweep sets it for every point (give the sweep directory with --out)")
        if key in seen:
            raise cfg.ConfigError(f"{key} is given twice; give all its values once: {key}=v1,v2")
        seen.add(key)
        values = split_values(value)
        if len(values) == 1:
            fixed.append(f"{key}={values[0]}")
            continue
        if any(v == "" for v in values):
            raise cfg.ConfigError(f"{key}: an empty value in {value!r}")
        if len(set(values)) != len(values):
            raise cfg.ConfigError(f"{key}: a value repeats in {value!r}")
        axes[key] = values
    return fixed, axes


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", value).strip("-") or "x"


@dataclass(frozen=True)
class Point:
    """One run of the sweep: its directory name and the axis values that make it."""

    name: str
    overrides: tuple[str, ...]


def expand(axes: dict[str, list[str]]) -> list[Point]:
    """Every combination of the axes' values, the first axis slowest. Names use each key's last part
    (``run.seed`` -> ``seed``), or the whole key where two keys share it."""
    if not axes:
        return [Point("run", ())]
    leaves = [key.rpartition(".")[2] for key in axes]
    labels = [leaf if leaves.count(leaf) == 1 else key.replace(".", "-") for key, leaf in zip(axes, leaves,
                                                                                              strict=True)]
    points = []
    for combo in itertools.product(*axes.values()):
        name = "__".join(f"{label}-{_slug(value)}" for label, value in zip(labels, combo, strict=True))
        points.append(Point(name, tuple(f"{key}={value}" for key, value in zip(axes, combo, strict=True))))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        clash = next(n for n in names if names.count(n) > 1)
        raise cfg.ConfigError(f"two points of the grid would share the directory name {clash!r}; "
                              "give values that differ in letters or digits")
    return points


def _write_json(path: Path, data: Any) -> None:
    text = (json.dumps(data, indent=1) + "\n").encode()
    atomic_write_bytes(path, lambda f: f.write(text))


@dataclass
class Sweep:
    """The sweep directory and what it records (``sweep.json``)."""

    path: Path
    config_path: Path
    fixed: list[str]
    axes: dict[str, list[str]]
    points: list[Point]
    created: str = field(default_factory=lambda: datetime.now().isoformat(timespec="seconds"))

    @property
    def name(self) -> str:
        return self.path.resolve().name

    def run_dir(self, point: Point) -> Path:
        return self.path / point.name

    def overrides(self, point: Point) -> list[str]:
        """Everything ``metarl train`` gets for ``point`` besides the config file."""
        extra = [f"run.output_dir={self.path}", f"run.name={point.name}"]
        if not any(o.startswith("tracking.group=") for o in [*self.fixed, *point.overrides]):
            extra.append(f"tracking.group={self.name}")
        return [*self.fixed, *point.overrides, *extra]

    def config(self, point: Point) -> cfg.Config:
        return cfg.load(self.config_path, self.overrides(point))

    @classmethod
    def open(cls, out: Path, config_path: Path, fixed: list[str], axes: dict[str, list[str]]) -> Sweep:
        """The sweep at ``out``: new, or the recorded one with this command's points added.

        Raises:
            ConfigError: when the config file or a fixed override differs from the recorded sweep's
                (beyond what a resume accepts), or a point's config does not validate.
        """
        record = out / SWEEP_FILE
        recorded = json.loads(record.read_text()) if record.is_file() else None
        if recorded:  # one value of a recorded axis (run.seed=5) adds a point, as run.seed=0,...,5 would
            for key, value in _pairs(fixed):
                if key in recorded["axes"]:
                    fixed = [text for text in fixed if text.partition("=")[0] != key]
                    axes = {**axes, key: [value]}
        sweep = cls(out, config_path, fixed, axes, expand(axes))
        if recorded:
            sweep = cls._merge(recorded, sweep)
        elif out.exists():
            # Runs started by hand under the points' names are taken over (their configs are checked).
            known = {p.name for p in sweep.points} | {"logs", "abandoned"}
            strangers = sorted(entry.name for entry in out.iterdir() if entry.name not in known)
            if strangers:
                raise cfg.ConfigError(f"--out {out} holds {', '.join(strangers[:3])} and no {SWEEP_FILE}: "
                                      "give a new sweep directory")
        for point in sweep.points:  # every point's config is checked before anything runs
            try:
                sweep.config(point)
            except cfg.ConfigError as exc:
                raise cfg.ConfigError(f"point {point.name}: {exc}") from exc
        return sweep

    @classmethod
    def _merge(cls, recorded: dict[str, Any], new: Sweep) -> Sweep:
        # The config file's settings (not its text: comments may change), then the fixed overrides.
        # A field the record lacks came after it: the runs recorded then had its default.
        now = cfg.to_flat_dict(cfg.load(new.config_path))
        then = {**cfg.to_flat_dict(cfg.load(None)), **recorded["base_config"]}
        changed = sorted(f"{key} in {new.config_path}" for key in changed_fields(then, now, RESUME_OVERRIDES))
        old_fixed, new_fixed = dict(_pairs(recorded["fixed"])), dict(_pairs(new.fixed))
        changed += sorted(key for key in old_fixed.keys() | new_fixed.keys()
                          if old_fixed.get(key) != new_fixed.get(key) and not allowed(key, RESUME_OVERRIDES))
        if set(recorded["axes"]) != set(new.axes):
            changed.append(f"the axes ({', '.join(recorded['axes'])} recorded, {', '.join(new.axes) or 'none'} now)")
        if changed:
            raise cfg.ConfigError(
                f"the sweep in {new.path} was started with other settings: {', '.join(changed)} "
                f"(recorded: {' '.join(recorded['fixed'] + _axis_args(recorded['axes']))}). Only more axis values "
                f"and changes to {', '.join(RESUME_OVERRIDES)} continue a sweep; give a new one with --out")
        axes = {key: list(dict.fromkeys(recorded["axes"][key] + new.axes[key])) for key in recorded["axes"]}
        return cls(new.path, new.config_path, new.fixed, axes, expand(axes), created=recorded["created"])

    def save(self, command: list[str]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json(self.path / SWEEP_FILE, {
            "config": str(self.config_path),
            "base_config": cfg.to_flat_dict(cfg.load(self.config_path)),
            "fixed": self.fixed,
            "axes": self.axes,
            "points": [{"name": p.name, "overrides": list(p.overrides)} for p in self.points],
            "created": self.created,
            "command": command,
        })


def _pairs(overrides: list[str]) -> list[tuple[str, str]]:
    return [(text.partition("=")[0], text.partition("=")[2]) for text in overrides]


def _axis_args(axes: dict[str, list[str]]) -> list[str]:
    return [f"{key}={','.join(values)}" for key, values in axes.items()]


def foreign_run(run_dir: Path, config: cfg.Config) -> str:
    """Why the run in ``run_dir`` is not the point's run (its config differs beyond what a resume
    accepts), or "" when it is, or holds no config."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return ""
    try:
        there = cfg.to_flat_dict(cfg.load(path))
    except cfg.ConfigError as exc:
        return f"its config.yaml does not load: {exc}"
    here = cfg.to_flat_dict(config)
    return "; ".join(f"{key}: {there[key]!r} there, {here[key]!r} in the sweep"
                     for key in changed_fields(there, here, RESUME_OVERRIDES))


def resume_overrides(sweep: Sweep, point: Point, run_dir: Path) -> list[str]:
    """What ``metarl train --resume`` gets for ``point``: its overrides that a resume accepts, and
    the settings of the config file that a resume accepts where they now differ from the run's
    own ``config.yaml`` (e.g. an edited ``eval`` section), which the run would not see otherwise."""
    keep = [o for o in sweep.overrides(point) if allowed(o.partition("=")[0], RESUME_OVERRIDES)]
    given = {o.partition("=")[0] for o in keep}
    stored = cfg.to_flat_dict(cfg.load(run_dir / "config.yaml"))
    now = cfg.to_flat_dict(sweep.config(point))
    edited = [f"{key}={json.dumps(value)}" for key, value in now.items()
              if allowed(key, RESUME_OVERRIDES) and key not in given and key not in LOCATION_FIELDS
              and stored[key] != value]
    return [*keep, *edited]


def point_state(run_dir: Path, iterations: int) -> tuple[str, int, Path | None]:
    """``(state, iterations done, checkpoint)``: ``new`` (no directory), ``finished`` (all iterations
    and the evaluation), ``resumable`` (from ``checkpoint``: ``last.pt``, or ``previous.pt`` when the
    last one cannot be read) or ``stale`` (no readable checkpoint: the run died before its first)."""
    if not run_dir.exists():
        return "new", 0, None
    run = RunDir(run_dir)
    for path in (run_dir / CHECKPOINT, run_dir / PREVIOUS_CHECKPOINT):
        try:
            saved = run.load_checkpoint(path)
        except (cfg.ConfigError, OSError):  # missing or unreadable (CheckpointError is a ConfigError)
            continue
        done = int(saved["iteration"])
        if done >= iterations and saved.get("finished", True) and path.name == CHECKPOINT.name:
            return "finished", done, path
        return "resumable", done, path
    return "stale", 0, None


# --- launching runs -------------------------------------------------------------------------------


def thread_variables(threads: int) -> dict[str, str]:
    """The environment variables that give a run ``threads`` cores: its simulator and torch use that many."""
    return {name: str(threads) for name in ("METARL_SIM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}


class Launcher(ABC):
    """Starts a run's command and reports when it has ended."""

    @abstractmethod
    def start(self, command: list[str], log: Path, point: Point) -> Any: ...

    @abstractmethod
    def poll(self, handle: Any) -> int | None:
        """The exit code, or None while it runs."""

    @abstractmethod
    def interrupt(self, handle: Any) -> None:
        """Send the run SIGINT (it checkpoints and stops; a second one stops it at once)."""

    def can_start(self, point: Point, running: int) -> bool:
        return True

    def close(self) -> None:  # noqa: B027 (optional)
        pass


class LocalLauncher(Launcher):
    """Runs as child processes of this one, ``jobs`` at a time, each with ``cores / jobs`` threads."""

    def __init__(self, jobs: int, threads: int | None = None):
        self.jobs = jobs
        self.threads = threads or max(1, cpu_cores() // jobs)

    def start(self, command: list[str], log: Path, point: Point) -> subprocess.Popen:
        with open(log, "ab") as out:
            # Its own session: a Ctrl-C in the terminal reaches the sweep, which passes it on once.
            return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **thread_variables(self.threads)}, start_new_session=True)

    def poll(self, handle: subprocess.Popen) -> int | None:
        return handle.poll()

    def interrupt(self, handle: subprocess.Popen) -> None:
        if handle.poll() is None:
            handle.send_signal(signal.SIGINT)


def _ray_run(command: list[str], log: str, environment: dict[str, str], cwd: str) -> int:
    """The body of a sweep's Ray task: run the command in the sweep's working directory; a cancel
    (KeyboardInterrupt) becomes a SIGINT to the run, which then checkpoints."""
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **environment}, start_new_session=True, cwd=cwd)
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:
                process.send_signal(signal.SIGINT)


class RayLauncher(Launcher):
    """Runs as Ray tasks, each reserving its threads' CPUs; a point with a Ray sampler also needs its
    rollout workers' CPUs free before it starts (see the module docstring)."""

    def __init__(self, jobs: int | None, sweep: Sweep, address: str | None, threads: int | None = None):
        try:
            import ray
        except ImportError as exc:
            raise cfg.ConfigError("--backend ray needs Ray, an optional dependency: pip install -e .[ray]") from exc
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
            ray.init(address=address, include_dashboard=False, configure_logging=False)
        self.ray = ray
        self.cluster_cpus = float(ray.cluster_resources().get("CPU", 1))
        self.jobs = jobs or max(1, int(self.cluster_cpus))
        self.threads = threads or max(1, int(self.cluster_cpus // self.jobs))
        self.address = ray.get_runtime_context().gcs_address
        self.task = ray.remote(_ray_run)
        self.needs = {p.name: self._cpus(sweep.config(p)) for p in sweep.points}
        self.held: dict[Any, float] = {}

    def _cpus(self, config: cfg.Config) -> float:
        """CPUs a run holds: its own threads, plus its rollout workers with a Ray sampler."""
        workers = config.ray.workers * config.ray.cpus_per_worker if config.sampler.backend == "ray" else 0.0
        need = self.threads + workers
        if need > self.cluster_cpus:
            raise cfg.ConfigError(f"a run needs {need:g} CPUs ({self.threads} threads + {workers:g} for its Ray "
                                  f"workers) and the cluster has {self.cluster_cpus:g}: lower ray.workers or --jobs")
        return need

    def can_start(self, point: Point, running: int) -> bool:
        return sum(self.held.values()) + self.needs[point.name] <= self.cluster_cpus + 1e-9

    def start(self, command: list[str], log: Path, point: Point) -> Any:
        environment = {**thread_variables(self.threads), "RAY_ADDRESS": self.address}
        ref = self.task.options(num_cpus=self.threads).remote(command, str(log.resolve()), environment, os.getcwd())
        self.held[ref] = self.needs[point.name]
        return ref

    def poll(self, handle: Any) -> int | None:
        ready, _ = self.ray.wait([handle], timeout=0)
        if not ready:
            return None
        self.held.pop(handle, None)
        try:
            return int(self.ray.get(handle))
        except Exception:  # noqa: BLE001 (the task itself died: node lost)
            return -1

    def interrupt(self, handle: Any) -> None:
        self.ray.cancel(handle, force=False)


# --- the sweep loop -------------------------------------------------------------------------------


@dataclass
class PointRun:
    point: Point
    state: str
    done: int
    iterations: int
    checkpoint: Path | None = None
    handle: Any = None
    status: str = "pending"
    exit_code: int | None = None
    error: str = ""
    seconds: float = 0.0
    started: float = 0.0


def _pid_file(sweep: Sweep, point: Point) -> Path:
    return sweep.path / "logs" / f"{point.name}.pid"


def _owner(sweep: Sweep, point: Point) -> int | None:
    """The process still training ``point`` from an earlier sweep (one killed without passing on a
    signal leaves its runs going), or None. Local runs only: a Ray task's process is elsewhere."""
    try:
        pid = int(_pid_file(sweep, point).read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    try:  # the pid may have been reused by another program since
        command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return pid
    return pid if point.name in command and "metarl" in command else None


def _last_error(log: Path) -> str:
    """The line of a run's log that says what went wrong (its last error line, else its last line)."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if "error" in line.lower() or "Error" in line]
    return (errors or lines or [""])[-1][:500]


def _metrics_lines(run_dir: Path) -> int:
    try:
        with open(run_dir / "metrics.jsonl", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def run_sweep(sweep: Sweep, launcher: Launcher, quiet: bool = False, poll_s: float = 1.0) -> list[PointRun]:
    """Run every point not yet finished; returns each point's outcome (also in ``summary.json``)."""
    from tqdm import tqdm

    from metarl.progress import interactive, progress_bar

    python = [sys.executable, "-m", "metarl.cli", "train"]
    runs, foreign = [], {}
    for point in sweep.points:
        config = sweep.config(point)
        state, done, checkpoint = point_state(sweep.run_dir(point), config.run.iterations)
        runs.append(PointRun(point, state, done, config.run.iterations, checkpoint))
        foreign[point.name] = foreign_run(sweep.run_dir(point), config)
    (sweep.path / "logs").mkdir(parents=True, exist_ok=True)
    say = (lambda text: None) if quiet else tqdm.write
    for run in runs:
        owner = _owner(sweep, run.point)
        if owner:
            run.status, run.error = "busy", (f"still running in process {owner} (an earlier sweep's, which "
                                             "stopped without it); rerun once it has ended")
            say(f"{run.point.name}: {run.error}")
        elif foreign[run.point.name]:
            run.status, run.error = "failed", (f"{sweep.run_dir(run.point)} holds another run "
                                               f"({foreign[run.point.name]}); move it away or give another --out")
            say(f"{run.point.name}: {run.error}")
        elif run.state == "finished":
            run.status = "skipped"
        elif run.state == "stale":
            target = sweep.path / "abandoned" / f"{run.point.name}-{datetime.now():%Y%m%d-%H%M%S}"
            target.parent.mkdir(exist_ok=True)
            sweep.run_dir(run.point).rename(target)
            say(f"{run.point.name}: no checkpoint to resume from; moved to {target} and started again")
            run.state, run.done = "new", 0
    queue = [run for run in runs if run.status == "pending"]
    skipped = len(runs) - len(queue)
    resumed = sum(r.state == "resumable" for r in queue)
    say(f"sweep {sweep.path}: {len(runs)} points, {skipped} finished already, {len(queue)} to run"
        + (f" ({resumed} resumed)" if resumed else ""))
    total = sum(max(0, r.iterations - r.done) for r in queue)
    bar = progress_bar(total=total, unit="it", desc="sweep", disable=quiet or not queue, dynamic_ncols=True)
    redraw = interactive()  # the postfix redraws the bar each poll on a terminal, not in a log file
    running: list[PointRun] = []
    stop = {"signals": 0}

    def on_signal(signum: int, frame: Any) -> None:
        stop["signals"] += 1
        for run in running:
            launcher.interrupt(run.handle)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    counted: dict[str, int] = {}
    try:
        while queue or running:
            while queue and not stop["signals"] and len(running) < launcher.jobs \
                    and launcher.can_start(queue[0].point, len(running)):
                run = queue.pop(0)
                run_dir = sweep.run_dir(run.point)
                if run.state == "resumable":
                    command = [*python, "--resume", str(run_dir), "--checkpoint", str(run.checkpoint),
                               *resume_overrides(sweep, run.point, run_dir), "--quiet"]
                else:
                    command = [*python, str(sweep.config_path), *sweep.overrides(run.point), "--quiet"]
                log = sweep.path / "logs" / f"{run.point.name}.log"
                with open(log, "a") as f:
                    f.write(f"\n# {datetime.now():%Y-%m-%d %H:%M:%S} {' '.join(command)}\n")
                run.handle, run.started, run.status = launcher.start(command, log, run.point), time.monotonic(), \
                    "running"
                if isinstance(run.handle, subprocess.Popen):
                    _pid_file(sweep, run.point).write_text(str(run.handle.pid))
                counted[run.point.name] = run.done
                running.append(run)
            if stop["signals"] and not running:
                break
            time.sleep(poll_s)
            for run in list(running):
                lines = _metrics_lines(sweep.run_dir(run.point))
                if lines > counted[run.point.name]:
                    bar.update(min(lines, run.iterations) - min(counted[run.point.name], run.iterations))
                    counted[run.point.name] = lines
                code = launcher.poll(run.handle)
                if code is None:
                    continue
                running.remove(run)
                _pid_file(sweep, run.point).unlink(missing_ok=True)
                run.exit_code, run.seconds = code, time.monotonic() - run.started
                if code == 0:
                    run.status = "finished"
                elif stop["signals"] and code in (128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT):
                    run.status = "interrupted"
                else:
                    run.status = "failed"
                    run.error = _last_error(sweep.path / "logs" / f"{run.point.name}.log")
                    say(f"{run.point.name}: failed (exit {code}): {run.error}")
            bar.set_postfix_str(
                f"done {sum(r.status in ('finished', 'skipped') for r in runs)}/{len(runs)}, running {len(running)}, "
                f"failed {sum(r.status == 'failed' for r in runs)}", refresh=redraw)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        bar.close()
        launcher.close()
        _write_json(sweep.path / SUMMARY_FILE, {
            "sweep": str(sweep.path),
            "written": datetime.now().isoformat(timespec="seconds"),
            "points": [{"name": r.point.name, "overrides": list(r.point.overrides), "status": r.status,
                        "exit_code": r.exit_code, "error": r.error, "seconds": round(r.seconds, 1)} for r in runs],
        })
    return runs


def format_summary(runs: list[PointRun]) -> str:
    width = max(len(r.point.name) for r in runs)
    lines = []
    for r in runs:
        detail = {"finished": f"{r.seconds / 60:.1f} min", "skipped": "finished before", "failed":
                  f"exit {r.exit_code}: {r.error}", "interrupted": "checkpointed; rerun to continue", "busy": r.error,
                  "pending": "not started"}.get(r.status, "")
        lines.append(f"{r.point.name.ljust(width)}  {r.status:<11}  {detail}")
    return "\n".join(lines)


def cmd_sweep(args: Any) -> int:
    """``metarl sweep``: see the module docstring."""
    config_path = Path(args.config)
    if not config_path.is_file():
        raise cfg.ConfigError(f"config file {str(config_path)!r} not found")
    fixed, axes = parse_grid(list(args.overrides))
    out = Path(args.out) if args.out else Path("runs") / "sweeps" / config_path.stem
    for flag, value in (("--jobs", args.jobs), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise cfg.ConfigError(f"{flag} must be >= 1, got {value}")
    sweep = Sweep.open(out, config_path, fixed, axes)
    if args.backend == "ray":
        launcher: Launcher = RayLauncher(args.jobs, sweep, args.ray_address, args.threads)
    else:
        launcher = LocalLauncher(args.jobs or 1, args.threads)
    sweep.save(list(sys.argv))
    runs = run_sweep(sweep, launcher, quiet=args.quiet)
    print(format_summary(runs))
    print(f"sweep directory: {sweep.path}  (summary.json, logs/)")
    if any(r.status in ("interrupted", "pending") for r in runs):
        print("stopped: rerun the same command to continue", file=sys.stderr)
        return 128 + signal.SIGINT
    return 1 if any(r.status in ("failed", "busy") for r in runs) else 0


def add_arguments(p: Any) -> None:
    p.add_argument("config", help="YAML experiment config, e.g. experiments/navigation2d_authors.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=v1,v2",
                   help="overrides; a value with commas is an axis of the grid, e.g. run.seed=0,1,2,3,4")
    p.add_argument("--jobs", type=int, help="points run at a time (default 1; with --backend ray: one per "
                   "cluster CPU); each gets cores / jobs threads")
    p.add_argument("--threads", type=int, help="threads per run (default: cores / jobs); e.g. --jobs 1 --threads 1 "
                   "for two sweeps side by side on 2 cores")
    p.add_argument("--out", help="sweep directory (default runs/sweeps/CONFIG_NAME); rerunning with the same one "
                   "continues the sweep")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local processes (default) or Ray tasks on a cluster")
    p.add_argument("--ray-address", help="with --backend ray: the cluster to join (default $RAY_ADDRESS, else a "
                   "local Ray)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


__all__ = ["Point", "Sweep", "cmd_sweep", "expand", "parse_grid", "point_state", "run_sweep", "split_values"]
