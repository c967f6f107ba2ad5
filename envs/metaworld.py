"""Meta-World's meta-learning benchmarks ML1, ML10 and ML45 as metarl task families.

Meta-World (Yu et al., CoRL 2019; the Farama Foundation's 3.x release with its ``-v3`` tasks) is 50
manipulation tasks of one simulated Sawyer arm. Its meta-learning benchmarks split them into
*classes* (reach, push, door-open, ...) and, within a class, *placements*: the vector Meta-World
calls ``rand_vec`` (goal position, and object position for tasks with an object), drawn once per
benchmark, 50 for each class and split, from the benchmark's seed:

- ML1: one class; meta-train on its 50 train placements, meta-test on 50 other placements.
- ML10: meta-train on 10 classes, meta-test on 5 held-out classes.
- ML45: meta-train on 45 classes, meta-test on 5 held-out classes.

The goal is hidden from the 39-number observation (Meta-World's partially observable setting), so
the policy can only tell tasks apart by their rewards. An episode succeeds if any of its steps does
(``info["success"]``); success rate is Meta-World's metric, and metarl's sampler records it.

Tasks are :class:`MetaWorldTask` (class name, split, placement index and vector): they pickle
without Meta-World objects and serialise to JSON. ``set_task`` installs one without building the
benchmark again: the placement vector is what Meta-World's own ``set_task`` takes. Each env holds one
simulator per class it has been given (built on first use, 0.2-0.5 s and about 22 MiB each; kept),
and a meta-batch holds every training class in a fixed order (task ``i`` is of class ``i mod n``),
so a sampler's sub-env keeps its class, and its one simulator, from one meta-iteration to the next,
as Meta-World's vector envs and garage do.

The benchmark itself (the placements of every class) is built once per process and only where
tasks are drawn (``sample_tasks``, the test tasks): 1.4 s for ML1, 8 s for ML10, 29 s for ML45.
It is seeded by the env's ``benchmark_seed`` (default 0), not the run's seed, so every run and every
seed of a config meta-trains and meta-tests on the same placements. Meta-World's own scripts pass
the run's seed; set ``env.kwargs.benchmark_seed`` to do the same.

Importing Meta-World through :func:`import_metaworld` puts metarl's faster versions of its
observation quaternion and gripper-contact test in place (:mod:`metarl.envs.metaworld_kernels`):
the same bits, 1.25-3x the steps per second depending on the class.

Install: ``pip install -e .[metaworld]`` (Meta-World 3.1.1, which pins mujoco 3.3.0).
"""

from __future__ import annotations

import functools
import pickle
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from metarl.envs import metaworld_kernels
from metarl.envs.base import TaskEnv

INSTALL = "pip install -e '.[metaworld]'  (or: pip install metaworld==3.1.1)"
BENCHMARKS = ("ML1", "ML10", "ML45")
SPLITS = ("train", "test")
#: Placements per class and split in every Meta-World benchmark (its ``_N_GOALS``).
PLACEMENTS = 50
#: Placements per test class in Meta-World's meta-test protocol: ``metaworld/evaluation.py``'s
#: ``metalearning_evaluation`` is written for "40 goals per test task and meta batch size of 20"
#: (its comment; ``make_ml_envs`` then takes ``total_tasks_per_cls=40``, the first 40 of each class).
PAPER_PLACEMENTS = 40
OBS_DIM, ACT_DIM = 39, 4
#: The ids :func:`register` registers.
IDS = tuple(f"metarl/{name}-v0" for name in BENCHMARKS)
#: The largest ``benchmark_seed``: Meta-World seeds numpy with it, and ML1 also with it plus one.
SEED_MAX = 2**32 - 2


def import_metaworld() -> Any:
    """Meta-World's package, or an ImportError that says how to install it; with metarl's faster,
    bit-identical observation and contact code in place (:mod:`metarl.envs.metaworld_kernels`)."""
    try:
        import metaworld
    except ImportError as exc:
        raise ImportError(f"the Meta-World task families need the metaworld package: {INSTALL}") from exc
    metaworld_kernels.install()
    return metaworld


