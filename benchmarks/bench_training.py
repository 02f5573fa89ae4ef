"""Where a training epoch goes, single-threaded: data pipeline, augmentation, forward/backward,
evaluation; and the per-image rates `critneuron book --plan` estimates training time from.

For each case (model, width, dataset, training) the script takes `--batches` minibatches of 128
of the real training split and times, on the same batches:

- index: gathering the uint8 images and labels of each shuffled batch from memory;
- augment: `nets.data.augment_batch` (CIFAR-10 only: random crop with padding 4, flip);
- to_float: uint8 -> float32 3×32×32 (`nets.data.to_float`);
- fwd/bwd: forward, loss, backward and optimiser step on the prepared float batches alone
  (end-to-end training; for decoupled training, the loop time minus the pipeline above);
- loop: the package's own training loop (`nets.train.train_model`, or `nets.heads.train_decoupled`
  for decoupled training) over those images, one epoch, no validation;
- eval: `nets.train.evaluate` per image (batches of 1024).

Times are wall seconds; the rates (and "epoch CPU s") are the process's CPU seconds, which on a
shared machine are the cost of the work without the waiting.

An epoch is extrapolated to the full split (80 % of the official training set; the rest is the
validation set that every epoch evaluates). With --side-by-side, the fwd/bwd loop of LeNet-5 runs
in two processes at once, to show whether two single-threaded trainings share the 2 cores.
With --rates, the measured rates are merged into the rates file (section "training"; cases
measured again replaced), keeping its other sections.

Usage:
    OMP_NUM_THREADS=1 CRITNEURON_DATA=../shared/data .venv/bin/python benchmarks/bench_training.py \
        --batches 40 --side-by-side --rates benchmarks/rates.json
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, format_table, print_environment  # noqa: E402

from critneuron.catalog import dataset_record  # noqa: E402
from critneuron.config import DataConfig, paper_train_config  # noqa: E402
from critneuron.machinery.rates import rate_key  # noqa: E402
from critneuron.nets.data import TensorData, augment_batch, load_split, to_float  # noqa: E402
from critneuron.nets.heads import Decoupled, train_decoupled  # noqa: E402
from critneuron.nets.models import build_model  # noqa: E402
from critneuron.nets.train import evaluate, make_optimizer, train_model  # noqa: E402

BATCH = 128
# (model, width, dataset, training, share of --batches): VGG-16 at full width takes ~9 s a batch
CASES = (("fc3", 1.0, "mnist", "end-to-end", 1.0), ("fc4", 1.0, "mnist", "end-to-end", 1.0),
         ("lenet5", 1.0, "mnist", "end-to-end", 1.0), ("lenet5", 1.0, "cifar10", "end-to-end", 1.0),
         ("lenet5", 1.0, "cifar10", "decoupled", 1.0), ("vgg16", 0.0625, "cifar10", "decoupled", 0.25),
         ("vgg16", 0.125, "cifar10", "decoupled", 0.1), ("vgg16", 0.25, "cifar10", "decoupled", 0.1),
         ("vgg16", 0.5, "cifar10", "decoupled", 0.05), ("vgg16", 1.0, "cifar10", "decoupled", 0.05),
         ("vgg16", 0.0625, "cifar10", "end-to-end", 0.25), ("vgg16", 0.125, "cifar10", "end-to-end", 0.1),
         ("vgg16", 0.25, "cifar10", "end-to-end", 0.1), ("vgg16", 0.5, "cifar10", "end-to-end", 0.05),
         ("vgg16", 1.0, "cifar10", "end-to-end", 0.05))


def _timed(fn) -> tuple[float, float]:
    """(wall, process CPU) seconds of `fn()`: on a loaded machine the CPU time is the cost."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def _subset(data: TensorData, idx: torch.Tensor) -> TensorData:
    return TensorData(data.images[idx], data.labels[idx], data.indices[idx], data.dataset, data.split, data.source)


