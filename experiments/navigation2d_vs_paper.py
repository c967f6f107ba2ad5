"""Reproduce the MAML paper's 2D-navigation result and print it beside the paper's numbers.

    python experiments/navigation2d_vs_paper.py [--config CONFIG] [key=value ...]

Meta-trains with experiments/navigation2d.yaml (the paper's hyperparameters; --config picks another,
e.g. experiments/navigation2d_authors.yaml, the settings of the authors' code), evaluates with the
paper's protocol (the paper's own 40 test goals, VPG steps, batches of 40 x 100 steps) and writes
the comparison to RUN_DIR/vs_paper.md. Overrides are passed on to the config, e.g.
run.iterations=50 for a shorter run.
"""

import argparse
import json
import time
from pathlib import Path

from metarl import config as cfg
from metarl.paper import paper_results
from metarl.train import train

# Finn, Abbeel & Levine (2017), Figure 4 (2D navigation), mean +- s.e. over 40 test tasks after
# 0, 1, ... gradient steps, decoded from the authors' result files (metarl/data, see metarl/paper.py).
PAPER = paper_results("point")


def comparison_table(ours: dict) -> str:
    steps = ours["steps"]
    header = "| method | " + " | ".join(f"{s} step{'s' if s != 1 else ''}" for s in steps) + " |"
    rows = [header, "|" + " --- |" * (len(steps) + 1)]
    cell = lambda m, s: f"{m:.2f} ± {s:.2f}"  # noqa: E731
    rows.append("| metarl MAML (ours) | "
                + " | ".join(cell(m, s) for m, s in zip(ours["mean_return"], ours["stderr"], strict=True)) + " |")
    for name, (means, ses) in PAPER.items():
        cells = [cell(m, s) for m, s in zip(means, ses, strict=True)] + [""] * (len(steps) - len(means))
        rows.append(f"| paper {name} | " + " | ".join(cells[: len(steps)]) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(Path(__file__).with_name("navigation2d.yaml")),
                        help="experiment config")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args()
    config = cfg.load(args.config, args.overrides)
    start = time.perf_counter()
    run_dir = train(config)
    minutes = (time.perf_counter() - start) / 60
    ours = json.loads((run_dir / "eval.json").read_text())
    text = (
        f"{comparison_table(ours)}\n\n"
        f"{config.run.iterations} meta-iterations, seed {config.run.seed}, {minutes:.1f} min wall-clock "
        f"(training and evaluation), eval tasks {config.eval.tasks}, eval step sizes {config.eval.step_sizes}, with "
        f"`python experiments/navigation2d_vs_paper.py --config {args.config} {' '.join(args.overrides)}`.\n"
    )
    (run_dir / "vs_paper.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
