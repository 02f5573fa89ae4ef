"""Mask transfer across datasets (the paper's generalization protocol) and pruning at initialisation.

On dataset A: train from a saved initialisation (`experiments.runs.trained_checkpoint` keeps it as
`init_state`; VGG-16 is trained decoupled and scored block by block), score with the MIP, mask at
τ. On dataset B: rebuild the architecture, load A's *initialisation*, apply the mask with the
pruned units' incoming weights held at zero during training (`pruning.masks.freeze_masks`),
retrain with the authors' transfer schedule for B (`transfer_plan`, PAPER_SPEC §9.1) and report
B's test accuracy. Compared on B: the dense reference (the ordinary experiment on B), and, all
from A's initialisation, A's MIP mask, a random mask and the SNIP mask of A at the MIP mask's
per-layer counts. SNIP is computed on the network the MIP scored (A's trained network; the
untrained one at initialisation), on one training minibatch of 128 of A, with the real
cross-entropy of the log-softmax.

Every stage is cached in the result store: A's training (kind "train") and scores ("score") as in
`critneuron.experiments.runs`, each retraining on B under kind "retrain", keyed by model, B's data and
schedule, the initial weights' hash, the mask and the versions. Retraining's code (`RETRAIN_CODE`)
is its own only: its inputs are values (the initial weights' hash and the mask itself), not
references to the stages that made them.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from critneuron.catalog import dataset_record, model_record, paper_schedule, transfer_schedule
from critneuron.config import (
    Bias, DataConfig, ModelConfig, RunConfig, TrainConfig, canonical_json, paper_train_config, schedule_config, to_dict,
)
from critneuron.errors import ConfigError
from critneuron.experiments.decoupled import (
    BLOCK_SCORE_CODE, decoupled_metrics, decoupled_mip_scores, decoupled_network,
)
from critneuron.experiments.fingerprint import Code
from critneuron.experiments.runs import (
    SCORE_CODE, TRAIN_THREADS, mip_scores, network_inputs, stored_scores, train_config, trained_metrics, trained_model,
    weights_hash,
)
from critneuron.experiments.store import Store
from critneuron.mip.scores import Scores
from critneuron.nets.data import dataset_source, load_split
from critneuron.nets.models import build_model
from critneuron.nets.train import State, evaluate, torch_threads, train_model
from critneuron.pruning.baselines import SNIP_AUTHORS, baseline_masks, snip_authors_masks, snip_batch
from critneuron.pruning.masks import Masks, freeze_masks, masks_from_scores, pruning_stats, unfreeze_masks

# "snip" is ours (neuron-level SNIP of A's network at the MIP mask's per-layer counts); "snip-authors"
# the authors' port (Xavier re-initialisation, nll_loss on the logits, the top 45 % of all neurons).
VARIANTS = ("reference", "mip", "random", "snip", SNIP_AUTHORS)
RETRAIN_CODE = Code(("critneuron.experiments.transfer:_retrain",))
MASKS_CODE = Code(("critneuron.experiments.transfer:_source_masks", "critneuron.experiments.transfer:_recorded_masks",
                   "critneuron.pruning.baselines", "critneuron.pruning.masks"),
                  after=(SCORE_CODE, BLOCK_SCORE_CODE["decoupled"]))
# The paper's pruning at initialisation (PAPER_SPEC §9.3): the MIP on the untrained LeNet-5, B = 5,
# λ = 1, τ = 0.2 (relaxed), ε = 1e-5, 5 resets; each target trains the mask with its own schedule,
# 20 epochs on MNIST and Fashion-MNIST, 256 on CIFAR-10. With the authors' initialisation the conv
# biases are non-zero, so conv1 units over MNIST's black background are stable in the ε-box
# (untrained LeNet-5, B = 5, seeds 0-4: 4-20 unstable units, LP solved in ~1 s).
PAPER_AT_INIT = {"model": "lenet5", "source": "mnist", "targets": ("mnist", "fashion-mnist", "cifar10"),
                 "epochs": {"mnist": 20, "fashion-mnist": 20, "cifar10": 256}, "seeds": (0, 1, 2, 3, 4),
                 "lambda_": 1.0, "batch_size": 5, "threshold": 0.2, "mode": "relaxed", "epsilon": 1e-5}


def source_config(base: RunConfig, model: str, dataset: str, seed: int, epochs: int | None = None,
                  width: float = 1.0) -> RunConfig:
    """`base` on `dataset` with `model` (`width` for width-scalable models only) and the paper's
    schedule for `model` on `dataset` (`epochs` if given) with training seed `seed`."""
    return dataclasses.replace(
        base, data=dataclasses.replace(base.data, dataset=dataset),
        model=ModelConfig(name=model, width=width if model_record(model).width_scalable else 1.0),
        train=paper_train_config(model, dataset, epochs, seed))


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
        result = train_model(model, train, val, train_cfg, augment=dataset_record(data.dataset).augment,
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


def retrain_config(model_cfg: ModelConfig, data: DataConfig, train_cfg: TrainConfig, bias: Bias,
                   control: str | None = None) -> dict[str, Any]:
    """The stored config of a retraining (kind "retrain"; `control` only when set, see
    `retrained_accuracy`), as `retrained_accuracy` writes it and `machinery.plan` looks it up."""
    return {"model": to_dict(model_cfg), "data": to_dict(dataclasses.replace(data, root=None)),
            "train": to_dict(train_cfg), "bias": bias, **({"control": control} if control else {})}


def retrained_accuracy(model_cfg: ModelConfig, init_state: State, masks: Masks | None, data: DataConfig,
                       train_cfg: TrainConfig, store: Store, bias: Bias = "keep-bias",
                       control: str | None = None) -> dict[str, Any]:
    """Test accuracy and loss on `data` of `train_masked` (cached under kind "retrain"), its training
    time and `masked_weights_max` after training. `control` names a control experiment in the
    stored config (e.g. "lr": the schedule's learning rate replaced), so it is never counted as
    a retraining of the protocol with the same settings (pruning at initialisation on CIFAR-10
    trains at lr 0.01 from the same initialisations)."""
    init = build_model(model_cfg.name, model_cfg.width)
    init.load_state_dict(init_state)
    config = retrain_config(model_cfg, data, train_cfg, bias, control)
    inputs = {"init_weights": weights_hash(init), "masks": None if masks is None else masks.to_dict(),
              "source": dataset_source(data), "torch": torch.__version__, "torch_threads": TRAIN_THREADS}
    return store.cached("retrain", config,
                        lambda: _retrain(model_cfg, init_state, masks, data, train_cfg, bias), code=RETRAIN_CODE,
                        **inputs)


def _scored_source(cfg: RunConfig, store: Store, at_init: bool, decoupled: bool,
                   workers: int = 1) -> tuple[nn.Sequential, Scores]:
    """A's network and its MIP scores (whole-network, or block by block)."""
    if decoupled:
        net, _metrics = decoupled_network(cfg, store, "decoupled")
        return net.model, decoupled_mip_scores(net, cfg, store, "decoupled", workers)
    model, _metrics = trained_model(cfg, store)
    return model, mip_scores(model, cfg, store, correct_only=not at_init)


def _source_masks(cfg: RunConfig, store: Store, at_init: bool, decoupled: bool, workers: int) -> dict[str, Any]:
    model, scores = _scored_source(cfg, store, at_init, decoupled, workers)
    mip = masks_from_scores(scores, cfg.prune.resolve(cfg.model.name, cfg.data.dataset))
    x, y = snip_batch(load_split(cfg.data, "train"), seed=cfg.score.seed)
    init = build_model(cfg.model.name, cfg.model.width, seed=cfg.train.seed)
    masks = {"mip": mip, "random": baseline_masks("random", model, mip, seed=cfg.train.seed),
             "snip": baseline_masks("snip", model, mip, x=x, y=y),
             SNIP_AUTHORS: snip_authors_masks(init, x, y, seed=cfg.train.seed)}
    return {"masks": {"reference": None, **{name: m.to_dict() for name, m in masks.items()}}}


def _counts(mask: dict) -> dict[str, int]:
    return {name: mask["sizes"][name] - len(kept) for name, kept in mask["kept"].items()}


def _recorded_masks(cfg: RunConfig, store: Store, init: nn.Sequential, weights: str) -> dict[str, Any] | None:
    """The masks of a whole-network source read back from its stored retrainings, for a store that
    has them but neither the masks' record nor the source's checkpoint (a shipped store from before
    masks were stored). Each retraining's inputs hold the mask it trained; a source's group on one
    target (same initialisation, target and schedule, no control) holds its four masks: the MIP mask
    (from the stored scores), the random mask (drawn again: it needs only the architecture), our
    SNIP mask (the other one at the MIP mask's per-layer counts) and the authors' SNIP mask. None
    unless every group agrees."""
    scores = stored_scores(cfg, store, weights)
    if scores is None:
        return None
    mip_mask = masks_from_scores(scores, cfg.prune.resolve(cfg.model.name, cfg.data.dataset))
    mip, random = mip_mask.to_dict(), baseline_masks("random", init, mip_mask, seed=cfg.train.seed).to_dict()
    groups: dict[str, list[tuple[str, dict]]] = {}
    init_weights = weights_hash(init)
    for record in store.ls("retrain"):
        if record["status"] != "complete" or record["code"] != "fresh":
            continue
        run = store.read("retrain", record["key"])
        config, inputs = run["config"], run["meta"]["inputs"]
        if (config["model"] == to_dict(cfg.model) and "control" not in config and inputs.get("masks")
                and inputs["init_weights"] == init_weights):
            groups.setdefault(canonical_json(config), []).append((record["key"], inputs["masks"]))
    found = []
    for group in (g for g in groups.values() if any(m == mip for _k, m in g)):
        others = [m for _k, m in group if m not in (mip, random)]
        snip = [m for m in others if _counts(m) == _counts(mip)]
        if len(group) != 4 or len(others) != 2 or len(snip) != 1:
            return None
        found.append(({"snip": snip[0], SNIP_AUTHORS: next(m for m in others if m is not snip[0])},
                      [k for k, _m in group]))
    if not found or any(masks != found[0][0] for masks, _keys in found):
        return None
    return {"masks": {"reference": None, "mip": mip, "random": random, **found[0][0]},
            "recovered_from": sorted(k for _masks, keys in found for k in keys)}


def source_masks(cfg: RunConfig, store: Store, at_init: bool = False, decoupled: bool | None = None,
                 workers: int = 1) -> tuple[State, dict[str, Masks | None]]:
    """A's initial weights and the masks to transfer, keyed by `VARIANTS`: None (reference), the
    MIP mask at τ, a random mask (seed: the training seed) and our SNIP mask at its per-layer
    counts (both on A's trained network), and the authors' SNIP mask (45 % of all neurons kept,
    its own counts) on A's network at its initialisation, as their port runs it (PAPER_SPEC §9.2).

    `at_init`: score the untrained network (its balanced batch need not be classified correctly).
    `decoupled` (default: for the models the paper trains decoupled, `ModelRecord.training`, i.e.
    VGG-16): A's network is trained greedily with auxiliary heads (A's schedule) and scored block
    by block (`experiments.decoupled.decoupled_mip_scores`, `workers` sub-MIPs at a time).

    The masks are stored (kind "masks", keyed by A's training, MIP and τ, and its weights' hash),
    so a store that has them needs no checkpoint of A; one that has only A's retrainings reads them
    back from those (`_recorded_masks`).
    """
    if at_init:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=0))
    if decoupled is None:
        decoupled = model_record(cfg.model.name).training == "decoupled" and not at_init
    metrics = decoupled_metrics(cfg, store) if decoupled else trained_metrics(cfg, store)
    init = build_model(cfg.model.name, cfg.model.width, seed=cfg.train.seed)
    config = {"source": {**train_config(cfg), "training": "decoupled" if decoupled else "end-to-end"},
              "score": to_dict(cfg.score), "prune": to_dict(cfg.prune), "at_init": at_init}
    inputs = {**network_inputs(cfg, metrics["weights_hash"]), "init_weights": weights_hash(init)}
    result = store.cached(
        "masks", config, lambda: (None if decoupled else _recorded_masks(cfg, store, init, metrics["weights_hash"]))
        or _source_masks(cfg, store, at_init, decoupled, workers), code=MASKS_CODE, **inputs)
    return init.state_dict(), {name: None if m is None else Masks.from_dict(m) for name, m in result["masks"].items()}


