"""``metarl report``: results over seeds, with interval estimates, from run directories.

    metarl report RUN_DIR_OR_SWEEP... [--by KEY ...] [--out DIR] [--baselines FILE] [--paper ENV]

Collects the evaluated runs (``eval.json``) under the paths given (run directories, sweep
directories, or folders holding either), groups them by setting (``--by maml.outer``; by default
every config field that differs between the runs except the seed and where they ran), and for each
group and each number of adaptation steps reports the number of seeds, the mean and the IQM of the
returns with 95% stratified-bootstrap intervals (:mod:`metarl.stats`; the test tasks are the
strata, so all runs must be evaluated on the same tasks; a setting with one seed gets an interval
over its test tasks instead, marked as such), the fraction of the pretrained-to-oracle
gap closed after one step where baselines are found (``--baselines FILE``, else each run's
``baselines.json``), the probability that one setting beats another, and the MAML paper's figure
for the env beside ours with whether it lies in our interval. Writes ``report.md``,
``report.json`` and ``report.png`` (adaptation curves and training curves with interval bands).
``--metric success`` reports success rates instead of returns, for envs that record
``info["success"]`` (Meta-World). ``--tasks train`` reports the runs' evaluation on meta-training
tasks instead (``eval_train.json``, from ``metarl evaluate RUN eval.tasks=train``; Meta-World's
tables give meta-train success beside meta-test), to ``report_train.*``, without baselines or
paper figures (both are about test tasks). Where the tasks name their class (Meta-World's ML10
and ML45), a table per class follows, each over the class's tasks.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metarl import config as cfg
from metarl import stats
from metarl.envs.base import tasks_by_class
from metarl.paper import COMPARABLE_RETURNS, paper_env, paper_gap_fraction, paper_results
from metarl.run.rundir import allowed, read_metrics

#: Config fields that say where or how a run was run, not what it is: never a grouping key.
NOT_SETTINGS = ("run.seed", "run.name", "run.output_dir", "run.device", "run.checkpoint_every",
                "run.checkpoint_minutes", "tracking.", "ray.", "sampler.backend", "sampler.vectorization")
#: The evaluation protocol, as each eval.json records it (a run may have been re-evaluated with
#: other eval.* settings than its config's): runs compared in one report must share their test
#: tasks and batches. The step sizes belong to the method (Meta-SGD adapts with learned ones).
PROTOCOL = ("env", "eval_tasks", "eval_seed", "num_tasks", "episodes_per_task", "final_episodes_per_task", "budget")
#: What a report can be about: eval.json's per-task and mean keys, metrics.jsonl's training keys.
#: The evaluation each report is about (``--tasks``): the file each run holds it in.
EVAL_FILES = {"test": "eval.json", "train": "eval_train.json"}
METRICS = {
    "return": {"per_task": "per_task_returns", "mean": "mean_return", "training": ("pre_return", "post_return"),
               "name": "Return", "axis": "return"},
    "success": {"per_task": "per_task_success", "mean": "success_rate", "training": ("pre_success", "post_success"),
                "name": "Success rate", "axis": "success rate"},
}


@dataclass
class RunResult:
    path: Path
    flat: dict[str, Any]
    eval: dict[str, Any]
    baselines: dict[str, Any] | None
    metrics: list[dict[str, Any]]

    @property
    def seed(self) -> int:
        return int(self.flat["run.seed"])


def _is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "metrics.jsonl").is_file()


def find_runs(paths: list[str | Path], eval_file: str = "eval.json") -> tuple[list[Path], list[Path]]:
    """``(evaluated runs, runs without eval_file)`` under ``paths``: run directories, sweep
    directories or folders holding them (searched three levels deep), each found once, in order."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such run or sweep directory")
        if _is_run(path):
            found.append(path)
            continue
        sweep = path / "sweep.json"
        if sweep.is_file():
            names = [p["name"] for p in json.loads(sweep.read_text())["points"]]
            found += [path / name for name in names if _is_run(path / name)]
            continue
        found += sorted(p.parent for pattern in ("*/config.yaml", "*/*/config.yaml", "*/*/*/config.yaml")
                        for p in path.glob(pattern) if _is_run(p.parent))
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        where = ", ".join(map(str, paths))
        raise FileNotFoundError(f"no run directories (config.yaml and metrics.jsonl) under {where}")
    return [p for p in unique if (p / eval_file).is_file()], [p for p in unique if not (p / eval_file).is_file()]


