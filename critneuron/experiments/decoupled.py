"""Decoupled (block-by-block) runs, cached: a network with auxiliary heads (trained greedily, or
heads fitted to an end-to-end network), one stored sub-MIP per block, pruning at τ and evaluation;
and the comparison with one whole-network MIP on the same batch.
"""

from __future__ import annotations

import dataclasses
import io
import socket
import time
from concurrent.futures import Executor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from critneuron.catalog import dataset_record
from critneuron.config import RunConfig, ScoreConfig, choices, paper_train_config, to_dict
from critneuron.errors import ConfigError, SolveError
from critneuron.experiments.runs import (
    SCORING, TRAIN_CODE, TRAIN_THREADS, checkpoint_output, mip_scores, network_inputs, reusable_here, run_config,
    score_inputs, train_config, train_inputs, trained_metrics, trained_model, weights_hash,
)
from critneuron.experiments.cluster import dask_client
from critneuron.experiments.fingerprint import Code
from critneuron.experiments.store import RunOutput, Store, versions
from critneuron.experiments.whole import evaluate_masks
from critneuron.mip.blocks import block_batches, block_problems, combine, solve_blocks
from critneuron.mip.scores import Scores
from critneuron.mip.solve import solver_version
from critneuron.nets.data import SPLITS, dataset_source, load_split
from critneuron.nets.heads import Decoupled, head_accuracies, train_decoupled
from critneuron.nets.models import build_model
from critneuron.nets.train import clone_state, evaluate, load_checkpoint, torch_threads
from critneuron.pruning.masks import apply_masks, mask_agreement, masks_from_scores


DECOUPLED_TRAIN_CODE = Code(("critneuron.experiments.decoupled:_train_decoupled",))
HEADS_CODE = Code(("critneuron.experiments.decoupled:_fit_heads",), after=(TRAIN_CODE,))
BLOCK_SCORE_CODE = {  # decoupled_mip_scores, by how the network and its heads were trained
    "decoupled": Code((*SCORING, "critneuron.experiments.decoupled:decoupled_mip_scores"), after=(DECOUPLED_TRAIN_CODE,)),
    "end-to-end": Code((*SCORING, "critneuron.experiments.decoupled:decoupled_mip_scores"), after=(HEADS_CODE,)),
}


def _heads_bytes(net: Decoupled) -> bytes:
    buffer = io.BytesIO()
    torch.save(clone_state(net.heads), buffer)
    return buffer.getvalue()


def with_heads(model: nn.Sequential, heads: dict, seed: int) -> Decoupled:
    """`model` split into blocks with auxiliary heads holding the state `heads` (as stored in a
    decoupled-trained checkpoint, `load_checkpoint(...)[1]["heads"]`)."""
    if not heads:
        raise ConfigError("this network has no auxiliary heads: train it with training 'decoupled' "
                          "(`critneuron train --training decoupled`)")
    net = Decoupled.build(model.eval(), seed=seed)
    net.heads.load_state_dict(heads)
    return net.eval()


def _train_decoupled(cfg: RunConfig, progress: bool) -> RunOutput:
    """Greedy training of the network and its heads from the seeded initialisation."""
    start = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    net = Decoupled.build(build_model(cfg.model.name, cfg.model.width, seed=cfg.train.seed), seed=cfg.train.seed)
    init_state = clone_state(net.model)
    train, val, test = (load_split(cfg.data, s) for s in SPLITS)
    with torch_threads(TRAIN_THREADS):
        result = train_decoupled(net, train, val, cfg.train, "decoupled", augment=dataset_record(cfg.data.dataset).augment,
                                 progress=progress)
    net.model.cpu()
    net.heads.cpu()
    test_acc, test_loss = evaluate(net.model, test)
    metrics = {"test_accuracy": test_acc, "test_loss": test_loss, "head_test_accuracy": head_accuracies(net, test),
               "best_epoch": result.best_epoch, "history": result.history, "training": "decoupled",
               "train_seconds": time.perf_counter() - start, "weights_hash": weights_hash(net.model),
               "source": dataset_source(cfg.data)}
    return checkpoint_output(net.model, cfg, init_state, metrics, heads=clone_state(net.heads))


