"""Mask transfer across datasets (the paper's generalization protocol) and pruning at initialisation.

On dataset A: train from a saved initialisation (`experiment.trained_checkpoint` keeps it as
`init_state`), score with the MIP, mask at τ. On dataset B: rebuild the architecture, load A's
*initialisation*, apply the mask with the pruned units' incoming weights held at zero during
training (`prune.freeze_masks`), train with B's schedule (`config.paper_train_config`) and report
B's test accuracy. Compared on B, all from the same initialisation: the dense reference, A's MIP
mask, a random mask and the SNIP mask of A at the MIP mask's per-layer counts. SNIP is computed
on the network the MIP scored (A's trained network; the untrained one at initialisation), on one
training minibatch of 128 of A, with the real cross-entropy of the log-softmax.

Every stage is cached in the result store: A's training (kind "train") and scores ("score") as in
`critneuron.experiment`, each retraining on B under kind "retrain", keyed by model, B's data and
schedule, the initial weights' hash, the mask and the versions.

Retraining's code (`RETRAIN_CODE`) is its own only: its inputs are values (the initial weights'
hash and the mask itself), not references to the stages that made them.

May import: config, data, models, train, scores, prune, baselines, decoupled, store, experiment, fingerprint.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import torch
from torch import nn

from .baselines import baseline_masks, snip_batch
from .config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig, paper_train_config, to_dict
from .data import AUGMENTED_DATASETS, dataset_source, load_split
from .decoupled import decoupled_train_config
from .experiment import (
    TRAIN_THREADS, decoupled_mip_scores, decoupled_network, mip_scores, trained_checkpoint, weights_hash,
)
from .fingerprint import Code
from .models import WIDTH_SCALABLE, build_model
from .prune import Bias, Masks, freeze_masks, masks_from_scores, pruning_stats, unfreeze_masks
from .scores import Scores
from .store import Store
from .train import State, evaluate, load_checkpoint, torch_threads, train_model

VARIANTS = ("reference", "mip", "random", "snip")
RETRAIN_CODE = Code(("critneuron.train", "critneuron.models", "critneuron.data", "critneuron.prune",
                     "critneuron.transfer:_retrain"))
DECOUPLED_SOURCES = ("vgg16",)  # scored block by block (`critneuron.decoupled`), as in the paper
# The paper's pruning at initialisation: the MIP on the untrained LeNet-5, B = 5, λ = 1, τ = 0.2
# (relaxed), the masked net trained 20 epochs on MNIST and transferred to Fashion-MNIST and CIFAR-10.
# ε = 0 is ours: at initialisation the biases are zero, so every conv1 unit over MNIST's black
# background has pre-activation exactly 0, and an ε-box makes ~10,000 of them unstable (LeNet-5,
# B = 5: the LP did not finish in 200 s); with ε = 0 the bounds are the activations (solve < 1 s).
PAPER_AT_INIT = {"model": "lenet5", "source": "mnist", "targets": ("mnist", "fashion-mnist", "cifar10"),
                 "epochs": 20, "lambda_": 1.0, "batch_size": 5, "threshold": 0.2, "mode": "relaxed",
                 "epsilon": 0.0}


def source_config(base: RunConfig, model: str, dataset: str, seed: int, epochs: int | None = None,
                  width: float = 1.0) -> RunConfig:
    """`base` on `dataset` with `model` (`width` for width-scalable models only) and the paper's
    schedule for `dataset` (`epochs` if given) with training seed `seed`."""
    return dataclasses.replace(
        base, data=dataclasses.replace(base.data, dataset=dataset),
        model=ModelConfig(name=model, width=width if model in WIDTH_SCALABLE else 1.0),
        train=paper_train_config(dataset, epochs, seed))


def masked_weights_max(model: nn.Sequential, masks: Masks) -> float:
    """Largest |incoming weight| of any pruned unit (0.0 when the mask holds)."""
    values = [getattr(model, name).weight.detach()[masks.pruned(name)].abs().max() for name in masks.kept
              if masks.pruned(name)]
    return float(max(values)) if values else 0.0


def train_masked(model_cfg: ModelConfig, init_state: State, masks: Masks | None, data: DataConfig,
                 train_cfg: TrainConfig, bias: Bias = "keep-bias") -> nn.Sequential:
    """`model_cfg`'s architecture from `init_state`, trained on `data` with `train_cfg` while the
    pruned units of `masks` keep exactly zero incoming weights (no mask: dense). Single-threaded."""
    model = build_model(model_cfg.name, model_cfg.width)
    model.load_state_dict(init_state)
    if masks is not None:
        freeze_masks(model, masks, bias)
    train, val = load_split(data, "train"), load_split(data, "val")
    with torch_threads(TRAIN_THREADS):
        result = train_model(model, train, val, train_cfg, augment=data.dataset in AUGMENTED_DATASETS,
                             progress=False)
    unfreeze_masks(result.model)
    return result.model.eval()


def _retrain(model_cfg: ModelConfig, init_state: State, masks: Masks | None, data: DataConfig,
             train_cfg: TrainConfig, bias: Bias) -> dict[str, Any]:
    start = time.perf_counter()
    model = train_masked(model_cfg, init_state, masks, data, train_cfg, bias)
    acc, loss = evaluate(model, load_split(data, "test"))
    return {"test_accuracy": acc, "test_loss": loss, "train_seconds": time.perf_counter() - start,
            "masked_weights_max": masked_weights_max(model, masks) if masks is not None else 0.0}


def retrained_accuracy(model_cfg: ModelConfig, init_state: State, masks: Masks | None, data: DataConfig,
                       train_cfg: TrainConfig, store: Store, bias: Bias = "keep-bias") -> dict[str, Any]:
    """Test accuracy and loss on `data` of `train_masked` (cached under kind "retrain"), its training
    time and `masked_weights_max` after training."""
    init = build_model(model_cfg.name, model_cfg.width)
    init.load_state_dict(init_state)
    config = {"model": to_dict(model_cfg), "data": to_dict(dataclasses.replace(data, root=None)),
              "train": to_dict(train_cfg), "bias": bias}
    inputs = {"init_weights": weights_hash(init), "masks": None if masks is None else masks.to_dict(),
              "source": dataset_source(data), "torch": torch.__version__, "torch_threads": TRAIN_THREADS}
    return store.cached("retrain", config,
                        lambda: _retrain(model_cfg, init_state, masks, data, train_cfg, bias), code=RETRAIN_CODE,
                        **inputs)


def _scored_source(cfg: RunConfig, store: Store, at_init: bool, decoupled: bool) -> tuple[nn.Sequential, State, Scores]:
    """A's network, its initial weights and its MIP scores (whole-network, or block by block)."""
    if decoupled:
        cfg = dataclasses.replace(cfg, train=decoupled_train_config(cfg.model.name, cfg.data.dataset,
                                                                    cfg.train.epochs, cfg.train.seed))
        net, _metrics = decoupled_network(cfg, store, "decoupled")
        init = build_model(cfg.model.name, cfg.model.width, seed=cfg.train.seed)  # what greedy training started from
        return net.model, init.state_dict(), decoupled_mip_scores(net, cfg, store, "decoupled")
    path, _metrics = trained_checkpoint(cfg, store)
    model, meta = load_checkpoint(path)
    model.eval()
    return model, meta["init_state"], mip_scores(model, cfg, store, correct_only=not at_init)


