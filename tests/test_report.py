"""``metarl report`` on synthetic run directories: grouping, the numbers, the paper, the gap, errors."""

import json

import numpy as np
import pytest

from metarl import config as cfg
from metarl import stats
from metarl.cli import main
from metarl.paper import paper_results

TASKS = [{"goal": [0.1 * i, -0.1 * i]} for i in range(4)]


def fake_run(root, name, seed, returns, overrides=(), baselines=None, tasks=TASKS):
    """A run directory as `metarl train` leaves it: ``returns`` is ``[steps][tasks]``."""
    path = root / name
    path.mkdir(parents=True)
    config = cfg.load(None, [f"run.seed={seed}", f"run.name={name}", f"run.output_dir={root}", *overrides])
    (path / "config.yaml").write_text(cfg.dumps(config))
    lines = [{"iteration": i, "pre_return": -10.0 + i + seed, "post_return": -5.0 + i + seed,
              "wall_time": i * (seed + 1)} for i in range(3)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    returns = np.asarray(returns, dtype=float)
    ev = config.eval
    (path / "eval.json").write_text(json.dumps({
        "env": config.env.id, "eval_tasks": ev.tasks, "eval_seed": ev.seed, "num_tasks": ev.num_tasks,
        "step_sizes": ev.step_sizes, "episodes_per_task": ev.episodes_per_task, "budget": ev.budget,
        "steps": list(range(len(returns))), "mean_return": returns.mean(1).tolist(),
        "stderr": [0.0] * len(returns), "per_task_returns": returns.tolist(), "tasks": tasks}))
    if baselines:
        (path / "baselines.json").write_text(json.dumps(baselines))
    return path


def _returns(seed, shift):
    rng = np.random.default_rng(seed)
    return np.stack([rng.normal(-40 + shift, 3, 4), rng.normal(-10 + shift, 3, 4), rng.normal(-5 + shift, 3, 4)])


def test_report_groups_by_the_setting_that_differs_and_computes_the_intervals(tmp_path):
    runs = tmp_path / "runs"
    data = {}
    for outer, shift in (("trpo", 0.0), ("promp", -100.0)):
        for seed in range(3):
            data[outer, seed] = _returns(seed + 10 * (outer == "promp"), shift)
            fake_run(runs, f"{outer}-{seed}", seed, data[outer, seed], [f"maml.outer={outer}"])
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out), "--reps", "500"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [g["label"] for g in report["groups"]] == ["outer=promp", "outer=trpo"]
    trpo = report["groups"][1]
    assert trpo["seeds"] == [0, 1, 2] and report["strata"] == "test tasks" and report["num_test_tasks"] == 4
    x = np.stack([data["trpo", s][1] for s in range(3)])
    assert trpo["mean"][1] == stats.interval(x, stats.mean, reps=500).as_dict()
    assert trpo["iqm"][1]["value"] == pytest.approx(stats.iqm(x))
    # promp is 100 lower everywhere: it never beats trpo.
    assert {(r["x"], r["y"], r["value"]) for r in report["improvement"]} == {
        ("outer=promp", "outer=trpo", 0.0)}
    # The paper's 2D-navigation MAML figures are beside ours, flagged by our interval.
    means, _ = paper_results("point")["MAML"]
    assert report["paper_env"] == "point"
    for row in trpo["paper"]:
        assert row["mean"] == means[row["step"]]
        ours = trpo["mean"][row["step"]]
        assert row["in_interval"] == (ours["low"] <= row["mean"] <= ours["high"])
    text = (out / "report.md").read_text()
    assert "| outer=trpo | 3 |" in text and "| MAML paper |" in text
    assert trpo["run_means"][1] == pytest.approx([data["trpo", s][1].mean() for s in range(3)])
    assert (out / "report.png").stat().st_size > 10_000
    assert trpo["training"]["post_return"]["mean"] == [-4.0, -3.0, -2.0]  # seeds 0, 1, 2 shift by 0, 1, 2
    # Against wall-clock time the curves are interpolated onto one grid, up to the shortest run.
    assert main(["report", str(runs), "--out", str(out), "--reps", "200", "--x", "wall_time"]) == 0
    band = json.loads((out / "report.json").read_text())["groups"][1]["training"]["post_return"]
    assert band["x"][0] == 0.0 and band["x"][-1] == 2.0 and len(band["x"]) == 100
    # Seed s reaches iteration t / (s + 1) at time t: the mean is -4 + (1 + 1/2 + 1/3) t / 3.
    for k in (0, 50, 99):
        assert band["mean"][k] == pytest.approx(-4.0 + 11 / 18 * band["x"][k])

    # A third setting: every pair, or the first group against each other one.
    for seed in range(2):
        fake_run(runs, f"adam-{seed}", seed, _returns(seed + 20, -50.0), ["maml.outer=adam"])
    assert main(["report", str(runs), "--out", str(out), "--reps", "200"]) == 0
    assert len(json.loads((out / "report.json").read_text())["improvement"]) == 3 * 3
    assert main(["report", str(runs), "--out", str(out), "--reps", "200", "--pairs", "first"]) == 0
    rows = json.loads((out / "report.json").read_text())["improvement"]
    assert {(r["x"], r["y"]) for r in rows} == {("outer=adam", "outer=promp"), ("outer=adam", "outer=trpo")}

    # --by keeps one group; the same seed twice in a group is refused.
    assert main(["report", str(runs), "--by", "env.id", "--out", str(out)]) == 2
    assert main(["report", str(runs), "--by", "maml.nosuch", "--out", str(out)]) == 2