def _fit_heads(model: nn.Sequential, cfg: RunConfig, head_cfg, progress: bool) -> RunOutput:
    """Heads trained on the frozen blocks of an end-to-end network."""
    start = time.perf_counter()
    net = Decoupled.build(model, seed=cfg.train.seed)
    train, val, test = (load_split(cfg.data, s) for s in SPLITS)
    with torch_threads(TRAIN_THREADS):
        result = train_decoupled(net, train, val, head_cfg, "end-to-end", augment=dataset_record(cfg.data.dataset).augment,
                                 progress=progress)
    net.model.cpu()
    net.heads.cpu()
    metrics = {"head_test_accuracy": head_accuracies(net, test), "history": result.history,
               "training": "end-to-end", "train_seconds": time.perf_counter() - start}
    return RunOutput(result=metrics, artifacts={"heads.pt": _heads_bytes(net)})


def decoupled_checkpoint(cfg: RunConfig, store: Store, progress: bool = False) -> tuple[Path, dict]:
    """The stored checkpoint of `cfg`'s greedily trained network (trained once; it holds the
    weights, the initial weights and the heads) and its metrics."""
    config, inputs = {**train_config(cfg), "training": "decoupled"}, train_inputs(cfg)
    metrics = store.cached("train", config, lambda: _train_decoupled(cfg, progress), code=DECOUPLED_TRAIN_CODE,
                           needs=("checkpoint.pt",), **inputs)
    return store.path("train", store.key("train", config, **inputs)) / "artifacts" / "checkpoint.pt", metrics


def decoupled_metrics(cfg: RunConfig, store: Store) -> dict:
    """The metrics of `cfg`'s greedily trained network, without its checkpoint where the store
    has the run (see `runs.trained_metrics`)."""
    config = {**train_config(cfg), "training": "decoupled"}
    return store.cached("train", config, lambda: _train_decoupled(cfg, False), code=DECOUPLED_TRAIN_CODE,
                        **train_inputs(cfg))


def decoupled_network(cfg: RunConfig, store: Store, training: str = "decoupled",
                      progress: bool = False) -> tuple[Decoupled, dict]:
    """`cfg`'s network with trained auxiliary heads, and its metrics (cached).

    training='decoupled': network and heads trained greedily with `cfg.train`
    (`decoupled_checkpoint`; the paper's schedule is `config.paper_train_config`). 'end-to-end': the network trained as usual
    (`trained_model`), then heads fitted on its frozen blocks with the decoupled optimizer for
    `cfg.train.epochs` epochs.
    """
    if training == "decoupled":
        path, metrics = decoupled_checkpoint(cfg, store, progress)
        model, meta = load_checkpoint(path)
        return with_heads(model, meta["heads"], cfg.train.seed), metrics
    if training != "end-to-end":
        raise ConfigError(f"training must be 'decoupled' or 'end-to-end', got {training!r}")
    inputs = train_inputs(cfg)
    model, train_metrics = trained_model(cfg, store, progress)
    head_cfg = paper_train_config(cfg.model.name, cfg.data.dataset, cfg.train.epochs, cfg.train.seed)
    config = {"heads_train": to_dict(head_cfg), "training": "end-to-end"}
    inputs["weights"] = weights_hash(model)
    metrics = store.cached("heads", config, lambda: _fit_heads(model, cfg, head_cfg, progress), code=HEADS_CODE,
                           needs=("heads.pt",), **inputs)
    heads = store.path("heads", store.key("heads", config, **inputs)) / "artifacts" / "heads.pt"
    net = with_heads(model, torch.load(heads, map_location="cpu", weights_only=True), cfg.train.seed)
    return net, {**train_metrics, **metrics}


@contextmanager
def block_executor(scheduler: str | None, workers: int) -> Iterator[Executor | None]:
    """Where sub-MIPs run: here, one after another (`scheduler` "serial", or None with one worker),
    or on Dask: an embedded LocalCluster of `workers` processes (None) or the cluster at
    `scheduler` (e.g. "tcp://host:8786")."""
    if scheduler == "serial" or (scheduler is None and workers <= 1):
        yield None
        return
    with dask_client(scheduler, workers if scheduler is None else None) as client:
        yield client.get_executor()


