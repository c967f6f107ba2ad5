"""Raw MuJoCo stepping speed of the locomotion models, to choose the mujoco pin.

    python experiments/bench_mujoco.py [--steps 20000] [--json]

Steps gymnasium's HalfCheetah-v5, Hopper-v5 and Ant-v5 one env at a time with random actions
(what the sync and Ray samplers do) and the same models through ``mujoco.rollout`` (what the batched
simulator does, 64 envs, one thread), and prints env-steps per second with the mujoco version. Run
it under each mujoco version to compare, alternating the two a few times on a busy machine:

    for i in 1 2 3; do venvA/bin/python experiments/bench_mujoco.py; venvB/bin/python experiments/bench_mujoco.py; done
"""

import argparse
import json
import time

import gymnasium as gym
import mujoco
import numpy as np
from mujoco import rollout

MODELS = ["HalfCheetah-v5", "Hopper-v5", "Ant-v5"]


def env_steps_per_second(env_id: str, steps: int) -> float:
    env = gym.make(env_id)
    env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, *env.action_space.shape)).astype(np.float32)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    seconds = time.perf_counter() - start
    env.close()
    return steps / seconds


def rollout_steps_per_second(env_id: str, steps: int, num_envs: int = 64) -> float:
    env = gym.make(env_id)
    model, data = env.unwrapped.model, env.unwrapped.data
    frame_skip = env.unwrapped.frame_skip
    env.reset(seed=0)
    state_size = mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_FULLPHYSICS)
    state = np.zeros(state_size)
    mujoco.mj_getState(model, data, state, mujoco.mjtState.mjSTATE_FULLPHYSICS)
    horizon = max(1, steps // num_envs)
    controls = np.random.default_rng(0).uniform(-1, 1, (num_envs, horizon * frame_skip, model.nu))
    initial = np.repeat(state[None], num_envs, axis=0)
    with rollout.Rollout(nthread=1) as runner:
        start = time.perf_counter()
        runner.rollout([model] * num_envs, [mujoco.MjData(model)], initial, controls)
        seconds = time.perf_counter() - start
    env.close()
    return num_envs * horizon / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = {name: {"env": env_steps_per_second(name, args.steps), "rollout": rollout_steps_per_second(name, args.steps)}
            for name in MODELS}
    if args.json:
        print(json.dumps({"mujoco": mujoco.__version__, "steps_per_s": rows}))
        return
    for name, row in rows.items():
        print(f"mujoco {mujoco.__version__}  {name:15s} env {row['env']:9.0f} steps/s   "
              f"rollout {row['rollout']:9.0f} steps/s")


if __name__ == "__main__":
    main()
