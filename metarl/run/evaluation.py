"""The end-of-run evaluation and ``metarl evaluate``: the test protocol on a run's meta-parameters."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from metarl import config as cfg
from metarl.checkpoint import atomic_write_bytes, version_changes
from metarl.evaluate import evaluate_protocol
from metarl.plots import plot_adaptation
from metarl.run.factory import Components, build, eval_tasks, make_sampler
from metarl.run.rundir import RunDir
from metarl.run.state import load_meta_parameters

#: What ``metarl evaluate RUN_DIR key=value`` may change: the protocol and the device.
EVALUATE_OVERRIDES = ("eval.", "run.device")


def evaluation_file(run_dir: str | Path, tasks: str | None) -> Path:
    """Where a run keeps its evaluation on ``eval.tasks``: ``eval_train.json`` for the meta-train
    tasks (``train``), ``eval.json`` for held-out ones; its plot is the same name with ``.png``."""
    return Path(run_dir) / ("eval_train.json" if tasks == "train" else "eval.json")


def run_evaluation(config: cfg.Config, parts: Components, run: RunDir, out: Path | None = None) -> dict[str, Any]:
    """The test protocol of ``config.eval``; writes ``eval.json`` and ``eval.png`` to ``run``
    (``eval_train.json`` and ``eval_train.png`` for ``eval.tasks: train``, the meta-train
    evaluation, which never replaces the held-out one), or ``out`` and a ``.png`` beside it."""
    ev = config.eval
    tasks = eval_tasks(config)
    # Its own sampler, on the "eval_sampler" stream of eval.seed: the same checkpoint always gives the same eval.json.
    sampler = make_sampler(config, parts.device, "eval_sampler")
    start = time.perf_counter()
    try:
        result = evaluate_protocol(config, parts.policy, sampler, tasks, parts.step_sizes)
    finally:
        sampler.close()
    result = {"env": config.env.id, "eval_tasks": ev.tasks, "eval_seed": ev.seed, **result,
              "time_s": time.perf_counter() - start}
    out = out or evaluation_file(run.path, ev.tasks)
    atomic_write_bytes(out, lambda f: f.write(json.dumps(result, indent=1).encode()))
    plot_adaptation(result, out.with_suffix(".png"), title=config.env.id + (" (training tasks)" if ev.tasks == "train"
                                                                              else ""), label=run.path.name)
    return result


def evaluate_run(
    run_dir: str | Path, overrides: list[str] | None = None, checkpoint: str | Path | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Re-run the evaluation of a finished (or checkpointed) run, with optional ``eval.*`` and
    ``run.device`` overrides; ``checkpoint`` defaults to ``RUN_DIR/checkpoints/last.pt``. ``out``
    (a ``.json`` path) keeps the run's own ``eval.json`` / ``eval_train.json`` as they are."""
    if out is not None:
        out = Path(out)
        if out.suffix != ".json" or out.is_dir():
            raise cfg.ConfigError(f"--out: must name a .json file (its plot goes beside it as .png), got {str(out)!r}")
    run = RunDir.open(run_dir)
    config = run.load_config(overrides, EVALUATE_OVERRIDES,
                             "evaluate only accepts eval.* and run.device overrides (the policy is fixed by the run)")
    config.eval.train_tasks = 0  # one evaluation, of eval.tasks: its chunks need not suit the training tasks
    parts = build(config)
    try:
        path = Path(checkpoint) if checkpoint else run.checkpoint()
        saved = run.load_checkpoint(path, parts.device)
        changed = version_changes(saved.get("versions"))
        if changed:
            print(f"metarl evaluate: warning: {path} was trained with other package versions ({changed}): the "
                  "episodes differ from that run's, so the figures may differ from its eval.json within their "
                  "noise", file=sys.stderr, flush=True)
        load_meta_parameters(parts, saved, path)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
        return run_evaluation(config, parts, run, out)
    finally:
        parts.close()
