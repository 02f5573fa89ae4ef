"""Cached end-to-end runs: train → MIP batch → score → prune → evaluate (the paper's table row).

Every stage is keyed in the result store by what determines it (config, weights hash, batch
indices, versions), so rerunning a notebook, the CLI or a sweep never retrains or re-solves what
has not changed. Used by the CLI, the notebooks and the sweep tasks. Each stage also records the
code it depends on (the `*_CODE` declarations below, see `critneuron.fingerprint`); a stored stage
whose code has changed since is recomputed. Training covers the training modules and its glue
here, not the MIP modules; scoring covers the MIP modules and training's code.

May import: config, data, models, train, spec, scores, prune, baselines, decoupled, store, fingerprint.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .baselines import baseline_masks
from .config import ConfigError, DataConfig, RunConfig, ScoreConfig, from_dict, to_dict
from .data import dataset_source, load_split, mip_batch
from .decoupled import (
    Decoupled, block_batches, block_problems, combine, decoupled_train_config, head_accuracies, solve_blocks,
    train_decoupled,
)
from .fingerprint import Code
from .models import build_model
from .prune import Masks, apply_masks, freeze_masks, mask_agreement, masks_from_scores, pruning_stats
from .scores import Scores, score
from .solve import solver_version
from .store import RunOutput, Store, versions
from .train import clone_state, evaluate, load_checkpoint, resolve_device, save_checkpoint, torch_threads, train_model

TRAIN_THREADS = 1  # stored runs train single-threaded: the same config gives the same weights on any executor

# The code of each stored stage: compute modules whole, glue in this module by definition only.
_TRAINING_MODULES = ("critneuron.train", "critneuron.models", "critneuron.data")
TRAIN_CODE = Code((*_TRAINING_MODULES, "critneuron.experiment:_train"))
DECOUPLED_TRAIN_CODE = Code((*_TRAINING_MODULES, "critneuron.experiment:_train_decoupled"))
HEADS_CODE = Code(("critneuron.experiment:_fit_heads",), after=(TRAIN_CODE,))
_SCORING = ("critneuron.scores", "critneuron.experiment:score_inputs")
SCORE_CODE = Code(_SCORING, after=(TRAIN_CODE,))
BLOCK_SCORE_CODE = {  # decoupled_mip_scores, by how the network and its heads were trained
    "decoupled": Code((*_SCORING, "critneuron.experiment:decoupled_mip_scores"), after=(DECOUPLED_TRAIN_CODE,)),
    "end-to-end": Code((*_SCORING, "critneuron.experiment:decoupled_mip_scores"), after=(HEADS_CODE,)),
}


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


def trained_checkpoint(cfg: RunConfig, store: Store, progress: bool = False) -> tuple[Path, dict]:
    """The stored checkpoint of `cfg`'s trained network (trained once; it holds the weights and
    the initial weights `init_state`) and its metrics."""
    config = _train_config(cfg)
    inputs = {"source": dataset_source(cfg.data), "torch": torch.__version__, "torch_threads": TRAIN_THREADS}
    metrics = store.cached("train", config, lambda: _train(cfg, progress), code=TRAIN_CODE,
                           **inputs)  # once, even across workers
    return store.path("train", store.key("train", config, **inputs)) / "artifacts" / "checkpoint.pt", metrics


def trained_model(cfg: RunConfig, store: Store, progress: bool = False) -> tuple[nn.Sequential, dict]:
    """The trained network of `cfg` (trained once, then loaded from the store) and its metrics."""
    path, metrics = trained_checkpoint(cfg, store, progress)
    model, _meta = load_checkpoint(path)
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
    return _checkpoint_output(result.model, cfg, result.init_state, metrics)


def _checkpoint_output(model: nn.Module, cfg: RunConfig, init_state, metrics: dict, **artifacts: bytes) -> RunOutput:
    """A training run's stored output: `metrics`, the checkpoint (weights, initial weights,
    configs) and any further artifacts."""
    with tempfile.TemporaryDirectory(prefix="critneuron-") as tmp:
        path = Path(tmp) / "checkpoint.pt"
        save_checkpoint(path, model, cfg.model, cfg.data, cfg.train, init_state, metrics)
        return RunOutput(result=metrics, artifacts={"checkpoint.pt": path.read_bytes(), **artifacts})


def score_inputs(model: nn.Sequential, data: DataConfig, cfg: ScoreConfig,
                 correct_only: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The balanced MIP batch (x, y) of `model` on its training split, and everything that
    determines a score besides `cfg`: weights hash, dataset, source, batch indices, versions.
    `correct_only=False`: images need not be classified correctly (untrained networks)."""
    x, y, indices = mip_batch(model, load_split(data, "train"), cfg.batch_size, seed=cfg.seed,
                              correct_only=correct_only)
    inputs = {"weights": weights_hash(model), "dataset": data.dataset, "source": dataset_source(data),
              "batch_indices": indices.tolist(), "solver": solver_version(cfg), **versions()}
    return x, y, inputs


