"""Sequential per-class scoring against one program on the whole batch (`PAPER_SPEC` §8.2).

The authors' `-seq` mode solves one program per class, each on that class's image of the MIP
batch, and prunes by the mean of the per-class scores; the parallel program (the method as
everywhere else) sees all images at once. Both here use the same images: the run's MIP batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from torch import nn

from critneuron.config import RunConfig, to_dict
from critneuron.experiments.fingerprint import Code
from critneuron.experiments.runs import (
    SCORE_CODE, mip_scores, network_inputs, reusable_here, run_config, score_inputs, trained_metrics, trained_model,
)
from critneuron.experiments.store import Store
from critneuron.mip.scores import Scores, score
from critneuron.nets.data import load_split
from critneuron.nets.train import evaluate
from critneuron.pruning.masks import apply_masks, masks_from_scores, pruning_stats

SEQUENTIAL_CODE = Code(("critneuron.experiments.sequential:_sequential_rows",), after=(SCORE_CODE,))


def per_class_scores(model: nn.Sequential, cfg: RunConfig, store: Store) -> list[tuple[int, Scores]]:
    """(label, scores) of one program per image of `cfg`'s MIP batch (one per class under the
    paper's B = 10), each on that image alone; stored like any score (`score.batch_size` 1 in its
    key, the image's index among its inputs), so they are solved once."""
    x, y, inputs = score_inputs(model, cfg.data, cfg.score)
    one = dataclasses.replace(cfg.score, batch_size=1)
    out = []
    for i, index in enumerate(inputs["batch_indices"]):
        result = store.cached("score", to_dict(one), lambda i=i, index=index: score(
            model, x[i:i + 1], y[i:i + 1], one, [index]).to_dict(), code=SCORE_CODE, reuse_if=reusable_here,
            **{**inputs, "batch_indices": [index]})
        out.append((int(y[i]), Scores.from_dict(result)))
    return out


def averaged(scores: list[Scores]) -> Scores:
    """The sequential scores: the mean of the per-class programs' scores, layer by layer."""
    layers = {name: np.mean([s.layers[name] for s in scores], axis=0) for name in scores[0].layers}
    return Scores(layers, "mip-sequential", {"programs": len(scores)})


def sequential_vs_parallel(cfg: RunConfig, store: Store) -> list[dict[str, Any]]:
    """One row per program of a run at its τ: the parallel program (`runs.mip_scores`), the
    sequential one (the averaged per-class scores) and each per-class program alone, with the
    share of neurons and parameters pruned, the test accuracy without fine-tuning, the solver
    status(es) and solve seconds (the sequential row: summed over its programs). Stored (kind
    "sequential", keyed by the run and its weights' hash), so a store that has them needs no
    checkpoint."""
    inputs = network_inputs(cfg, trained_metrics(cfg, store)["weights_hash"])
    return store.cached("sequential", run_config(cfg), lambda: {"rows": _sequential_rows(cfg, store)},
                        code=SEQUENTIAL_CODE, **inputs)["rows"]


def _sequential_rows(cfg: RunConfig, store: Store) -> list[dict[str, Any]]:
    model, _metrics = trained_model(cfg, store)
    tau = cfg.prune.resolve(cfg.model.name, cfg.data.dataset)
    test = load_split(cfg.data, "test")
    reference, _loss = evaluate(model, test)
    parallel, per_class = mip_scores(model, cfg, store), per_class_scores(model, cfg, store)
    solved = [s for _label, s in per_class]
    runs = [("parallel", parallel, [parallel]), ("sequential", averaged(solved), solved)]
    runs += [(f"class {label}", s, [s]) for label, s in per_class]
    rows = []
    for program, scores, programs in runs:
        masks = masks_from_scores(scores, tau)
        accuracy, _loss = evaluate(apply_masks(model, masks, cfg.prune.bias), test)
        stats = pruning_stats(model, masks)
        rows.append({"model": cfg.model.name, "dataset": cfg.data.dataset, "seed": cfg.train.seed, "program": program,
                     "tau": tau, "ref_test_acc": reference,
                     "pct_neurons_pruned": stats["pct_neurons_pruned"], "pct_params_pruned": stats["pct_params_pruned"],
                     "pruned_test_acc": accuracy,
                     "status": "/".join(sorted({s.provenance["solver"]["status"] for s in programs})),
                     "solve_s": sum(s.provenance["seconds"]["solve"] for s in programs)})
    return rows