def block_score_config(score: ScoreConfig, block: str) -> dict[str, Any]:
    """The store config of one block's score: the score settings but `batch_rule` (blocks draw
    their own batches, `mip.blocks.block_batches`; the batch indices are among the inputs)."""
    return {**{k: v for k, v in to_dict(score).items() if k != "batch_rule"}, "block": block}


def decoupled_mip_scores(net: Decoupled, cfg: RunConfig, store: Store, training: str, workers: int = 1,
                         progress: bool = False, batches: list[tuple] | None = None, *,
                         scheduler: str | None = None, blocks: Sequence[int] | None = None,
                         correct_only: bool = True, keep_failed: bool = False) -> Scores:
    """Scores of every block's sub-MIP (each solved once per key, stored as it finishes, so a
    killed run resumes), combined (`mip.blocks.combine`: only usable blocks add scores). A block
    without a solution raises `SolveError` (after the others are stored), or with `keep_failed`
    stays in the blocks' rows as status "failed" (its error, sizes, time and memory;
    `mip.blocks.failure_row`) with no scores. A block whose solve ran out of its limits is stored
    as that failure (`{"failed": row}`), reused like a time-limited score: only on the host that
    stored it (`_reusable_block`), so a rerun there does not solve it again. Each block's input box follows
    `cfg.score.block_bounds` (part of its store key).

    `batches`: one (x, y, indices) per block; default `mip.blocks.block_batches` (each block's
    batch chosen by its own head's correctness; `correct_only=False`: any images of each class).
    `cfg.score.batch_rule` does not apply to blocks and is not part of their keys (the batch
    indices are), so chapters that differ only in it share their block scores.
    `blocks`: 1-based numbers of the blocks to score (default all; the tail is the last). The
    sub-MIPs run where `block_executor(scheduler, workers)` says.
    """
    train = load_split(cfg.data, "train")
    batches = batches or block_batches(net, train, cfg.score.batch_size, cfg.score.seed, correct_only)
    problems = block_problems(net, batches, cfg.score.epsilon, cfg.score.block_bounds)
    if blocks:
        wrong = sorted(set(blocks) - set(range(1, len(problems) + 1)))
        if wrong:
            raise ConfigError(f"blocks {wrong} do not exist: this network has blocks 1-{len(problems)}")
        problems = [problems[k - 1] for k in sorted(set(blocks))]
    common = {"weights": weights_hash(net.model), "heads": weights_hash(net.heads), "dataset": cfg.data.dataset,
              "source": dataset_source(cfg.data), "solver": solver_version(cfg.score), **versions()}
    entries = {p.name: (block_score_config(cfg.score, p.name), {**common, "batch_indices": p.batch_indices})
               for p in problems}
    keys = {name: store.key("score", config, **inputs) for name, (config, inputs) in entries.items()}
    code = BLOCK_SCORE_CODE[training]
    todo = [p for p in problems if not store.is_fresh("score", keys[p.name], code)
            or not _reusable_block(store.read("score", keys[p.name]))]

    def save(problem, result: dict) -> None:
        config, inputs = entries[problem.name]
        store.write("score", keys[problem.name], config, result, inputs=inputs, code=code, replace=True)

    failed: dict[str, dict] = {}
    if todo:
        try:
            with block_executor(scheduler, workers) as executor:
                solve_blocks(todo, cfg.score, executor, progress=progress, done=lambda p, s: save(p, s.to_dict()))
        except SolveError as err:
            failed = {row["block"]: row for row in err.details.get("failed", [])}
            for problem in todo:  # stored when the solver ran out of its limits (not when a worker was lost)
                if failed.get(problem.name, {}).get("solver_status") is not None:
                    save(problem, {"failed": failed[problem.name]})
    outcomes = [failed.get(p.name) or _stored_block(store.read("score", keys[p.name])["result"]) for p in problems]
    failures = [o for o in outcomes if isinstance(o, dict)]
    if failures and not keep_failed:
        raise SolveError("sub-MIPs failed: " + "; ".join(f"{r['block']}: {r['error']}" for r in failures),
                         {"failed": failures})
    return combine(outcomes, training)


