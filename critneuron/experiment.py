"""Cached end-to-end runs: train → MIP batch → score → prune → evaluate (the paper's table row).

Every stage is keyed in the result store by what determines it (config, weights hash, batch
indices, versions), so rerunning a notebook, the CLI or a sweep never retrains or re-solves what
has not changed. Used by the CLI, the notebooks and the sweep tasks.

May import: config, data, models, train, spec, scores, prune, baselines, store.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .baselines import baseline_masks
from .config import DataConfig, RunConfig, ScoreConfig, from_dict, to_dict
from .data import dataset_source, load_split, mip_batch
from .models import build_model
from .prune import Masks, apply_masks, freeze_masks, masks_from_scores, pruning_stats
from .scores import Scores, score
from .solve import solver_version
from .store import RunOutput, Store, versions
from .train import evaluate, load_checkpoint, save_checkpoint, torch_threads, train_model

TRAIN_THREADS = 1  # stored runs train single-threaded: the same config gives the same weights on any executor


def weights_hash(model: nn.Module) -> str:
    """SHA-256 (16 hex digits) of a model's state_dict, in order, as float64 bytes."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().double().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _train_config(cfg: RunConfig) -> dict:
    return {"data": to_dict(dataclasses.replace(cfg.data, root=None)), "model": to_dict(cfg.model),
            "train": to_dict(cfg.train)}


def trained_model(cfg: RunConfig, store: Store, progress: bool = False) -> tuple[nn.Sequential, dict]:
    """The trained network of `cfg` (trained once, then loaded from the store) and its metrics."""
    config = _train_config(cfg)
    inputs = {"source": dataset_source(cfg.data), "torch": torch.__version__, "torch_threads": TRAIN_THREADS}
    metrics = store.cached("train", config, lambda: _train(cfg, progress), **inputs)  # once, even across workers
    model, _meta = load_checkpoint(store.path("train", store.key("train", config, **inputs)) / "artifacts" / "checkpoint.pt")
    return model.eval(), metrics


def _train(cfg: RunConfig, progress: bool) -> RunOutput:
    start = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model.name, cfg.model.width, seed=cfg.train.seed)
    train, val, test = (load_split(cfg.data, s) for s in ("train", "val", "test"))
    with torch_threads(TRAIN_THREADS):
        result = train_model(model, train, val, cfg.train, augment=cfg.data.dataset == "cifar10", progress=progress)
    test_acc, test_loss = evaluate(result.model, test)
    metrics = {"test_accuracy": test_acc, "test_loss": test_loss, "best_epoch": result.best_epoch,
               "history": result.history, "train_seconds": time.perf_counter() - start,
               "weights_hash": weights_hash(result.model), "source": dataset_source(cfg.data)}
    with tempfile.TemporaryDirectory(prefix="critneuron-") as tmp:
        path = Path(tmp) / "checkpoint.pt"
        save_checkpoint(path, result.model, cfg.model, cfg.data, cfg.train, result.init_state, metrics)
        return RunOutput(result=metrics, artifacts={"checkpoint.pt": path.read_bytes()})