def _pipeline(data: TensorData, order: torch.Tensor, n: int, augment: bool) -> tuple[dict, list]:
    """Seconds of index, augment and to_float over `n` batches, and the prepared float batches."""
    gen, secs, batches = torch.Generator().manual_seed(0), {"index": 0.0, "augment": 0.0, "to_float": 0.0}, []
    for k in range(n):
        idx = order[k * BATCH:(k + 1) * BATCH]
        start = time.perf_counter()
        images, labels = data.images[idx], data.labels[idx]
        secs["index"] += time.perf_counter() - start
        if augment:
            start = time.perf_counter()
            images = augment_batch(images, gen)
            secs["augment"] += time.perf_counter() - start
        start = time.perf_counter()
        x = to_float(images)
        secs["to_float"] += time.perf_counter() - start
        batches.append((x, labels))
    return secs, batches


def fwd_bwd_seconds(model: nn.Module, batches: list, cfg) -> float:
    """Forward, loss, backward and step over prepared batches (end-to-end training)."""
    optimizer = make_optimizer(model, cfg)
    model.train()
    start = time.perf_counter()
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def measure(model_name: str, width: float, dataset: str, training: str, n: int) -> dict:
    """One case's timings over `n` batches and its extrapolated epoch."""
    torch.set_num_threads(1)
    data_cfg, augment = DataConfig(dataset=dataset), dataset_record(dataset).augment
    train, val = load_split(data_cfg, "train"), load_split(data_cfg, "val")
    cfg = paper_train_config(model_name, dataset, epochs=1, seed=0)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    pipe, batches = _pipeline(train, order, n, augment)
    chosen = _subset(train, order[:n * BATCH])
    empty = _subset(val, torch.arange(0))
    fwd_bwd_seconds(build_model(model_name, width, seed=1), batches[:2], cfg)  # warm-up: allocator, kernels
    model = build_model(model_name, width, seed=0)
    if training == "decoupled":
        net = Decoupled.build(model, seed=0)
        loop, loop_cpu = _timed(lambda: train_decoupled(net, chosen, empty, cfg, "decoupled", augment=augment,
                                                        progress=False))
        fwd_bwd = loop - sum(pipe.values())
    else:
        fwd_bwd = fwd_bwd_seconds(build_model(model_name, width, seed=0), batches, cfg)
        loop, loop_cpu = _timed(lambda: train_model(model, chosen, empty, cfg, augment=augment, progress=False))
    n_eval = min(len(val), max(1024, n * BATCH))
    eval_wall, eval_cpu = (t / n_eval for t in _timed(lambda: evaluate(model, _subset(val, torch.arange(n_eval)))))
    per_batch, eval_s = loop / n, eval_wall
    batches_per_epoch = math.ceil(len(train) / BATCH)
    epoch = per_batch * batches_per_epoch + eval_s * len(val)
    epoch_cpu = loop_cpu / n * batches_per_epoch + eval_cpu * len(val)
    return {"case": rate_key(model_name, width, augment, training), "model": model_name, "width": width,
            "dataset": dataset, "training": training, "batches": n, "index_ms": 1e3 * pipe["index"] / n,
            "augment_ms": 1e3 * pipe["augment"] / n, "to_float_ms": 1e3 * pipe["to_float"] / n,
            "fwd_bwd_ms": 1e3 * fwd_bwd / n, "loop_ms": 1e3 * per_batch,
            "overhead_pct": 100 * (per_batch - fwd_bwd / n) / per_batch,
            "eval_epoch_s": eval_s * len(val), "epoch_s": epoch,
            "eval_pct": 100 * eval_s * len(val) / epoch, "epoch_cpu_s": epoch_cpu, "cpu_pct": 100 * loop_cpu / loop,
            "train_s_per_image": loop_cpu / (n * BATCH), "eval_s_per_image": eval_cpu}


def _side_worker(n: int, queue) -> None:
    torch.set_num_threads(1)
    train = load_split(DataConfig(dataset="cifar10"), "train")
    _pipe, batches = _pipeline(train, torch.arange(len(train)), n, True)
    cfg = paper_train_config("lenet5", "cifar10", 1)
    wall, cpu = _timed(lambda: fwd_bwd_seconds(build_model("lenet5", seed=0), batches, cfg))
    queue.put((wall / n, cpu / n))