def _reusable_block(run: dict) -> bool:
    """`reusable_here` for a stored block: a stored failure (its solve ran out of the time or memory
    it had) depends on the machine too, so only the host that stored it reuses it."""
    return reusable_here(run) and ("failed" not in run["result"] or run["meta"].get("host") == socket.gethostname())


def _stored_block(result: dict) -> Scores | dict:
    """A stored block's scores, or its `mip.blocks.failure_row` when its solve found no point."""
    return result["failed"] if "failed" in result else Scores.from_dict(result)


def _stored_study(kind: str, entry: str, cfg: RunConfig, store: Store, training: str,
                  compute: Callable[[Decoupled, dict], dict[str, Any]], progress: bool = False,
                  **extra: Any) -> dict[str, Any]:
    """`compute(net, metrics)` on `cfg`'s network trained `training`, stored under `kind` (keyed by the run,
    `extra` and the network's weights' hash; `entry` names its code), so that a store that has it
    needs no checkpoint. Reused on another host only when no block stopped at a limit or failed
    (what a limit reaches depends on the machine, as `runs.reusable_here`)."""
    metrics = decoupled_metrics(cfg, store) if training == "decoupled" else trained_metrics(cfg, store)
    config = study_config(cfg, training, **extra)
    inputs = network_inputs(cfg, metrics["weights_hash"])
    code = Code((f"critneuron.experiments.decoupled:{entry}",), after=(BLOCK_SCORE_CODE[training],))
    return store.cached(kind, config, lambda: compute(*decoupled_network(cfg, store, training, progress)),
                        code=code, reuse_if=_reusable_study, **inputs)


def study_config(cfg: RunConfig, training: str, **extra: Any) -> dict[str, Any]:
    """The stored config of a `_stored_study` (also what `machinery.plan` looks up)."""
    return {"run": run_config(cfg), "training": training, **extra}


def _reusable_study(run: dict) -> bool:
    result = run["result"]
    blocks = result.get("blocks") or result.get("rows", [])
    limited = any(b.get("status") in ("maxTimeLimit", "failed") for b in blocks)
    return not limited or run["meta"].get("host") == socket.gethostname()


def decoupled_run(cfg: RunConfig, store: Store | None = None, training: str = "decoupled", workers: int = 1,
                  progress: bool = False) -> dict[str, Any]:
    """Train with heads (cached), score every block (cached), prune at τ, evaluate: the table row
    plus one row per block (status, final point, usable, self-check, gap, times, unstable units)
    and how the net was trained. A failed or limit-stopped block keeps its row and prunes nothing
    (`mip.blocks.usable`); the run goes on. The row is stored (kind "decoupled", `_stored_study`)."""
    store = store or Store()
    return _stored_study("decoupled", "_decoupled_row", cfg, store, training,
                         lambda net, metrics: _decoupled_row(net, metrics, cfg, store, training, workers, progress),
                         progress)


def _decoupled_row(net: Decoupled, train_metrics: dict, cfg: RunConfig, store: Store, training: str, workers: int,
                   progress: bool) -> dict[str, Any]:
    scores = decoupled_mip_scores(net, cfg, store, training, workers, progress, keep_failed=True)
    data = {s: load_split(cfg.data, s) for s in SPLITS}
    row = evaluate_masks(net.model, scores, cfg, data)
    row.update({"config": to_dict(cfg), "training": training, "source": dataset_source(cfg.data),
                "train_seconds": train_metrics["train_seconds"], "head_test_accuracy": train_metrics["head_test_accuracy"],
                "scores": scores.to_dict()["layers"], "blocks": scores.provenance["blocks"], "versions": versions()})
    return row


