"""What pruning buys at inference: dense vs masked vs compacted networks on the CPU.

For each model (trained on MNIST with the paper's optimiser, or reused from --cache) the MIP scores
one balanced batch B = 10 in relaxed mode, neurons with score < tau (the paper's tau: 0.1 for
fc3/fc4, 0.2 for lenet5) are pruned with the authors' keep-bias rule, and three networks are
compared:

  dense    the trained network;
  masked   `apply_masks`: same shapes, pruned units' incoming weights zeroed (what the paper
           evaluates; it costs as much as dense);
  compact  `compact_model`: pruned units removed, their constant outputs folded into the next
           bias; equal to masked in eval mode.

Figures: parameters (counted on the module, and the analytic count of `count_params_flops`),
multiply-accumulates per image (Linear/Conv2d), on-disk size (bytes of `torch.save(state_dict)`;
compact also the arch JSON that `save_compact` writes next to it), CPU latency (median of
--repeats timed forward passes after --warmup, batch 1 and batch 256 of real test images, the
three networks timed in interleaved order, torch.set_num_threads(--threads)), latency ratio
compact/dense next to the FLOPs ratio, test accuracy, and max |compact - masked| logits on
--check test images.

Usage:
    CRITNEURON_DATA=/work/shared/data .venv/bin/python benchmarks/bench_compaction.py \
        --models lenet5 fc3 --epochs 2
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from _common import add_common_args, environment, format_table, load_mnist, print_environment, \
    trained_model, write_results
from critneuron.pruning.compact import compact_model, save_compact
from critneuron.catalog import paper_threshold
from critneuron.config import ScoreConfig
from critneuron.errors import CritneuronError
from critneuron.nets.batches import mip_batch
from critneuron.pruning.masks import apply_masks, count_params_flops, masks_from_scores, pruning_stats
from critneuron.mip.scores import score
from critneuron.nets.train import evaluate

NETS = ("dense", "masked", "compact")


def state_bytes(model: nn.Module) -> int:
    """Bytes of `torch.save(model.state_dict())`."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def compact_bytes(model: nn.Module, arch: dict[str, Any]) -> tuple[int, int]:
    """(state_dict.pt bytes, arch.json bytes) as `save_compact` writes them."""
    with tempfile.TemporaryDirectory() as folder:
        save_compact(folder, model, arch)
        return (Path(folder) / "state_dict.pt").stat().st_size, (Path(folder) / "arch.json").stat().st_size


@torch.inference_mode()
def latencies(nets: dict[str, nn.Module], x: torch.Tensor, warmup: int, repeats: int,
              threads: int) -> dict[str, list[float]]:
    """Seconds per forward pass of each net on x with `threads` torch threads: `warmup` untimed
    rounds, then `repeats` timed rounds, each round running every net once (interleaved, so
    drifting load from other processes hits all three alike)."""
    default = torch.get_num_threads()
    torch.set_num_threads(threads)
    times: dict[str, list[float]] = {name: [] for name in nets}
    try:
        for rnd in range(warmup + repeats):
            for name, net in nets.items():
                start = time.perf_counter()
                net(x)
                elapsed = time.perf_counter() - start
                if rnd >= warmup:
                    times[name].append(elapsed)
    finally:
        torch.set_num_threads(default)
    return times


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, med, q3 = statistics.quantiles(values, n=4)
    return q1, med, q3


@torch.inference_mode()
def max_logit_diff(a: nn.Module, b: nn.Module, x: torch.Tensor, chunk: int = 1000) -> float:
    return max(float((a(part) - b(part)).abs().max()) for part in x.split(chunk))