def load_run(path: Path, eval_file: str = "eval.json") -> RunResult:
    """A run with its evaluation ``eval_file`` and, for the test evaluation, its own baselines."""
    config = cfg.load(path / "config.yaml")
    baselines_path = path / "baselines.json"
    own = baselines_path.is_file() and eval_file == "eval.json"
    return RunResult(path, cfg.to_flat_dict(config), json.loads((path / eval_file).read_text()),
                     json.loads(baselines_path.read_text()) if own else None, read_metrics(path))


def _value_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)


def _env_label(run: RunResult) -> str:
    """The env's id without its namespace and, when the env takes keywords, them too: an
    ``ML1-v0`` run names its Meta-World task (``ML1-v0 (task_name=reach-v3)``)."""
    kwargs = [f"{k}={_value_text(v)}" for k, v in (run.flat.get("env.kwargs") or {}).items()]
    name = run.flat["env.id"].split("/")[-1]
    return f"{name} ({', '.join(kwargs)})" if kwargs else name


def group_runs(runs: list[RunResult], by: list[str] | None) -> dict[str, list[RunResult]]:
    """Runs grouped by the values of ``by`` (default: the settings that differ between runs)."""
    keys = list(runs[0].flat)
    if by:
        unknown = [k for k in by if k not in runs[0].flat]
        if unknown:
            raise cfg.ConfigError(f"--by {', '.join(unknown)}: not config fields; e.g. maml.outer, maml.inner_loss, "
                                  "maml.inner_lr, trpo.max_kl")
        keys = list(by)
    else:
        keys = [k for k in keys if not allowed(k, NOT_SETTINGS) and len({_value_text(r.flat.get(k)) for r in runs}) > 1]
    leaves = [k.rpartition(".")[2] for k in keys]
    names = [leaf if leaves.count(leaf) == 1 else k for k, leaf in zip(keys, leaves, strict=True)]
    groups: dict[str, list[RunResult]] = {}
    for run in runs:
        label = (", ".join(f"{name}={_value_text(run.flat.get(k))}" for k, name in zip(keys, names, strict=True))
                 or _env_label(run))
        groups.setdefault(label, []).append(run)
    for label, members in groups.items():
        seeds = [r.seed for r in members]
        if len(set(seeds)) != len(seeds):
            twice = sorted({s for s in seeds if seeds.count(s) > 1})
            raise cfg.ConfigError(
                f"group {label!r} has seed(s) {twice} more than once ({', '.join(str(r.path) for r in members)}): "
                "they differ in a setting --by leaves out; add it to --by")
    return groups


def check_protocol(runs: list[RunResult], metric: str = "return") -> bool:
    """Refuse runs evaluated with different protocols, or without ``metric``; True when every run has
    the same test tasks (then the per-task scores are the strata; otherwise each run is one score)."""
    keys = METRICS[metric]
    lacking = [str(r.path) for r in runs if keys["mean"] not in r.eval]
    if lacking:
        raise cfg.ConfigError(f"--metric {metric}: no {keys['mean']} in the eval.json of {', '.join(lacking)} "
                              "(an env without info['success'] reports returns only)")
    for key in PROTOCOL:
        values = {_value_text(r.eval.get(key)) for r in runs}
        if len(values) > 1:
            raise cfg.ConfigError(f"the runs were evaluated differently ({key}: {', '.join(sorted(values))}); "
                                  "report them separately, or re-evaluate with `metarl evaluate RUN eval.key=value`")
    # (The number of adaptation steps may differ: the report covers the steps every run has.)
    tasks = {json.dumps(r.eval.get("tasks"), sort_keys=True) for r in runs}
    return len(tasks) == 1 and all(keys["per_task"] in r.eval for r in runs)


def scores(members: list[RunResult], step: int, per_task: bool, metric: str = "return") -> np.ndarray:
    """``[runs, tasks]`` scores (returns, or success rates) after ``step`` adaptation steps
    (``[runs, 1]`` run means without per_task)."""
    keys = METRICS[metric]
    if per_task:
        return np.array([r.eval[keys["per_task"]][step] for r in members], dtype=np.float64)
    return np.array([[r.eval[keys["mean"]][step]] for r in members], dtype=np.float64)