def transfer_plan(cfg: RunConfig, targets: Sequence[str], epochs: int | Mapping[str, int] | None = None,
                  at_init: bool = False) -> dict[str, dict[str, Any]]:
    """What `transfer_rows` trains on each target B: `retrain`, the schedule the masks are retrained
    with (PAPER_SPEC §9.1, `catalog.transfer_schedule`; at initialisation B's own paper schedule,
    §9.3), and `reference`, the run of the dense reference: the ordinary experiment on B (VGG-16:
    decoupled-trained), not a network trained from A's initialisation.

    `epochs`: one number for every target, one per target (a missing one: the paper's), or None.
    """
    plan = {}
    for target in targets:
        n = epochs.get(target) if isinstance(epochs, Mapping) else epochs
        schedule = paper_schedule if at_init else transfer_schedule
        plan[target] = {
            "retrain": schedule_config(schedule(cfg.model.name, target), n, cfg.train.seed),
            "reference": source_config(cfg, cfg.model.name, target, cfg.train.seed, n, cfg.model.width)}
    return plan


def reference_accuracy(cfg: RunConfig, store: Store) -> dict[str, Any]:
    """Test accuracy and training time of the ordinary experiment `cfg` (trained as the paper trains
    its model: decoupled for VGG-16), cached with the other runs of the store."""
    decoupled = model_record(cfg.model.name).training == "decoupled"
    metrics = decoupled_metrics(cfg, store) if decoupled else trained_metrics(cfg, store)
    return {"test_accuracy": metrics["test_accuracy"], "train_seconds": metrics["train_seconds"],
            "masked_weights_max": 0.0}


