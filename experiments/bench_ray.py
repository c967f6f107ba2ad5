"""Ray sampler against the local batched sampler on this machine, and what Ray costs per round.

    python experiments/bench_ray.py [--env metarl/HalfCheetahVel-v0] [--tasks 40] [--episodes 20]
                                    [--horizon 100] [--repeats 3] [--json out.json]

Measured in one run, best of --repeats, the same batch of tasks for every sampler (shared
parameters, as before adaptation):
- local: metarl's sampler in this process (the batched simulator on every core);
- ray-1: one Ray worker reserving every core; ray-2: two workers, half the cores each (and
  half the tasks each);
- per round, Ray's overhead: the round's wall time minus the slowest worker's own rollout time
  (drawing and shipping the noise, scheduling, returning and concatenating the episodes), and
  the bytes that cross the object store (parameters out, episodes back).

The projection for a cluster assumes each worker on its own machine like this one: a round takes
the local rollout time of its share of the tasks plus the measured overhead plus the episodes'
transfer at --bandwidth; the speed-up is against the local sampler on one machine.
"""

import argparse
import json
import sys
import time

import gymnasium as gym
import torch

import metarl.envs  # noqa: F401  (registers the task envs)
from metarl.envs.batched import cpu_cores
from metarl.policy import GaussianMLPPolicy
from metarl.ray_sampler import RaySampler, import_ray
from metarl.sampler import Sampler


def episodes_bytes(episodes) -> int:
    return sum(getattr(episodes, name).numel() * 4 for name in ("observations", "actions", "rewards", "mask"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="metarl/HalfCheetahVel-v0")
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bandwidth", type=float, default=1e9, help="bytes/s between machines, for the projection")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    ray = import_ray()
    cores = cpu_cores()
    # Both Ray samplers' workers stay up for the interleaved repeats, though only one sampler runs at
    # a time: Ray's CPU count is a reservation, so it is declared twice over.
    ray.init(num_cpus=2 * cores, include_dashboard=False, configure_logging=False)

    probe = gym.make(args.env)
    probe.reset(seed=0)
    tasks = probe.unwrapped.sample_tasks(args.tasks)
    local = Sampler(args.env, horizon=args.horizon, seed=0)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(local.obs_dim, local.act_dim, (64, 64), "tanh")
    samplers = {
        "local": local,
        "ray-1": RaySampler(args.env, horizon=args.horizon, seed=0, num_workers=1, cpus_per_worker=cores),
        "ray-2": RaySampler(args.env, horizon=args.horizon, seed=0, num_workers=2, cpus_per_worker=cores / 2),
    }
    for sampler in samplers.values():  # start the workers and build the simulators
        sampler.sample(policy, None, tasks, args.episodes)
    best = {name: float("inf") for name in samplers}
    overhead = {name: float("inf") for name in samplers if name != "local"}
    steps = 0
    for _ in range(args.repeats):  # interleaved, so that a noisy neighbour hits every sampler alike
        for name, sampler in samplers.items():
            start = time.perf_counter()
            episodes = sampler.sample(policy, None, tasks, args.episodes)
            best[name] = min(best[name], time.perf_counter() - start)
            steps = episodes.num_steps
            if name in overhead:
                overhead[name] = min(overhead[name], sampler.last_round_overhead_s)
    params_bytes = sum(p.numel() * 4 for p in policy.parameters())
    sent = episodes_bytes(episodes)
    for sampler in samplers.values():
        sampler.close()
    ray.shutdown()

    results = {
        "env": args.env, "tasks": args.tasks, "episodes": args.episodes, "horizon": args.horizon, "cores": cores,
        "steps_per_round": steps,
        "steps_per_s": {name: steps / t for name, t in best.items()},
        "ratio_to_local": {name: best["local"] / t for name, t in best.items()},
        "round_s": best,
        "ray_overhead_s": overhead,
        "params_bytes_per_task_set": params_bytes,
        "episodes_bytes_per_round": sent,
    }
    print(f"{args.env}: {args.tasks} tasks x {args.episodes} episodes x {args.horizon} steps, {cores} cores")
    print(f"{'sampler':>8}  {'steps/s':>9}  {'/local':>6}  {'round s':>7}  {'Ray overhead s':>14}")
    for name in samplers:
        extra = f"{overhead[name]:>14.3f}" if name in overhead else f"{'-':>14}"
        print(f"{name:>8}  {steps / best[name]:>9.0f}  {best['local'] / best[name]:>6.2f}  {best[name]:>7.3f}  {extra}")
    print(f"object store per round: parameters {params_bytes / 1e3:.0f} kB per set (x tasks after adaptation), "
          f"episodes {sent / 1e6:.1f} MB back")

    # Projection: W machines like this one, a worker each.
    per_round = min(overhead.values())
    projection = {}
    print(f"\nprojected, W workers on W machines like this one (overhead {per_round * 1e3:.0f} ms/round, "
          f"{args.bandwidth / 1e9:g} GB/s):")
    print(f"{'W':>4}  {'round s':>8}  {'speed-up':>8}")
    for workers in (1, 2, 4, 8, 16, 32):
        share = best["local"] * -(-args.tasks // workers) / args.tasks
        round_s = share + per_round + sent / args.bandwidth
        projection[workers] = {"round_s": round_s, "speedup": best["local"] / round_s}
        print(f"{workers:>4}  {round_s:>8.3f}  {best['local'] / round_s:>8.2f}")
    results["projection"] = projection
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