def mip_scores(model: nn.Sequential, cfg: RunConfig, store: Store, correct_only: bool = True) -> Scores:
    """MIP scores of `model` on its balanced training batch (see `score_inputs`), solved once per key."""
    x, y, inputs = score_inputs(model, cfg.data, cfg.score, correct_only)
    result = store.cached("score", to_dict(cfg.score),
                          lambda: score(model, x, y, cfg.score, inputs["batch_indices"]).to_dict(), code=SCORE_CODE,
                          **inputs)
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
    """Reference vs pruned (no fine-tuning), random and critical at the same per-layer counts,
    evaluated on CUDA when available (a copy of `model` goes there; `model` stays where it is)."""
    device = resolve_device()
    if next(model.parameters()).device != device:
        model = copy.deepcopy(model).to(device)
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


def _heads_bytes(net: Decoupled) -> bytes:
    buffer = io.BytesIO()
    torch.save(clone_state(net.heads), buffer)
    return buffer.getvalue()


def _load_heads(net: Decoupled, folder: Path) -> Decoupled:
    net.heads.load_state_dict(torch.load(folder / "artifacts" / "heads.pt", map_location="cpu", weights_only=True))
    return net.eval()


def _train_decoupled(cfg: RunConfig, progress: bool) -> RunOutput:
    """Greedy training of the network and its heads from the seeded initialisation."""
    start = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    net = Decoupled.build(build_model(cfg.model.name, cfg.model.width, seed=cfg.train.seed), seed=cfg.train.seed)
    init_state = clone_state(net.model)
    train, val, test = (load_split(cfg.data, s) for s in ("train", "val", "test"))
    with torch_threads(TRAIN_THREADS):
        result = train_decoupled(net, train, val, cfg.train, "decoupled", augment=cfg.data.dataset == "cifar10",
                                 progress=progress)
    net.model.cpu()
    net.heads.cpu()
    test_acc, test_loss = evaluate(net.model, test)
    metrics = {"test_accuracy": test_acc, "test_loss": test_loss, "head_test_accuracy": head_accuracies(net, test),
               "best_epoch": result.best_epoch, "history": result.history, "training": "decoupled",
               "train_seconds": time.perf_counter() - start, "weights_hash": weights_hash(net.model),
               "source": dataset_source(cfg.data)}
    return _checkpoint_output(net.model, cfg, init_state, metrics, **{"heads.pt": _heads_bytes(net)})


