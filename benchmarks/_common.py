"""Helpers shared by the benchmark scripts: trained-model cache, environment report, tables.

Not part of the package and not tests: the scripts print figures for the README.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
from pathlib import Path
from typing import Any, Sequence

import torch

from critneuron.config import DataConfig, ModelConfig, RunConfig, paper_train_config, to_dict
from critneuron.experiments.runs import TRAIN_CODE, train_config, train_inputs, trained_checkpoint
from critneuron.experiments.store import Store
from critneuron.experiments.store import versions as package_versions
from critneuron.nets.data import TensorData, data_root, load_split
from critneuron.nets.train import load_checkpoint

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"
DEFAULT_CACHE = DEFAULT_OUT / "checkpoints"
PACKAGES = ("torch", "torchvision", "numpy", "pyomo", "highspy")


def add_common_args(parser: argparse.ArgumentParser, name: str) -> None:
    """The options every benchmark shares: how the models are trained and scored, and where
    checkpoints and the results file `name`.{csv,json} go."""
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (paper optimiser)")
    parser.add_argument("--subset", type=int, default=None, help="train on this many MNIST images (quick runs)")
    parser.add_argument("--batch-size", type=int, default=10, help="MIP batch size (paper: 10)")
    parser.add_argument("--time-limit", type=float, default=600.0, help="solver time limit per score() call, s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="checkpoint cache folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where {name}.{{csv,json}} go")


def add_decoupled_args(parser: argparse.ArgumentParser, width: float, workers: int, workers_help: str) -> None:
    """The network a decoupled benchmark trains (model, width, dataset) and its sub-MIPs' workers."""
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--width", type=float, default=width, help="channel multiplier (vgg16 only)")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--workers", type=int, default=workers, help=workers_help)


def decoupled_config(args: argparse.Namespace, **data: Any) -> RunConfig:
    """The run config of the network `add_decoupled_args` names, with the paper's schedule for
    --epochs and --seed (`data`: further DataConfig fields)."""
    return RunConfig(data=DataConfig(dataset=args.dataset, subset=args.subset, **data),
                     model=ModelConfig(name=args.model, width=args.width),
                     train=paper_train_config(args.model, args.dataset, args.epochs, args.seed))


def environment() -> dict[str, Any]:
    """Package versions and the machine the figures come from."""
    versions = package_versions(PACKAGES)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    machine = {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    return {"versions": versions, "machine": machine}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_environment(env: dict[str, Any]) -> None:
    """One line of versions, one of the machine."""
    print("versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    m = env["machine"]
    print(f"machine:  {m['processor']}; {m['cpu_count']} CPUs ({m['cpus_usable']} usable); "
          f"torch threads {m['torch_threads']}; CUDA {'yes' if m['cuda'] else 'no'}; {m['platform']}")
    print(f"data:     {data_root()}")


def load_mnist(subset: int | None = None) -> tuple[DataConfig, TensorData, TensorData, TensorData]:
    """MNIST train/val/test splits (optionally a seeded training subset, for quick runs)."""
    cfg = DataConfig(dataset="mnist", subset=subset)
    return cfg, load_split(cfg, "train"), load_split(cfg, "val"), load_split(cfg, "test")


def trained_model(name: str, epochs: int, cache: Path, subset: int | None = None, seed: int = 0,
                  data: tuple | None = None) -> tuple[torch.nn.Sequential, dict[str, Any]]:
    """A model trained on MNIST with the paper's optimiser for `epochs`, through the package's one
    train-and-cache path (`experiments.runs.trained_checkpoint`) with `cache` as its result store.

    Returns (model on the CPU in eval mode, its stored metrics plus the checkpoint path and whether
    it was reused). `data` (what `load_mnist` returns) only names the data config.
    """
    data_cfg = (data or (DataConfig(dataset="mnist", subset=subset),))[0]
    cfg = RunConfig(data=data_cfg, model=ModelConfig(name=name),
                    train=paper_train_config(name, "mnist", epochs=epochs, seed=seed))
    store = Store(cache)
    reused = store.is_fresh("train", store.key("train", train_config(cfg), **train_inputs(cfg)), TRAIN_CODE)
    path, metrics = trained_checkpoint(cfg, store)
    model, _meta = load_checkpoint(path)
    return model.cpu().eval(), {**metrics, "checkpoint": str(path), "reused": reused}


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A fixed-width text table; `columns` are (key, header, format spec), e.g. ("solve", "solve s", ".2f")."""
    cells = [[_cell(row.get(key), spec) for key, _, spec in columns] for row in rows]
    heads = [head for _, head, _ in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    align = [(str.ljust if spec == "s" else str.rjust) for _, _, spec in columns]
    lines = ["  ".join(a(h, w) for a, h, w in zip(align, heads, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(a(c, w) for a, c, w in zip(align, row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def write_results(out: Path, stem: str, rows: list[dict[str, Any]], extra: dict[str, Any]) -> tuple[Path, Path]:
    """`<out>/<stem>.csv` (the rows, flat) and `<out>/<stem>.json` (rows plus `extra`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / f"{stem}.csv", out / f"{stem}.json"
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys and not isinstance(row[k], (dict, list))]
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps({**extra, "rows": rows}, indent=1, default=_jsonable) + "\n")
    return csv_path, json_path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        return to_dict(value)
    return str(value)