@dataclass(frozen=True)
class MetaWorldTask:
    """One Meta-World task: a class (``"reach-v3"``), a split, and a placement of that class's
    goal and objects (``placement`` indexes the benchmark's 50 of that class and split; -1 marks the
    task of an env reset before one was set, see ``MetaWorldEnv._default_task``)."""

    env_name: str
    split: str
    placement: int
    rand_vec: tuple[float, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MetaWorldTask:
        """The task ``task_to_json`` wrote (e.g. one of ``eval.json``'s ``tasks``)."""
        return cls(str(data["env_name"]), str(data["split"]), int(data["placement"]),
                   tuple(float(v) for v in data["rand_vec"]))


def classes(benchmark: str, task_name: str | None = None) -> dict[str, list[str]]:
    """The class names of each split of ``benchmark``, in Meta-World's order (no benchmark is built)."""
    env_dict = import_metaworld().env_dict
    if benchmark == "ML1":
        names = list(env_dict.ALL_V3_ENVIRONMENTS)
        if task_name not in env_dict.ALL_V3_ENVIRONMENTS:
            raise ValueError(f"task_name: unknown Meta-World task {task_name!r}; valid names: {', '.join(names)}")
        return {"train": [task_name], "test": [task_name]}
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark: must be one of {', '.join(BENCHMARKS)}, got {benchmark!r}")
    splits = getattr(env_dict, f"{benchmark}_V3")
    return {split: list(splits[split]) for split in SPLITS}


@functools.cache
def placements(benchmark: str, task_name: str | None, seed: int) -> dict[tuple[str, str], np.ndarray]:
    """``{(split, class): [50, d] placement vectors}`` of the Meta-World benchmark built with ``seed``;
    built once per process (seconds) and kept."""
    metaworld = import_metaworld()
    bench = metaworld.ML1(task_name, seed=seed) if benchmark == "ML1" else getattr(metaworld, benchmark)(seed=seed)
    out: dict[tuple[str, str], list[np.ndarray]] = {}
    for split, tasks in (("train", bench.train_tasks), ("test", bench.test_tasks)):
        for task in tasks:
            out.setdefault((split, task.env_name), []).append(np.asarray(pickle.loads(task.data)["rand_vec"]))
    vectors = {key: np.stack(values) for key, values in out.items()}
    if benchmark == "ML1":  # held-out goals must never be training goals
        train, test = vectors[("train", task_name)], vectors[("test", task_name)]
        if (np.abs(train[:, None] - test[None]).max(-1) == 0).any():
            raise RuntimeError(f"Meta-World ML1({task_name!r}, seed={seed}) drew a test placement equal to a train one")
    return vectors


class MetaWorldEnv(TaskEnv):
    """A Meta-World meta-learning benchmark (ML1, ML10 or ML45) behind metarl's task protocol.

    Args:
        benchmark: ``"ML1"``, ``"ML10"`` or ``"ML45"``.
        task_name: the class of ML1 (any of Meta-World's 50; None: ``"reach-v3"``); ML10 and ML45 take
            none (their classes are fixed).
        benchmark_seed: the seed Meta-World draws the benchmark's placements with.
        render_mode: ``"rgb_array"`` or None.
        camera_name: Meta-World's camera for ``rgb_array`` (``"corner"``, ``"topview"``, ...).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}  # Meta-World's dt: 5 x 2.5 ms
    task_description = "class x placement of goal and objects (success rate); metaworld extra"

    def __init__(self, benchmark: str = "ML1", task_name: str | None = None, benchmark_seed: int = 0,
                 render_mode: str | None = None, camera_name: str = "corner"):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode: must be None or 'rgb_array', got {render_mode!r}")
        if benchmark == "ML1":
            task_name = "reach-v3" if task_name is None else task_name
        elif task_name is not None:
            raise ValueError(f"task_name: only ML1 takes one ({benchmark} meta-trains on its fixed classes); "
                             f"got {task_name!r} (for one task: env.id=metarl/ML1-v0)")
        self.benchmark = benchmark
        self.task_name = task_name
        if not isinstance(benchmark_seed, (int, np.integer)) or not 0 <= benchmark_seed <= SEED_MAX:
            # ML1 draws its test placements with benchmark_seed + 1; numpy takes seeds up to 2**32 - 1.
            raise ValueError(f"benchmark_seed: must be an integer from 0 to {SEED_MAX}, got {benchmark_seed!r}")
        self.benchmark_seed = int(benchmark_seed)
        self.classes = classes(benchmark, task_name)
        self.render_mode, self.camera_name = render_mode, camera_name
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(OBS_DIM,), dtype=np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(ACT_DIM,), dtype=np.float32)
        # One simulator (about 22 MiB) per class this env is given, built on first use: a sub-env of a
        # meta-batch only ever holds its own class.
        self._sims: dict[str, Any] = {}
        self._task: MetaWorldTask | None = None
        self._sim: Any = None

    # -- the task protocol ----------------------------------------------------------------------
    def task_count_error(self, num_tasks: int, split: str) -> str | None:
        """Batches hold every class of their split equally often, in a fixed order (then sub-env ``i``
        of a sampler always gets class ``i mod n``: one simulator each); the meta-test set has 40
        placements per class."""
        kind = "test" if split == "paper" else split
        count = len(self.classes[kind])
        if num_tasks % count:
            return (f"{self.benchmark}'s batches hold each of its {count} {kind} classes equally often: "
                    f"use a multiple of {count}, got {num_tasks}")
        if split == "paper" and num_tasks > PAPER_PLACEMENTS * count:
            return (f"Meta-World's {self.benchmark} meta-test has {PAPER_PLACEMENTS * count} tasks "
                    f"({PAPER_PLACEMENTS} per test class), got {num_tasks}")
        return None

    def sample_tasks(self, num_tasks: int) -> list[MetaWorldTask]:
        """``num_tasks`` training tasks: task ``i`` of class ``i mod n`` (n training classes), its
        placements drawn without repeats (until all 50 are used) from ``self.np_random``."""
        return self._draw("train", num_tasks)

    def sample_test_tasks(self, num_tasks: int) -> list[MetaWorldTask]:
        """``num_tasks`` held-out tasks (ML1: test placements; ML10/ML45: the test classes), drawn as
        :meth:`sample_tasks` draws training ones."""
        return self._draw("test", num_tasks)

    def paper_test_tasks(self, num_tasks: int) -> list[MetaWorldTask]:
        """Meta-World's meta-test tasks: the first 40 test placements of each test class (see
        :data:`PAPER_PLACEMENTS`), class by class in turn (task ``i`` of class ``i mod n``);
        ``num_tasks`` up to 40 per class."""
        names = self.classes["test"]
        most = PAPER_PLACEMENTS * len(names)
        if num_tasks > most:
            raise ValueError(f"eval.num_tasks: Meta-World's {self.benchmark} meta-test has {most} tasks "
                             f"({PAPER_PLACEMENTS} per test class), got {num_tasks}")
        vectors = placements(self.benchmark, self.task_name, self.benchmark_seed)
        return [self._task_of("test", names[i % len(names)], i // len(names), vectors) for i in range(num_tasks)]

    def set_task(self, task: MetaWorldTask) -> None:
        if not isinstance(task, MetaWorldTask):
            raise TypeError(f"{type(self).__name__}.set_task takes a MetaWorldTask, got {task!r}")
        if task.split not in SPLITS or task.env_name not in self.classes[task.split]:
            raise ValueError(f"task {task.env_name!r} ({task.split}) is not a {task.split} class of "
                             f"{self.benchmark}: {', '.join(self.classes.get(task.split, []))}")
        sim = self._simulator(task.env_name)
        metaworld = import_metaworld()
        data = {"rand_vec": np.asarray(task.rand_vec, dtype=np.float64), "env_cls": type(sim),
                "partially_observable": True}
        sim.set_task(metaworld.Task(env_name=task.env_name, data=pickle.dumps(data)))
        self._sim, self._task = sim, task

    def get_task(self) -> MetaWorldTask:
        """The task installed; before any was set, installs a default one (see :meth:`_default_task`)."""
        if self._task is None:
            self.set_task(self._default_task())
        return self._task

    @property
    def task(self) -> MetaWorldTask | None:
        """The task installed, or None before any was set or the env reset. Unlike :meth:`get_task`,
        reading it never builds a simulator: gymnasium's ``set_attr("task", ...)`` reads the attribute
        first (``hasattr``), and a default task would cost every sub-env so installed a simulator of
        the first training class that it never uses (metarl's sampler calls ``set_task`` directly)."""
        return self._task

    @task.setter
    def task(self, task: MetaWorldTask) -> None:
        self.set_task(task)

    # -- gymnasium ------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.get_task()  # installs the default task if none was set
        if seed is not None:
            self._sim.seed(seed)
        obs, _ = self._sim.reset()
        return obs, {"task": self._task}

    def step(self, action):
        self.get_task()
        obs, reward, _, _, info = self._sim.step(np.asarray(action, dtype=np.float32))
        # Meta-World never terminates; the time limit (sampler.horizon) truncates.
        return obs, float(reward), False, False, {**info, "success": bool(info["success"]), "task": self._task}

    def render(self):
        self.get_task()
        return self._sim.render() if self.render_mode == "rgb_array" else None

    def close(self) -> None:
        for sim in self._sims.values():
            sim.close()
        self._sims.clear()

    # -- helpers --------------------------------------------------------------------------------
    def _simulator(self, env_name: str) -> Any:
        """This env's simulator of class ``env_name``, built on first use and kept."""
        if env_name not in self._sims:
            cls = import_metaworld().env_dict.ALL_V3_ENVIRONMENTS[env_name]
            sim = cls(render_mode=self.render_mode, camera_name=self.camera_name if self.render_mode else None)
            sim.max_path_length = np.iinfo(np.int64).max  # the time limit is metarl's (sampler.horizon)
            self._sims[env_name] = sim
        return self._sims[env_name]

    def _default_task(self) -> MetaWorldTask:
        """The task of an env reset before any was set: a placement of the first training class drawn
        by the simulator itself from seed 0, as Meta-World draws a benchmark's (``_make_tasks``).
        Not any vector will do: several classes redraw at reset until goal and object are apart, and
        would loop forever on a frozen vector that is not."""
        name = self.classes["train"][0]
        sim = self._simulator(name)
        sim._freeze_rand_vec, sim.seeded_rand_vec, sim._set_task_called = False, True, True
        sim.seed(0)
        sim.reset()
        return MetaWorldTask(name, "train", -1, tuple(float(v) for v in sim._last_rand_vec))

    def _task_of(self, split: str, env_name: str, placement: int, vectors: dict) -> MetaWorldTask:
        vector = vectors[(split, env_name)][placement]
        return MetaWorldTask(env_name, split, int(placement), tuple(float(v) for v in vector))

    def _draw(self, split: str, num_tasks: int) -> list[MetaWorldTask]:
        names = self.classes[split]
        vectors = placements(self.benchmark, self.task_name, self.benchmark_seed)
        per_class = -(-num_tasks // len(names))
        rounds = -(-per_class // PLACEMENTS)
        order = {name: np.concatenate([self.np_random.permutation(PLACEMENTS) for _ in range(rounds)])
                 for name in names}
        return [self._task_of(split, names[i % len(names)], order[names[i % len(names)]][i // len(names)], vectors)
                for i in range(num_tasks)]


def register() -> None:
    """Register ``metarl/ML1-v0`` (``env.kwargs.task_name`` picks the class), ``metarl/ML10-v0`` and
    ``metarl/ML45-v0``; building one without Meta-World installed says how to install it."""
    for name, env_id in zip(BENCHMARKS, IDS, strict=True):
        if env_id not in gym.registry:
            # 500 steps: Meta-World's max_path_length (its MAML results of 2019 used 150 with the v1 tasks).
            gym.register(id=env_id, entry_point="metarl.envs.metaworld:MetaWorldEnv", max_episode_steps=500,
                         kwargs={"benchmark": name})