def score_inputs(model: nn.Sequential, data: DataConfig, cfg: ScoreConfig) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The balanced MIP batch (x, y) of `model` on its training split, and everything that
    determines a score besides `cfg`: weights hash, dataset, source, batch indices, versions."""
    x, y, indices = mip_batch(model, load_split(data, "train"), cfg.batch_size, seed=cfg.seed)
    inputs = {"weights": weights_hash(model), "dataset": data.dataset, "source": dataset_source(data),
              "batch_indices": indices.tolist(), "solver": solver_version(cfg), **versions()}
    return x, y, inputs


def mip_scores(model: nn.Sequential, cfg: RunConfig, store: Store) -> Scores:
    """MIP scores of `model` on its balanced training batch, solved once per key."""
    x, y, inputs = score_inputs(model, cfg.data, cfg.score)
    result = store.cached("score", to_dict(cfg.score),
                          lambda: score(model, x, y, cfg.score, inputs["batch_indices"]).to_dict(), **inputs)
    return Scores.from_dict(result)


def _accuracy(model: nn.Module, data) -> dict[str, float]:
    acc, loss = evaluate(model, data)
    return {"accuracy": acc, "loss": loss}


def _finetune(model: nn.Sequential, masks: Masks, cfg: RunConfig, train, val) -> nn.Sequential:
    tuned = copy.deepcopy(model)
    freeze_masks(tuned, masks, cfg.prune.bias)
    epochs = dataclasses.replace(cfg.train, epochs=cfg.prune.finetune_epochs)
    return train_model(tuned, train, val, epochs, augment=cfg.data.dataset == "cifar10", progress=False).model


def evaluate_masks(model: nn.Sequential, scores: Scores, cfg: RunConfig, data: dict) -> dict[str, Any]:
    """Reference vs pruned (no fine-tuning), random and critical at the same per-layer counts."""
    threshold = cfg.prune.resolve(cfg.model.name, cfg.data.dataset)
    masks = masks_from_scores(scores, threshold)
    row: dict[str, Any] = {"threshold": threshold}
    for name, net in (("reference", model), ("pruned", apply_masks(model, masks, cfg.prune.bias))):
        row[name] = {"train": _accuracy(net, data["train"]), "test": _accuracy(net, data["test"])}
    for method in ("random", "critical"):
        like = baseline_masks(method, model, masks, seed=cfg.score.seed, scores=scores)
        row[method] = {"test": _accuracy(apply_masks(model, like, cfg.prune.bias), data["test"])}
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
    data = {s: load_split(cfg.data, s) for s in ("train", "val", "test")}
    row = evaluate_masks(model, scores, cfg, data)
    row.update({"config": to_dict(cfg), "source": dataset_source(cfg.data), "train_seconds": train_metrics["train_seconds"],
                "weights_hash": train_metrics["weights_hash"], **score_columns(scores), "versions": versions()})
    return row


def score_columns(scores: Scores) -> dict[str, Any]:
    """What a result row keeps of a MIP score: the scores, solver report, Kelley history, times,
    ReLU stability counts, self-check error and batch indices."""
    prov = scores.provenance
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
    """A sweep of `prune_task` runs (as parsed YAML, for `sweep.parse_sweep`): dotted-key `base`,
    `grid` and `items`, stored under kind "prune" like `critneuron sweep` files that use it."""
    raw: dict[str, Any] = {"task": "critneuron.experiment:prune_task", "kind": "prune", "base": base}
    if grid:
        raw["grid"] = grid
    if items:
        raw["list"] = items
    return raw


def table_row(row: dict[str, Any]) -> dict[str, Any]:
    """Flat summary of a `prune_run` result: the paper's table columns plus solve statistics."""
    cfg, stats = row["config"], row["stats"]
    out = {
        "model": cfg["model"]["name"], "dataset": cfg["data"]["dataset"], "mode": cfg["score"]["mode"],
        "lambda": cfg["score"]["lambda_"], "tau": row["threshold"], "B": cfg["score"]["batch_size"],
        "epochs": cfg["train"]["epochs"], "seed": cfg["train"]["seed"],
        "ref_test_acc": row["reference"]["test"]["accuracy"], "pruned_test_acc": row["pruned"]["test"]["accuracy"],
        "random_test_acc": row["random"]["test"]["accuracy"], "critical_test_acc": row["critical"]["test"]["accuracy"],
        "ref_train_acc": row["reference"]["train"]["accuracy"], "pruned_train_acc": row["pruned"]["train"]["accuracy"],
        "pct_neurons_pruned": stats["pct_neurons_pruned"], "pct_params_pruned": stats["pct_params_pruned"],
        "params_compact": stats["params_compact"], "flops_compact": stats["flops_compact"],
        "unstable_units": row["unstable_units"], "build_s": row["seconds"]["build"], "solve_s": row["seconds"]["solve"],
        "kelley_rounds": row["solver"]["rounds"], "status": row["solver"]["status"],
        "selfcheck_error": row["selfcheck_error"], "source": row["source"],
    }
    if "finetuned" in row:
        out["finetuned_test_acc"] = row["finetuned"]["test"]["accuracy"]
    return out