def task_classes(run: RunResult) -> dict[str, list[int]] | None:
    """``{class: indices of its tasks}`` where the evaluated tasks name their class (``env_name``,
    Meta-World's ML10/ML45) and there are several; None otherwise."""
    members = tasks_by_class([t.get("env_name") if isinstance(t, dict) else None for t in run.eval.get("tasks") or []])
    return members if members and len(members) > 1 else None


def _baselines(members: list[RunResult], shared: dict[str, Any] | None) -> tuple[float, float, str] | None:
    """(pretrained after one step, oracle, where from) for the gap fraction, or None."""
    sources = [shared] if shared else [r.baselines for r in members if r.baselines]
    sources = [b for b in sources if b and "pretrained" in b and "oracle" in b
               and len(b["pretrained"]["mean_return"]) > 1]
    if not sources:
        return None
    pretrained = float(np.mean([b["pretrained"]["mean_return"][1] for b in sources]))
    oracle = float(np.mean([b["oracle"]["mean_return"][0] for b in sources]))
    return pretrained, oracle, "one file for all seeds" if shared else f"baselines.json of {len(sources)} run(s)"


#: The baselines of experiments/baselines.py, in the order the report lists them.
BASELINE_METHODS = ("pretrained", "oracle", "random")


def baseline_rows(runs: list[RunResult], shared: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each baseline's return after k steps, averaged over the files that hold it: the shared file
    (a sweep's, trained once for the family) where it has the method, else the runs' own
    ``baselines.json`` (the random initialisation: one per seed), with the range over those files."""
    rows = []
    for method in BASELINE_METHODS:
        if shared and shared.get(method):
            sources, where = [shared[method]], "one file for all seeds"
        else:
            sources = [r.baselines[method] for r in runs if r.baselines and r.baselines.get(method)]
            where = f"baselines.json of {len(sources)} run(s)"
        if not sources:
            continue
        steps = min(len(b["mean_return"]) for b in sources)
        values = np.array([b["mean_return"][:steps] for b in sources], dtype=np.float64)
        rows.append({"method": method, "source": where, "files": len(sources), "mean_return": values.mean(0).tolist(),
                     "min": values.min(0).tolist(), "max": values.max(0).tolist()})
    return rows


#: What the training curves can be drawn against (a metrics.jsonl column each).
TRAINING_AXES = {"iteration": "meta-iteration", "wall_time": "wall-clock seconds", "total_env_steps": "env steps"}


def training_band(members: list[RunResult], key: str, reps: int, seed: int, x: str = "iteration",
                  points: int = 100) -> dict[str, list[float]] | None:
    """Mean over runs of ``key`` against ``x``, with a 95% bootstrap band (whole runs resampled).
    Against meta-iterations the runs share their x; against seconds or env steps each run's curve
    is interpolated onto ``points`` values up to where the shortest run ends."""
    if any(not r.metrics for r in members):
        return None
    if x == "iteration":
        length = min(len(r.metrics) for r in members)
        grid = np.array([m["iteration"] for m in members[0].metrics[:length]], dtype=np.float64)
        curves = np.array([[m[key] for m in r.metrics[:length]] for r in members], dtype=np.float64)
    else:
        end = min(r.metrics[-1][x] for r in members)
        grid = np.linspace(max(r.metrics[0][x] for r in members), end, points)
        curves = np.array([np.interp(grid, [m[x] for m in r.metrics], [m[key] for m in r.metrics])
                           for r in members])
    rng = np.random.default_rng(seed)
    picks = curves[rng.integers(0, len(members), size=(reps, len(members)))].mean(axis=1)
    low, high = np.percentile(picks, [2.5, 97.5], axis=0)
    return {"x": grid.tolist(), "mean": curves.mean(0).tolist(), "low": low.tolist(), "high": high.tolist()}


def interval_over(groups: list[list[RunResult]], per_task: bool) -> str:
    """What the intervals of these groups resample: ``runs`` (stratified by test task) when every
    group has two seeds or more; ``tasks`` when one has a single seed (resampling one run gives no
    interval; resampling its test tasks shows their spread, not the seeds'); ``none`` for a single
    run with one score (runs evaluated on different tasks): there is nothing to resample."""
    if all(len(members) > 1 for members in groups):
        return "runs"
    return "tasks" if per_task else "none"


#: The mark and footnote of an interval that does not resample seeds.
ONE_SEED = {"tasks": ("†", "† one seed: its interval resamples the {tasks}, so it shows their spread, not the "
                            "seeds' (more seeds give the interval over seeds)."),
            "none": ("‡", "‡ one run and one score: no interval.")}


def _mark(item: dict[str, Any]) -> str:
    return ONE_SEED[item["interval_over"]][0] if item.get("interval_over") in ONE_SEED else ""


def _footnotes(items: list[dict[str, Any]], tasks: str) -> list[str]:
    kinds = {item.get("interval_over") for item in items} & set(ONE_SEED)
    return ["", *(ONE_SEED[kind][1].format(tasks=tasks) for kind in sorted(kinds, reverse=True))] if kinds else []


def build_report(runs: list[RunResult], by: list[str] | None = None, baselines: dict[str, Any] | None = None,
                 paper: str | None = None, reps: int = 2000, seed: int = 0, x: str = "iteration",
                 pairs: str = "all", metric: str = "return", tasks: str = "test") -> dict[str, Any]:
    """Everything ``report.json`` holds (see the module docstring); ``metric``: the returns, or the
    success rates of envs that report success (no baselines' gap, no paper figure); ``tasks``: what
    the runs' evaluations were on (``test``, or ``train`` for meta-training tasks: no paper figure)."""
    if tasks == "train":
        paper = "none"
    per_task = check_protocol(runs, metric)
    keys = METRICS[metric]
    groups = group_runs(runs, by)
    env_id = runs[0].flat["env.id"]
    # The paper's returns where they compare with ours (or where asked for), its gap fraction wherever it has one.
    shown = paper is not None or paper_env(env_id) in COMPARABLE_RETURNS
    paper = paper if paper is not None else paper_env(env_id)
    known = bool(paper) and paper != "none" and metric == "return"
    reference = paper_results(paper).get("MAML") if known and shown else None
    paper_gap = paper_gap_fraction(paper) if known else None
    out: dict[str, Any] = {"env": env_id, "metric": metric, "tasks": tasks,
                           "strata": "test tasks" if per_task else "runs",
                           "reps": reps, "num_test_tasks": len(runs[0].eval[keys["per_task"]][0]) if per_task else None,
                           "paper_env": None, "training_x": x, "groups": [], "improvement": []}
    steps = min(len(r.eval[keys["mean"]]) for r in runs)
    for label, members in groups.items():
        group: dict[str, Any] = {"label": label, "runs": [str(r.path) for r in members],
                                 "seeds": sorted(r.seed for r in members), "steps": list(range(steps)),
                                 "mean": [], "iqm": [], "interval_over": interval_over([members], per_task)}
        over = "tasks" if group["interval_over"] == "tasks" else "runs"
        for k in range(steps):
            returns = scores(members, k, per_task, metric)
            group["mean"].append(stats.interval(returns, stats.mean, reps, seed, over=over).as_dict())
            group["iqm"].append(stats.interval(returns, stats.iqm, reps, seed, over=over).as_dict())
        found = _baselines(members, baselines) if metric == "return" else None
        if found and steps > 1:
            pretrained, oracle, source = found
            gap = stats.gap_fraction(scores(members, 1, per_task), pretrained, oracle, reps, seed, over=over)
            group["gap"] = {"pretrained_1_step": pretrained, "oracle": oracle, "source": source, **gap.as_dict()}
            if paper_gap is not None:
                group["gap"].update(paper=paper_gap, paper_in_interval=gap.contains(paper_gap))
        group["run_means"] = [[float(r.eval[keys["mean"]][k]) for r in members] for k in range(steps)]
        if reference:
            means, errors = reference
            group["paper"] = [{"step": k, "mean": means[k], "stderr": errors[k],
                               "in_interval": stats.Estimate(**group["mean"][k]).contains(means[k]),
                               "in_seed_range": min(group["run_means"][k]) <= means[k] <= max(group["run_means"][k])}
                              for k in range(min(steps, len(means)))]
        group["training"] = {key: training_band(members, key, reps, seed, x) for key in keys["training"]}
        out["groups"].append(group)
    classes = task_classes(runs[0]) if per_task else None  # per_task: every run has the same tasks
    out["per_class"] = []
    for label, members in (groups.items() if classes else ()):
        over = interval_over([members], per_task)
        per_step = [scores(members, k, per_task, metric) for k in range(steps)]  # [runs, tasks] each
        for name, rows in classes.items():
            out["per_class"].append({
                "label": label, "class": name, "num_tasks": len(rows), "interval_over": over,
                "mean": [stats.interval(x[:, rows], stats.mean, reps, seed,
                                        over="tasks" if over == "tasks" else "runs").as_dict() for x in per_step]})
    if any("paper" in g or "paper" in g.get("gap", {}) for g in out["groups"]):  # a paper figure is shown
        out["paper_env"] = paper
    out["baselines"] = baseline_rows(runs, baselines) if metric == "return" else []
    labels = list(groups)
    for a, b in itertools.combinations(labels, 2):
        if pairs == "first" and a != labels[0]:
            continue
        over = interval_over([groups[a], groups[b]], per_task)
        for k in range(steps):
            estimate = stats.improvement(scores(groups[a], k, per_task, metric), scores(groups[b], k, per_task, metric),
                                         reps, seed, over="tasks" if over == "tasks" else "runs")
            out["improvement"].append({"x": a, "y": b, "step": k, "interval_over": over, **estimate.as_dict()})
    return out


def _cell(estimate: dict[str, float]) -> str:
    return f"{estimate['value']:.2f} [{estimate['low']:.2f}, {estimate['high']:.2f}]"


def _steps_header(steps: list[int]) -> str:
    return " | ".join(f"{k} step{'' if k == 1 else 's'}" for k in steps)


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables."""
    groups = report["groups"]
    steps = groups[0]["steps"]
    tasks = "test tasks" if report.get("tasks", "test") == "test" else "meta-training tasks"
    strata = (f"{report['num_test_tasks']} {tasks} as strata" if report["strata"] == "test tasks"
              else f"one score per run (the runs' {tasks} differ)")
    name = METRICS[report.get("metric", "return")]["name"]
    lines = [f"{name} after k adaptation steps on {report['env']}: mean over seeds and {tasks} "
             f"[95% stratified-bootstrap interval, {report['reps']} resamples, {strata}].", "",
             f"| setting | seeds | {_steps_header(steps)} |", "| --- | --- |" + " --- |" * len(steps)]
    for g in groups:
        lines.append(f"| {g['label']} | {len(g['seeds'])}{_mark(g)} | " + " | ".join(map(_cell, g["mean"])) + " |")
    lines += _footnotes(groups, tasks)
    compared = [g for g in groups if "paper" in g]
    if compared:
        lines += ["", f"The MAML paper's figure ({report['paper_env']}: one run, mean ± s.e. over its test tasks), "
                  "whether it lies in our 95% interval of the mean over seeds, and the range of our single seeds "
                  "(one run scatters more than a mean of several):", "",
                  f"| | {_steps_header(steps)} |", "| --- |" + " --- |" * len(steps)]
        paper = compared[0]["paper"]
        pad = [""] * (len(steps) - len(paper))
        lines.append("| MAML paper | " + " | ".join([f"{p['mean']:.2f} ± {p['stderr']:.2f}" for p in paper] + pad)
                     + " |")
        for g in compared:
            lines.append(f"| in the interval of {g['label']}? | "
                         + " | ".join(["yes" if p["in_interval"] else "no" for p in g["paper"]] + pad) + " |")
            lines.append(f"| {g['label']}, single seeds | "
                         + " | ".join(f"{min(v):.2f} to {max(v):.2f}" for v in g["run_means"]) + " |")
    if report.get("per_class"):
        lines += ["", f"Per class: mean over seeds and the class's {tasks} [95% interval, as above]:", "",
                  f"| setting | class | {tasks} | {_steps_header(steps)} |",
                  "| --- | --- | --- |" + " --- |" * len(steps)]
        for row in report["per_class"]:
            lines.append(f"| {row['label']} | {row['class']} | {row['num_tasks']}{_mark(row)} | "
                         + " | ".join(map(_cell, row["mean"])) + " |")
    lines += ["", f"IQM (interquartile mean over seeds x {tasks}):", "",
              f"| setting | seeds | {_steps_header(steps)} |", "| --- | --- |" + " --- |" * len(steps)]
    for g in groups:
        lines.append(f"| {g['label']} | {len(g['seeds'])}{_mark(g)} | " + " | ".join(map(_cell, g["iqm"])) + " |")
    gaps = [g for g in groups if "gap" in g]
    if gaps:
        paper = any("paper" in g["gap"] for g in gaps)
        lines += ["", "Fraction of the pretrained-to-oracle gap closed after one step "
                  "(the baselines taken as fixed)"
                  + (f", and the MAML paper's ({report['paper_env']}), whether in our interval" if paper else "")
                  + ":", "",
                  "| setting | pretrained, 1 step | oracle | gap closed | baselines |"
                  + (" paper | in? |" if paper else ""),
                  "| --- | --- | --- | --- | --- |" + (" --- | --- |" if paper else "")]
        for g in gaps:
            gap = g["gap"]
            line = (f"| {g['label']}{_mark(g)} | {gap['pretrained_1_step']:.2f} | {gap['oracle']:.2f} | "
                    f"{gap['value']:.0%} [{gap['low']:.0%}, {gap['high']:.0%}] | {gap['source']} |")
            if paper:
                line += (f" {gap['paper']:.0%} | {'yes' if gap['paper_in_interval'] else 'no'} |" if "paper" in gap
                         else " | |")
            lines.append(line)
    if report.get("baselines"):
        lines += ["", "Baselines (experiments/baselines.py): mean return over the test tasks after k steps, "
                  "averaged over the files holding each (the range over them where there are several):", "",
                  f"| baseline | source | {_steps_header(steps)} |", "| --- | --- |" + " --- |" * len(steps)]
        for row in report["baselines"]:
            cells = [f"{m:.2f}" + (f" ({lo:.2f} to {hi:.2f})" if row["files"] > 1 else "")
                     for m, lo, hi in zip(row["mean_return"], row["min"], row["max"], strict=True)][:len(steps)]
            cells += [""] * (len(steps) - len(cells))
            lines.append(f"| {row['method']} | {row['source']} | " + " | ".join(cells) + " |")
    if report["improvement"]:
        lines += ["", f"Probability that a run of X scores above a run of Y on a {tasks.removesuffix('s')}:", "",
                  f"| X | Y | {_steps_header(steps)} |", "| --- | --- |" + " --- |" * len(steps)]
        pairs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in report["improvement"]:
            pairs.setdefault((row["x"], row["y"]), []).append(row)
        for (x, y), rows in pairs.items():
            lines.append(f"| {x}{_mark(rows[0])} | {y} | " + " | ".join(_cell(r) for r in rows) + " |")
        lines += _footnotes(report["improvement"], tasks)
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Adaptation curves (mean with its interval band, the paper's MAML with its standard error) and
    training curves (return before and after adaptation, mean over seeds with a bootstrap band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, g in enumerate(report["groups"]):
        color = colors[i % len(colors)]
        mean = [e["value"] for e in g["mean"]]
        seeds = (f"{len(g['seeds'])} seeds" if len(g["seeds"]) > 1
                 else "1 seed" + (", band over test tasks" if g.get("interval_over") == "tasks" else ""))
        left.plot(g["steps"], mean, "o-", color=color, label=f"{g['label']} ({seeds})")
        left.fill_between(g["steps"], [e["low"] for e in g["mean"]], [e["high"] for e in g["mean"]], color=color,
                          alpha=0.2)
        before, after = METRICS[report.get("metric", "return")]["training"]
        for key, style in ((after, "-"), (before, "--")):
            band = g["training"].get(key)
            if band:
                right.plot(band["x"], band["mean"], style, color=color,
                           label=f"{g['label']}, {'after' if key == after else 'before'} adaptation")
                right.fill_between(band["x"], band["low"], band["high"], color=color, alpha=0.15)
        if i == 0 and "paper" in g:
            left.errorbar([p["step"] for p in g["paper"]], [p["mean"] for p in g["paper"]],
                          yerr=[p["stderr"] for p in g["paper"]], fmt="s:", color="black", capsize=3,
                          label=f"MAML paper ({report['paper_env']}), ± s.e.")
    axis = METRICS[report.get("metric", "return")]["axis"]
    left.set(xlabel="adaptation steps", ylabel=axis, title=f"{report['env']}: adaptation"
             + (" on meta-training tasks" if report.get("tasks") == "train" else "") + " (95% interval)")
    left.set_xticks(report["groups"][0]["steps"])
    several = any(len(g["seeds"]) > 1 for g in report["groups"])
    right.set(xlabel=TRAINING_AXES[report["training_x"]], ylabel=axis,
              title="training (95% band over seeds)" if several else "training (one seed)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_report(args: Any) -> int:
    eval_file = EVAL_FILES[args.tasks]
    runs, unevaluated = find_runs(args.paths, eval_file)
    hint = "unfinished?" if args.tasks == "test" else "run `metarl evaluate RUN eval.tasks=train`"
    for path in unevaluated:
        print(f"metarl report: {path} has no {eval_file} ({hint}): left out", flush=True)
    if not runs:
        raise FileNotFoundError(f"none of the runs found has an {eval_file}: "
                                + ("finish or evaluate them first" if args.tasks == "test" else hint))
    if args.reps < 100:
        raise cfg.ConfigError(f"--reps must be >= 100, got {args.reps}")
    shared = None
    if args.baselines:
        path = Path(args.baselines)
        if not path.is_file():
            raise FileNotFoundError(f"--baselines {path}: no such file")
        shared = json.loads(path.read_text())
    elif args.tasks == "test" and len(args.paths) == 1 and (Path(args.paths[0]) / "baselines.json").is_file() \
            and not _is_run(Path(args.paths[0])):
        shared = json.loads((Path(args.paths[0]) / "baselines.json").read_text())  # a sweep's, for every seed
    report = build_report([load_run(p, eval_file) for p in runs], args.by, shared, args.paper, args.reps, x=args.x,
                          pairs=args.pairs, metric=args.metric, tasks=args.tasks)
    out = Path(args.out) if args.out else (Path(args.paths[0]) if len(args.paths) == 1
                                            and (Path(args.paths[0]) / "sweep.json").is_file() else Path("report"))
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(report)
    stem = "report" if args.tasks == "test" else f"report_{args.tasks}"
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, out / f"{stem}.png")
    print(text)
    print(f"wrote {out}/{stem}.md, {stem}.json and {stem}.png")
    return 0


def add_arguments(p: Any) -> None:
    p.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_SWEEP", help="run directories, sweep directories, or "
                   "folders holding them")
    p.add_argument("--by", nargs="+", metavar="KEY", help="config fields whose values make the groups (default: "
                   "those that differ between the runs, seeds aside), e.g. maml.outer")
    p.add_argument("--out", help="where report.md, report.json and report.png go (default: the sweep directory "
                   "when one is given, else ./report)")
    p.add_argument("--baselines", metavar="FILE", help="a baselines.json (experiments/baselines.py) for every "
                   "group's gap fraction (default: the sweep directory's baselines.json when one sweep is given, "
                   "else each run's own)")
    p.add_argument("--paper", metavar="ENV", help="the MAML paper's env to compare with (point, cheetah, "
                   "cheetahdirec, ant, antdirec; 'none' for no comparison; default: from the env id, its returns "
                   "only for 2D navigation, whose returns compare with ours, its gap fraction wherever baselines "
                   "are found)")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--pairs", choices=("all", "first"), default="all",
                   help="probability of improvement for every pair of groups (default), or of the first group "
                   "against each other one")
    p.add_argument("--metric", choices=list(METRICS), default="return",
                   help="what the tables and curves are about: returns (default), or success rates (envs that "
                   "report info['success'], e.g. Meta-World)")
    p.add_argument("--tasks", choices=list(EVAL_FILES), default="test",
                   help="the evaluation to report: on test tasks (eval.json, default), or on meta-training tasks "
                   "(eval_train.json, from `metarl evaluate RUN eval.tasks=train`), to report_train.*")
    p.add_argument("--x", choices=list(TRAINING_AXES), default="iteration",
                   help="what the training curves are drawn against: meta-iterations (default), wall-clock "
                   "seconds (to compare methods at equal time) or env steps")
