"""What a book build needs before it runs (`critneuron book --profile NAME --plan`).

Per chapter, every stored stage its notebook needs (trainings with epochs and images, scores,
block scores, heads, retrainings, pruning rows, budget sweeps, per-class programs), built from
the profile by the functions of `machinery.chapters` and keyed as `experiments` keys them;
whether the result store holds each one **fresh** (complete, computed by today's code),
**stale** (complete, but its code changed, or a stage it builds on will be recomputed) or
**missing**; and the CPU time of what is not fresh (and of all of it: the chapter computed from
nothing), from the measured rates of `machinery.rates`. Work a notebook redoes at
every build (chapter 01's solves, chapter 03's evaluation and fine-tuning) is listed as
"every build", or "reused" when the profile reuses that chapter's current executed copy
(`machinery.reuse`). A stage several chapters share is counted in the first (where it is computed).

Stages whose key depends on a stage before them (a score on trained weights, a retraining on
a mask) are matched by what the key holds that is known before computing: the score's config
and the weights' hash of the stored training, the retraining's config and initial weights
(four masks per source and target: MIP, random, SNIP and the authors' SNIP).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from typing import Any, Iterable

from critneuron.catalog import dataset_record, model_record
from critneuron.config import DataConfig, ModelConfig, RunConfig, ScoreConfig, TrainConfig, canonical_json, to_dict
from critneuron.experiments.decoupled import DECOUPLED_TRAIN_CODE, HEADS_CODE, block_score_config
from critneuron.experiments.lookup import StoreIndex
from critneuron.experiments.runs import TRAIN_CODE, train_config, train_inputs, weights_hash
from critneuron.experiments.store import Store
from critneuron.experiments.transfer import retrain_config
from critneuron.machinery.rates import Estimate, Rates
from critneuron.nets.data import official_split
from critneuron.nets.heads import Decoupled
from critneuron.nets.models import build_model

STATUSES = ("fresh", "stale", "missing", "every build", "reused")
MASKS_PER_TRANSFER = 4  # mip, random, snip, snip-authors (`experiments.transfer.VARIANTS` less the reference)


@dataclass(frozen=True)
class Stage:
    """One stage of a chapter: its kind, what it computes, its status, and its estimated cost."""

    chapter: str
    kind: str
    what: str
    status: str
    epochs: int | None = None
    images: int | None = None
    estimate: Estimate = Estimate(0.0, "")
    first: str | None = None  # the chapter that computes a shared stage (its cost is counted there)
    left: float = 1.0  # the share of the stage still to compute (a group of retrainings partly stored)

    @property
    def counted(self) -> float | None:
        """CPU seconds this stage adds to its chapter's total (0 if fresh or counted elsewhere)."""
        if self.status in ("fresh", "reused"):
            return 0.0
        seconds = 0.0 if self.first else self.estimate.seconds
        return None if seconds is None else self.left * seconds

    @property
    def whole(self) -> float | None:
        """CPU seconds this stage costs its chapter computed from nothing (0 if counted elsewhere,
        or a checkpoint trained again: from nothing, its training stage counts it)."""
        return 0.0 if self.first or self.kind == "checkpoint" else self.estimate.seconds


def stage_status(found: list[tuple[dict, bool]], upstream_fresh: bool, needed: int = 1) -> str:
    fresh = sum(1 for _inputs, ok in found if ok)
    if fresh >= needed:
        return "fresh" if upstream_fresh else "stale"
    return "stale" if len(found) >= needed else "missing"