def transfer_rows(cfg: RunConfig, targets: Sequence[str], store: Store, epochs: int | Mapping[str, int] | None = None,
                  at_init: bool = False, workers: int = 1, lr: float | None = None,
                  variants: Sequence[str] = VARIANTS) -> list[dict[str, Any]]:
    """Train every mask of `source_masks(cfg)` on each target dataset from A's initialisation, and
    the dense reference on each target as its ordinary experiment (`transfer_plan`).

    `variants`: the masks to train (and "reference" for the dense one); `lr`: retrain the masks at
    this learning rate instead of the schedule's (a control of the authors' transfer schedule).

    `cfg` is the source run (dataset A, model, A's schedule and seed, MIP and τ); each target B
    uses `cfg.data` with B's name. One row per (target, variant): model, source, target, seed,
    at_init, variant, epochs, tau, test_accuracy, pct_neurons_pruned and pct_params_pruned (0 for
    the reference), masked_weights_max, train_seconds.

    Example:
        >>> cfg = source_config(RunConfig(), "lenet5", "mnist", seed=0, epochs=3)
        >>> rows = transfer_rows(cfg, ["fashion-mnist"], Store("results"), epochs=3)  # doctest: +SKIP
    """
    init_state, masks = source_masks(cfg, store, at_init, workers=workers)
    model = build_model(cfg.model.name, cfg.model.width)
    stats = {variant: pruning_stats(model, mask) for variant, mask in masks.items() if mask is not None}
    rows = []
    for target, plan in transfer_plan(cfg, targets, epochs, at_init).items():
        data = dataclasses.replace(cfg.data, dataset=target)
        for variant in variants:
            mask = masks[variant]
            if mask is None:
                result, trained = reference_accuracy(plan["reference"], store), plan["reference"].train
            else:
                trained = plan["retrain"] if lr is None else dataclasses.replace(plan["retrain"], lr=lr)
                result = retrained_accuracy(cfg.model, init_state, mask, data, trained, store, cfg.prune.bias,
                                            control=None if lr is None else "lr")
            rows.append({"model": cfg.model.name, "source": cfg.data.dataset, "target": target,
                         "seed": cfg.train.seed, "at_init": at_init, "variant": variant, "epochs": trained.epochs,
                         "lr": trained.lr, "tau": cfg.prune.resolve(cfg.model.name, cfg.data.dataset),
                         "test_accuracy": result["test_accuracy"],
                         "pct_neurons_pruned": stats[variant]["pct_neurons_pruned"] if mask is not None else 0.0,
                         "pct_params_pruned": stats[variant]["pct_params_pruned"] if mask is not None else 0.0,
                         "masked_weights_max": result["masked_weights_max"], "train_seconds": result["train_seconds"]})
    return rows


