"""The `critneuron` command: argparse subcommands.

Each subcommand is one `_add_<name>(subparsers)` + `_run_<name>(args) -> int` pair, registered in
`SUBCOMMANDS`. Options that set a config field come from the dataclass fields and their
`metadata["help"]` (`add_config_args` / `config_from_args`). Named errors (`CritneuronError`)
print as one line `error: ...` and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torchvision

from critneuron.config import (
    DataConfig, ModelConfig, PruneConfig, RunConfig, ScoreConfig, TrainConfig, config_hash, from_dict,
    paper_train_config, to_dict,
)
from critneuron.errors import CritneuronError
from critneuron.experiments.decoupled import decoupled_checkpoint, decoupled_mip_scores, with_heads
from critneuron.experiments.rows import table_row
from critneuron.experiments.runs import score_inputs, trained_checkpoint, weights_hash
from critneuron.experiments.store import Store
from critneuron.experiments.whole import evaluate_masks, score_columns
from critneuron.machinery.book import build_book
from critneuron.machinery.bookplan import book_plan, format_plan
from critneuron.machinery.options import add_config_args, config_from_args
from critneuron.machinery.sweep import add_arguments as add_sweep_arguments
from critneuron.machinery.sweep import run_from_args as run_sweep_from_args
from critneuron.mip.scores import Scores, score
from critneuron.nets.data import SPLITS, data_root, dataset_source, load_split
from critneuron.nets.heads import TRAINING
from critneuron.nets.train import load_checkpoint, resolve_device, save_checkpoint
from critneuron.pruning.masks import Masks, apply_masks

def _paper_default(f: dataclasses.Field) -> str:
    return "default: the paper's schedule for --model on --dataset (catalog)"


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a network and write its checkpoint and metrics",
        description="Train a network with the authors' settings for the dataset (override with the "
        "options below); print test accuracy, loss and wall time; write checkpoint.pt and metrics.json.",
    )
    add_config_args(parser, ModelConfig, rename={"name": "model"})
    add_config_args(parser, DataConfig, rename={"root": "data-root"})
    add_config_args(parser, TrainConfig, default_note=_paper_default)
    parser.add_argument(
        "--out", type=Path, help="output folder (default: runs/train/<model>-<dataset>-<config hash>)"
    )
    parser.add_argument("--results", help="result store that caches the trained network "
                        "(default: $CRITNEURON_RESULTS, else results/); a stored one is reused")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cuda when available)")
    parser.add_argument("--training", choices=TRAINING, default="end-to-end",
                        help="end-to-end, or decoupled: greedily, block by block with auxiliary heads (kept in the "
                        "checkpoint, for `critneuron score --decoupled`; the paper's way for vgg16) "
                        "(default: end-to-end)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar (default: on)")
    parser.set_defaults(run=_run_train)


def _plain(configs: dict[str, Any]) -> dict[str, dict]:
    return {key: to_dict(cfg) for key, cfg in configs.items()}


def _provenance(configs: dict[str, Any], seed: int) -> dict[str, Any]:
    return {
        "config": _plain(configs),
        "config_hash": config_hash(_plain(configs)),
        "seed": seed,
        "critneuron_version": metadata.version("critneuron"),
        "torch_version": str(torch.__version__),
        "torchvision_version": str(torchvision.__version__),
        "python_version": platform.python_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
    }


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


def _run_train(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    model_cfg = config_from_args(ModelConfig, args)
    data_cfg = config_from_args(DataConfig, args)
    train_cfg = config_from_args(TrainConfig, args, base=paper_train_config(model_cfg.name, data_cfg.dataset))
    configs = {"model": model_cfg, "data": data_cfg, "train": train_cfg}
    out = args.out or Path("runs", "train", f"{model_cfg.name}-{data_cfg.dataset}-{config_hash(_plain(configs))}")
    run, store = RunConfig(data=data_cfg, model=model_cfg, train=train_cfg), Store(args.results)
    if args.training == "decoupled":
        stored, metrics = decoupled_checkpoint(run, store, args.progress)
    else:
        stored, metrics = trained_checkpoint(run, store, args.progress, args.device)
    metrics = {**metrics, "device": str(resolve_device(args.device)), "data_root": str(data_root(data_cfg.root)),
               "checkpoint_stored": str(stored), "wall_seconds": time.perf_counter() - start,
               **_provenance(configs, train_cfg.seed)}
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(stored, out / "checkpoint.pt")
    _write_json(out / "metrics.json", metrics)
    print(f"test accuracy {metrics['test_accuracy']:.4f}  test loss {metrics['test_loss']:.4f}  "
          f"wall time {metrics['wall_seconds']:.1f} s  ({out})")
    return 0


def _add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="checkpoint.pt written by `critneuron train` (it names model and dataset)")
    parser.add_argument("--data-root", help="data root (default: the checkpoint's, else $CRITNEURON_DATA, else data/)")


def _load_checkpoint(args: argparse.Namespace) -> tuple[torch.nn.Sequential, dict[str, Any], DataConfig]:
    if not args.checkpoint.is_file():
        raise CritneuronError(f"checkpoint {args.checkpoint} does not exist: train one with `critneuron train`")
    model, meta = load_checkpoint(args.checkpoint)
    data_cfg = meta["data_config"]
    if args.data_root:
        data_cfg = dataclasses.replace(data_cfg, root=args.data_root)
    return model.eval(), meta, data_cfg


def _add_score(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score", help="score every neuron/channel of a trained checkpoint with the MIP",
        description="Draw the balanced MIP batch (one correctly classified training image per class, "
        "seeded), solve the scoring MIP with the options below and write the scores with objective, "
        "batch indices, solver status/gap/version, times, Kelley rounds, self-check error and config.",
    )
    _add_checkpoint_args(parser)
    add_config_args(parser, ScoreConfig)
    parser.add_argument("--out", type=Path, default=Path("scores.json"), help="results file (default: scores.json)")
    group = parser.add_argument_group("decoupled scoring (one sub-MIP per block, a checkpoint with heads)")
    group.add_argument("--decoupled", action="store_true",
                       help="score block by block with the checkpoint's auxiliary heads (`train --training decoupled`); "
                       "a block without a solution is written as status failed (with its size, rounds, time and peak "
                       "memory) and the command exits with 1. Each block's line gives its status, final point, whether "
                       "pruning uses its scores (optimal or stalled; in exact mode also a passed self-check) and its "
                       "self-check error, marked ! above --selfcheck-tol; --block-bounds sets the blocks' input boxes")
    group.add_argument("--blocks", type=block_list, help="score only these blocks, 1-based: '3,11,13' or '3-5' "
                       "(the tail is the last; default: all)")
    group.add_argument("--scheduler", help="Dask scheduler of the sub-MIPs: tcp://host:8786, or serial "
                       "(default: a local cluster of --workers processes)")
    group.add_argument("--workers", type=int, default=1, help="local sub-MIPs at once (default: 1, serial)")
    group.add_argument("--any-images", action="store_true",
                       help="one image per class whether or not it is classified correctly (barely trained networks)")
    group.add_argument("--results", help="result store of the blocks' scores: each is stored as it finishes, so "
                       "a killed run resumes (default: $CRITNEURON_RESULTS, else results/)")
    parser.set_defaults(run=_run_score)


def block_list(spec: str) -> list[int]:
    """'3,11,13' or '3-5' (1-based block numbers) -> the numbers (an argparse type)."""
    try:
        numbers = [n for part in spec.split(",") for lo, _, hi in [part.partition("-")]
                   for n in range(int(lo), int(hi or lo) + 1)]
    except ValueError:
        numbers = []
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"{spec!r}: give block numbers from 1, e.g. '3,11,13' or '3-5'")
    return numbers


def _run_score(args: argparse.Namespace) -> int:
    model, meta, data_cfg = _load_checkpoint(args)
    cfg = config_from_args(ScoreConfig, args)
    if args.decoupled:
        return _score_decoupled(args, model, meta, data_cfg, cfg)
    x, y, inputs = score_inputs(model, data_cfg, cfg)
    scores = score(model, x, y, cfg, inputs["batch_indices"])
    prov, solver = scores.provenance, scores.provenance["solver"]
    payload = {"objective": solver["objective"], **scores.to_dict(), "checkpoint": str(args.checkpoint),
               "model": meta["model_config"].name, "inputs": inputs, **_provenance({"score": cfg}, cfg.seed)}
    _write_json(args.out, payload)
    sec = prov["seconds"]
    print(f"{cfg.mode} objective {solver['objective']:.6f}  status {solver['status']}  gap {solver['gap']}  "
          f"unstable units {prov['unstable_units']}  bounds {sec['bounds']:.2f} s  build {sec['build']:.2f} s  "
          f"solve {sec['solve']:.2f} s  Kelley rounds {solver['rounds']}  "
          f"self-check {prov['selfcheck_error']:.1e}  ({args.out})")
    return 0


def _score_decoupled(args: argparse.Namespace, model: torch.nn.Sequential, meta: dict[str, Any],
                     data_cfg: DataConfig, cfg: ScoreConfig) -> int:
    train_cfg = meta["train_config"]
    net = with_heads(model, meta["heads"], train_cfg.seed)
    run = RunConfig(data=data_cfg, model=meta["model_config"], train=train_cfg, score=cfg)
    scores = decoupled_mip_scores(net, run, Store(args.results), meta["metrics"].get("training", "decoupled"),
                                  args.workers, progress=True, scheduler=args.scheduler, blocks=args.blocks,
                                  correct_only=not args.any_images, keep_failed=True)
    blocks = scores.provenance["blocks"]
    failed = [b["block"] for b in blocks if b["status"] == "failed"]
    unused = [b["block"] for b in blocks if not b["usable"]]
    flagged = [b["block"] for b in blocks if b["selfcheck_flagged"]]
    payload = {**scores.to_dict(), "checkpoint": str(args.checkpoint), "model": run.model.name,
               "all_optimal": all(b["status"] == "optimal" for b in blocks), "failed_blocks": failed,
               "unused_blocks": unused, "selfcheck_flagged_blocks": flagged, "block_bounds": cfg.block_bounds,
               **_provenance({"score": cfg}, cfg.seed)}
    _write_json(args.out, payload)
    show = lambda value, spec: "-" if value is None else format(value, spec)  # noqa: E731 - a failed block's unknowns
    print(f"input boxes: block_bounds {cfg.block_bounds}; self-check flagged (!) above {cfg.selfcheck_tol:g}; "
          f"pruning uses the usable blocks (optimal or stalled{'' if cfg.mode == 'relaxed' else ', self-check passed'})")
    for b in blocks:
        flag = "!" if b["selfcheck_flagged"] else " "
        print(f"{b['block']:8} {','.join(b['layers']):22} {b['status']:14} {b['final_point']:8} "
              f"{'usable' if b['usable'] else 'UNUSED':6}  self-check {show(b['selfcheck_error'], '7.1e')}{flag}  "
              f"gap {b['gap']}  rounds {show(b['rounds'], '3')}  vars {show(b['variables'], '7')}  "
              f"rows {show(b['constraints'], '7')}  nonzeros {show(b['nonzeros'], '9')}  "
              f"unstable {show(b['unstable_units'], '6')}  solve {show(b['solve_s'], '8.1f')} s  "
              f"wall {show(b['wall_s'], '8.1f')} s  peak {show(b['peak_rss_gb'], '.1f')} GB"
              + (f"  ({b['error']})" if b["status"] == "failed" else ""))
    print(f"{len(blocks)} blocks, {'all' if payload['all_optimal'] else 'NOT all'} optimal"
          + (f", {len(failed)} failed (no scores: {', '.join(failed)})" if failed else "")
          + (f", not used for pruning: {', '.join(unused)}" if unused else "")
          + (f", self-check above {cfg.selfcheck_tol:g}: {', '.join(flagged)}" if flagged else "") + f"  ({args.out})")
    return 1 if failed else 0


def _add_prune(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prune", help="prune a checkpoint with its scores and evaluate it (no fine-tuning by default)",
        description="Prune every neuron/channel scored below the threshold, evaluate reference and pruned "
        "network on train and test, and random and critical masks at the same per-layer counts; write "
        "the table row (accuracies, % neurons and parameters pruned, masks) as JSON.",
    )
    _add_checkpoint_args(parser)
    parser.add_argument("--scores", type=Path, required=True, help="scores file written by `critneuron score`")
    add_config_args(parser, PruneConfig, default_note=_prune_default)
    parser.add_argument("--out", type=Path, default=Path("prune.json"), help="results file (default: prune.json)")
    parser.add_argument("--save-model", type=Path, help="also write the masked network as a checkpoint here")
    parser.set_defaults(run=_run_prune)


def _prune_default(f: dataclasses.Field) -> str:
    return "default: the paper's tau for the model and dataset" if f.name == "threshold" else f"default: {f.default}"


def _read_scores(path: Path) -> tuple[dict[str, Any], Scores]:
    """The JSON of a scores file and its `Scores`; a named error for anything else."""
    try:
        raw = json.loads(path.read_text())
        scores = Scores.from_dict(raw)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError and ConfigError are ValueErrors
        raise CritneuronError(f"{path} is not a scores file written by `critneuron score`: {_first_line(err)}") from err
    return raw, scores


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _run_prune(args: argparse.Namespace) -> int:
    model, meta, data_cfg = _load_checkpoint(args)
    if not args.scores.is_file():
        raise CritneuronError(f"scores file {args.scores} does not exist: write one with `critneuron score`")
    raw, scores = _read_scores(args.scores)
    made_for = raw.get("inputs", {}).get("weights")
    if made_for not in (None, weights_hash(model)):
        raise CritneuronError(f"{args.scores} scores other weights ({made_for}) than {args.checkpoint} "
                              f"({weights_hash(model)}): score this checkpoint first")
    if "config" not in scores.provenance:
        raise CritneuronError(f"{args.scores} has no scoring config in its provenance: write it with `critneuron score`")
    cfg = RunConfig(data=data_cfg, model=meta["model_config"], train=meta["train_config"],
                    score=from_dict(ScoreConfig, scores.provenance["config"]), prune=config_from_args(PruneConfig, args))
    row = evaluate_masks(model, scores, cfg, {split: load_split(data_cfg, split) for split in SPLITS})
    row.update({"config": to_dict(cfg), "source": dataset_source(data_cfg), "scores_file": str(args.scores),
                **score_columns(scores), "provenance": _provenance({"prune": cfg.prune}, cfg.score.seed)})
    flat = row["table_row"] = table_row(row)
    _write_json(args.out, row)
    if args.save_model:
        pruned = apply_masks(model, Masks.from_dict(row["masks"]), cfg.prune.bias)
        save_checkpoint(args.save_model, pruned, cfg.model, data_cfg, cfg.train, meta["init_state"], flat)
    print(f"tau {flat['tau']}  pruned {flat['pct_neurons_pruned']:.1f}% neurons, {flat['pct_params_pruned']:.1f}% "
          f"parameters  test accuracy {flat['ref_test_acc']:.4f} -> {flat['pruned_test_acc']:.4f} "
          f"(random {flat['random_test_acc']:.4f}, critical {flat['critical_test_acc']:.4f})  ({args.out})")
    return 0


def _add_book(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "book", help="execute the notebooks on a profile and build the HTML book",
        description="Run every notebooks/NN_*.ipynb with papermill into BOOK_DIR/_build/executed/ "
        "(profile parameters injected, one progress line each), then `jupyter-book build` into "
        "BOOK_DIR/_build/html. A failing notebook is named with its cell; the others still run.",
    )
    parser.add_argument("--profile", default="quick",
                        help="smoke, quick, shipped or paper (notebooks/profiles/NAME.yaml), or a YAML path "
                        "(default: quick)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="run only these notebooks (stem or number, e.g. 02_pruning or 02); "
                        "the others keep their executed copies")
    parser.add_argument("--timeout", type=float, help="seconds per notebook (default: the profile's timeout)")
    parser.add_argument("--book-dir", type=Path, default=Path("book"), help="the book folder (default: book)")
    parser.add_argument("--notebooks-dir", type=Path, default=Path("notebooks"),
                        help="the notebooks folder (default: notebooks)")
    parser.add_argument("--plan", action="store_true",
                        help="build nothing: list every chapter's stages, fresh, stale or missing in the result "
                        "store, and the estimated CPU time of what is not fresh (rates: benchmarks/rates.json)")
    parser.set_defaults(run=_run_book)


def _run_book(args: argparse.Namespace) -> int:
    if args.plan:
        print(format_plan(book_plan(args.profile, args.notebooks_dir, only=args.only)))
        return 0
    start = time.perf_counter()
    index = build_book(args.profile, notebooks_dir=args.notebooks_dir, book_dir=args.book_dir,
                       only=args.only, timeout=args.timeout)
    print(f"book built in {time.perf_counter() - start:.1f} s: {index}")
    return 0


def _add_sweep(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep", help="run a sweep file on Dask, skipping runs already stored",
        description="Expand a sweep file (see sweeps/) into run configs, skip the complete ones in the "
        "results store and run the rest on a local Dask cluster, an existing one (--scheduler "
        "tcp://host:8786) or serially. Failures are recorded per run; rerun to retry them.",
    )
    add_sweep_arguments(parser)
    parser.set_defaults(run=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> int:
    return run_sweep_from_args(args)


def _add_results(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("results", help="list, show and export stored runs")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = actions.add_parser("ls", help="one line per run: kind, key, status, fresh/stale (and error)",
                            description="One line per run: kind, key, status (complete, failed, incomplete), "
                            "then for a complete run 'fresh' if the code it records still has its fingerprint, "
                            "'stale' if that code has changed since (it is recomputed when next needed).")
    show = actions.add_parser("show", help="config, result and artifacts of one run as JSON")
    show.add_argument("key", help="run key, or a prefix that names one run")
    export = actions.add_parser("export", help="one CSV row per complete run (config and scalar results)")
    export.add_argument("--csv", required=True, type=Path, help="output CSV file")
    for sub in (ls, show, export):
        sub.add_argument("--kind", help="only runs of this kind, e.g. prune, score, train")
        sub.add_argument("--results", help="results root (default: $CRITNEURON_RESULTS, else results)")
    parser.set_defaults(run=_run_results)


def _run_results(args: argparse.Namespace) -> int:
    store = Store(args.results)
    if args.action == "ls":
        for record in store.ls(args.kind):
            error = record.get("error", "").strip().splitlines()[-1:]
            print(f"{record['kind']:<8} {record['key']}  {record['status']:<10}  {record['code'] or '-':<5}",
                  *error, sep="  ")
    elif args.action == "show":
        record = store.find(args.key, args.kind)
        shown = store.read(record["kind"], record["key"]) if record["status"] == "complete" else record
        print(json.dumps(shown, indent=1))
    else:
        print(f"{store.export_csv(args.kind, args.csv)} runs -> {args.csv}")
    return 0


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_train, _add_score, _add_prune, _add_book, _add_sweep, _add_results)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand in `SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="critneuron", description="Identifying critical neurons with mixed-integer programming."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `critneuron` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CritneuronError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