class Planner:
    """Stages of one profile against one store; shared stages are listed once per chapter and
    counted in the first chapter that needs them."""

    def __init__(self, store: Store, rates: Rates) -> None:
        self.store, self.rates, self.index = store, rates, StoreIndex(store)
        self.stages: list[Stage] = []
        self._seen: dict[tuple, str] = {}
        self._chapter_seen: set[tuple] = set()
        self._blocks: dict[tuple, list[str]] = {}
        self._absent: dict[str, dict[str, Any]] = {}  # weights' hash -> fields of a training whose checkpoint is gone

    def add(self, chapter: str, ident: tuple, needs: str | None = None, **fields: Any) -> None:
        """Record a stage (once per chapter; `first` set when an earlier chapter has it). `needs`: the
        weights' hash of the network it computes on; a stage to compute on a stored network whose
        checkpoint the store lacks adds that network's training (a "checkpoint" stage): trained
        again on another CPU it gives other weights, and `Store.cached` stops (IrreproducibleError)."""
        if needs in self._absent and fields["status"] not in ("fresh", "reused"):
            self.add(chapter, ("checkpoint", needs), kind="checkpoint", status="missing", **self._absent[needs])
        if (chapter, ident) in self._chapter_seen:
            return
        self._chapter_seen.add((chapter, ident))
        first = self._seen.setdefault(ident, chapter)
        self.stages.append(Stage(chapter, first=None if first == chapter else first, **fields))

    def training_estimate(self, model: ModelConfig, data: DataConfig, training: str, epochs: int,
                          evaluated: int | None = None) -> tuple[Estimate, dict[str, int]]:
        """CPU time of `epochs` over `data`'s training split, each followed by its validation split,
        then `evaluated` more images (default: the test split); and the split sizes."""
        sizes = split_sizes(data)
        augment = dataset_record(data.dataset).augment
        return self.rates.training_seconds(model.name, model.width, augment, training, epochs, sizes["train"],
                                           sizes["val"], sizes["test"] if evaluated is None else evaluated), sizes

    def train(self, chapter: str, cfg: RunConfig, training: str = "end-to-end") -> tuple[dict | None, bool]:
        """The training stage of `cfg` (decoupled: with heads, greedily); its stored metrics
        (None if not stored) and whether it is fresh."""
        config, inputs = train_config(cfg), train_inputs(cfg)
        code = TRAIN_CODE
        if training == "decoupled":
            config, code = {**config, "training": "decoupled"}, DECOUPLED_TRAIN_CODE
        key = self.store.key("train", config, **inputs)
        complete = self.store.is_complete("train", key)
        fresh = complete and self.store.is_fresh("train", key, code)
        estimate, sizes = self.training_estimate(cfg.model, cfg.data, training, cfg.train.epochs)
        what = f"{_name(cfg)} seed {cfg.train.seed} ({training})"
        self.add(chapter, ("train", key), kind="train", what=what, epochs=cfg.train.epochs, images=sizes["train"],
                 status="fresh" if fresh else "stale" if complete else "missing", estimate=estimate)
        metrics = self.store.read("train", key)["result"] if complete else None
        if metrics and not (self.store.path("train", key) / "artifacts" / "checkpoint.pt").is_file():
            self._absent[metrics["weights_hash"]] = {
                "what": f"{what}: checkpoint not stored, trained again (another CPU: other weights, its results recomputed)",
                "epochs": cfg.train.epochs, "images": sizes["train"], "estimate": estimate}
        return metrics, fresh

    def score(self, chapter: str, cfg: RunConfig, metrics: dict | None, fresh: bool,
              label: str = "") -> tuple[dict | None, str]:
        """The whole-network score stage of `cfg` on the stored weights: the inputs of the stored
        run (None if none) and the stage's status."""
        weights = metrics["weights_hash"] if metrics else None
        found = self.index.matches("score", to_dict(cfg.score), weights=weights) if weights else []
        estimate = self.rates.solve_seconds(cfg.model.name, cfg.model.width, "whole", cfg.score.mode,
                                            cfg.score.time_limit)
        status = stage_status(found, fresh)
        self.add(chapter, ("score", canonical_json(to_dict(cfg.score)), weights or _name(cfg), cfg.train.seed),
                 needs=weights, kind="score",
                 what=f"{_name(cfg)} seed {cfg.train.seed} {cfg.score.mode} B={cfg.score.batch_size} "
                 f"λ={cfg.score.lambda_:g} batch seed {cfg.score.seed}{label}", status=status, estimate=estimate)
        return (found[0][0] if found else None), status

    def blocks(self, chapter: str, cfg: RunConfig, metrics: dict | None, fresh: bool, **inputs: Any) -> bool:
        """One stage per block sub-MIP of `cfg`'s decoupled network (`inputs`: e.g. a fixed batch);
        whether all are fresh."""
        weights, statuses = (metrics["weights_hash"] if metrics else None), []
        for name in self.block_names(cfg):
            config = block_score_config(cfg.score, name)
            found = self.index.matches("score", config, weights=weights, **inputs) if weights else []
            estimate = self.rates.solve_seconds(cfg.model.name, cfg.model.width, name, cfg.score.mode,
                                                cfg.score.time_limit)
            statuses.append(stage_status(found, fresh))
            self.add(chapter, ("block", canonical_json(config), weights or _name(cfg), cfg.train.seed,
                               json.dumps(inputs, sort_keys=True)), needs=weights,
                     kind="block score", what=f"{_name(cfg)} seed {cfg.train.seed} {name}" + (" (whole's batch)"
                     if inputs else "") + _box_rule(cfg.score), status=statuses[-1], estimate=estimate)
        return all(s == "fresh" for s in statuses)

    def per_class(self, chapter: str, cfg: RunConfig, metrics: dict | None, fresh: bool) -> None:
        """The per-class programs of a run's MIP batch (`experiments.sequential`): one score of
        one image per image of the batch."""
        weights = metrics["weights_hash"] if metrics else None
        one = to_dict(dataclasses.replace(cfg.score, batch_size=1))
        found = self.index.matches("score", one, weights=weights) if weights else []
        each = self.rates.solve_seconds(cfg.model.name, cfg.model.width, "whole", cfg.score.mode, cfg.score.time_limit)
        seconds = None if each.seconds is None else cfg.score.batch_size * each.seconds
        self.add(chapter, ("per class", canonical_json(one), weights or _name(cfg), cfg.train.seed), needs=weights,
                 kind="per-class",
                 what=f"{_name(cfg)} seed {cfg.train.seed}: {cfg.score.batch_size} programs of one image",
                 status=stage_status(found, fresh, cfg.score.batch_size), estimate=Estimate(seconds, each.basis))

    def block_names(self, cfg: RunConfig) -> list[str]:
        """The names of the sub-MIPs of `cfg`'s model split into blocks."""
        shape = (cfg.model.name, cfg.model.width)
        if shape not in self._blocks:
            self._blocks[shape] = Decoupled.build(build_model(*shape)).names()
        return self._blocks[shape]

    def heads(self, chapter: str, cfg: RunConfig, head_cfg, metrics: dict | None, fresh: bool) -> None:
        """Heads fitted on the frozen blocks of an end-to-end network (`experiments.decoupled`)."""
        config = {"heads_train": to_dict(head_cfg), "training": "end-to-end"}
        status = "missing"
        if metrics:
            key = self.store.key("heads", config, **train_inputs(cfg), weights=metrics["weights_hash"])
            if self.store.is_complete("heads", key):
                status = "fresh" if fresh and self.store.is_fresh("heads", key, HEADS_CODE) else "stale"
        estimate, sizes = self.training_estimate(cfg.model, cfg.data, "decoupled", head_cfg.epochs)
        self.add(chapter, ("heads", canonical_json(config), _name(cfg), cfg.train.seed), kind="heads",
                 what=f"{_name(cfg)} seed {cfg.train.seed} (heads on end-to-end)", status=status,
                 epochs=head_cfg.epochs, images=sizes["train"], estimate=Estimate(estimate.seconds,
                                                                                 f"{estimate.basis}, as decoupled"))

    def retrain(self, chapter: str, source: RunConfig, data: DataConfig, train: TrainConfig,
                upstream_fresh: bool, masks: int = MASKS_PER_TRANSFER, control: str | None = None) -> None:
        """The retrainings of the `masks` masks of `source` on `data` with the schedule `train`
        (`control`: as `experiments.transfer.retrained_accuracy` stores a control)."""
        init = weights_hash(build_model(source.model.name, source.model.width, seed=source.train.seed))
        config = retrain_config(source.model, data, train, source.prune.bias, control)
        found = self.index.matches("retrain", config, init_weights=init)
        one, sizes = self.training_estimate(source.model, data, "end-to-end", train.epochs)
        seconds = None if one.seconds is None else masks * one.seconds
        status = stage_status(found, upstream_fresh, masks)
        stored = sum(1 for _inputs, ok in found if ok) if status == "missing" and upstream_fresh else 0
        self.add(chapter, ("retrain", canonical_json(config), init), kind="retrain",
                 what=f"{_name(source)} seed {source.train.seed} → {data.dataset} ×{masks} masks"
                 + (f" at lr {train.lr:g} ({control} control)" if control else "")
                 + (f" ({stored} stored)" if stored else ""), status=status, epochs=train.epochs,
                 images=sizes["train"], estimate=Estimate(seconds, one.basis), left=(masks - stored) / masks)

    def evaluation(self, chapter: str, cfg: RunConfig, kind: str, status: str, ident: tuple, label: str = "",
                   needs: str | None = None) -> None:
        """Pruning evaluation of one run (`experiments.whole.evaluate_masks`): accuracies of the
        reference and pruned networks on train and test, random and critical on test, and the
        fine-tuning epochs."""
        sizes = split_sizes(cfg.data)
        estimate, _sizes = self.training_estimate(cfg.model, cfg.data, "end-to-end", cfg.prune.finetune_epochs,
                                                  2 * sizes["train"] + 5 * sizes["test"])
        self.add(chapter, ident, needs=needs, kind=kind, what=f"{_name(cfg)} seed {cfg.train.seed}{label} (evaluate"
                 + (f", fine-tune {cfg.prune.finetune_epochs})" if cfg.prune.finetune_epochs else ")"),
                 status=status, epochs=cfg.prune.finetune_epochs, images=sizes["train"], estimate=estimate)

    def source(self, chapter: str, cfg: RunConfig) -> bool:
        """Training and scores of a source run, as the paper trains and scores its model; whether all fresh."""
        if model_record(cfg.model.name).training == "decoupled":
            metrics, fresh = self.train(chapter, cfg, "decoupled")
            return self.blocks(chapter, cfg, metrics, fresh)
        metrics, fresh = self.train(chapter, cfg)
        return self.score(chapter, cfg, metrics, fresh)[1] == "fresh"


