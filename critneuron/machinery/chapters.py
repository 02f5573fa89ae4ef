"""The runs of each chapter, from its notebook parameters: what the notebooks compute, as configs.

One function per chapter section, taking the notebook's parameters by name (as a profile sets
them), so a notebook and `machinery.plan` (what a build needs, before it runs) build the same
configs. Nothing here trains or solves.
"""

from __future__ import annotations

from typing import Any, Sequence

from critneuron.catalog import paper_finetune_epochs
from critneuron.config import (
    DataConfig, ModelConfig, PruneConfig, RunConfig, ScoreConfig, choices, from_dict, paper_train_config, to_dict,
)
from critneuron.errors import ConfigError
from critneuron.experiments.transfer import VARIANTS, source_config
from critneuron.experiments.whole import prune_sweep
from critneuron.machinery.sweepfile import expand, parse_sweep


def formulation_run(model: str, dataset: str, epochs: int | None, data_root: str | None, subset: int | None,
                    test_subset: int | None, batch_size: int, lambda_: float, time_limit: float,
                    batch_rule: str, seed: int = 0, **_other: Any) -> tuple[RunConfig, ScoreConfig]:
    """Chapter 01: the trained network's run (training seed `seed`) and the score settings of its solves."""
    data = DataConfig(dataset=dataset, root=data_root, subset=subset, test_subset=test_subset)
    run = RunConfig(data=data, model=ModelConfig(name=model), train=paper_train_config(model, dataset, epochs, seed))
    return run, ScoreConfig(batch_size=batch_size, lambda_=lambda_, time_limit=time_limit, batch_rule=batch_rule)


def pruning_sweep(runs: Sequence[Sequence[str]], epochs: int | None, data_root: str | None, subset: int | None,
                  test_subset: int | None, seeds: Sequence[int], lambda_: float, threshold: float | None, mode: str,
                  batch_size: int, time_limit: float, batch_rule: str, random_rule: str,
                  finetune_epochs: int | None, **_other: Any) -> dict[str, Any]:
    """Chapter 02: the whole-network pruning sweep (`reporting.sweep_rows(store, **this)`)."""
    base = {"data.root": data_root, "data.subset": subset, "data.test_subset": test_subset,
            "score.lambda_": lambda_, "score.mode": mode, "score.batch_size": batch_size,
            "score.time_limit": time_limit, "score.batch_rule": batch_rule, "prune.threshold": threshold,
            "prune.random_rule": random_rule}
    items = [{"model.name": m, "data.dataset": d, "train": to_dict(paper_train_config(m, d, epochs=epochs)),
              "prune.finetune_epochs": paper_finetune_epochs(m, d) if finetune_epochs is None else finetune_epochs}
             for m, d in runs]
    return {"base": base, "items": items, "grid": {"train.seed": list(seeds)}}


def budget_configs(configs: Sequence[dict], budget_runs: Sequence[Sequence[str]]) -> list[RunConfig]:
    """Chapter 02: the run configs (sweep rows' `config`) of the budget sweep's (model, dataset) pairs."""
    return [from_dict(RunConfig, c) for c in configs if [c["model"]["name"], c["data"]["dataset"]] in
            [list(r) for r in budget_runs]]


def decoupled_configs(dataset: str, runs: Sequence[Sequence], epochs: int | None, data_root: str | None,
                      subset: int | None, test_subset: int | None, seeds: Sequence[int], lambda_: float,
                      threshold: float | None, mode: str, batch_size: int, time_limit: float,
                      finetune_epochs: int, block_bounds: str = "network", random_rule: str = "uniform",
                      **_other: Any) -> list[tuple[RunConfig, str]]:
    """Chapter 03: (run config, training) of every (model, width, training) run and seed."""
    data = DataConfig(dataset=dataset, root=data_root, subset=subset, test_subset=test_subset)
    score = ScoreConfig(lambda_=lambda_, mode=mode, batch_size=batch_size, time_limit=time_limit,
                        block_bounds=block_bounds)
    prune = PruneConfig(threshold=threshold, finetune_epochs=finetune_epochs, random_rule=random_rule)
    return [(RunConfig(data=data, model=ModelConfig(name=name, width=width), score=score, prune=prune,
                       train=paper_train_config(name, dataset, epochs, seed)), training)
            for name, width, training in runs for seed in seeds]


