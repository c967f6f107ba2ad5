"""Interval estimates over seeds: mean, IQM, stratified bootstrap, probability of improvement.

The statistics of Agarwal et al. (2021), "Deep RL at the Edge of the Statistical Precipice", the
way ``rliable`` computes them, written here on numpy (``rliable`` pins ``arch<8`` and brings pandas
and seaborn; a test checks that we agree with it where it is installed).

Scores are a matrix ``[runs, tasks]``: one row per seed, one column per test task (every seed is
evaluated on the same test tasks, so a column compares like with like). Aggregates pool the matrix:

- mean: ``mean_{i,m} x_{im}``;
- IQM (interquartile mean): the mean of the middle half of the pooled scores, ``floor(n / 4)`` cut
  at each end of the ``n`` sorted scores (``scipy.stats.trim_mean(x, 0.25)``): robust to one
  outlying seed or task, more efficient than the median.

A stratified bootstrap resamples the runs with replacement within each task (column) independently,
``reps`` times, and recomputes the aggregate; the 95% interval is the 2.5th and 97.5th percentiles
of those replicates (the percentile method). With few seeds the interval is wide, as it should be.
With one seed it has no width at all: nothing is known of the seeds' spread. ``over="tasks"`` then
resamples the tasks (columns) instead, each run keeping its row: an interval that shows the spread
of the test tasks only, which is what one run can tell (the paper's ± s.e. over test tasks is the
same kind of figure).

Probability of improvement of X over Y: the chance that a run of X scores above a run of Y on a
task, averaged over tasks: ``P(X > Y) = 1/M sum_m 1/(N K) sum_{i,j} S(x_im, y_jm)``, with
``S(a, b) = 1`` if ``a > b``, ``1/2`` if equal, 0 otherwise (the Mann-Whitney U statistic);
bootstrapped by resampling X's and Y's runs per task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Aggregate = Callable[[np.ndarray], np.ndarray]


def _as_matrix(scores: np.ndarray | list) -> np.ndarray:
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"scores must be [runs, tasks] with at least one of each, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("scores must be finite")
    return x


def mean(scores: np.ndarray) -> np.ndarray:
    """Mean of the pooled scores; ``scores`` is ``[..., runs, tasks]``, the result ``[...]``."""
    return scores.mean(axis=(-2, -1))


def iqm(scores: np.ndarray) -> np.ndarray:
    """Interquartile mean of the pooled scores: ``floor(n / 4)`` cut at each end of the ``n`` sorted
    scores, the rest averaged (as ``scipy.stats.trim_mean(x, 0.25)``). ``[..., runs, tasks] -> [...]``."""
    flat = np.sort(scores.reshape(*scores.shape[:-2], -1), axis=-1)
    n = flat.shape[-1]
    cut = int(0.25 * n)
    return flat[..., cut : n - cut].mean(axis=-1)


AGGREGATES: dict[str, Aggregate] = {"mean": mean, "iqm": iqm}


def stratified_resample(scores: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """``reps`` resamples of ``[runs, tasks]`` scores: within each task, runs drawn with replacement.
    Returns ``[reps, runs, tasks]``."""
    runs, tasks = scores.shape
    index = rng.integers(0, runs, size=(reps, runs, tasks))
    return np.take_along_axis(np.broadcast_to(scores, (reps, runs, tasks)), index, axis=1)


def task_resample(scores: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """``reps`` resamples of ``[runs, tasks]`` scores with the tasks drawn with replacement (the same
    columns for every run). Returns ``[reps, runs, tasks]``."""
    runs, tasks = scores.shape
    index = np.broadcast_to(rng.integers(0, tasks, size=(reps, 1, tasks)), (reps, runs, tasks))
    return np.take_along_axis(np.broadcast_to(scores, (reps, runs, tasks)), index, axis=2)


#: What a bootstrap resamples: the runs within each task (stratified), or the tasks (for one run).
RESAMPLE = {"runs": stratified_resample, "tasks": task_resample}


def _resampler(over: str) -> Callable[[np.ndarray, int, np.random.Generator], np.ndarray]:
    if over not in RESAMPLE:
        raise ValueError(f"over must be one of {sorted(RESAMPLE)}, got {over!r}")
    return RESAMPLE[over]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95% stratified-bootstrap interval."""

    value: float
    low: float
    high: float

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def interval(scores: np.ndarray | list, aggregate: Aggregate = mean, reps: int = 2000, seed: int = 0,
             confidence: float = 0.95, over: str = "runs") -> Estimate:
    """The aggregate of ``[runs, tasks]`` scores and its percentile bootstrap interval, resampling
    ``over`` the runs within each task (stratified) or the tasks (see :data:`RESAMPLE`)."""
    resample = _resampler(over)
    x = _as_matrix(scores)
    replicates = aggregate(resample(x, reps, np.random.default_rng(seed)))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return Estimate(float(aggregate(x)), float(low), float(high))


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``P(X > Y)`` for ``x`` ``[..., N, tasks]`` and ``y`` ``[..., K, tasks]``: ``[...]``."""
    greater = (x[..., :, None, :] > y[..., None, :, :]).astype(np.float64)
    ties = (x[..., :, None, :] == y[..., None, :, :]).astype(np.float64)
    return (greater + 0.5 * ties).mean(axis=(-3, -2, -1))


def improvement(x: np.ndarray | list, y: np.ndarray | list, reps: int = 2000, seed: int = 0,
                confidence: float = 0.95, over: str = "runs") -> Estimate:
    """``P(X > Y)`` with its interval: X's and Y's runs resampled per task, independently
    (``over="runs"``), or the tasks resampled, the same ones for X and Y (``over="tasks"``)."""
    _resampler(over)
    a, b = _as_matrix(x), _as_matrix(y)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x and y must score the same tasks: {a.shape[1]} and {b.shape[1]} columns")
    rng = np.random.default_rng(seed)
    if over == "tasks":
        both = task_resample(np.concatenate([a, b]), reps, rng)
        replicates = probability_of_improvement(both[:, : len(a)], both[:, len(a) :])
    else:
        replicates = probability_of_improvement(stratified_resample(a, reps, rng), stratified_resample(b, reps, rng))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return Estimate(float(probability_of_improvement(a, b)), float(low), float(high))


def gap_fraction(scores: np.ndarray | list, pretrained: float, oracle: float, reps: int = 2000, seed: int = 0,
                 confidence: float = 0.95, over: str = "runs") -> Estimate:
    """The fraction of the pretrained-to-oracle gap closed, ``(mean(scores) - pretrained) / (oracle -
    pretrained)``, with the interval of the scores' mean (the baselines, trained once, are taken as
    fixed: their own uncertainty is not in the interval)."""
    if oracle == pretrained:
        raise ValueError("the oracle and pretrained baselines score the same: the gap is empty")
    estimate = interval(scores, mean, reps, seed, confidence, over)
    scale = lambda v: (v - pretrained) / (oracle - pretrained)  # noqa: E731
    low, high = sorted((scale(estimate.low), scale(estimate.high)))
    return Estimate(scale(estimate.value), low, high)
