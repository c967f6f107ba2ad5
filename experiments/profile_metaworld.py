"""Where a Meta-World step spends its time: cProfile over random-action steps of one class.

    python experiments/profile_metaworld.py [CLASS ...] [--steps N] [--kernels stock|fast|both]

For each class (default reach-v3 and pick-place-v3) it steps metarl's ML1 env with uniform random
actions (a reset every 500 steps, Meta-World v3's episode length) under cProfile and prints the
share of the profiled time spent in MuJoCo's ``mj_step`` (the physics), scipy's
``Rotation.from_matrix`` (the observation's object quaternion) and Meta-World's
``touching_object`` (contact checks in the reward), the rest being Python reward, observation and
wrapper code. ``--kernels stock`` profiles Meta-World's own code, ``fast`` metarl's bit-identical
replacements (``metarl.envs.metaworld_kernels``), ``both`` (default) the two in turn. Shares
under a profiler overstate Python-heavy code somewhat, so compare them with each other, not with
wall-clock rates (``metarl bench`` measures those). Needs the metaworld extra.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
from contextlib import nullcontext

import gymnasium as gym
import numpy as np

from metarl.envs import metaworld_kernels

#: What the table attributes, as substrings of cProfile's function names.
PARTS = {"mj_step": "mj_step", "from_matrix": "from_matrix", "touching_object": "touching_object"}


def profile_class(name: str, steps: int, kernels: str, seed: int = 0) -> dict[str, float]:
    """Shares (0-1) of the profiled time in each of :data:`PARTS`, and ``us_per_step``."""
    context = metaworld_kernels.stock() if kernels == "stock" else nullcontext()
    with context:
        env = gym.make("metarl/ML1-v0", task_name=name).unwrapped
        try:
            env.reset(seed=seed)
            env.set_task(env.sample_tasks(1)[0])
            rng = np.random.default_rng(seed)
            actions = rng.uniform(-1, 1, size=(steps, *env.action_space.shape)).astype(np.float32)
            env.reset(seed=seed)
            env.step(actions[0])  # builds what the first step builds, outside the profile
            profiler = cProfile.Profile()
            profiler.enable()
            for t in range(steps):
                if t and t % 500 == 0:
                    env.reset()
                env.step(actions[t])
            profiler.disable()
        finally:
            env.close()
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    shares = {part: 0.0 for part in PARTS}
    for (_, _, function), (_, _, _, cumulative, _) in stats.stats.items():
        for part, needle in PARTS.items():
            if needle in function:
                shares[part] += cumulative / total
    return {**shares, "us_per_step": 1e6 * total / steps}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("classes", nargs="*", default=["reach-v3", "pick-place-v3"], help="Meta-World v3 class names")
    parser.add_argument("--steps", type=int, default=3000, help="steps profiled per class (default 3000)")
    parser.add_argument("--kernels", choices=("stock", "fast", "both"), default="both")
    args = parser.parse_args(argv)
    if args.steps <= 0:
        parser.error(f"--steps must be positive, got {args.steps}")
    modes = ("stock", "fast") if args.kernels == "both" else (args.kernels,)
    print(f"| class | code | us per step (profiled) | {' | '.join(PARTS)} | rest |")
    print("| --- | --- | --- |" + " --- |" * (len(PARTS) + 1))
    for name in args.classes:
        for mode in modes:
            row = profile_class(name, args.steps, mode)
            shares = [row[part] for part in PARTS]
            cells = " | ".join(f"{100 * s:.0f}%" for s in shares)
            code = "Meta-World's" if mode == "stock" else "metarl's kernels"
            print(f"| {name} | {code} | {row['us_per_step']:.0f} | {cells} | {100 * (1 - sum(shares)):.0f}% |",
                  flush=True)


if __name__ == "__main__":
    main()
