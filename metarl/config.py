"""Typed experiment configuration: nested dataclasses, loaded from YAML, overridden by ``dotted.key=value``.

Every field is checked against its annotation; a bad key or value raises :class:`ConfigError`
naming the field and what it accepts. This module is the bottom layer of metarl: it imports nothing
from the rest of the project, which takes its allowed values (the tuples below) from here.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

#: Hidden activations of the policy (``policy.nonlinearity``; metarl.policy implements each).
NONLINEARITIES = ("relu", "tanh")
#: Inner-loop losses (``maml.inner_loss``; metarl.maml implements each).
INNER_LOSSES = ("vpg", "lvc", "dice")
#: Meta-updates (``maml.outer``; metarl.outer implements each).
OUTER_UPDATES = ("trpo", "promp", "adam")
#: How the sampler steps its sub-environments (``sampler.vectorization``, see metarl.sampler).
VECTORIZATION_MODES = ("auto", "batched", "vector_entry_point", "sync", "async", "processes")
#: How many episodes a batch holds: a fixed number per task, or whole episodes up to a step budget.
SAMPLE_BUDGETS = ("episodes", "steps")
#: Where the evaluation's held-out tasks come from (``eval.tasks``).
EVAL_TASK_SOURCES = ("seeded", "paper", "train")
TRACKING_MODES = ("offline", "online", "disabled")


class ConfigError(ValueError):
    """Bad configuration input (unknown key, wrong type, value out of range)."""


@dataclass
class EnvConfig:
    id: str = "metarl/Navigation2D-v0"
    """Registered gymnasium id of the task env (see ``metarl envs``)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor kwargs passed to ``gymnasium.make``."""


@dataclass
class PolicyConfig:
    hidden_sizes: list[int] = field(default_factory=lambda: [100, 100])
    """Widths of the hidden layers of the Gaussian MLP policy."""
    nonlinearity: str = "relu"
    """Hidden activation: relu or tanh."""
    init_std: float = 1.0
    """Initial standard deviation of every action dimension."""


@dataclass
class SamplerConfig:
    episodes_per_task: int = 20
    """Episodes sampled per task for each inner step and for the validation (post-adaptation) batch."""
    horizon: int | None = None
    """Steps per episode; null takes the env's max_episode_steps."""
    vectorization: str = "auto"
    """auto (the env's batched simulator if any, else its vector entry point, else sync), batched,
    vector_entry_point, sync, async (gymnasium's AsyncVectorEnv: one process per sub-env) or
    processes (the sub-envs split over sampler.processes worker processes, each stepping its share
    in turn: for envs whose step is mostly Python, e.g. Meta-World)."""
    processes: int = 0
    """Worker processes of vectorization=processes; 0: one per core this process may use
    ($METARL_SIM_THREADS when set, as a sweep or a Ray worker sets it)."""
    backend: str = "local"
    """local (this process) or ray (the tasks split over Ray rollout workers, each sampling its
    share with `vectorization`; section ray). Both give the same episodes."""
    rescale_actions: bool = True
    """Policy acts in [-1, 1], mapped onto the env's action bounds (as in the MAML paper's rllab setup)."""
    action_range: float = 1.0
    """With rescale_actions, the policy acts in [-action_range, action_range] instead, mapped onto the
    env's bounds: garage's normalize(expected_action_scale=...), 10 in its Meta-World ML1 and ML45
    examples (the policy's initial noise is then a tenth of the env's range)."""
    budget: str = "episodes"
    """episodes: episodes_per_task episodes per task; steps: whole episodes until each task has
    episodes_per_task * horizon steps (rllab's batches in the MAML authors' code)."""
    bootstrap_truncated: bool = False
    """false (the MAML papers' code): an episode cut off by a time limit (the horizon, or the env's
    truncated=True) ends there like a terminal state. true: its return continues with
    gamma * the baseline's value of the observation it was cut off in."""


