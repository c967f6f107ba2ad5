"""The ``metarl`` command line: train, evaluate, envs."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from pathlib import Path

import gymnasium as gym

from metarl import bench
from metarl import config as cfg
from metarl.ray_sampler import SamplerWorkerError
from metarl.sampler import NonFiniteEnvError, TaskEnvError, import_task_module, registered_task_env_ids

EXIT_BAD_INPUT = 2


def _describe(env_id: str) -> tuple[str, str]:
    """(task space, first docstring line) of a registered env's class."""
    entry = gym.spec(env_id).entry_point
    try:
        creator = gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
    except (ImportError, AttributeError) as exc:
        return "?", f"(cannot import {entry}: {exc})"
    doc = inspect.getdoc(creator) or ""
    return getattr(creator, "task_description", "") or "-", doc.splitlines()[0] if doc else ""


def cmd_envs(args: argparse.Namespace) -> int:
    before = set(gym.registry)
    for module in args.imports:
        import_task_module(module)
    ids = sorted(set(registered_task_env_ids()) | (set(gym.registry) - before))
    rows = [(env_id, str(gym.spec(env_id).max_episode_steps or "-"), *_describe(env_id)) for env_id in ids]
    header = ("id", "horizon", "task space", "description")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from metarl.train import TrainingInterrupted, resume, train

    overrides = list(args.overrides)
    if args.resume:
        if args.config is not None:  # `--resume RUN key=value`: argparse took the first override for CONFIG
            if "=" not in args.config:
                raise cfg.ConfigError(f"give either CONFIG or --resume RUN_DIR, not both (got {args.config!r})")
            overrides.insert(0, args.config)
    elif args.config is None:
        raise cfg.ConfigError("give a CONFIG (e.g. experiments/navigation2d.yaml) or --resume RUN_DIR")
    if args.checkpoint and not args.resume:
        raise cfg.ConfigError("--checkpoint only goes with --resume RUN_DIR")
    try:
        if args.resume:
            run_dir = resume(args.resume, overrides, quiet=args.quiet, checkpoint=args.checkpoint)
        else:
            run_dir = train(cfg.load(args.config, overrides), quiet=args.quiet)
    except TrainingInterrupted as stopped:
        print(f"metarl train: {stopped}", file=sys.stderr)
        return 128 + stopped.signum
    except (SamplerWorkerError, NonFiniteEnvError) as exc:  # the message names the env and the tasks
        print(f"metarl train: error: {exc}\n{_what_is_left(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # a second Ctrl-C: the iteration was abandoned, the previous checkpoint stays
        print(f"metarl train: stopped at once\n{_what_is_left(exc)}", file=sys.stderr)
        return 130
    print(f"run directory: {run_dir}")
    return 0


def _what_is_left(exc: BaseException) -> str:
    """What a failed ``metarl train`` leaves: the run to resume, or nothing."""
    from metarl.run.rundir import CHECKPOINT

    run_dir = getattr(exc, "run_dir", None)
    if run_dir is None:
        return "no meta-iteration was recorded, so no run directory was kept"
    if not (Path(run_dir) / CHECKPOINT).is_file():
        return f"{run_dir} has no checkpoint yet; start the run again"
    return f"the last checkpoint stays; resume with: metarl train --resume {run_dir}"


def cmd_plot(args: argparse.Namespace) -> int:
    from metarl.plots import plot_runs
    from metarl.run.rundir import read_metrics

    if args.labels and len(args.labels) != len(args.run_dirs):
        raise cfg.ConfigError(f"--labels: got {len(args.labels)} labels for {len(args.run_dirs)} runs")
    if args.smooth < 1:
        raise cfg.ConfigError(f"--smooth must be >= 1, got {args.smooth}")
    runs = []
    for index, run_dir in enumerate(map(Path, args.run_dirs)):
        metrics = read_metrics(run_dir)
        if not metrics:
            raise FileNotFoundError(f"{run_dir} has no metrics.jsonl lines (not a run directory, or no iteration yet)")
        eval_path = run_dir / "eval.json"
        runs.append({
            "label": args.labels[index] if args.labels else run_dir.name,
            "metrics": metrics,
            "eval": json.loads(eval_path.read_text()) if eval_path.is_file() else None,
        })
    plot_runs(runs, args.out, title=args.title, window=args.smooth)
    print(f"wrote {args.out}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from metarl.render import RenderError, default_gl, render_run

    default_gl()
    try:
        paths = render_run(args.run_dir, num_tasks=args.tasks, frames=args.frames, checkpoint=args.checkpoint,
                           out_dir=args.out_dir, fps=args.fps)
    except RenderError as exc:
        print(f"metarl render: cannot render: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from metarl.evaluate import format_table
    from metarl.run.evaluation import evaluate_run, evaluation_file

    result = evaluate_run(args.run_dir, args.overrides, args.checkpoint, args.out)
    print(format_table(result))
    path = Path(args.out) if args.out else evaluation_file(args.run_dir, result["eval_tasks"])
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="metarl", description="Model-agnostic meta-reinforcement learning.")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="meta-train a policy (or resume a run)",
                       description="Meta-train with MAML-TRPO and evaluate at the end. Ctrl-C or SIGTERM finish the "
                       "current meta-iteration, write a checkpoint and print how to resume (exit code 128 + signal).")
    p.add_argument("config", nargs="?", help="YAML experiment config, e.g. experiments/navigation2d.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override any config field, e.g. run.iterations=10 maml.inner_lr=0.5")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue RUN_DIR from checkpoints/last.pt (overrides: run.iterations, run.checkpoint_every, "
                   "run.checkpoint_minutes, run.device, eval.*, tracking.*)")
    p.add_argument("--checkpoint",
                   help="with --resume: the checkpoint to continue from (e.g. RUN_DIR/checkpoints/previous.pt)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages (for logs)")
    p.set_defaults(func=cmd_train)

    from metarl import sweep

    p = sub.add_parser("sweep", help="one config over a grid of overrides and seeds, N runs at a time",
                       description=sweep.__doc__.split("\n\n")[2].replace("\n", " "))
    sweep.add_arguments(p)
    p.set_defaults(func=sweep.cmd_sweep)

    from metarl import report

    p = sub.add_parser("report", help="results over seeds: means, IQM and intervals, tables and plots",
                       description=report.__doc__.split("\n\n")[2].replace("\n", " "))
    report.add_arguments(p)
    p.set_defaults(func=report.cmd_report)

    p = sub.add_parser("evaluate", help="evaluate a run with the paper protocol",
                       description="Adapt the run's meta-learned policy on held-out tasks; "
                       "writes eval.json and eval.png (eval_train.* with eval.tasks=train).")
    p.add_argument("run_dir", help="a run directory written by `metarl train`")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override config fields, e.g. eval.num_steps=5 eval.step_sizes=[0.1]")
    p.add_argument("--checkpoint", help="checkpoint file to evaluate (default: RUN_DIR/checkpoints/last.pt)")
    p.add_argument("--out", metavar="FILE.json",
                   help="write the evaluation here (and its plot beside it as .png) instead of the run's "
                   "eval.json or eval_train.json, e.g. to try other eval.step_sizes without replacing them")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("bench", help="measure sampling and meta-update speed",
                       description="Measure env steps/s (raw MuJoCo rollout, metarl's sampler, "
                       "gymnasium's vector envs) and meta-update time (as trained, all tasks in one group, "
                       "task by task) at the literature's configs.")
    bench.add_arguments(p)
    p.set_defaults(func=bench.run)

    p = sub.add_parser("plot", help="plot several runs on one figure",
                       description="Training curves (return before and after adaptation against the "
                       "meta-iteration) and, for evaluated runs, adaptation curves (eval.json) of one or more "
                       "run directories, in one PNG.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by `metarl train`")
    p.add_argument("--out", default="runs.png", help="output PNG (default: runs.png)")
    p.add_argument("--labels", nargs="+", help="one label per run (default: the run directories' names)")
    p.add_argument("--smooth", type=int, default=1, metavar="N",
                   help="moving average over N meta-iterations (default 1)")
    p.add_argument("--title", default="", help="figure title")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("render", help="videos of a run's policy before and after adaptation",
                       description="Adapt the run's policy on its first test tasks (the evaluation protocol) and write "
                       "one mp4 per task before and after adaptation (offscreen MuJoCo; MUJOCO_GL defaults to egl).")
    p.add_argument("run_dir", help="a run directory written by `metarl train`")
    p.add_argument("--tasks", type=int, default=2, help="test tasks to render (default 2)")
    p.add_argument("--frames", type=int, default=100, help="frames per video, at most one episode (default 100)")
    p.add_argument("--fps", type=int, default=20, help="frames per second of the mp4 (default 20)")
    p.add_argument("--checkpoint", help="checkpoint to render (default: RUN_DIR/checkpoints/last.pt)")
    p.add_argument("--out-dir", help="where the mp4s go (default: RUN_DIR/videos)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("envs", help="list the registered task envs",
                       description="List metarl's task envs, and those a user module registers (--import).")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first and list the envs it registers (repeatable)")
    p.set_defaults(func=cmd_envs)
    return top


#: Subcommands whose ``key=value`` overrides may also come after flags (``train CONFIG --quiet key=value``).
TAKES_OVERRIDES = ("train", "evaluate", "sweep")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """argparse stops collecting positionals at the first flag; overrides after flags are added here."""
    top = parser()
    args, extra = top.parse_known_args(argv)
    if extra:
        overrides = [text for text in extra if "=" in text and not text.startswith("-")]
        unknown = [text for text in extra if text not in overrides]
        if unknown or args.command not in TAKES_OVERRIDES:
            top.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
        args.overrides = list(args.overrides) + overrides
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # User task envs are named "module:Env-v0"; like `python -m`, look for the module here first.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return args.func(args)
    except (cfg.ConfigError, TaskEnvError, FileNotFoundError) as exc:
        print(f"metarl {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (NonFiniteEnvError, SamplerWorkerError) as exc:  # evaluate and render sample too
        print(f"metarl {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