def test_gap_fraction_from_a_shared_baselines_file(tmp_path):
    runs = tmp_path / "runs"
    for seed in range(2):
        fake_run(runs, f"s{seed}", seed, [[0.0], [4.0 + 2 * seed]], tasks=TASKS[:1])  # one test task
    baselines = tmp_path / "baselines.json"
    baselines.write_text(json.dumps({"pretrained": {"mean_return": [0.0, 2.0]}, "oracle": {"mean_return": [10.0]}}))
    assert main(["report", str(runs), "--baselines", str(baselines), "--out", str(tmp_path / "r"), "--paper",
                 "none"]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    gap = report["groups"][0]["gap"]
    assert gap["value"] == pytest.approx((5.0 - 2.0) / (10.0 - 2.0))  # runs score 4 and 6 after one step
    assert gap["low"] == pytest.approx((4.0 - 2.0) / 8.0) and gap["high"] == pytest.approx((6.0 - 2.0) / 8.0)
    assert report["paper_env"] is None and "paper" not in report["groups"][0]
    assert "Fraction of the pretrained-to-oracle gap" in (tmp_path / "r" / "report.md").read_text()
    assert [row["method"] for row in report["baselines"]] == ["pretrained", "oracle"]
    # A sweep directory's own baselines.json (trained once for the family) is used without --baselines.
    baselines.rename(runs / "baselines.json")
    assert main(["report", str(runs), "--out", str(tmp_path / "r"), "--paper", "none"]) == 0
    gap = json.loads((tmp_path / "r" / "report.json").read_text())["groups"][0]["gap"]
    assert gap["source"] == "one file for all seeds"


def test_runs_evaluated_differently_are_not_pooled(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_run(runs, "a", 0, _returns(0, 0))
    fake_run(runs, "b", 1, _returns(1, 0), ["eval.num_tasks=20"])
    assert main(["report", str(runs), "--out", str(tmp_path / "r")]) == 2
    assert "evaluated differently (num_tasks: 20, 40)" in capsys.readouterr().err
    # Other test tasks: each run is one score, and the report says so.
    other = tmp_path / "other"
    fake_run(other, "a", 0, _returns(0, 0))
    fake_run(other, "b", 1, _returns(1, 0), tasks=TASKS[::-1])
    (other / "c").mkdir()  # an unfinished run: left out with a note
    (other / "c" / "config.yaml").write_text((other / "a" / "config.yaml").read_text())
    (other / "c" / "metrics.jsonl").write_text("")
    assert main(["report", str(other), "--out", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "report.json").read_text())["strata"] == "runs"
    assert "c has no eval.json" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_success_rates_are_reported_with_their_intervals_and_training_curves(tmp_path, capsys):
    runs = tmp_path / "runs"
    success = {}
    for seed in range(3):
        rng = np.random.default_rng(seed)
        success[seed] = rng.integers(0, 4, size=(2, 4)) / 3  # [steps][tasks], 3 evaluation episodes per task
        path = fake_run(runs, f"s{seed}", seed, _returns(seed, 0.0)[:2])
        result = json.loads((path / "eval.json").read_text())
        result.update(success_rate=success[seed].mean(1).tolist(), per_task_success=success[seed].tolist())
        (path / "eval.json").write_text(json.dumps(result))
        lines = [{**json.loads(line), "pre_success": 0.1 * seed, "post_success": 0.2 * seed}
                 for line in (path / "metrics.jsonl").read_text().splitlines()]
        (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "report"
    assert main(["report", str(runs), "--metric", "success", "--out", str(out), "--reps", "500"]) == 0
    report = json.loads((out / "report.json").read_text())
    (group,) = report["groups"]
    x = np.stack([success[s][1] for s in range(3)])
    assert report["metric"] == "success" and group["mean"][1] == stats.interval(x, stats.mean, reps=500).as_dict()
    assert group["training"]["post_success"]["mean"] == pytest.approx([0.2] * 3)
    assert "gap" not in group and "paper" not in group
    assert (out / "report.md").read_text().startswith("Success rate after k adaptation steps")
    # Runs of an env without success cannot be reported on it.
    plain = tmp_path / "plain"
    fake_run(plain, "p0", 0, _returns(0, 0.0))
    assert main(["report", str(plain), "--metric", "success", "--out", str(tmp_path / "r2")]) == 2
    assert "no success_rate" in capsys.readouterr().err


def test_tasks_that_name_their_class_get_a_table_per_class(tmp_path):
    # Meta-World-like tasks, classes interleaved as ML10's test tasks are; two seeds.
    tasks = [{"env_name": name, "split": "test", "placement": i // 2} for i, name in enumerate(["a", "b"] * 3)]
    runs, success = tmp_path / "runs", {}
    for seed in range(2):
        success[seed] = np.random.default_rng(seed).integers(0, 4, size=(2, 6)) / 3
        path = fake_run(runs, f"s{seed}", seed, _returns(seed, 0.0)[:2].repeat(2, axis=1)[:, :6], tasks=tasks)
        result = json.loads((path / "eval.json").read_text())
        result.update(success_rate=success[seed].mean(1).tolist(), per_task_success=success[seed].tolist())
        (path / "eval.json").write_text(json.dumps(result))
        lines = [{**json.loads(line), "pre_success": 0.1, "post_success": 0.2}
                 for line in (path / "metrics.jsonl").read_text().splitlines()]
        (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "report"
    assert main(["report", str(runs), "--metric", "success", "--out", str(out), "--reps", "500"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [(r["class"], r["num_tasks"]) for r in report["per_class"]] == [("a", 3), ("b", 3)]
    b = np.stack([success[s][1][[1, 3, 5]] for s in range(2)])  # class b's tasks after one step
    assert report["per_class"][1]["mean"][1] == stats.interval(b, stats.mean, reps=500).as_dict()
    assert report["per_class"][1]["interval_over"] == "runs"  # two seeds
    assert f"| b | 3 | {np.stack([success[s][0][[1, 3, 5]] for s in range(2)]).mean():.2f} [" in \
        (out / "report.md").read_text()
    # Returns get the table too.
    assert main(["report", str(runs), "--out", str(out), "--reps", "500"]) == 0
    assert len(json.loads((out / "report.json").read_text())["per_class"]) == 2
    # Tasks without a class: no such table.
    plain = tmp_path / "plain"
    fake_run(plain, "p0", 0, _returns(0, 0.0))
    assert main(["report", str(plain), "--out", str(tmp_path / "r2"), "--reps", "500"]) == 0
    assert json.loads((tmp_path / "r2" / "report.json").read_text())["per_class"] == []


def test_meta_training_evaluations_are_reported_apart(tmp_path, capsys):
    """--tasks train: each run's eval_train.json, to report_train.*, never its test eval, baselines or the paper."""
    runs = tmp_path / "runs"
    for seed in range(3):
        path = fake_run(runs, f"s{seed}", seed, _returns(seed, 0.0), baselines={"pretrained": {}})
        train = json.loads((path / "eval.json").read_text())
        train.update(eval_tasks="train", per_task_returns=(np.asarray(train["per_task_returns"]) + 100).tolist())
        (path / "eval_train.json").write_text(json.dumps(train))
    (runs / "s2" / "eval_train.json").unlink()  # not evaluated on training tasks: left out, said so
    assert main(["report", str(runs), "--tasks", "train", "--out", str(runs), "--reps", "500"]) == 0
    assert "s2 has no eval_train.json (run `metarl evaluate RUN eval.tasks=train`)" in capsys.readouterr().out
    report = json.loads((runs / "report_train.json").read_text())
    (group,) = report["groups"]
    x = np.stack([_returns(s, 0.0)[1] + 100 for s in range(2)])
    assert report["tasks"] == "train" and group["seeds"] == [0, 1]
    assert group["mean"][1] == stats.interval(x, stats.mean, reps=500).as_dict()
    assert "gap" not in group and "paper" not in group and not (runs / "report.json").exists()
    assert "mean over seeds and meta-training tasks" in (runs / "report_train.md").read_text()
    (runs / "s0" / "eval_train.json").unlink()
    (runs / "s1" / "eval_train.json").unlink()
    assert main(["report", str(runs), "--tasks", "train"]) == 2
    assert "none of the runs found has an eval_train.json" in capsys.readouterr().err


def test_baselines_table_takes_the_family_file_and_each_seeds_random_init(tmp_path):
    runs = tmp_path / "sweep"
    for seed, random_init in enumerate(([-20.0, -19.0], [-24.0, -22.0], [-22.0, -21.0])):
        fake_run(runs, f"seed-{seed}", seed, [[0.0], [5.0]], tasks=TASKS[:1],
                 baselines={"random": {"mean_return": random_init}, "pretrained": {"mean_return": [9.0, 9.0]}})
    (runs / "baselines.json").write_text(json.dumps({"pretrained": {"mean_return": [1.0, 2.0]},
                                                     "oracle": {"mean_return": [10.0]}}))
    assert main(["report", str(runs), "--out", str(tmp_path / "r"), "--paper", "none"]) == 0
    rows = {row["method"]: row for row in json.loads((tmp_path / "r" / "report.json").read_text())["baselines"]}
    assert rows["pretrained"]["mean_return"] == [1.0, 2.0]  # the family's file, not the runs' own
    assert rows["oracle"]["mean_return"] == [10.0] and rows["oracle"]["files"] == 1
    assert rows["random"]["files"] == 3 and rows["random"]["mean_return"] == pytest.approx([-22.0, -62.0 / 3])
    assert rows["random"]["min"] == [-24.0, -22.0] and rows["random"]["max"] == [-20.0, -19.0]
    text = (tmp_path / "r" / "report.md").read_text()
    assert "| random | baselines.json of 3 run(s) | -22.00 (-24.00 to -20.00) | -20.67 (-22.00 to -19.00) |" in text
    assert "| oracle | one file for all seeds | 10.00 |  |" in text


def test_mujoco_families_compare_with_the_papers_gap_fraction_not_its_returns(tmp_path):
    # rllab's HalfCheetah returns are not gymnasium's: by default only the paper's gap fraction
    # (70% for velocity, from its own MAML, pretrained and oracle results) is set beside ours.
    runs = tmp_path / "sweep"
    for seed, after in enumerate((60.0, 80.0)):  # gap fractions 0.6 and 0.8 against the baselines below
        fake_run(runs, f"seed-{seed}", seed, [[0.0], [after]], ["env.id=metarl/HalfCheetahVel-v0"], tasks=TASKS[:1])
    (runs / "baselines.json").write_text(json.dumps({"pretrained": {"mean_return": [0.0, 0.0]},
                                                     "oracle": {"mean_return": [100.0]}}))
    assert main(["report", str(runs), "--out", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    group = report["groups"][0]
    assert report["paper_env"] == "cheetah" and "paper" not in group
    means = paper_results("cheetah")
    expected = (means["MAML"][0][1] - means["pretrained"][0][1]) / (means["oracle"][0][0] - means["pretrained"][0][1])
    assert group["gap"]["paper"] == pytest.approx(expected) and round(expected, 2) == 0.70
    assert group["gap"]["paper_in_interval"]  # 70% lies in [60%, 80%]
    text = (tmp_path / "r" / "report.md").read_text()
    assert "| 70% | yes |" in text and "| MAML paper |" not in text
    # Asked for by name, the paper's returns are shown as well.
    assert main(["report", str(runs), "--out", str(tmp_path / "r"), "--paper", "cheetah"]) == 0
    assert "paper" in json.loads((tmp_path / "r" / "report.json").read_text())["groups"][0]


def test_one_seed_gets_an_interval_over_its_test_tasks_and_says_so(tmp_path):
    runs = tmp_path / "runs"
    returns = _returns(0, 0.0)
    fake_run(runs, "only", 0, returns)
    baselines = tmp_path / "baselines.json"
    baselines.write_text(json.dumps({"pretrained": {"mean_return": [-40.0, -30.0]}, "oracle": {"mean_return": [0.0]}}))
    out = tmp_path / "r"
    assert main(["report", str(runs), "--baselines", str(baselines), "--out", str(out), "--reps", "500",
                 "--paper", "none"]) == 0
    report = json.loads((out / "report.json").read_text())
    group = report["groups"][0]
    assert group["interval_over"] == "tasks"
    # Resampling the one run would give a zero-width interval; the test tasks' spread is its width.
    assert group["mean"][1] == stats.interval(returns[1][None], stats.mean, reps=500, over="tasks").as_dict()
    assert group["mean"][1]["high"] - group["mean"][1]["low"] > 1.0
    gap = group["gap"]
    assert gap["low"] < gap["value"] < gap["high"]
    text = (out / "report.md").read_text()
    assert "| Navigation2D-v0 | 1† |" in text and "† one seed: its interval resamples the test tasks" in text
    # Against a group of three seeds, the probability of improvement resamples the tasks too.
    for seed in range(1, 4):
        fake_run(runs, f"other-{seed}", seed, _returns(seed, -5.0), ["maml.inner_lr=0.2"])
    assert main(["report", str(runs), "--out", str(out), "--reps", "200", "--paper", "none"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert {g["label"]: g["interval_over"] for g in report["groups"]} == {"inner_lr=0.1": "tasks",
                                                                         "inner_lr=0.2": "runs"}
    assert {r["interval_over"] for r in report["improvement"]} == {"tasks"}
    text = (out / "report.md").read_text()
    assert "| inner_lr=0.2 | 3 |" in text and text.count("† one seed") == 2  # under the returns and the pairs


def test_a_lone_setting_is_named_by_its_env_and_keywords_and_footnotes_name_the_tasks(tmp_path):
    # One ML1 run: the label names the Meta-World task it trained on, and on meta-training tasks
    # the one-seed footnote and the pairs' sentence say which tasks were resampled.
    runs = tmp_path / "runs"
    path = fake_run(runs, "only", 0, _returns(0, 0.0), ["env.kwargs.task_name=reach-v3"])
    train = json.loads((path / "eval.json").read_text())
    (path / "eval_train.json").write_text(json.dumps({**train, "eval_tasks": "train"}))
    assert main(["report", str(runs), "--tasks", "train", "--out", str(tmp_path / "r"), "--reps", "200"]) == 0
    text = (tmp_path / "r" / "report_train.md").read_text()
    assert "| Navigation2D-v0 (task_name=reach-v3) | 1† |" in text
    assert "† one seed: its interval resamples the meta-training tasks" in text and "test task" not in text
    # Beside a second setting, the probability of improvement is over meta-training tasks too.
    other = fake_run(runs, "other", 0, _returns(1, -5.0), ["env.kwargs.task_name=reach-v3", "maml.inner_lr=0.2"])
    (other / "eval_train.json").write_text(json.dumps({**json.loads((other / "eval.json").read_text()),
                                                       "eval_tasks": "train"}))
    assert main(["report", str(runs), "--tasks", "train", "--out", str(tmp_path / "r"), "--reps", "200"]) == 0
    text = (tmp_path / "r" / "report_train.md").read_text()
    assert "scores above a run of Y on a meta-training task:" in text and "test task" not in text