FULL_WIDTH_KEYS = ("epochs", "subset", "time_limit", "correct_only", "rules")


def full_width_rules(full_width: dict[str, Any]) -> list[str]:
    """The `block_bounds` rules the full-width VGG-16's blocks are scored under (`full_width["rules"]`,
    default all); ConfigError naming an unknown one."""
    known = choices(ScoreConfig, "block_bounds")
    rules = list(full_width.get("rules") or known)
    if not set(rules) <= set(known):
        raise ConfigError(f"full_width: unknown block_bounds rule(s) {sorted(set(rules) - set(known))}; known: {known}")
    return rules


def full_width_config(dataset: str, data_root: str | None, test_subset: int | None, seeds: Sequence[int],
                      lambda_: float, threshold: float | None, mode: str, batch_size: int,
                      full_width: dict[str, Any] | None, **_other: Any) -> RunConfig | None:
    """Chapter 03: the full-width VGG-16 scored block by block (None when `full_width` is None):
    `full_width["epochs"]` decoupled epochs (on `subset` training images if given), the first
    seed, each sub-program limited to `time_limit` seconds (`correct_only`, default true, and
    `rules`, default all, are the section's arguments to
    `experiments.decoupled.block_bounds_comparison`; see `full_width_rules`)."""
    if full_width is None:
        return None
    unknown = sorted(set(full_width) - set(FULL_WIDTH_KEYS))
    if unknown:
        raise ConfigError(f"full_width: unknown key(s) {unknown}; known: {', '.join(FULL_WIDTH_KEYS)}")
    full_width_rules(full_width)
    data = DataConfig(dataset=dataset, root=data_root, subset=full_width.get("subset"), test_subset=test_subset)
    return RunConfig(data=data, model=ModelConfig(name="vgg16", width=1.0),
                     train=paper_train_config("vgg16", dataset, full_width["epochs"], seeds[0]),
                     score=ScoreConfig(lambda_=lambda_, mode=mode, batch_size=batch_size,
                                       time_limit=full_width["time_limit"]),
                     prune=PruneConfig(threshold=threshold))


def compared_config(configs: Sequence[tuple[RunConfig, str]], compare: str) -> RunConfig:
    """Chapter 03: the decoupled run of model `compare` scored both ways (its first seed)."""
    return next(cfg for cfg, training in configs if cfg.model.name == compare and training == "decoupled")


def transfer_base(data_root: str | None, subset: int | None, test_subset: int | None, lambda_: float,
                  threshold: float | None, mode: str, batch_size: int, time_limit: float, batch_rule: str,
                  **_other: Any) -> RunConfig:
    """Chapter 04: the settings every source run shares (data subsets, MIP, τ)."""
    return RunConfig(data=DataConfig(root=data_root, subset=subset, test_subset=test_subset),
                     score=ScoreConfig(lambda_=lambda_, mode=mode, batch_size=batch_size, time_limit=time_limit,
                                       batch_rule=batch_rule),
                     prune=PruneConfig(threshold=threshold))


def transfer_sources(base: RunConfig, pairs: Sequence[Sequence[str]], seeds: Sequence[int], epochs: int | None,
                     width: float, model_seeds: dict[str, Sequence[int]] | None = None,
                     **_other: Any) -> list[tuple[RunConfig, str]]:
    """Chapter 04: (source run config, target dataset) of every pair and seed; `model_seeds` gives
    a model its own seeds (e.g. fewer for VGG-16, whose transfers cost the most)."""
    own = model_seeds or {}
    return [(source_config(base, m, a, seed, epochs, width), b) for m, a, b in pairs for seed in own.get(m, seeds)]


