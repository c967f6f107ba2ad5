"""What a checkpoint costs: seconds (checkpoint_state, torch.save, fsync, rename) and bytes.

    python experiments/bench_checkpoint.py [CONFIG ...] [--repeats 20]

For each config (default: the quickstart, HalfCheetahVel with TRPO and with ProMP), builds the run,
takes one meta-iteration on a tiny batch (so that Adam's moments exist for ProMP), then writes
``last.pt`` ``--repeats`` times into a temporary run directory and prints the median and largest
time and the file size. ``run.checkpoint_minutes`` (default 5) bounds what a kill loses; this is
what each of those checkpoints costs.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from metarl import config as cfg
from metarl.run.factory import build
from metarl.run.iteration import meta_iteration
from metarl.run.rundir import RunDir
from metarl.run.state import checkpoint_state

EXPERIMENTS = Path(__file__).resolve().parent
DEFAULT = ["navigation2d_quick.yaml", "halfcheetah_vel.yaml", "halfcheetah_vel_promp.yaml"]
TINY = ["run.device=cpu", "maml.meta_batch_size=2", "sampler.episodes_per_task=2", "sampler.horizon=10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", default=[str(EXPERIMENTS / name) for name in DEFAULT])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    for path in args.configs:
        config = cfg.load(path, TINY)
        parts = build(config)
        meta_iteration(config, parts)
        with tempfile.TemporaryDirectory() as folder:
            run, seconds = RunDir(folder), []
            for _ in range(args.repeats):
                start = time.perf_counter()
                run.save_checkpoint(checkpoint_state(config, parts, 1, -1.0))
                seconds.append(time.perf_counter() - start)
            size = run.checkpoint().stat().st_size
        parts.close()
        print(f"{Path(path).name}: median {statistics.median(seconds) * 1e3:.1f} ms, "
              f"largest {max(seconds) * 1e3:.1f} ms, {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
