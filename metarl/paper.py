"""The MAML paper's own results, for comparison: ``metarl/data/maml_paper_results.csv``.

Source: Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks" (ICML 2017), Figures 4 and 5: the per-task results behind the figures, decoded from the
authors' public result files (``cbfinn/maml_rl``). Columns: ``env`` (``point`` is 2D navigation),
``method`` (``maml``, ``pretrain`` or for 2D navigation ``sens0``, ``random``, ``oracle``, ...),
``grad_steps``, ``n_test_tasks``, ``mean_return`` and ``std_error`` over the 40 test tasks. The
values at one step match the paper's appendix Tables 4 and 5 to the second decimal.
"""

from __future__ import annotations

import csv
from importlib import resources

#: Our names for the paper's methods (the authors' files call 2D navigation's pretrained policy "sens0").
METHOD_NAMES = {"maml": "MAML", "pretrain": "pretrained", "sens0": "pretrained", "random": "random init",
                "oracle": "oracle"}


#: The paper's env names (the authors' result files) for metarl's envs with a result in the paper.
PAPER_ENVS = {"Navigation2D-v0": "point", "HalfCheetahVel-v0": "cheetah", "HalfCheetahDir-v0": "cheetahdirec",
              "AntVel-v0": "ant", "AntDir-v0": "antdirec"}

#: Paper envs whose returns ours compare with directly (same task, dynamics and horizon). The MuJoCo
#: families ran on rllab's models and horizons, whose returns differ from gymnasium's: for them the
#: comparable figure is the fraction of the pretrained-to-oracle gap closed after one step.
COMPARABLE_RETURNS = ("point",)


def paper_gap_fraction(env: str) -> float | None:
    """The paper's ``(MAML_1 - pretrained_1) / (oracle - pretrained_1)`` for ``env`` (returns after
    one step; the oracle is not adapted), or None where it has no pretrained or oracle result."""
    results = paper_results(env)
    if not {"MAML", "pretrained", "oracle"} <= set(results):
        return None
    pretrained = results["pretrained"][0][1]
    return (results["MAML"][0][1] - pretrained) / (results["oracle"][0][0] - pretrained)


def paper_env(env_id: str) -> str | None:
    """The paper's name for ``env_id`` (``metarl/Navigation2D-v0`` -> ``point``), or None."""
    return PAPER_ENVS.get(env_id.rpartition(":")[2].split("/")[-1])


def paper_results(env: str) -> dict[str, tuple[list[float], list[float]]]:
    """``{method: (means, standard errors)}`` after 0, 1, ... gradient steps for the paper's ``env``
    (e.g. "point"), for the methods of :data:`METHOD_NAMES`, in that order."""
    text = resources.files("metarl").joinpath("data/maml_paper_results.csv").read_text()
    rows = [r for r in csv.DictReader(text.splitlines()) if r["env"] == env and r["method"] in METHOD_NAMES]
    if not rows:
        raise ValueError(f"the paper has no results for env {env!r}")
    results: dict[str, tuple[list[float], list[float]]] = {}
    for method, name in METHOD_NAMES.items():
        if name in results:
            continue
        steps = sorted((int(r["grad_steps"]), float(r["mean_return"]), float(r["std_error"]))
                       for r in rows if r["method"] == method)
        if steps:
            results[name] = ([m for _, m, _ in steps], [s for _, _, s in steps])
    return results