def source_masks(cfg: RunConfig, store: Store, at_init: bool = False,
                 decoupled: bool | None = None) -> tuple[State, dict[str, Masks | None]]:
    """A's initial weights and the masks to transfer, keyed by `VARIANTS`: None (reference), the
    MIP mask at τ, a random mask (seed: the training seed) and the SNIP mask at its per-layer counts.

    `at_init`: score the untrained network (its balanced batch need not be classified correctly).
    `decoupled` (default: for the models in `DECOUPLED_SOURCES`, as the paper does for VGG-16):
    A's network is trained greedily with auxiliary heads (`decoupled_train_config`, A's epochs)
    and scored block by block (`experiment.decoupled_mip_scores`).
    """
    if at_init:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=0))
    decoupled = cfg.model.name in DECOUPLED_SOURCES and not at_init if decoupled is None else decoupled
    model, init_state, scores = _scored_source(cfg, store, at_init, decoupled)
    mip = masks_from_scores(scores, cfg.prune.resolve(cfg.model.name, cfg.data.dataset))
    x, y = snip_batch(load_split(cfg.data, "train"), seed=cfg.score.seed)
    masks = {"reference": None, "mip": mip, "random": baseline_masks("random", model, mip, seed=cfg.train.seed),
             "snip": baseline_masks("snip", model, mip, x=x, y=y)}
    return init_state, masks