def side_by_side(n: int) -> dict:
    """LeNet-5 fwd/bwd per batch alone, then in two processes at once: (wall, CPU) ms of each."""
    context = multiprocessing.get_context("spawn")
    results = {}
    for copies in (1, 2):
        queue = context.Queue()
        procs = [context.Process(target=_side_worker, args=(n, queue)) for _ in range(copies)]
        for proc in procs:
            proc.start()
        times = [queue.get() for _ in procs]
        for proc in procs:
            proc.join()
        results[copies] = [(1e3 * wall, 1e3 * cpu) for wall, cpu in times]
    return {"alone_ms": results[1][0], "together_ms": results[2]}


def write_rates(path: Path, rows: list[dict], command: str) -> None:
    """Merge the measured training rates into the rates file: cases measured again are replaced,
    the others and the file's other sections kept; each run is listed with its date and load."""
    rates = json.loads(path.read_text()) if path.is_file() else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    section = rates.setdefault("training", {"rates": {}, "runs": []})
    section["how"] = ("benchmarks/bench_training.py: process CPU seconds of the package's training loop on N "
                      "minibatches of 128, one torch thread, per training image; of evaluation per validation image. "
                      "CPU time, not wall: the machine was shared (see each run's loadavg).")
    section["machine"] = environment()["machine"]
    section["runs"].append({"command": command, "date": date, "commit": commit, "loadavg": os.getloadavg()})
    section["rates"].update({row["case"]: {"train_s_per_image": row["train_s_per_image"],
                                           "eval_s_per_image": row["eval_s_per_image"], "batches": row["batches"],
                                           "date": date} for row in rows})
    path.write_text(json.dumps(rates, indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=40, help="minibatches per case (VGG-16: a share of them)")
    parser.add_argument("--only", nargs="*", help="run only cases whose key starts with one of these")
    parser.add_argument("--side-by-side", action="store_true", help="also two LeNet-5 trainings at once")
    parser.add_argument("--rates", type=Path, help="write the measured rates into this rates file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print_environment(environment())
    print(f"load average before: {os.getloadavg()}")
    rows = []
    for model, width, dataset, training, share in CASES:
        augment = dataset_record(dataset).augment
        if args.only and not any(rate_key(model, width, augment, training).startswith(o) for o in args.only):
            continue
        rows.append(measure(model, width, dataset, training, max(2, round(args.batches * share))))
        print(f"  {rows[-1]['case']}: {rows[-1]['loop_ms']:.1f} ms/batch", flush=True)
    print(format_table(rows, [("case", "case", "s"), ("batches", "batches", "d"), ("index_ms", "index ms", ".2f"),
                              ("augment_ms", "augment ms", ".2f"), ("to_float_ms", "to_float ms", ".2f"),
                              ("fwd_bwd_ms", "fwd/bwd ms", ".1f"), ("loop_ms", "loop ms", ".1f"),
                              ("overhead_pct", "outside fwd/bwd %", ".1f"), ("eval_epoch_s", "eval/epoch s", ".1f"),
                              ("epoch_s", "epoch s", ".1f"), ("eval_pct", "eval %", ".1f"),
                              ("epoch_cpu_s", "epoch CPU s", ".1f"), ("cpu_pct", "loop CPU/wall %", ".0f")]))
    if args.side_by_side:
        side = side_by_side(args.batches)
        print("LeNet-5 CIFAR-10 fwd/bwd per batch (wall / CPU ms): alone {:.1f} / {:.1f}; two at once ".format(
            *side["alone_ms"]) + ", ".join(f"{w:.1f} / {c:.1f}" for w, c in side["together_ms"]))
    print(f"load average after: {os.getloadavg()}")
    if args.rates:
        write_rates(args.rates, rows, "bench_training.py " + " ".join(argv if argv is not None else sys.argv[1:]))
        print(f"rates written to {args.rates}")


if __name__ == "__main__":
    main()