LR_CONTROL_KEYS = ("lr", "pairs", "seeds", "masks")


def lr_control_sources(base: RunConfig, lr_control: dict[str, Any] | None, epochs: int | None, width: float,
                       **_other: Any) -> list[tuple[RunConfig, str]]:
    """Chapter 04's control of the transfer's learning rate: (source run, target) of its pairs and
    seeds, whose `masks` are retrained at `lr` instead of the authors' schedule ([] when
    `lr_control` is None); ConfigError naming a missing or unknown key or mask."""
    if lr_control is None:
        return []
    if set(lr_control) != set(LR_CONTROL_KEYS):
        raise ConfigError(f"lr_control needs exactly the keys {list(LR_CONTROL_KEYS)}; got {sorted(lr_control)}")
    masks = [m for m in lr_control["masks"] if m not in VARIANTS or m == "reference"]
    if masks:
        raise ConfigError(f"lr_control masks {masks}: not retrained masks; known: {list(VARIANTS[1:])}")
    return transfer_sources(base, lr_control["pairs"], lr_control["seeds"], epochs, width)


def sensitivity_sweeps(model: str, dataset: str, epochs: int, data_root: str | None, subset: int | None,
                       test_subset: int | None, seeds: Sequence[int], lambdas: Sequence[float],
                       thresholds: Sequence[float], batch_sizes: Sequence[int], batch_seeds: Sequence[int],
                       mode: str, time_limit: float, batch_rule: str = "random", random_rule: str = "uniform",
                       **_other: Any) -> dict[str, dict[str, Any]]:
    """Chapter 05: the λ, τ and batch sweeps (`reporting.sweep_rows(store, **sweeps[name])`).

    `batch_rule` picks the MIP batch of the λ and τ sweeps; the batch sweep always draws seeded
    random batches (`batch_seeds`), since their spread is what it measures."""
    base = {"data.dataset": dataset, "data.root": data_root, "data.subset": subset, "data.test_subset": test_subset,
            "model.name": model, "train.epochs": epochs, "score.mode": mode, "score.time_limit": time_limit,
            "score.seed": 0, "prune.random_rule": random_rule}
    fixed = {**base, "score.batch_rule": batch_rule}
    return {"lambda": {"base": fixed, "grid": {"score.lambda_": list(lambdas), "train.seed": list(seeds)}},
            "threshold": {"base": fixed, "grid": {"score.lambda_": [5.0], "prune.threshold": list(thresholds),
                                                  "train.seed": list(seeds)}},
            "batch": {"base": {**base, "score.batch_rule": "random"},
                      "grid": {"score.lambda_": [5.0], "score.batch_size": list(batch_sizes),
                               "score.seed": list(batch_seeds), "train.seed": list(seeds)}}}


def sweep_file(sweep: dict[str, Any]) -> dict[str, Any]:
    """A chapter sweep (`pruning_sweep`, `sensitivity_sweeps`) as a parsed sweep file of `prune_task` runs."""
    return prune_sweep(sweep["base"], sweep.get("grid"), sweep.get("items"))


def sequential_configs(sweeps: dict[str, dict[str, Any]], seeds: Sequence[int] | None = None) -> list[RunConfig]:
    """Chapter 05's sequential-against-parallel runs (`experiments.sequential`, PAPER_SPEC §8.2):
    the τ sweep's runs at the paper's τ, one per seed (their parallel program is the τ sweep's),
    or on networks of training seeds `seeds`."""
    sweep = sweeps["threshold"]
    single = {"base": sweep["base"], "grid": {k: v for k, v in sweep["grid"].items() if k != "prune.threshold"}}
    if seeds is not None:
        single["grid"]["train.seed"] = list(seeds)
    return [from_dict(RunConfig, config) for config in expand(parse_sweep(sweep_file(single)))]
