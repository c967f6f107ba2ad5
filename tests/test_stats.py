"""The statistics of `metarl report` against hand-computed cases (and rliable where installed)."""

import numpy as np
import pytest

from metarl import stats


def test_mean_and_iqm_pool_runs_and_tasks():
    scores = np.arange(1.0, 9.0).reshape(2, 4)  # 1..8
    assert stats.mean(scores) == 4.5
    assert stats.iqm(scores) == pytest.approx(np.mean([3, 4, 5, 6]))  # 2 cut at each end of 8
    # n = 5: int(1.25) = 1 cut at each end; the outlier does not move it.
    assert stats.iqm(np.array([[1.0, 2.0, 3.0, 4.0, 100.0]])) == pytest.approx(3.0)
    # batched over leading axes, as the bootstrap calls them
    assert stats.iqm(np.stack([scores, scores + 1])).tolist() == pytest.approx([4.5, 5.5])


def test_bootstrap_interval_of_two_runs_spans_them():
    # Resampling 2 runs gives x1 (1/4), their mean (1/2) or x2 (1/4): the 95% interval is [x1, x2].
    estimate = stats.interval([[2.0], [6.0]], reps=4000)
    assert (estimate.value, estimate.low, estimate.high) == (4.0, 2.0, 6.0)
    one = stats.interval([[3.0, 5.0]])  # one run: nothing to resample
    assert (one.value, one.low, one.high) == (4.0, 4.0, 4.0)


def test_bootstrap_resamples_runs_within_each_task():
    # Both runs average 5; resampling whole runs would give [5, 5]. Within each task the runs
    # differ, and a stratified resample mixes them: the interval is wide.
    estimate = stats.interval([[0.0, 10.0], [10.0, 0.0]], reps=4000)
    assert estimate.value == 5.0 and estimate.low == 0.0 and estimate.high == 10.0
    # Reproducible for a seed.
    assert stats.interval(np.random.default_rng(1).normal(size=(5, 7)), stats.iqm, seed=3) == \
        stats.interval(np.random.default_rng(1).normal(size=(5, 7)), stats.iqm, seed=3)


def test_one_run_interval_over_the_tasks():
    # One run on two tasks: a task resample averages (1, 1), (1, 3), (3, 1) or (3, 3), so the mean is
    # 1 (1/4), 2 (1/2) or 3 (1/4): the 95% interval is [1, 3], where resampling runs gives [2, 2].
    estimate = stats.interval([[1.0, 3.0]], reps=4000, over="tasks")
    assert (estimate.value, estimate.low, estimate.high) == (2.0, 1.0, 3.0)
    # The same columns for every run: two identical runs keep the one-run interval.
    assert stats.interval([[1.0, 3.0], [1.0, 3.0]], reps=4000, over="tasks") == estimate
    replicates = stats.task_resample(np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]]), 50,
                                     np.random.default_rng(0))
    assert np.array_equal(replicates[:, 1], 10 * replicates[:, 0])  # rows keep their pairing
    # P(X > Y), X losing task 0 and winning task 1: a task resample draws both tasks (1/2), task 1
    # twice (1/4) or task 0 twice (1/4): 0.5, 1 or 0.
    better = stats.improvement([[1.0, 5.0]], [[2.0, 4.0]], reps=4000, over="tasks")
    assert (better.value, better.low, better.high) == (0.5, 0.0, 1.0)
    gap = stats.gap_fraction([[1.0, 3.0]], pretrained=0.0, oracle=4.0, reps=4000, over="tasks")
    assert (gap.value, gap.low, gap.high) == (0.5, 0.25, 0.75)
    with pytest.raises(ValueError, match=r"over must be one of \['runs', 'tasks'\], got 'seeds'"):
        stats.interval([[1.0]], over="seeds")
    with pytest.raises(ValueError, match="over must be one of"):
        stats.improvement([[1.0]], [[2.0]], over="seeds")


def test_probability_of_improvement_counts_wins_and_half_ties_per_task():
    assert stats.probability_of_improvement(np.array([[1.0], [3.0]]), np.array([[2.0]])) == 0.5
    assert stats.probability_of_improvement(np.array([[1.0], [2.0]]), np.array([[2.0]])) == 0.25  # a tie: 1/2
    # averaged over tasks: X loses task 0, wins task 1
    assert stats.probability_of_improvement(np.array([[1.0, 5.0]]), np.array([[2.0, 4.0]])) == 0.5
    always = stats.improvement([[3.0, 4.0], [5.0, 6.0]], [[1.0, 2.0], [0.0, 1.0]])
    assert (always.value, always.low, always.high) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="same tasks"):
        stats.improvement([[1.0, 2.0]], [[1.0]])


def test_gap_fraction_scales_the_mean_and_its_interval():
    estimate = stats.gap_fraction([[2.0], [6.0]], pretrained=0.0, oracle=8.0, reps=4000)
    assert (estimate.value, estimate.low, estimate.high) == (0.5, 0.25, 0.75)
    with pytest.raises(ValueError, match="gap is empty"):
        stats.gap_fraction([[1.0]], pretrained=1.0, oracle=1.0)


@pytest.mark.parametrize("bad,message", [([[np.nan]], "finite"), (np.zeros((0, 3)), "at least one"),
                                         (np.zeros((2, 2, 2)), "runs, tasks")])
def test_bad_scores_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        stats.interval(bad)


def test_agrees_with_rliable():
    metrics = pytest.importorskip("rliable.metrics")
    library = pytest.importorskip("rliable.library")
    rng = np.random.default_rng(0)
    x, y = rng.normal(1.0, 1.0, size=(5, 12)), rng.normal(0.5, 1.0, size=(4, 12))
    assert stats.iqm(x) == pytest.approx(metrics.aggregate_iqm(x))
    assert stats.probability_of_improvement(x, y) == pytest.approx(metrics.probability_of_improvement(x, y))
    points, intervals = library.get_interval_estimates({"x": x}, lambda s: np.array([metrics.aggregate_iqm(s)]),
                                                       reps=4000)
    ours = stats.interval(x, stats.iqm, reps=4000)
    assert ours.value == pytest.approx(points["x"][0])
    width = intervals["x"][1, 0] - intervals["x"][0, 0]
    assert abs(ours.low - intervals["x"][0, 0]) < 0.15 * width and abs(ours.high - intervals["x"][1, 0]) < 0.15 * width
