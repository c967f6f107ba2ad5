"""Resident memory and build time of one meta-batch's sub-envs at a shipped Meta-World config.

    python experiments/bench_metaworld_memory.py experiments/ml10.yaml [KEY=VALUE ...]

Builds the config's sampler, samples one meta-batch of 5-step episodes (every sub-env builds its
simulator) and prints the resident memory of this process and its worker processes (shared pages
counted once per process) before and after, per sub-env, and the seconds of the first and a second
sampling. Run it on an idle machine; needs the metaworld extra.
"""

import os
import sys
import time

import gymnasium as gym
import torch

from metarl import config as cfg
from metarl.policy import GaussianMLPPolicy
from metarl.run.factory import make_sampler


def rss_tree_gib(pid: int) -> float:
    """Resident memory of process ``pid`` and all its descendants (Linux), in GiB."""
    total_kib, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as status:
                total_kib += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
            for thread in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{thread}/children") as children:
                    stack += [int(c) for c in children.read().split()]
        except (FileNotFoundError, StopIteration):  # the process ended meanwhile
            pass
    return total_kib / 2**20


def main(path: str, overrides: list[str]) -> None:
    config = cfg.load(path, ["sampler.horizon=5", *overrides])
    sampler = make_sampler(config, torch.device("cpu"))
    env = gym.make(config.env.id, **config.env.kwargs).unwrapped
    env.reset(seed=0)
    policy = GaussianMLPPolicy(env.observation_space.shape[0], env.action_space.shape[0],
                               hidden_sizes=tuple(config.policy.hidden_sizes))
    batch, episodes = config.maml.meta_batch_size, config.sampler.episodes_per_task
    before = rss_tree_gib(os.getpid())
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        sampler.sample(policy, None, env.sample_tasks(batch), episodes)
        seconds.append(time.perf_counter() - start)
    after = rss_tree_gib(os.getpid())
    sub_envs = batch * episodes
    print(f"{path} {' '.join(overrides)}: {sub_envs} sub-envs, sampler.vectorization {config.sampler.vectorization}; "
          f"resident {before:.2f} GiB before, {after:.2f} GiB after (+{(after - before) * 1024 / sub_envs:.1f} MiB "
          f"per sub-env); first sampling {seconds[0]:.1f} s (builds the simulators), second {seconds[1]:.1f} s")
    sampler.close()
    env.close()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