@dataclass
class MAMLConfig:
    meta_batch_size: int = 20
    """Tasks per meta-iteration."""
    inner_steps: int = 1
    """Inner VPG steps per task, with fresh episodes after each."""
    inner_lr: float = 0.1
    """Inner-loop step size alpha."""
    first_order: bool = False
    """Treat the inner gradient as a constant (FOMAML) instead of differentiating through it."""
    inner_loss: str = "vpg"
    """vpg (REINFORCE on GAE advantages), lvc (ProMP's low-variance curvature: vpg's step, a less
    biased second-order meta-gradient) or dice (DiCE: unbiased derivatives of the discounted return
    in every order; its step uses gamma^t-weighted returns minus the baseline, not GAE)."""
    meta_sgd: bool = False
    """Meta-SGD: learn one inner step size per policy parameter entry (initialised at inner_lr)
    together with the initialisation; evaluation then adapts with the learned step sizes."""
    outer: str = "trpo"
    """Meta-update: trpo (the paper's), promp (PPO-clipped objective with an inner KL penalty and
    several Adam epochs, section ppo) or adam (one Adam step on the meta-loss, ppo.lr)."""
    cavia_context: int = 0
    """CAVIA (Zintgraf et al., 2019) with this many context parameters (0: MAML): a vector fed to
    the policy beside the observation, zero at the start of every task; the inner loop adapts only
    it (step inner_lr), the outer loop only the network, through the context's adaptation."""
    emaml: bool = False
    """E-MAML (Stadie et al., 2018): also credit the pre-update episodes with the return after
    adaptation (a score-function term on them, weighted per task by the standardised
    post-adaptation reward, as ProMP's code computes it); with any outer update and inner loss."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 1.0
    """GAE lambda (1.0: Monte-Carlo returns minus the baseline)."""
    baseline_ridge: float = 1e-5
    """Initial ridge coefficient of the per-task linear feature baseline fit."""
    normalize_advantages: bool = True
    """Standardise advantages per task."""
    pack_episodes: bool = True
    """Run the meta-update on each task's valid steps only (packed); false: on the padded
    [task, episode, horizon] batch. The same update to float rounding: only time and memory differ."""


@dataclass
class TRPOConfig:
    max_kl: float = 0.01
    """Bound on the mean KL between the old and new post-adaptation policies."""
    cg_iters: int = 10
    """Conjugate-gradient iterations (Hessian-vector products) per meta-update."""
    cg_damping: float = 1e-5
    """Damping added to the KL Hessian."""
    line_search_steps: int = 15
    """Backtracking line-search candidates before the step is reverted."""
    backtrack_ratio: float = 0.8
    """Step shrink factor between line-search candidates."""
    tasks_per_group: int = 0
    """Tasks stacked together in the meta-update's batched computation; 0 picks groups of about
    8192 steps on the CPU (cache-sized) and 262144 on a GPU (at least one task). The update is the
    same for any value, only the speed differs."""
    cg_subsample: float = 1.0
    """Fraction of the meta-batch's tasks whose KL curvature the conjugate gradient uses (rllab's
    ``subsample_factor``): 1 is the exact TRPO step; 0.25 makes each curvature product about 4x
    cheaper, estimated on a quarter of the tasks. The gradient and the line search's KL bound
    always use every task."""


@dataclass
class PPOConfig:
    lr: float = 1e-3
    """Adam learning rate of the promp and adam meta-updates."""
    epochs: int = 5
    """Adam steps per meta-iteration (promp; adam takes one)."""
    clip: float = 0.3
    """PPO clipping of the post-adaptation likelihood ratio (promp)."""
    inner_kl_coef: float = 5e-4
    """Weight of KL(old || new) on the pre-update episodes, ProMP's inner trust region (promp);
    the initial weight when inner_kl_target is set."""
    inner_kl_target: float = 0.0
    """0: a fixed weight. Otherwise adapt it after every meta-iteration, as ProMP can: halve it when
    the pre-update KL is below target / 1.5, double it above target * 1.5."""


@dataclass
class EvalConfig:
    num_tasks: int = 40
    """Held-out test tasks."""
    tasks: str = "seeded"
    """seeded: num_tasks draws of the env's held-out test distribution (its test split where the
    benchmark has one, e.g. Meta-World's test placements and classes; else the task distribution),
    seeded by eval.seed. paper: the original paper's own test tasks, as its authors drew them, for
    envs that define them (2D navigation: the MAML paper's 40 goals; Meta-World: its meta-test
    tasks), so that results compare on the same tasks. train: draws of the training distribution
    (Meta-World's meta-train success, reported apart from meta-test)."""
    seed: int = 1000
    """Seed of the seeded test tasks and of the evaluation's sampling (fixed, independent of the
    training seed)."""
    num_steps: int = 3
    """Report returns after 0..num_steps adaptation steps."""
    step_sizes: list[float] = field(default_factory=lambda: [0.1, 0.05])
    """Step size of each adaptation step; the last one repeats."""
    episodes_per_task: int = 40
    """Episodes per task and step."""
    final_episodes_per_task: int = 0
    """Episodes per task after the last step; 0: episodes_per_task (Meta-World's protocol: 10 to
    adapt on, then 3)."""
    tasks_per_chunk: int = 0
    """Run the protocol on this many tasks at a time (0: all at once), so that a large test set's
    sub-envs and episodes never sit in memory together."""
    budget: str = "episodes"
    """episodes or steps, as sampler.budget (the authors' test script used steps: 40 x 100)."""
    at_end: bool = True
    """Run the evaluation when training finishes."""
    train_tasks: int = 0
    """With at_end, then also evaluate this many training tasks (the rest of this section as it is)
    into eval_train.json, as `metarl evaluate RUN eval.tasks=train eval.num_tasks=N` does; 0: not.
    Meta-World's tables give this meta-train success beside the meta-test one. Unused where
    eval.tasks is train already, and by `metarl evaluate`, which runs the one evaluation asked."""


@dataclass
class RunConfig:
    iterations: int = 500
    """Meta-iterations."""
    seed: int = 0
    """Seed of torch, numpy, the training tasks and the sampler."""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda or cuda:N."""
    output_dir: str = "runs"
    """Parent folder of run directories."""
    name: str | None = None
    """Run directory name; null makes a unique one from the env, the time, the seed and a random suffix."""
    checkpoint_every: int = 50
    """Write checkpoints/last.pt every this many iterations (and at the end)."""
    checkpoint_minutes: float = 5.0
    """Also write it once this many minutes have passed since the last one (a run killed without
    warning loses at most that much); 0: only every checkpoint_every iterations."""


@dataclass
class RayConfig:
    address: str | None = None
    """Ray cluster to join (e.g. 10.0.0.1:6379); null: $RAY_ADDRESS if set, else a local Ray on this machine."""
    workers: int = 2
    """Rollout workers (Ray actors); a meta-batch's tasks are split evenly over them."""
    cpus_per_worker: float = 1.0
    """CPUs Ray reserves per worker (fractions allowed); also the threads of its MuJoCo simulator."""
    max_retries: int = 2
    """Times per round a worker whose process died is replaced and its tasks re-run."""
    timeout_s: float = 600.0
    """Longest one round of episodes may take before sampling stops with an error naming the tasks."""


@dataclass
class TrackingConfig:
    wandb: bool = False
    """Log the run to Weights & Biases as well (local files are always written)."""
    mode: str = "offline"
    """offline (no account or network; upload later with `wandb sync RUN_DIR/wandb/offline-run-*`),
    online (needs `wandb login` or WANDB_API_KEY; never prompts) or disabled."""
    project: str = "metarl"
    """wandb project."""
    entity: str | None = None
    """wandb entity (user or team); null: the account's default."""
    group: str | None = None
    """wandb group, e.g. one per sweep of seeds."""
    name: str | None = None
    """wandb run name; null: the run directory's name."""
    tags: list[str] = field(default_factory=list)
    """wandb tags."""
    log_checkpoints: bool = True
    """Upload checkpoints/last.pt and best.pt as a model artifact at the end of the run."""
    videos: int = 2
    """Test tasks rendered (mp4, before and after adaptation) and logged at the end of the run, for
    envs that render (MuJoCo, with MUJOCO_GL=egl or osmesa); 0: none."""


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    maml: MAMLConfig = field(default_factory=MAMLConfig)
    trpo: TRPOConfig = field(default_factory=TRPOConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)


# Choices and ranges checked after the types.
CHOICES = {
    "policy.nonlinearity": NONLINEARITIES,
    "sampler.vectorization": VECTORIZATION_MODES,
    "sampler.budget": SAMPLE_BUDGETS,
    "sampler.backend": ("local", "ray"),
    "eval.budget": SAMPLE_BUDGETS,
    "eval.tasks": EVAL_TASK_SOURCES,
    "tracking.mode": TRACKING_MODES,
    "maml.inner_loss": INNER_LOSSES,
    "maml.outer": OUTER_UPDATES,
}
POSITIVE = {
    "policy.init_std", "sampler.episodes_per_task", "sampler.horizon", "sampler.action_range",
    "maml.meta_batch_size", "maml.inner_lr",
    "maml.inner_steps",
    "trpo.max_kl", "trpo.cg_iters", "trpo.line_search_steps", "trpo.cg_subsample",
    "eval.num_tasks", "eval.episodes_per_task",
    "run.iterations", "run.checkpoint_every", "maml.baseline_ridge", "ppo.lr", "ppo.epochs", "ppo.clip",
    "ray.workers", "ray.cpus_per_worker", "ray.timeout_s",
}
NON_NEGATIVE = {"sampler.processes", "maml.cavia_context", "eval.num_steps", "eval.final_episodes_per_task",
                "eval.tasks_per_chunk", "eval.train_tasks",
                "run.checkpoint_minutes", "trpo.cg_damping", "trpo.tasks_per_group",
                "tracking.videos", "ppo.inner_kl_coef", "ppo.inner_kl_target", "ray.max_retries"}
UNIT_INTERVAL = {"maml.gamma", "maml.gae_lambda", "trpo.cg_subsample"}
SEEDS = {"run.seed", "eval.seed"}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    return {int: "int", float: "float", str: "str", bool: "bool"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp``; ints are accepted for floats, and so is text in
    exponent notation without a dot (``1e-6``), which YAML 1.1 reads as a string."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, option, path)
            except ConfigError:
                pass
    elif origin is list:
        if isinstance(value, (list, tuple)):
            (item,) = typing.get_args(tp)
            return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            _check_finite_within(value, path)
            return dict(value)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value.strip()):
            number = float(value)
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{path}: must be a finite number, got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")


def _check_finite_within(value: Any, path: str) -> None:
    """Refuse NaN and inf anywhere inside a free-form mapping (``env.kwargs``), naming the key."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path}: must be a finite number, got {value!r}")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite_within(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_finite_within(item, f"{path}[{i}]")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _from_dict(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = _field_types(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key {where}{unknown[0]}; allowed in {prefix or 'config'}: {', '.join(hints)}")
    kwargs = {}
    for name, value in data.items():
        tp, path = hints[name], f"{prefix}.{name}" if prefix else name
        kwargs[name] = _from_dict(tp, value, path) if dataclasses.is_dataclass(tp) else _coerce(value, tp, path)
    return cls(**kwargs)


def _validate(config: Config) -> None:
    flat = to_flat_dict(config)
    for path, allowed in CHOICES.items():
        if flat[path] not in allowed:
            raise ConfigError(f"{path}: must be one of {', '.join(allowed)}, got {flat[path]!r}")
    for path in POSITIVE:
        if flat[path] is not None and flat[path] <= 0:
            raise ConfigError(f"{path}: must be > 0, got {flat[path]!r}")
    for path in NON_NEGATIVE:
        if flat[path] < 0:
            raise ConfigError(f"{path}: must be >= 0, got {flat[path]!r}")
    for path in UNIT_INTERVAL:
        if not 0.0 <= flat[path] <= 1.0:
            raise ConfigError(f"{path}: must be in [0, 1], got {flat[path]!r}")
    for path in SEEDS:
        if not 0 <= flat[path] < 2**32:
            raise ConfigError(f"{path}: must be in [0, 2**32), got {flat[path]!r}")
    if config.sampler.action_range != 1.0 and not config.sampler.rescale_actions:
        raise ConfigError(f"sampler.action_range: applies only with sampler.rescale_actions=true, "
                          f"got {config.sampler.action_range!r} with rescale_actions=false")
    if not 0.0 < config.trpo.backtrack_ratio < 1.0:
        raise ConfigError(f"trpo.backtrack_ratio: must be in (0, 1), got {config.trpo.backtrack_ratio!r}")
    if not config.policy.hidden_sizes or min(config.policy.hidden_sizes) <= 0:
        raise ConfigError(f"policy.hidden_sizes: must be a non-empty list of positive ints, "
                          f"got {config.policy.hidden_sizes}")
    if not config.eval.step_sizes or min(config.eval.step_sizes) <= 0:
        raise ConfigError(f"eval.step_sizes: must be a non-empty list of positive floats, got {config.eval.step_sizes}")
    device = config.run.device
    if not (device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", device)):
        raise ConfigError(f"run.device: must be auto, cpu, cuda or cuda:N, got {device!r}")


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_flat_dict(config: Config) -> dict[str, Any]:
    """``{"section.field": value}`` for every field."""
    return {f"{section}.{key}": value for section, fields in to_dict(config).items() for key, value in fields.items()}


def from_dict(data: dict[str, Any]) -> Config:
    config = _from_dict(Config, data, "")
    _validate(config)
    return config


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"maml.inner_lr=0.5"`` -> (["maml", "inner_lr"], 0.5); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected dotted.key=value, e.g. run.iterations=10")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {exc}") from exc
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``dotted.key=value`` in the nested dict ``data`` (a copy is returned)."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
    for text in overrides:
        keys, value = parse_override(text)
        node, cls, prefix = data, Config, ""
        for depth, key in enumerate(keys):
            hints = _field_types(cls) if cls is not None else None
            if hints is not None and key not in hints:
                raise ConfigError(f"unknown key {prefix}{key}; "
                                  f"allowed in {prefix[:-1] or 'config'}: {', '.join(hints)}")
            last = depth == len(keys) - 1
            if last:
                node[key] = value
            else:
                tp = hints[key] if hints is not None else None
                cls = tp if dataclasses.is_dataclass(tp) else None  # below a plain mapping (env.kwargs) anything goes
                if not isinstance(node.get(key), dict):
                    node[key] = {}
                node = node[key]
                prefix += f"{key}."
    return data


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then the overrides; validated."""
    data: dict[str, Any] = to_dict(Config())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{where}: not valid YAML: {problem}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
        data = _merge(data, loaded, "")
    return from_dict(apply_overrides(data, overrides or []))


def _merge(base: dict[str, Any], update: dict[str, Any], prefix: str) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "kwargs":
            merged[key] = _merge(base[key], value, f"{prefix}{key}.")
        else:
            merged[key] = value
    return merged


def dumps(config: Config) -> str:
    """The config as YAML text (what ``config.yaml`` holds)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def dump(config: Config, path: str | Path) -> None:
    Path(path).write_text(dumps(config))
