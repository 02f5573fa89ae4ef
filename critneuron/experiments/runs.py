"""Train and score, cached: the one train-and-cache path of the CLI, notebooks, sweeps and benchmarks.

Every stage is keyed in the result store by what determines it (config, weights hash, batch
indices, versions), so rerunning a notebook, the CLI or a sweep never retrains or re-solves what
has not changed. Each stage also records the code it depends on (the `*_CODE` declarations, see
`experiments.fingerprint`); a stored stage whose code has changed since is recomputed. Training
covers the training modules and its glue here, not the MIP modules; scoring covers the MIP
modules and training's code.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from critneuron.catalog import dataset_record
from critneuron.config import DataConfig, RunConfig, ScoreConfig, to_dict
from critneuron.experiments.fingerprint import Code
from critneuron.experiments.lookup import the_fresh_run
from critneuron.experiments.store import RunOutput, Store, versions
from critneuron.mip.scores import Scores, score
from critneuron.mip.solve import solver_version
from critneuron.nets.batches import select_mip_batch
from critneuron.nets.data import dataset_source, load_split
from critneuron.nets.models import build_model
from critneuron.nets.train import evaluate, load_checkpoint, save_checkpoint, torch_threads, train_model

# The code of each stored stage. Scoring takes its compute modules whole (any edit in `mip`
# counts); trainings, the long computations that results are shipped from, follow their
# definitions only, so new code beside them in `nets` does not make them stale.
TRAIN_CODE = Code(("critneuron.experiments.runs:_train",))
SCORING = ("critneuron.mip.scores", "critneuron.experiments.runs:score_inputs")
SCORE_CODE = Code(SCORING, after=(TRAIN_CODE,))
# stored runs train single-threaded: the same config gives the same weights on any executor of one
# machine (another CPU may sum in another order: `Store.cached` then raises IrreproducibleError)
TRAIN_THREADS = 1


def weights_hash(model: nn.Module) -> str:
    """SHA-256 (16 hex digits) of a model's state_dict, in order, as float64 bytes."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().double().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def train_config(cfg: RunConfig) -> dict:
    """The part of `cfg` that determines its trained network (the data root does not)."""
    return {"data": to_dict(dataclasses.replace(cfg.data, root=None)), "model": to_dict(cfg.model),
            "train": to_dict(cfg.train)}


def run_config(cfg: RunConfig) -> dict[str, Any]:
    """`cfg` as a stored study's config holds it: all but the data root, which changes no result."""
    return to_dict(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=None)))


def network_inputs(cfg: RunConfig, weights: str) -> dict[str, Any]:
    """What keys a stage computed on `cfg`'s trained network besides its config, all known without
    the network (so a store that has the stage needs no checkpoint): the weights' hash, the data
    source, the versions."""
    return {"weights": weights, "source": dataset_source(cfg.data), **versions()}


def train_inputs(cfg: RunConfig) -> dict:
    """What determines a trained network besides its config: data source, torch version, threads."""
    return {"source": dataset_source(cfg.data), "torch": torch.__version__, "torch_threads": TRAIN_THREADS}


def trained_checkpoint(cfg: RunConfig, store: Store, progress: bool = False,
                       device: str | None = None) -> tuple[Path, dict]:
    """The stored checkpoint of `cfg`'s trained network (trained once; it holds the weights and
    the initial weights `init_state`) and its metrics."""
    config, inputs = train_config(cfg), train_inputs(cfg)
    metrics = store.cached("train", config, lambda: _train(cfg, progress, device), code=TRAIN_CODE,
                           needs=("checkpoint.pt",), **inputs)  # once, even across workers
    return store.path("train", store.key("train", config, **inputs)) / "artifacts" / "checkpoint.pt", metrics


def trained_metrics(cfg: RunConfig, store: Store) -> dict:
    """The metrics of `cfg`'s trained network (trained once). Unlike `trained_checkpoint` it takes
    a stored run without its checkpoint as it is (a clone of a shipped store): training it again on
    another CPU gives other weights (float summation order), which would replace the stored run."""
    return store.cached("train", train_config(cfg), lambda: _train(cfg, False), code=TRAIN_CODE, **train_inputs(cfg))


def trained_model(cfg: RunConfig, store: Store, progress: bool = False) -> tuple[nn.Sequential, dict]:
    """The trained network of `cfg` (trained once, then loaded from the store) and its metrics."""
    path, metrics = trained_checkpoint(cfg, store, progress)
    model, _meta = load_checkpoint(path)
    return model.eval(), metrics


