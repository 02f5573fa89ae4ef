"""Budget sweep: test accuracy without fine-tuning against the share of neurons pruned, for the
MIP and every baseline at equal per-layer counts.

Each threshold τ of a grid turns the MIP scores of one trained network into a mask; its per-layer
counts are the budget at which every baseline of `critneuron.pruning.baselines` (random over several
seeds, critical, magnitude-l1/l2, SNIP on one training minibatch of 128, mean activation on the
MIP batch) prunes as many units per layer. Nothing is retrained. The rows are cached in the
result store under kind "budget", keyed by the run config, the weights, the scores and τ grid.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import torch
from torch import nn

from critneuron.pruning.baselines import BASELINES, baseline_masks, snip_batch
from critneuron.config import RunConfig
from critneuron.nets.data import load_split
from critneuron.experiments.fingerprint import Code
from critneuron.experiments.runs import SCORE_CODE, network_inputs, network_scores, run_config, score_inputs
from critneuron.pruning.masks import Masks, apply_masks, masks_from_scores, pruning_stats
from critneuron.mip.scores import Scores
from critneuron.experiments.store import Store
from critneuron.nets.train import evaluate

METHODS = ("mip", *BASELINES)
RANDOM_SEEDS = (0, 1, 2)
BUDGET_CODE = Code(("critneuron.pruning.baselines", "critneuron.pruning.masks", "critneuron.experiments.budget:budget_rows"),
                   after=(SCORE_CODE,))


def scores_hash(scores: Scores) -> str:
    """SHA-256 (16 hex digits) of the per-layer score values."""
    payload = json.dumps(scores.to_dict()["layers"], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def budget_masks(model: nn.Sequential, scores: Scores, tau: float, batches: dict[str, torch.Tensor],
                 random_seeds: Sequence[int] = RANDOM_SEEDS) -> list[tuple[str, int | None, Masks]]:
    """(method, random seed or None, mask) of the MIP at `tau` and of every baseline at the
    MIP mask's per-layer counts. `batches` holds `x_snip`, `y_snip` (SNIP) and `x_mip` (activation)."""
    mip = masks_from_scores(scores, tau)
    out: list[tuple[str, int | None, Masks]] = [("mip", None, mip)]
    out += [("random", seed, baseline_masks("random", model, mip, seed=seed)) for seed in random_seeds]
    for method in (m for m in BASELINES if m != "random"):
        x = batches["x_snip"] if method == "snip" else batches["x_mip"]
        out.append((method, None, baseline_masks(method, model, mip, x=x, y=batches["y_snip"], scores=scores)))
    return out


def budget_rows(model: nn.Sequential, scores: Scores, cfg: RunConfig, taus: Sequence[float],
                random_seeds: Sequence[int] = RANDOM_SEEDS) -> list[dict[str, Any]]:
    """One row per (τ, method, random seed): test accuracy of `model` pruned without fine-tuning.

    Columns: model, dataset, seed (training), method, random_seed, tau, pct_neurons_pruned,
    pct_params_pruned (the MIP mask's; every method prunes the same counts), test_accuracy, test_loss.
    """
    test = load_split(cfg.data, "test")
    x_snip, y_snip = snip_batch(load_split(cfg.data, "train"), seed=cfg.score.seed)
    x_mip, _, _ = score_inputs(model, cfg.data, cfg.score)
    batches = {"x_snip": x_snip, "y_snip": y_snip, "x_mip": x_mip}
    rows, evaluated = [], {}  # equal masks (e.g. nothing pruned at small τ) are evaluated once
    for tau in taus:
        stats = pruning_stats(model, masks_from_scores(scores, tau))
        for method, seed, masks in budget_masks(model, scores, tau, batches, random_seeds):
            kept = json.dumps(masks.kept, sort_keys=True)
            if kept not in evaluated:
                evaluated[kept] = evaluate(apply_masks(model, masks, cfg.prune.bias), test)
            acc, loss = evaluated[kept]
            rows.append({"model": cfg.model.name, "dataset": cfg.data.dataset, "seed": cfg.train.seed,
                         "method": method, "random_seed": seed, "tau": float(tau),
                         "pct_neurons_pruned": stats["pct_neurons_pruned"],
                         "pct_params_pruned": stats["pct_params_pruned"], "test_accuracy": acc, "test_loss": loss})
    return rows


def budget_config(cfg: RunConfig, taus: Sequence[float], random_seeds: Sequence[int] = RANDOM_SEEDS) -> dict[str, Any]:
    """The stored config of `budget_sweep` (also what `machinery.plan` looks up)."""
    return {**run_config(cfg), "taus": [float(t) for t in taus], "random_seeds": [int(s) for s in random_seeds]}


def budget_sweep(cfg: RunConfig, store: Store, taus: Sequence[float],
                 random_seeds: Sequence[int] = RANDOM_SEEDS) -> list[dict[str, Any]]:
    """`budget_rows` of `cfg`'s trained network and MIP scores (both cached), computed once per key.

    Example:
        >>> rows = budget_sweep(cfg, Store("results"), taus=[0.05, 0.2, 0.5])  # doctest: +SKIP
        >>> pandas.DataFrame(rows).groupby(["method", "tau"]).test_accuracy.mean()  # doctest: +SKIP
    """
    weights, scores, network = network_scores(cfg, store)  # a stored sweep needs no checkpoint
    config = budget_config(cfg, taus, random_seeds)
    inputs = {**network_inputs(cfg, weights), "scores": scores_hash(scores)}
    result = store.cached("budget", config, lambda: {"rows": budget_rows(network(), scores, cfg, taus, random_seeds)},
                          code=BUDGET_CODE, **inputs)
    return result["rows"]