def transfer_rows(cfg: RunConfig, targets: Sequence[str], store: Store, epochs: int | None = None,
                  at_init: bool = False) -> list[dict[str, Any]]:
    """Train every variant of `source_masks(cfg)` on each target dataset from A's initialisation.

    `cfg` is the source run (dataset A, model, A's schedule and seed, MIP and τ); each target B
    uses `cfg.data` with B's name and `paper_train_config(B, epochs, seed)`. One row per (target,
    variant): model, source, target, seed, at_init, variant, epochs, tau, test_accuracy,
    pct_neurons_pruned and pct_params_pruned (0 for the reference), masked_weights_max, train_seconds.

    Example:
        >>> cfg = source_config(RunConfig(), "lenet5", "mnist", seed=0, epochs=3)
        >>> rows = transfer_rows(cfg, ["fashion-mnist"], Store("results"), epochs=3)  # doctest: +SKIP
    """
    init_state, masks = source_masks(cfg, store, at_init)
    model = build_model(cfg.model.name, cfg.model.width)
    stats = pruning_stats(model, masks["mip"])
    rows = []
    for target in targets:
        data = dataclasses.replace(cfg.data, dataset=target)
        train_cfg = paper_train_config(target, epochs, cfg.train.seed)
        for variant, mask in masks.items():
            result = retrained_accuracy(cfg.model, init_state, mask, data, train_cfg, store, cfg.prune.bias)
            pruned = mask is not None
            rows.append({"model": cfg.model.name, "source": cfg.data.dataset, "target": target,
                         "seed": cfg.train.seed, "at_init": at_init, "variant": variant, "epochs": train_cfg.epochs,
                         "tau": cfg.prune.resolve(cfg.model.name, cfg.data.dataset),
                         "test_accuracy": result["test_accuracy"],
                         "pct_neurons_pruned": stats["pct_neurons_pruned"] if pruned else 0.0,
                         "pct_params_pruned": stats["pct_params_pruned"] if pruned else 0.0,
                         "masked_weights_max": result["masked_weights_max"], "train_seconds": result["train_seconds"]})
    return rows


def at_init_rows(base: RunConfig, seed: int, store: Store, **settings: Any) -> list[dict[str, Any]]:
    """Pruning at initialisation with `PAPER_AT_INIT` (entries overridden by `settings`): the MIP
    on the untrained network, its mask trained on every target (the source included) from that
    initialisation, against the dense reference, random and SNIP at the same per-layer counts."""
    unknown = sorted(set(settings) - set(PAPER_AT_INIT))
    if unknown:
        raise ConfigError(f"unknown pruning-at-init setting(s) {unknown}; known: {sorted(PAPER_AT_INIT)}")
    s = {**PAPER_AT_INIT, **settings}
    base = dataclasses.replace(
        base, score=dataclasses.replace(base.score, lambda_=s["lambda_"], batch_size=s["batch_size"], mode=s["mode"],
                                        epsilon=s["epsilon"]),
        prune=dataclasses.replace(base.prune, threshold=s["threshold"]))
    cfg = source_config(base, s["model"], s["source"], seed, s["epochs"])
    return transfer_rows(cfg, s["targets"], store, s["epochs"], at_init=True)