def _train(cfg: RunConfig, progress: bool, device: str | None = None) -> RunOutput:
    start = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model.name, cfg.model.width, seed=cfg.train.seed)
    train, val, test = (load_split(cfg.data, s) for s in ("train", "val", "test"))
    augment = dataset_record(cfg.data.dataset).augment
    with torch_threads(TRAIN_THREADS):
        result = train_model(model, train, val, cfg.train, augment=augment, device=device, progress=progress)
    test_acc, test_loss = evaluate(result.model, test)
    metrics = {"test_accuracy": test_acc, "test_loss": test_loss, "best_epoch": result.best_epoch,
               "history": result.history, "train_seconds": time.perf_counter() - start,
               "weights_hash": weights_hash(result.model), "source": dataset_source(cfg.data), "augment": augment,
               "sizes": {"train": len(train), "val": len(val), "test": len(test)}}
    return checkpoint_output(result.model, cfg, result.init_state, metrics)


def checkpoint_output(model: nn.Module, cfg: RunConfig, init_state, metrics: dict, heads=None) -> RunOutput:
    """A training run's stored output: `metrics` and the checkpoint (weights, initial weights,
    configs, and the auxiliary heads' state if given)."""
    with tempfile.TemporaryDirectory(prefix="critneuron-") as tmp:
        path = Path(tmp) / "checkpoint.pt"
        save_checkpoint(path, model, cfg.model, cfg.data, cfg.train, init_state, metrics, heads)
        return RunOutput(result=metrics, artifacts={"checkpoint.pt": path.read_bytes()})


def score_inputs(model: nn.Sequential, data: DataConfig, cfg: ScoreConfig,
                 correct_only: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The balanced MIP batch (x, y) of `model` chosen by `cfg.batch_rule` (`nets.batches.select_mip_batch`),
    and everything that determines a score besides `cfg`: weights hash, dataset, source, batch
    indices, versions. `correct_only=False`: images need not be classified correctly (untrained
    networks; the random rule only)."""
    x, y, indices = select_mip_batch(cfg.batch_rule, model, data, cfg.batch_size, seed=cfg.seed,
                                     correct_only=correct_only)
    inputs = {"weights": weights_hash(model), "dataset": data.dataset, "source": dataset_source(data),
              "batch_indices": indices.tolist(), "solver": solver_version(cfg), **versions()}
    return x, y, inputs


def reusable_here(run: dict) -> bool:
    """Whether a stored score (`Store.read` record) may be reused on this machine: yes, unless its
    solve was stopped by the time limit on another host (what a time limit reaches depends on the
    machine, so such scores are solved again here)."""
    statuses = [block.get("status") for block in run["result"].get("provenance", {}).get("blocks", [])]
    statuses.append(run["result"].get("provenance", {}).get("solver", {}).get("status"))
    return "maxTimeLimit" not in statuses or run["meta"].get("host") == socket.gethostname()


def mip_scores(model: nn.Sequential, cfg: RunConfig, store: Store, correct_only: bool = True) -> Scores:
    """MIP scores of `model` on its balanced training batch (see `score_inputs`), solved once per key
    (and again on a machine other than the one whose time limit stopped it, `reusable_here`)."""
    x, y, inputs = score_inputs(model, cfg.data, cfg.score, correct_only)
    result = store.cached("score", to_dict(cfg.score),
                          lambda: score(model, x, y, cfg.score, inputs["batch_indices"]).to_dict(), code=SCORE_CODE,
                          reuse_if=reusable_here, **inputs)
    return Scores.from_dict(result)


def stored_scores(cfg: RunConfig, store: Store, weights: str) -> Scores | None:
    """The stored MIP scores of `cfg` on the network of weights hash `weights`, read without the
    network (its batch is a function of the weights, the data and `cfg.score`, so everything else
    `score_inputs` keys is known): None unless exactly one fresh run matches, reusable here."""
    run = the_fresh_run(store, "score", to_dict(cfg.score), weights=weights, dataset=cfg.data.dataset,
                        source=dataset_source(cfg.data), solver=solver_version(cfg.score), **versions())
    return Scores.from_dict(run["result"]) if run is not None and reusable_here(run) else None


def network_scores(cfg: RunConfig, store: Store) -> tuple[str, Scores, Callable[[], nn.Sequential]]:
    """The weights' hash of `cfg`'s trained network, its MIP scores, and a loader of the network:
    stored scores are read without it (`stored_scores`), so the network is loaded (trained where
    the store lacks it) only for scores not stored or when a caller calls the loader."""
    weights = trained_metrics(cfg, store)["weights_hash"]
    network = functools.cache(lambda: trained_model(cfg, store)[0])
    scores = stored_scores(cfg, store, weights)
    return weights, scores if scores is not None else mip_scores(network(), cfg, store), network
