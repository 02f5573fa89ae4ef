"""Whole-network runs: train (cached) → score (cached) → prune at τ → evaluate: the paper's table row.

Also the sweep task over such runs (`prune_task`, `prune_sweep`).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
from torch import nn

from critneuron.catalog import dataset_record
from critneuron.config import RunConfig, from_dict, to_dict
from critneuron.experiments.runs import mip_scores, network_scores, trained_model
from critneuron.experiments.store import Store, versions
from critneuron.mip.scores import Scores
from critneuron.nets.data import SPLITS, dataset_source, load_split
from critneuron.nets.train import evaluate, resolve_device, train_model
from critneuron.pruning.baselines import RANDOM_AUTHORS, baseline_masks
from critneuron.pruning.masks import Masks, apply_masks, freeze_masks, masks_from_scores, pruning_stats


def _accuracy(model: nn.Module, data) -> dict[str, float]:
    acc, loss = evaluate(model, data)
    return {"accuracy": acc, "loss": loss}


def _finetune(model: nn.Sequential, masks: Masks, cfg: RunConfig, train, val) -> nn.Sequential:
    tuned = copy.deepcopy(model)
    freeze_masks(tuned, masks, cfg.prune.bias)
    epochs = dataclasses.replace(cfg.train, epochs=cfg.prune.finetune_epochs)
    return train_model(tuned, train, val, epochs, augment=dataset_record(cfg.data.dataset).augment, progress=False).model


def evaluate_masks(model: nn.Sequential, scores: Scores, cfg: RunConfig, data: dict) -> dict[str, Any]:
    """Reference vs pruned (no fine-tuning), random (`cfg.prune.random_rule`) and critical at the same per-layer counts,
    evaluated on CUDA when available (a copy of `model` goes there; `model` stays where it is)."""
    device = resolve_device()
    if next(model.parameters()).device != device:
        model = copy.deepcopy(model).to(device)
    threshold = cfg.prune.resolve(cfg.model.name, cfg.data.dataset)
    masks = masks_from_scores(scores, threshold)
    row: dict[str, Any] = {"threshold": threshold}
    for name, net in (("reference", model), ("pruned", apply_masks(model, masks, cfg.prune.bias))):
        row[name] = {"train": _accuracy(net, data["train"]), "test": _accuracy(net, data["test"])}
    random = "random" if cfg.prune.random_rule == "uniform" else RANDOM_AUTHORS
    for column, method in (("random", random), ("critical", "critical")):
        like = baseline_masks(method, model, masks, seed=cfg.score.seed, scores=scores)
        row[column] = {"test": _accuracy(apply_masks(model, like, cfg.prune.bias), data["test"]),
                       "pct_neurons_pruned": pruning_stats(model, like)["pct_neurons_pruned"]}
    if cfg.prune.finetune_epochs:
        tuned = _finetune(apply_masks(model, masks, cfg.prune.bias), masks, cfg, data["train"], data["val"])
        row["finetuned"] = {"test": _accuracy(tuned, data["test"])}
    row["stats"] = pruning_stats(model, masks)
    row["masks"] = masks.to_dict()
    return row


def prune_run(cfg: RunConfig, store: Store | None = None, progress: bool = False) -> dict[str, Any]:
    """Train (cached), score (cached), prune and evaluate one configuration; returns the table row."""
    store = store or Store()
    model, train_metrics = trained_model(cfg, store, progress)
    scores = mip_scores(model, cfg, store)
    data = {s: load_split(cfg.data, s) for s in SPLITS}
    row = evaluate_masks(model, scores, cfg, data)
    row.update({"config": to_dict(cfg), "source": dataset_source(cfg.data), "train_seconds": train_metrics["train_seconds"],
                "weights_hash": train_metrics["weights_hash"], **score_columns(scores), "versions": versions()})
    return row


def score_columns(scores: Scores) -> dict[str, Any]:
    """What a result row keeps of a MIP score: the scores, solver report, Kelley history, times,
    ReLU stability counts, self-check error and batch indices; of decoupled scores, the scores and
    the blocks' rows (`mip.blocks.combine`)."""
    prov = scores.provenance
    if "blocks" in prov:
        return {"scores": scores.to_dict()["layers"], "blocks": prov["blocks"], "training": prov["training"]}
    return {
        "scores": scores.to_dict()["layers"], "solver": {k: v for k, v in prov["solver"].items() if k != "history"},
        "kelley": prov["solver"]["history"], "seconds": prov["seconds"], "relu": prov["relu"],
        "unstable_units": prov["unstable_units"], "selfcheck_error": prov["selfcheck_error"],
        "batch_indices": prov["batch_indices"],
    }


def prune_task(config: dict) -> dict[str, Any]:
    """Sweep task: a nested RunConfig dict in, the table row out (stages cached in the default store)."""
    return prune_run(from_dict(RunConfig, config))


def prune_sweep(base: dict[str, Any], grid: dict[str, list] | None = None,
                items: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A sweep of `prune_task` runs (as parsed YAML, for `sweepfile.parse_sweep`): dotted-key `base`,
    `grid` and `items`, stored under kind "prune" like `critneuron sweep` files that use it."""
    raw: dict[str, Any] = {"task": "critneuron.experiments.whole:prune_task", "kind": "prune", "base": base}
    if grid:
        raw["grid"] = grid
    if items:
        raw["list"] = items
    return raw


def vertex_interior(cfg: RunConfig, store: Store) -> dict[str, Any]:
    """How the reported optimum moves a run's mask: its MIP scores at the simplex vertex and at
    the interior point of the optimal face (`ScoreConfig.final_point`; both cached), and how many
    units one mask prunes and the other keeps at the run's τ."""
    tau = cfg.prune.resolve(cfg.model.name, cfg.data.dataset)
    scores = {point: network_scores(dataclasses.replace(cfg, score=dataclasses.replace(cfg.score, final_point=point)),
                                    store)[1] for point in ("vertex", "interior")}  # stored ones need no checkpoint
    masks = {point: masks_from_scores(s, tau) for point, s in scores.items()}
    values = {point: np.concatenate([s.layers[name] for name in s.layers]) for point, s in scores.items()}
    flips = sum(len(set(masks["vertex"].pruned(name)) ^ set(masks["interior"].pruned(name))) for name in masks["vertex"].kept)
    solver = {point: s.provenance["solver"] for point, s in scores.items()}
    return {"model": cfg.model.name, "dataset": cfg.data.dataset, "seed": cfg.train.seed, "tau": tau,
            "units": len(values["vertex"]), "units_changing_side": flips,
            "max_abs_score_difference": float(np.abs(values["vertex"] - values["interior"]).max()),
            "interior_point": solver["interior"]["final_point"],
            "objective_difference": abs(solver["vertex"]["objective"] - solver["interior"]["objective"]),
            "solve_s_vertex": scores["vertex"].provenance["seconds"]["solve"],
            "solve_s_interior": scores["interior"].provenance["seconds"]["solve"]}