def at_init_settings(**overrides: Any) -> dict[str, Any]:
    """`PAPER_AT_INIT` with `overrides` applied; ConfigError naming unknown keys."""
    unknown = sorted(set(overrides) - set(PAPER_AT_INIT))
    if unknown:
        raise ConfigError(f"unknown pruning-at-init setting(s) {unknown}; known: {sorted(PAPER_AT_INIT)}")
    return {**PAPER_AT_INIT, **overrides}


def at_init_source(base: RunConfig, seed: int, settings: Mapping[str, Any]) -> RunConfig:
    """The source run of pruning at initialisation for one reset: the untrained model on the source
    dataset, scored with the settings' MIP (λ, B, mode, ε) and masked at their τ."""
    base = dataclasses.replace(
        base, score=dataclasses.replace(base.score, lambda_=settings["lambda_"], batch_size=settings["batch_size"],
                                        mode=settings["mode"], epsilon=settings["epsilon"]),
        prune=dataclasses.replace(base.prune, threshold=settings["threshold"]))
    return source_config(base, settings["model"], settings["source"], seed, epochs=0)


def at_init_rows(base: RunConfig, store: Store, **settings: Any) -> list[dict[str, Any]]:
    """Pruning at initialisation with `PAPER_AT_INIT` (entries overridden by `settings`), once per
    reset in `seeds`: the MIP on the untrained network, its mask trained on every target (the source
    included) from that initialisation with the target's own schedule (`epochs` per target),
    against the target's dense reference, random and SNIP at the same per-layer counts."""
    s = at_init_settings(**settings)
    return [row for seed in s["seeds"]
            for row in transfer_rows(at_init_source(base, seed, s), s["targets"], store, s["epochs"], at_init=True)]