def bench_model(name: str, args: argparse.Namespace, data: tuple) -> tuple[list[dict], dict]:
    model, info = trained_model(name, args.epochs, args.cache, args.subset, args.seed, data)
    model = model.float().eval()
    print(f"{name}: test accuracy {info['test_accuracy']:.4f} "
          + ("(cached checkpoint)" if info["reused"] else f"(trained in {info['train_seconds']:.1f} s)"), flush=True)
    _, train, _, test = data
    x, y, idx = mip_batch(model, train, batch_size=args.batch_size, seed=args.seed)
    start = time.perf_counter()
    scores = score(model, x, y, ScoreConfig(mode="relaxed", batch_size=args.batch_size, seed=args.seed,
                                            time_limit=args.time_limit), batch_indices=idx.tolist())
    score_s = time.perf_counter() - start
    tau = paper_threshold(name, "mnist") if args.tau is None else args.tau
    masks = masks_from_scores(scores, tau)
    stats = pruning_stats(model, masks)
    masked = apply_masks(model, masks, "keep-bias").eval()
    compact, arch = compact_model(model, masks, "keep-bias")
    compact = compact.eval()
    nets = {"dense": model, "masked": masked, "compact": compact}
    print(f"  scored in {score_s:.1f} s (relaxed); tau {tau:g}: pruned {stats['neurons_pruned']}/{stats['neurons']} "
          f"units; " + ", ".join(f"{k} {v['pruned']}/{v['neurons']}" for k, v in stats["layers"].items()), flush=True)

    n_check = min(args.check, len(test)) if args.check else len(test)
    x_check = test.x(torch.arange(n_check))
    diff = max_logit_diff(compact, masked, x_check)
    diff_dense = max_logit_diff(masked, model, x_check)

    params_dense, flops_dense = count_params_flops(model)
    params_compact, flops_compact = count_params_flops(model, masks)
    analytic = {"dense": (params_dense, flops_dense), "masked": (params_dense, flops_dense),
                "compact": (params_compact, flops_compact)}
    state_compact, arch_json = compact_bytes(compact, arch)
    disk = {"dense": state_bytes(model), "masked": state_bytes(masked), "compact": state_compact}

    lat = {}
    for batch in args.batches:
        xb = test.x(torch.arange(batch) % len(test))
        repeats = args.repeats if batch == 1 else max(args.repeats // 4, 10)
        lat[batch] = latencies(nets, xb, args.warmup, repeats, args.threads)

    rows = []
    for net_name, net in nets.items():
        acc, _ = evaluate(net, test)
        row = {
            "model": name, "net": net_name, "tau": tau, "params": sum(p.numel() for p in net.parameters()),
            "params_analytic": analytic[net_name][0], "flops": analytic[net_name][1],
            "flops_ratio": analytic[net_name][1] / flops_dense,
            "disk_bytes": disk[net_name], "arch_json_bytes": arch_json if net_name == "compact" else None,
            "test_accuracy": acc,
        }
        for batch, times in lat.items():
            q1, med, q3 = quartiles(times[net_name])
            base = statistics.median(lat[batch]["dense"])
            row.update({f"lat_b{batch}_ms": 1e3 * med, f"lat_b{batch}_iqr_ms": 1e3 * (q3 - q1),
                        f"lat_b{batch}_ratio": med / base, f"lat_b{batch}_n": len(times[net_name])})
        rows.append(row)
    summary = {"model": name, "tau": tau, "score_seconds": score_s, "checked_images": n_check,
               "max_abs_diff_compact_vs_masked": diff, "max_abs_diff_masked_vs_dense": diff_dense,
               "pruning": stats, "arch": arch, "train": info,
               "batch_indices": idx.tolist(), "score_status": scores.provenance["solver"]["status"]}
    return rows, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lenet5", "fc3"])
    add_common_args(parser, "bench_compaction")
    parser.add_argument("--tau", type=float, default=None, help="pruning threshold (default: the paper's)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for the latency runs")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256], help="inference batch sizes")
    parser.add_argument("--warmup", type=int, default=20, help="untimed rounds before timing")
    parser.add_argument("--repeats", type=int, default=200,
                        help="timed rounds at batch 1 (a quarter, at least 10, at larger batches)")
    parser.add_argument("--check", type=int, default=0, help="test images for the logit check (0: all)")
    args = parser.parse_args(argv)

    env = environment()
    print_environment(env)
    data = load_mnist(args.subset)
    rows, summaries = [], []
    for name in args.models:
        try:
            model_rows, summary = bench_model(name, args, data)
        except CritneuronError as err:  # e.g. too few correctly classified images for the batch
            print(f"{name}: skipped: {type(err).__name__}: {err}", flush=True)
            continue
        rows += model_rows
        summaries.append(summary)
    print(f"\nlatency: torch.set_num_threads({args.threads}); median of timed forward passes "
          f"(batch 1: {args.repeats}, larger: {max(args.repeats // 4, 10)}) after {args.warmup} warm-up rounds, "
          "nets interleaved; ratio = net / dense; FLOPs = multiply-accumulates per image\n")
    columns = [("model", "model", "s"), ("net", "net", "s"), ("params", "params", ",d"),
               ("flops", "MACs", ",d"), ("flops_ratio", "MAC ratio", ".3f"),
               ("disk_bytes", "state_dict B", ",d"), ("arch_json_bytes", "arch.json B", ",d"),
               ("test_accuracy", "test acc", ".4f")]
    for batch in args.batches:
        columns += [(f"lat_b{batch}_ms", f"b{batch} ms", ".3f"), (f"lat_b{batch}_iqr_ms", "IQR", ".3f"),
                    (f"lat_b{batch}_ratio", "ratio", ".3f")]
    print(format_table(rows, columns))
    print()
    for s in summaries:
        p = s["pruning"]
        print(f"{s['model']}: tau {s['tau']:g}, {p['neurons_pruned']}/{p['neurons']} units pruned "
              f"({p['pct_neurons_pruned']:.1f} %), params pruned (authors' measure) {p['pct_params_pruned']:.1f} %; "
              f"max |compact - masked| logits on {s['checked_images']} test images: "
              f"{s['max_abs_diff_compact_vs_masked']:.2e} (masked vs dense: {s['max_abs_diff_masked_vs_dense']:.2e})")
        mism = [r for r in rows if r["model"] == s["model"] and r["params"] != r["params_analytic"]
                and r["net"] != "masked"]
        if mism:
            print(f"  WARNING: counted parameters differ from count_params_flops for {[r['net'] for r in mism]}")
    env["machine"]["latency_threads"] = args.threads
    csv_path, json_path = write_results(args.out, "bench_compaction", rows, {
        "environment": env, "settings": vars(args) | {"cache": str(args.cache), "out": str(args.out)},
        "models": summaries})
    print(f"written: {csv_path}, {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