def decoupled_vs_whole(cfg: RunConfig, store: Store, training: str = "decoupled", workers: int = 1) -> dict[str, Any]:
    """`cfg`'s network scored by one whole-network MIP and decoupled, on the same batch (the whole
    network's): masks at τ (as dicts), their per-layer agreement, and each method's time. Stored
    (kind "vs_whole", `_stored_study`)."""
    return _stored_study("vs_whole", "_vs_whole", cfg, store, training,
                         lambda net, _metrics: _vs_whole(net, cfg, store, training, workers))


def _vs_whole(net: Decoupled, cfg: RunConfig, store: Store, training: str, workers: int) -> dict[str, Any]:
    x, y, inputs = score_inputs(net.model, cfg.data, cfg.score)
    whole = mip_scores(net.model, cfg, store)
    same = [(x, y, torch.tensor(inputs["batch_indices"]))] * len(net.blocks)
    split = decoupled_mip_scores(net, cfg, store, training, workers, batches=same)
    tau = cfg.prune.resolve(cfg.model.name, cfg.data.dataset)
    masks = {name: masks_from_scores(s, tau) for name, s in (("whole", whole), ("decoupled", split))}
    seconds = whole.provenance["seconds"]
    return {"threshold": tau, "masks": {name: m.to_dict() for name, m in masks.items()},
            "agreement": mask_agreement(masks["whole"], masks["decoupled"]),
            "seconds": {"whole": seconds["bounds"] + seconds["build"] + seconds["solve"],
                        "decoupled": sum(b["wall_s"] for b in split.provenance["blocks"])}}


BOUNDS_COLUMNS = ("block", "layers", "unstable_units", "variables", "constraints", "nonzeros", "status", "final_point",
                  "usable", "rounds", "solve_s", "wall_s", "peak_rss_gb", "selfcheck_error", "selfcheck_flagged")


def block_bounds_comparison(cfg: RunConfig, store: Store, training: str = "decoupled", workers: int = 1,
                            rules: Sequence[str] | None = None, correct_only: bool = True) -> list[dict[str, Any]]:
    """`cfg`'s network scored block by block under each `ScoreConfig.block_bounds` rule (default:
    network and local; blocks cached per rule): one row per rule and block (`BOUNDS_COLUMNS`, the
    block's units and how many its usable scores prune at τ) with the pruned network's test
    accuracy (no fine-tuning) under that rule. Blocks that fail keep their rows.
    `correct_only=False`: each block's batch takes any images of each class, not only those its
    head classifies correctly (a barely trained network's head may classify none of a class).
    Stored (kind "block_bounds", `_stored_study`)."""
    rules = list(rules or choices(ScoreConfig, "block_bounds"))
    return _stored_study("block_bounds", "_bounds_rows", cfg, store, training,
                         lambda net, _metrics: {"rows": _bounds_rows(net, cfg, store, training, workers, rules, correct_only)},
                         rules=rules, correct_only=correct_only)["rows"]


def _bounds_rows(net: Decoupled, cfg: RunConfig, store: Store, training: str, workers: int, rules: Sequence[str],
                 correct_only: bool) -> list[dict[str, Any]]:
    tau = cfg.prune.resolve(cfg.model.name, cfg.data.dataset)
    test = load_split(cfg.data, "test")
    out = []
    for rule in rules:
        run = dataclasses.replace(cfg, score=dataclasses.replace(cfg.score, block_bounds=rule))
        scores = decoupled_mip_scores(net, run, store, training, workers, keep_failed=True, correct_only=correct_only)
        masks = masks_from_scores(scores, tau)
        accuracy, _loss = evaluate(apply_masks(net.model, masks, cfg.prune.bias), test)
        sizes = {name: module.out_features if isinstance(module, nn.Linear) else module.out_channels
                 for name, module in net.model.named_children() if isinstance(module, (nn.Linear, nn.Conv2d))}
        pruned = masks.n_pruned()
        out += [{"block_bounds": rule, **{k: block.get(k) for k in BOUNDS_COLUMNS},
                 "units": sum(sizes[name] for name in block["layers"]),
                 "pruned": sum(pruned.get(name, 0) for name in block["layers"]),
                 "tau": tau, "pruned_test_acc": accuracy} for block in scores.provenance["blocks"]]
    return out
