"""Frozen configuration dataclasses and canonical hashing.

Closed sets of choices are `Literal` types (`choices` reads them, for validation and the CLI);
dataset and model names are checked against the catalog.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, TypeVar, Union

from critneuron.catalog import dataset_record, model_record, paper_schedule, paper_threshold
from critneuron.catalog.records import Optimizer, Schedule
from critneuron.errors import ConfigError

SCHEMA_VERSION = 1

Mode = Literal["exact", "relaxed"]
Loss = Literal["ce", "margin"]
FirstLP = Literal["auto", "simplex", "ipx"]
Bias = Literal["keep-bias", "remove"]
BatchRule = Literal["random", "authors"]
RandomRule = Literal["uniform", "authors"]
Backend = Literal["highspy", "appsi"]
LSE = Literal["lifted", "tangent"]
FinalPoint = Literal["vertex", "interior"]
Scaling = Literal["auto", "on", "off"]
BlockBounds = Literal["network", "local"]


def choices(cls: type, name: str) -> tuple:
    """The allowed values of a config field typed with a `Literal` (for validation and the CLI)."""
    hint = typing.get_type_hints(cls)[name]
    literal = next(a for a in (hint, *typing.get_args(hint)) if typing.get_origin(a) is Literal)
    return typing.get_args(literal)


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where it lives, and how the official train set is split."""

    dataset: str = field(default="mnist", metadata={"help": "dataset, a name in the catalog"})
    root: str | None = field(
        default=None, metadata={"help": "data root (default: $CRITNEURON_DATA, else ./data)"}
    )
    subset: int | None = field(
        default=None, metadata={"help": "use only this many training images (seeded), for quick runs"}
    )
    test_subset: int | None = field(
        default=None, metadata={"help": "use only this many test images (seeded), for quick runs"}
    )
    val_fraction: float = field(default=0.2, metadata={"help": "share of the train set held out"})
    split_seed: int = field(default=0, metadata={"help": "seed of the train/validation split"})

    def __post_init__(self) -> None:
        dataset_record(self.dataset)
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        for name in ("subset", "test_subset"):
            value = getattr(self, name)
            if value is not None:
                _check_positive(name, value)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture name and width multiplier (width < 1 divides every channel/neuron count)."""

    name: str = field(default="lenet5", metadata={"help": "architecture, a name in the catalog"})
    width: float = field(default=1.0, metadata={"help": "width multiplier (vgg16 only), e.g. 0.25"})

    def __post_init__(self) -> None:
        model_record(self.name)
        _check_positive("width", self.width)


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule. `paper_train_config` gives the authors' settings."""

    epochs: int = field(default=30, metadata={"help": "training epochs"})
    batch_size: int = field(default=128, metadata={"help": "minibatch size"})
    optimizer: Optimizer = field(default="rmsprop", metadata={"help": "rmsprop or sgd"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum (Nesterov)"})
    weight_decay: float = field(default=0.0, metadata={"help": "L2 weight decay"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, shuffling and augmentation"})

    def __post_init__(self) -> None:
        _check_choice("optimizer", self.optimizer, choices(TrainConfig, "optimizer"))
        _check_positive("epochs", self.epochs, allow_zero=True)
        _check_positive("batch_size", self.batch_size)
        _check_positive("lr", self.lr)
        _check_positive("weight_decay", self.weight_decay, allow_zero=True)


def schedule_config(schedule: Schedule, epochs: int | None = None, seed: int = 0) -> TrainConfig:
    """A catalog `Schedule` as a `TrainConfig` with `seed`; `epochs` overrides the schedule's."""
    cfg = TrainConfig(**dataclasses.asdict(schedule), seed=seed)
    return cfg if epochs is None else dataclasses.replace(cfg, epochs=epochs)


def paper_train_config(model: str, dataset: str, epochs: int | None = None, seed: int = 0) -> TrainConfig:
    """The authors' optimiser and schedule for `model` on `dataset` (`catalog.paper_schedule`);
    `epochs` overrides the schedule's."""
    return schedule_config(paper_schedule(model, dataset), epochs, seed)


@dataclass(frozen=True)
class ScoreConfig:
    """Settings of the MIP that scores neurons."""

    lambda_: float = field(default=5.0, metadata={"help": "weight of the loss term (paper: 5)"})
    mode: Mode = field(default="relaxed", metadata={"help": "exact (binary ReLU indicators) or relaxed ([0,1])"})
    epsilon: float = field(default=1e-5, metadata={"help": "half-width of the input box for bounds"})
    batch_size: int = field(default=10, metadata={"help": "images in the MIP batch (one per class)"})
    loss: Loss = field(default="ce", metadata={"help": "ce (exact softmax CE by Kelley cuts) or margin (LP-only)"})
    time_limit: float = field(default=600.0, metadata={"help": "solver time limit per solve, seconds"})
    mip_gap: float = field(default=1e-4, metadata={"help": "relative MIP gap"})
    threads: int = field(default=1, metadata={"help": "solver threads"})
    seed: int = field(default=0, metadata={"help": "seed of batch choice and solver"})
    batch_rule: BatchRule = field(default="random", metadata={
        "help": "MIP batch: random (seeded draw of correctly classified training-split images per class) or "
                "authors (their deterministic pick: the last fully-correct balanced chunk of the full training set)"})
    kelley_tol: float = field(default=1e-6, metadata={"help": "stop when max_b LSE(z_b) - t_b <= this"})
    max_rounds: int = field(default=100, metadata={"help": "maximum Kelley rounds"})
    presolve: bool = field(default=True, metadata={"help": "fix stable units (no binary) before solving"})
    warm_start: bool = field(default=True, metadata={"help": "MIP start from s = 1 and observed activations"})
    lp_cuts_first: bool = field(default=True, metadata={
        "help": "exact mode: converge the Kelley cuts on the LP relaxation before the MIP rounds"})
    selfcheck_tol: float = field(default=1e-4, metadata={
        "help": "max |MIP logits - torch logits with the solved shifts|: above it, exact mode warns (the encoding or "
                "the solver tolerances are off) and relaxed mode flags the program (its relaxation no longer "
                "describes the network on the batch)"})
    first_lp: FirstLP = field(default="auto", metadata={
        "help": "HiGHS algorithm of each phase's first LP solve: simplex, ipx (HiGHS's IPX interior point + "
                "crossover; much faster on large LPs such as full-width VGG blocks), or auto (ipx from a million "
                "nonzeros on); later Kelley rounds hot-start with simplex"})
    backend: Backend = field(default="highspy", metadata={
        "help": "highspy (the model's sparse blocks straight to HiGHS, cuts added to the live solver) or appsi "
                "(the same model through Pyomo and its appsi HiGHS interface: the engine before issue 16)"})
    lse: LSE = field(default="lifted", metadata={
        "help": "ce loss: lifted (sum_k u_k <= 1, u_k >= exp(z_k - t), a tangent cut per exponential) or "
                "tangent (tangent cuts of t >= LSE(z) itself: the engine before issue 16, more rounds)"})

    final_point: FinalPoint = field(default="interior", metadata={
        "help": "the optimum reported: vertex (simplex), or interior (re-solved by interior point without "
                "crossover, binaries fixed: inside the optimal face, as the authors' MOSEK returns; scores the "
                "objective does not pin down then sit inside (0, 1) instead of at 0 or 1)"})
    scaling: Scaling = field(default="auto", metadata={
        "help": "scale the program HiGHS solves by powers of two (columns by the square root of their magnitude "
                "bounds, rows by their largest entry; the same program, solutions mapped back): on, off, or auto "
                "(where its largest coefficient or bound reaches 1e4 or it has 50,000 columns, as under the whole "
                "network's interval bounds at the deep full-width VGG-16 blocks; highspy backend only)"})

    block_bounds: BlockBounds = field(default="network", metadata={
        "help": "decoupled scoring: the input box of each block's program: network (the whole network's interval "
                "bounds at the block's input, propagated from the epsilon-box around the images: the authors' rule) "
                "or local (the block's own input h_k(x) +- epsilon, propagated through the block only: a labelled "
                "deviation whose relaxation stays close to the network)"})

    def __post_init__(self) -> None:
        for name in ("mode", "first_lp", "loss", "batch_rule", "backend", "lse", "final_point", "scaling",
                     "block_bounds"):
            _check_choice(name, getattr(self, name), choices(ScoreConfig, name))
        if self.scaling == "on" and self.backend == "appsi":
            raise ConfigError("scaling: 'on' needs the highspy backend (appsi passes the Pyomo model unscaled)")
        _check_positive("lambda", self.lambda_, allow_zero=True)
        _check_positive("epsilon", self.epsilon, allow_zero=True)
        _check_positive("batch_size", self.batch_size)
        _check_positive("time_limit", self.time_limit)
        _check_positive("mip_gap", self.mip_gap, allow_zero=True)
        _check_positive("threads", self.threads)
        _check_positive("max_rounds", self.max_rounds)


@dataclass(frozen=True)
class PruneConfig:
    """How scores become masks and how masks are applied."""

    threshold: Union[float, str, None] = field(
        default=None, metadata={"help": "tau, 'mean' (per-layer mean score), or None for the paper's tau"}
    )
    bias: Bias = field(default="keep-bias", metadata={"help": "keep-bias (paper) or remove"})
    finetune_epochs: int = field(default=0, metadata={"help": "fine-tune the pruned net this many epochs (paper: 1; LeNet-5 on MNIST 2)"})
    random_rule: RandomRule = field(default="uniform", metadata={
        "help": "the random baseline: uniform (exactly the MIP mask's per-layer counts) or authors (draws with "
                "replacement among the units scored above 0, as the authors' code; may prune fewer)"})

    def __post_init__(self) -> None:
        for name in ("bias", "random_rule"):
            _check_choice(name, getattr(self, name), choices(PruneConfig, name))
        _check_positive("finetune_epochs", self.finetune_epochs, allow_zero=True)
        if isinstance(self.threshold, str):
            _check_choice("threshold", self.threshold, ("mean",))
        elif self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ConfigError(f"threshold must be in [0, 1] or 'mean', got {self.threshold!r}")

    def resolve(self, model: str, dataset: str) -> Union[float, str]:
        """The threshold to use: the configured one, else the paper's."""
        return paper_threshold(model, dataset) if self.threshold is None else self.threshold


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one train-score-prune run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)


T = TypeVar("T")


def to_dict(cfg: Any) -> dict:
    """A config as plain JSON-able data."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build a (nested) config from plain data; unknown keys raise ConfigError naming them."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{cls.__name__} expects a mapping, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        kwargs[key] = from_dict(hint, value) if dataclasses.is_dataclass(hint) else value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{cls.__name__}: {err}") from err


def canonical_json(obj: Any) -> str:
    """Sorted-key compact JSON of a config (or any JSON-able value) for hashing."""
    if dataclasses.is_dataclass(obj):
        obj = {"__type__": type(obj).__name__, **to_dict(obj)}
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(obj: Any, **extra: Any) -> str:
    """Stable 16-hex-digit key of a config plus anything else that determines a result."""
    payload = canonical_json({"schema": SCHEMA_VERSION, "config": json.loads(canonical_json(obj)), **extra})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]

