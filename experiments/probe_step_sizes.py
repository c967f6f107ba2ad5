"""How a trained run's initialisation adapts with one inner step of each of several sizes.

MAML trains its initialisation for one inner step size (``maml.inner_lr``); this asks whether that
size is the one it adapts best with. Each size is one ``metarl evaluate`` with a single adaptation
step, written beside the run (never over its own eval.json), then one table of them all:

    python experiments/probe_step_sizes.py results/ml1_push/run 0.003 0.01 0.03 0.1 0.3 \\
        --set eval.tasks=train eval.num_tasks=40

Evaluations already written are read, not rerun (``--force`` reruns them); the table goes to stdout
as markdown. Files: ``OUT/{tasks}_{size}.json`` and ``.png``, ``OUT`` defaulting to
``RUN_DIR/../step_sizes``. "change" is the mean over tasks of each task's own change, with the
standard error of those paired differences (the same tasks before and after the step).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from metarl import config as cfg
from metarl.evaluate import stderr
from metarl.run.evaluation import evaluate_run
from metarl.run.rundir import RunDir


def paired(before: list[float], after: list[float]) -> tuple[float, float]:
    """Mean and standard error (as eval.json's) of the per-task differences ``after - before``."""
    diffs = torch.tensor(after, dtype=torch.float64) - torch.tensor(before, dtype=torch.float64)
    return float(diffs.mean()), stderr(diffs)


def mean_err(mean: float, err: float) -> str:
    """``mean ± err`` to about three significant figures of the mean (at least a whole number)."""
    magnitude = math.floor(math.log10(abs(mean))) if mean else 0
    digits = min(max(2 - magnitude, 0), 3)
    return f"{mean:,.{digits}f} ± {err:,.{digits}f}"


def row(size: float, result: dict, trained_with: float) -> str:
    mark = " (trained with)" if math.isclose(size, trained_with) else ""
    cells = [f"{size:g}{mark}"]
    if "success_rate" in result:
        rate, err = result["success_rate"], result["success_stderr"]
        change, change_err = paired(*result["per_task_success"])
        cells += [f"{rate[0]:.2f} ± {err[0]:.2f}", f"{rate[1]:.2f} ± {err[1]:.2f}", f"{change:+.2f} ± {change_err:.2f}"]
    ret, ret_err = result["mean_return"], result["stderr"]
    change, change_err = paired(*result["per_task_returns"])
    cells += [mean_err(ret[0], ret_err[0]), mean_err(ret[1], ret_err[1]),
              ("+" if change >= 0 else "") + mean_err(change, change_err)]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("sizes", type=float, nargs="+", help="inner step sizes to try")
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value",
                        help="eval.* overrides for every evaluation, e.g. eval.tasks=train eval.num_tasks=40")
    parser.add_argument("--out", type=Path, help="where the evaluations go (default: RUN_DIR/../step_sizes)")
    parser.add_argument("--force", action="store_true", help="rerun evaluations already written")
    args = parser.parse_args(argv)
    bad = [s for s in args.sizes if not s > 0]
    if bad:
        parser.error(f"sizes: must be positive, got {bad}")
    try:
        config = RunDir.open(args.run_dir).load_config(args.set, ("eval.",), "--set only takes eval.* fields")
    except (cfg.ConfigError, FileNotFoundError) as exc:
        print(f"probe_step_sizes: {exc}", file=sys.stderr)
        return 2
    out = args.out or args.run_dir.resolve().parent / "step_sizes"
    lines, has_success = [], False
    for size in args.sizes:
        path = out / f"{config.eval.tasks}_{size:g}.json"
        if args.force or not path.is_file():
            print(f"evaluating step size {size:g} -> {path}", file=sys.stderr, flush=True)
            evaluate_run(args.run_dir, [*args.set, "eval.num_steps=1", f"eval.step_sizes=[{size!r}]"], out=path)
        result = json.loads(path.read_text())
        has_success = "success_rate" in result
        lines.append(row(size, result, config.maml.inner_lr))
    head = ["inner step size"]
    if has_success:
        head += ["success, 0 steps", "success, 1 step", "change"]
    head += ["return, 0 steps", "return, 1 step", "change"]
    print(f"{config.env.id}, {config.eval.num_tasks} tasks ({config.eval.tasks}), mean ± standard error over tasks:\n")
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
