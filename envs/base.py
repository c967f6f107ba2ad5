"""The task-distribution protocol that every metarl task environment implements.

A task env is an ordinary gymnasium env that additionally carries a *task* (a goal, a target
velocity, a set of dynamics parameters). The task is drawn with ``sample_tasks`` from the env's own
seeded generator (``env.np_random``, seeded by ``reset(seed=...)``), installed with ``set_task``,
read back with ``get_task``, survives ``reset`` and is reported in ``info["task"]``.

Tasks are small frozen dataclasses: they pickle, compare by value and serialise to JSON with
``task_to_json``, so they can be logged and stored beside evaluations.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import gymnasium as gym

if TYPE_CHECKING:
    from metarl.envs.batched import BatchedTaskSim

#: Methods a task env must provide; the sampler checks them before a run starts.
TASK_PROTOCOL = ("sample_tasks", "set_task", "get_task")


class TaskEnv(gym.Env):
    """Base class for task-distribution envs.

    Subclasses implement ``sample_tasks``, ``set_task`` and ``get_task``. The ``task`` property lets
    vector envs install one task per sub-environment with ``envs.set_attr("task", tasks)``.
    ``task_description`` is the one-line task space that ``metarl envs`` shows. An env can offer a
    faster batched simulator of itself through :meth:`make_batched` (see ``metarl.envs.batched``).
    """

    task_description: str = ""
    #: Set ``batched_simulator = True`` in the body of a class whose :meth:`make_batched` reproduces
    #: that very class (observations, rewards, terminations). Only the class's own body counts, never
    #: a parent's: a subclass may change ``step`` or the reward, and a simulator written for the
    #: parent would then silently train on the parent's reward. A subclass that keeps its parent's
    #: dynamics re-declares it (and should test the simulator against its ``step``).
    batched_simulator: bool = False

    def sample_tasks(self, num_tasks: int) -> list[Any]:
        """Draw ``num_tasks`` tasks from the task distribution with ``self.np_random``."""
        raise NotImplementedError

    def set_task(self, task: Any) -> None:
        """Install ``task``; it persists across ``reset``."""
        raise NotImplementedError

    def get_task(self) -> Any:
        """The task currently installed. Keep it cheap and free of side effects: the ``task`` property
        returns it, and gymnasium's ``set_attr("task", ...)`` reads that property before it sets it
        (metarl's sampler does not: it calls each sub-env's ``set_task``). An env that would build
        something for a default task can override ``task``, as Meta-World's does."""
        raise NotImplementedError

    def task_count_error(self, num_tasks: int, split: str) -> str | None:
        """Why a batch of ``num_tasks`` tasks of ``split`` (``"train"``: a meta-batch, or training
        tasks evaluated; ``"test"``: held-out tasks; ``"paper"``: :meth:`paper_test_tasks`) does not
        suit this env, or None. Checked before a run starts (also for an evaluation's chunks); a
        benchmark whose batches hold each of its classes equally often asks for a multiple."""
        return None

    def sample_test_tasks(self, num_tasks: int) -> list[Any]:
        """Draw ``num_tasks`` held-out tasks with ``self.np_random``, for envs whose benchmark keeps
        test tasks apart from training ones (Meta-World: test placements, test classes). Envs without
        it are evaluated on fresh draws of :meth:`sample_tasks` (``eval.tasks: seeded``)."""
        raise NotImplementedError

    def paper_test_tasks(self, num_tasks: int) -> list[Any]:
        """The first ``num_tasks`` held-out tasks of the original paper's own evaluation, drawn as its
        authors' test script drew them, so that results compare on the very same tasks
        (``eval.tasks: paper``). Only envs that reproduce a paper's task family define it."""
        raise NotImplementedError

    def make_batched(self, num_envs: int, device: Any = "cpu", seed: int | None = None) -> BatchedTaskSim | None:
        """A batched simulator of ``num_envs`` copies of this env (same constructor arguments), or
        None when the env has none; metarl's sampler then uses gymnasium's vector API. The sampler
        calls it only for classes that declare :attr:`batched_simulator` in their own body.

        ``seed`` seeds the simulator's own generator (initial-state noise).
        """
        return None

    @property
    def task(self) -> Any:
        return self.get_task()

    @task.setter
    def task(self, task: Any) -> None:
        self.set_task(task)


def implements(env: gym.Env, name: str) -> bool:
    """Whether ``env.unwrapped``'s class provides method ``name`` beyond :class:`TaskEnv`'s placeholder."""
    method = getattr(type(env.unwrapped), name, None)
    return callable(method) and method is not getattr(TaskEnv, name)


def has_batched_simulator(env: gym.Env) -> bool:
    """Whether the sampler may step ``env`` with its batched simulator: ``env.unwrapped``'s exact
    class declares ``batched_simulator = True`` in its own body and has a ``make_batched``."""
    cls = type(env.unwrapped)
    return vars(cls).get("batched_simulator", False) is True and implements(env, "make_batched")


def batched_simulator_note(env: gym.Env) -> str:
    """Why ``env`` has no batched simulator for the sampler (for its one-line note)."""
    cls = type(env.unwrapped)
    if has_batched_simulator(env):
        return f"{cls.__name__} has a batched simulator"
    declared = next((base for base in cls.__mro__[1:] if vars(base).get("batched_simulator", False) is True), None)
    if declared is not None:
        return (f"the batched simulator of {declared.__name__} reproduces {declared.__name__}, not its subclass "
                f"{cls.__name__} (declare batched_simulator = True in {cls.__name__} if it is exact for it)")
    return f"{cls.__name__} has no batched simulator"


def missing_protocol(env: gym.Env) -> list[str]:
    """What ``env.unwrapped`` lacks of the task protocol (empty when complete).

    Besides the three methods, vector envs need a settable ``task`` attribute to install one task
    per sub-env with ``set_attr``; :class:`TaskEnv` provides it as a property over ``set_task``.
    """
    missing = [name for name in TASK_PROTOCOL if not implements(env, name)]
    task = getattr(type(env.unwrapped), "task", None)
    if not (isinstance(task, property) and task.fset is not None):
        missing.append("a settable `task` property (subclass envs.TaskEnv)")
    return missing


def tasks_by_class(names: list[Any]) -> dict[str, list[int]] | None:
    """``{class: indices of its tasks}``, in order of first appearance, from each task's class name
    (Meta-World's ``env_name``); None unless every task has one (a string)."""
    if not names or not all(isinstance(n, str) for n in names):
        return None
    return {name: [i for i, n in enumerate(names) if n == name] for name in dict.fromkeys(names)}


def task_to_json(task: Any) -> Any:
    """A JSON-serialisable form of a task (dataclasses become dicts, tuples become lists)."""
    if dataclasses.is_dataclass(task) and not isinstance(task, type):
        return {f.name: task_to_json(getattr(task, f.name)) for f in dataclasses.fields(task)}
    if isinstance(task, (tuple, list)):
        return [task_to_json(v) for v in task]
    if hasattr(task, "tolist"):  # numpy scalars and arrays
        return task.tolist()
    return task