def _fit_heads(model: nn.Sequential, cfg: RunConfig, head_cfg, progress: bool) -> RunOutput:
    """Heads trained on the frozen blocks of an end-to-end network."""
    start = time.perf_counter()
    net = Decoupled.build(model, seed=cfg.train.seed)
    train, val, test = (load_split(cfg.data, s) for s in ("train", "val", "test"))
    with torch_threads(TRAIN_THREADS):
        result = train_decoupled(net, train, val, head_cfg, "end-to-end", augment=cfg.data.dataset == "cifar10",
                                 progress=progress)
    net.model.cpu()
    net.heads.cpu()
    metrics = {"head_test_accuracy": head_accuracies(net, test), "history": result.history,
               "training": "end-to-end", "train_seconds": time.perf_counter() - start}
    return RunOutput(result=metrics, artifacts={"heads.pt": _heads_bytes(net)})


def decoupled_network(cfg: RunConfig, store: Store, training: str = "decoupled",
                      progress: bool = False) -> tuple[Decoupled, dict]:
    """`cfg`'s network with trained auxiliary heads, and its metrics (cached).

    training='decoupled': network and heads trained greedily with `cfg.train` (see
    `decoupled.decoupled_train_config`). 'end-to-end': the network trained as usual
    (`trained_model`), then heads fitted on its frozen blocks with the decoupled optimizer for
    `cfg.train.epochs` epochs.
    """
    inputs = {"source": dataset_source(cfg.data), "torch": torch.__version__, "torch_threads": TRAIN_THREADS}
    if training == "decoupled":
        config = {**_train_config(cfg), "training": "decoupled"}
        metrics = store.cached("train", config, lambda: _train_decoupled(cfg, progress), code=DECOUPLED_TRAIN_CODE,
                               **inputs)
        folder = store.path("train", store.key("train", config, **inputs))
        model, _meta = load_checkpoint(folder / "artifacts" / "checkpoint.pt")
        return _load_heads(Decoupled.build(model.eval(), seed=cfg.train.seed), folder), metrics
    if training != "end-to-end":
        raise ConfigError(f"training must be 'decoupled' or 'end-to-end', got {training!r}")
    model, train_metrics = trained_model(cfg, store, progress)
    head_cfg = decoupled_train_config(cfg.model.name, cfg.data.dataset, cfg.train.epochs, cfg.train.seed)
    config = {"heads_train": to_dict(head_cfg), "training": "end-to-end"}
    inputs["weights"] = weights_hash(model)
    metrics = store.cached("heads", config, lambda: _fit_heads(model, cfg, head_cfg, progress), code=HEADS_CODE,
                           **inputs)
    folder = store.path("heads", store.key("heads", config, **inputs))
    net = _load_heads(Decoupled.build(model, seed=cfg.train.seed), folder)
    return net, {**train_metrics, **metrics}


def decoupled_mip_scores(net: Decoupled, cfg: RunConfig, store: Store, training: str, workers: int = 1,
                         progress: bool = False, batches: list[tuple] | None = None) -> Scores:
    """Scores of every block's sub-MIP (each solved once per key, stored as it finishes), combined.

    `batches`: one (x, y, indices) per block; default `decoupled.block_batches` (each block's
    batch chosen by its own head's correctness).
    """
    train = load_split(cfg.data, "train")
    batches = batches or block_batches(net, train, cfg.score.batch_size, cfg.score.seed)
    problems = block_problems(net, batches, cfg.score.epsilon)
    common = {"weights": weights_hash(net.model), "heads": weights_hash(net.heads), "dataset": cfg.data.dataset,
              "source": dataset_source(cfg.data), "solver": solver_version(cfg.score), **versions()}
    entries = {p.name: ({**to_dict(cfg.score), "block": p.name}, {**common, "batch_indices": p.batch_indices})
               for p in problems}
    keys = {name: store.key("score", config, **inputs) for name, (config, inputs) in entries.items()}
    code = BLOCK_SCORE_CODE[training]
    todo = [p for p in problems if not store.is_fresh("score", keys[p.name], code)]

    def save(problem, scores: Scores) -> None:
        config, inputs = entries[problem.name]
        store.write("score", keys[problem.name], config, scores.to_dict(), inputs=inputs, code=code)

    solve_blocks(todo, cfg.score, workers=workers, progress=progress, done=save)
    stored = [Scores.from_dict(store.read("score", keys[p.name])["result"]) for p in problems]
    return combine(stored, training)


