"""Seconds per meta-iteration of every task family at its shipped config.

    python experiments/bench_families.py [--iterations 2] [--configs halfcheetah_vel ant_goal ...]
                                         [--vectorization auto|sync] [--json]

Runs each experiments/<family>.yaml for a few meta-iterations (no evaluation) in a temporary run
directory and prints, per family, the batch (tasks x episodes x horizon), seconds per iteration and
where they go (sampling before and after adaptation, the inner adaptation, the TRPO meta-update),
and env-steps per second of the sampling phase. The first iteration is included: it also builds
the vector envs.
"""

import argparse
import json
import tempfile
from pathlib import Path

import gymnasium as gym

from metarl import config as cfg
from metarl.config import VECTORIZATION_MODES
from metarl.run.rundir import read_metrics
from metarl.train import train

EXPERIMENTS = Path(__file__).resolve().parent
FAMILIES = ["halfcheetah_vel", "halfcheetah_dir", "ant_vel", "ant_dir", "ant_goal",
            "hopper_rand_params", "walker2d_rand_params", "halfcheetah_rand_params", "navigation2d"]


def bench(name: str, iterations: int, out: Path, vectorization: str = "auto") -> dict:
    config = cfg.load(EXPERIMENTS / f"{name}.yaml",
                      [f"run.iterations={iterations}", "eval.at_end=false", f"run.output_dir={out}", f"run.name={name}",
                       f"sampler.vectorization={vectorization}"])
    metrics = read_metrics(train(config, quiet=True))
    mean = lambda key: sum(m[key] for m in metrics) / len(metrics)  # noqa: E731
    horizon = config.sampler.horizon or gym.spec(config.env.id).max_episode_steps
    return {
        "env": config.env.id,
        "batch": f"{config.maml.meta_batch_size}x{config.sampler.episodes_per_task}x{horizon}",
        "iteration_s": mean("time_sampling") + mean("time_adapt") + mean("time_update"),
        "sampling_s": mean("time_sampling"),
        "adapt_s": mean("time_adapt"),
        "meta_update_s": mean("time_update"),
        "sampler_steps_per_s": mean("env_steps") / mean("time_sampling"),
        "iterations": iterations,
        "vectorization": vectorization,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=2, help="meta-iterations per family (default 2)")
    parser.add_argument("--configs", nargs="+", default=FAMILIES, choices=FAMILIES, help="families to run")
    parser.add_argument("--vectorization", default="auto", choices=VECTORIZATION_MODES,
                        help="sampler path (default auto: the env's batched simulator when it has one)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.json:
            print(f"{'env':<34}{'batch':>13}{'s/iter':>9}{'sample':>9}{'adapt':>8}{'update':>9}{'steps/s':>10}")
        for name in args.configs:
            row = bench(name, args.iterations, Path(tmp), args.vectorization)
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(f"{row['env']:<34}{row['batch']:>13}{row['iteration_s']:>9.1f}{row['sampling_s']:>9.1f}"
                      f"{row['adapt_s']:>8.2f}{row['meta_update_s']:>9.2f}{row['sampler_steps_per_s']:>10.0f}",
                      flush=True)


if __name__ == "__main__":
    main()
