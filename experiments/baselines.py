"""MAML against the paper's baselines (random, pretrained, oracle) on a trained run's env and protocol.

    python experiments/baselines.py RUN_DIR [eval.key=value ...] [--timesteps 1000000]
                                    [--oracle-timesteps N] [--seed 0] [--only random pretrained oracle]
                                    [--oracle-plateau [--chunk 250000] [--patience 3]] [--out DIR]

RUN_DIR is a `metarl train` run (its eval.json is the MAML row; a baseline may start before the
run has finished, the table then gains the MAML row from whichever baseline writes last). The baselines use the run's
env, policy architecture and evaluation config (metarl/baselines.py): pretrained and oracle are
stable-baselines3 PPO for --timesteps env steps each (--oracle-timesteps for the oracle, whose
task-conditioned policy needs longer to become the upper bound; --oracle-plateau trains it until
its evaluated return stops improving, at most --oracle-timesteps, and records the curve and the
time it took). Writes RUN_DIR/baselines.json (or OUT/ with --out: e.g. a sweep directory, for
baselines trained once per family and shared by its seeds in `metarl report`),
baselines.md (the paper-style table: return after 0..K steps, mean +- s.e. over the test tasks, and
the fraction of the pretrained-to-oracle gap MAML closes after one step) and baselines.png, after
each baseline as soon as it is done (stopping or crashing later loses none that finished).
--only computes some baselines and keeps the others found in baselines.json when it writes it
(so `--only oracle` and `--only random pretrained` may run side by side). `eval.*` overrides
change the protocol as they do for `metarl evaluate` (evaluate the MAML run with the same ones):
the MAML row is flagged when its eval.json used other test tasks or batches than the baselines.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from metarl import config as cfg
from metarl.baselines import (
    evaluate_policy,
    gap_closed,
    make_training_env,
    policy_from_ppo,
    train_ppo,
    train_ppo_until_plateau,
)
from metarl.plots import plot_adaptation_curves
from metarl.policy import GaussianMLPPolicy
from metarl.run.rundir import RunDir
from metarl.runtime import seed_everything

METHODS = ("random", "pretrained", "oracle")


def table(results: dict) -> str:
    steps = max(len(r["steps"]) for r in results.values())
    lines = ["| method | " + " | ".join(f"{k} steps" for k in range(steps)) + " |", "| --- " * (steps + 1) + "|"]
    for name, r in results.items():
        cells = [f"{m:.2f} ± {s:.2f}" for m, s in zip(r["mean_return"], r["stderr"], strict=True)]
        lines.append(f"| {name} | " + " | ".join(cells + [""] * (steps - len(cells))) + " |")
    return "\n".join(lines)


def protocol_mismatch(result: dict, config: cfg.Config) -> str:
    """What differs between an eval.json's protocol and ``config.eval`` (empty when nothing does)."""
    ev = config.eval
    expected = {"eval_tasks": ev.tasks, "num_tasks": ev.num_tasks, "episodes_per_task": ev.episodes_per_task,
                "budget": ev.budget}
    # eval.json files written before eval.tasks existed used seeded tasks.
    recorded = {"eval_tasks": "seeded", **{k: result[k] for k in expected if k in result}}
    return ", ".join(f"{k}: {recorded[k]} there, {v} here"
                     for k, v in expected.items() if k in recorded and recorded[k] != v)