def split_sizes(data: DataConfig) -> dict[str, int]:
    """Images in the train, val and test splits of `data` (`nets.data.split_indices`'s counts)."""
    n_train, n_test = (_official_size(data.dataset, data.root, part) for part in (True, False))
    kept = min(data.subset, n_train) if data.subset else n_train
    n_val = round(kept * data.val_fraction)
    return {"train": kept - n_val, "val": n_val, "test": min(data.test_subset, n_test) if data.test_subset else n_test}


@functools.lru_cache(maxsize=None)
def _official_size(dataset: str, root: str | None, train: bool) -> int:
    return len(official_split(DataConfig(dataset=dataset, root=root), train=train, download=False)[1])


def _name(cfg: RunConfig) -> str:
    width = f" ×{cfg.model.width:g}" if cfg.model.width != 1 else ""
    return f"{cfg.model.name}{width} {cfg.data.dataset}"


def _box_rule(score: ScoreConfig) -> str:
    """The block input-box rule, named where it is not the default (the authors')."""
    default = ScoreConfig().block_bounds
    return "" if score.block_bounds == default else f" (block_bounds {score.block_bounds})"


def totals(stages: Iterable[Stage]) -> dict[str, dict[str, Any]]:
    """Per chapter: stages by status, CPU seconds of what is not fresh and of every stage (the
    chapter computed from nothing, `whole_seconds`), stages with no rate."""
    out: dict[str, dict[str, Any]] = {}
    for s in stages:
        row = out.setdefault(s.chapter, {**{k: 0 for k in STATUSES}, "seconds": 0.0, "whole_seconds": 0.0,
                                         "no_rate": 0})
        row[s.status] += 1
        row["whole_seconds"] += s.whole or 0.0
        if s.counted is None:
            row["no_rate"] += 1
        else:
            row["seconds"] += s.counted
    return out