def decoupled_run(cfg: RunConfig, store: Store | None = None, training: str = "decoupled", workers: int = 1,
                  progress: bool = False) -> dict[str, Any]:
    """Train with heads (cached), score every block (cached), prune at τ, evaluate: the table row
    plus one row per block (status, gap, times, unstable units) and how the net was trained."""
    store = store or Store()
    net, train_metrics = decoupled_network(cfg, store, training, progress)
    scores = decoupled_mip_scores(net, cfg, store, training, workers, progress)
    data = {s: load_split(cfg.data, s) for s in ("train", "val", "test")}
    row = evaluate_masks(net.model, scores, cfg, data)
    row.update({"config": to_dict(cfg), "training": training, "source": dataset_source(cfg.data),
                "train_seconds": train_metrics["train_seconds"], "head_test_accuracy": train_metrics["head_test_accuracy"],
                "scores": scores.to_dict()["layers"], "blocks": scores.provenance["blocks"], "versions": versions()})
    return row


def decoupled_vs_whole(net: Decoupled, cfg: RunConfig, store: Store, training: str = "decoupled",
                       workers: int = 1) -> dict[str, Any]:
    """The same network scored by one whole-network MIP and decoupled, on the same batch (the
    whole network's): masks at τ, their per-layer agreement, and each method's time."""
    x, y, inputs = score_inputs(net.model, cfg.data, cfg.score)
    whole = mip_scores(net.model, cfg, store)
    same = [(x, y, torch.tensor(inputs["batch_indices"]))] * len(net.blocks)
    split = decoupled_mip_scores(net, cfg, store, training, workers, batches=same)
    tau = cfg.prune.resolve(cfg.model.name, cfg.data.dataset)
    masks = {name: masks_from_scores(s, tau) for name, s in (("whole", whole), ("decoupled", split))}
    seconds = whole.provenance["seconds"]
    return {"threshold": tau, "scores": {"whole": whole, "decoupled": split}, "masks": masks,
            "agreement": mask_agreement(masks["whole"], masks["decoupled"]),
            "seconds": {"whole": seconds["bounds"] + seconds["build"] + seconds["solve"],
                        "decoupled": sum(b["wall_s"] for b in split.provenance["blocks"])}}


def decoupled_table_row(row: dict[str, Any]) -> dict[str, Any]:
    """Flat summary of a `decoupled_run` result: accuracies, pruned shares and the sub-MIPs' totals."""
    cfg, stats, blocks = row["config"], row["stats"], row["blocks"]
    out = {
        "model": cfg["model"]["name"], "width": cfg["model"]["width"], "dataset": cfg["data"]["dataset"],
        "training": row["training"], "epochs": cfg["train"]["epochs"], "seed": cfg["train"]["seed"],
        "mode": cfg["score"]["mode"], "tau": row["threshold"],
        "ref_test_acc": row["reference"]["test"]["accuracy"], "pruned_test_acc": row["pruned"]["test"]["accuracy"],
        "random_test_acc": row["random"]["test"]["accuracy"], "critical_test_acc": row["critical"]["test"]["accuracy"],
        "pct_neurons_pruned": stats["pct_neurons_pruned"], "pct_params_pruned": stats["pct_params_pruned"],
        "blocks": len(blocks), "all_optimal": all(b["status"] == "optimal" for b in blocks),
        "unstable_units": sum(b["unstable_units"] for b in blocks), "solve_s_total": sum(b["solve_s"] for b in blocks),
        "wall_s_max": max(b["wall_s"] for b in blocks), "train_s": row["train_seconds"], "source": row["source"],
    }
    if "finetuned" in row:
        out["finetuned_test_acc"] = row["finetuned"]["test"]["accuracy"]
    return out