def write_outputs(results: dict, run_dir: Path, out: Path, config: cfg.Config, overrides: list[str],
                  announce: bool = False) -> str:
    """Merge ``results`` into OUT/baselines.json (keeping the methods it holds that were not computed
    here, and the MAML row from RUN_DIR/eval.json), write baselines.md and baselines.png, and return
    the table. ``announce``: also warn when the MAML row is missing or was evaluated differently."""
    # Read now: the MAML run or another --only run may have written since the start.
    path, maml_path = out / "baselines.json", run_dir / "eval.json"
    kept = json.loads(path.read_text()) if path.is_file() else {}
    maml = {"MAML": json.loads(maml_path.read_text())} if maml_path.is_file() else {}
    results = {**maml, **{m: results.get(m, kept.get(m)) for m in METHODS if m in results or m in kept}}
    if maml and announce:
        mismatch = protocol_mismatch(maml["MAML"], config)
        if mismatch:
            print(f"baselines: warning: {maml_path} was evaluated with another protocol ({mismatch}); "
                  f"run `metarl evaluate {run_dir} {' '.join(overrides)}` for a comparable MAML row",
                  file=sys.stderr)
    elif announce:
        print(f"baselines: {maml_path} is not there yet: the table has no MAML row "
              f"(run `metarl evaluate {run_dir}`"
              " and any baseline again to add it)", file=sys.stderr)
    text = table(results)
    if maml and "oracle" in results and "pretrained" in results and len(results["MAML"]["mean_return"]) > 1:
        fraction = gap_closed(results["MAML"]["mean_return"][1], results["pretrained"]["mean_return"][1],
                              results["oracle"]["mean_return"][0])
        text += f"\n\nMAML closes {fraction:.0%} of the pretrained-to-oracle gap after one step."
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(results, indent=1))
    temporary.replace(path)
    (out / "baselines.md").write_text(text + "\n")
    plot_adaptation_curves(results, out / "baselines.png", title=config.env.id)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished metarl training run (with eval.json)")
    parser.add_argument("--timesteps", type=int, default=1_000_000, help="PPO env steps for pretrained (and oracle)")
    parser.add_argument("--oracle-timesteps", type=int, help="PPO env steps for the oracle (default: --timesteps); "
                        "with --oracle-plateau the most it may take")
    parser.add_argument("--oracle-plateau", action="store_true",
                        help="train the oracle in chunks until its evaluated return stops improving (resumable: "
                        "OUT/baselines_state/oracle-sSEED keeps the models and the curve)")
    parser.add_argument("--chunk", type=int, default=250_000, help="with --oracle-plateau: env steps between "
                        "evaluations (default 250000)")
    parser.add_argument("--patience", type=int, default=3, help="with --oracle-plateau: evaluations in a row "
                        "without beating the best by its standard error before it stops (default 3)")
    parser.add_argument("--only", nargs="+", choices=METHODS, default=list(METHODS),
                        help="baselines to compute; the others are kept from baselines.json")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init and of PPO")
    parser.add_argument("--out", type=Path, help="folder for baselines.json/.md/.png and the oracle's state "
                        "(default RUN_DIR); e.g. a sweep directory, whose baselines `metarl report` then uses for "
                        "every seed (baselines that do not depend on the MAML seed, trained once per family)")
    parser.add_argument("--skip-oracle", action="store_true", help="for envs without an oracle option")
    parser.add_argument("overrides", nargs="*", metavar="eval.key=value", help="evaluation protocol overrides")
    args = parser.parse_args()
    try:
        config = RunDir.open(args.run_dir).load_config(
            args.overrides, ("eval.",), "only eval.* overrides (the baselines use the run's env and policy)")
    except cfg.ConfigError as exc:
        print(f"baselines: error: {exc}", file=sys.stderr)
        return 2
    oracle_timesteps = args.oracle_timesteps or args.timesteps
    out = args.out or args.run_dir
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    seed_everything(args.seed)
    probe = make_training_env(config)
    obs_dim, act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
    probe.close()
    for method in args.only:
        if method == "oracle" and args.skip_oracle:
            continue
        if method == "random":
            policy = GaussianMLPPolicy(obs_dim, act_dim, tuple(config.policy.hidden_sizes), config.policy.nonlinearity,
                                       config.policy.init_std)
            results["random"] = {**evaluate_policy(config, policy), "seed": args.seed}
        elif method == "pretrained":
            ppo = train_ppo(config, args.timesteps, seed=args.seed)
            results["pretrained"] = {**evaluate_policy(config, policy_from_ppo(ppo, config)),
                                     "timesteps": args.timesteps, "seed": args.seed}
        elif args.oracle_plateau:
            state = out / "baselines_state" / f"oracle-s{args.seed}"
            ppo, training = train_ppo_until_plateau(config, args.chunk, args.patience, oracle_timesteps, state,
                                                    oracle=True, seed=args.seed, say=lambda t: print(f"oracle: {t}"))
            results["oracle"] = {**evaluate_policy(config, policy_from_ppo(ppo, config), oracle=True),
                                 **training, "seed": args.seed}
            print(f"oracle: stopped ({training['stopped']}) after {training['trained_timesteps']} steps in "
                  f"{training['seconds'] / 60:.1f} min; best at {training['timesteps']} steps")
        else:
            ppo = train_ppo(config, oracle_timesteps, oracle=True, seed=args.seed)
            results["oracle"] = {**evaluate_policy(config, policy_from_ppo(ppo, config), oracle=True),
                                 "timesteps": oracle_timesteps, "seed": args.seed}
        if method in results:  # written at once: a later method's crash or stop does not lose this one
            write_outputs(results, args.run_dir, out, config, args.overrides)
    text = write_outputs(results, args.run_dir, out, config, args.overrides, announce=True)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
