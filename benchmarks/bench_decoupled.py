"""Per-layer cost of decoupled scoring: greedy training per epoch, then every block's sub-MIP
(size, unstable units, status, Kelley rounds, build and solve time), solved in parallel.

The network (with its heads) is trained greedily with `config.paper_train_config`
through `experiment.decoupled_network`, whose result store is --cache (trained once per config;
CUDA when available). Each block's batch is one the block's own head classifies correctly
(--any-images: any images of each class, for networks trained too briefly for that). A block
whose sub-MIP fails (e.g. the time limit with no LP solution) is reported as failed; the others
are still reported. --checkpoint scores a network trained elsewhere (`critneuron train --training
decoupled`) instead. Per block: status, Kelley rounds, the first LP's seconds (and algorithm),
solve and wall seconds, peak memory, and whether the program was scaled (--scaling).

Usage:
    CRITNEURON_DATA=../shared/data .venv/bin/python benchmarks/bench_decoupled.py \
        --model vgg16 --width 0.125 --dataset cifar10 --epochs 3 --workers 2 --time-limit 300
    OMP_NUM_THREADS=1 ... bench_decoupled.py --checkpoint net/checkpoint.pt --blocks 13 --any-images \
        --scaling off --workers 1 --scheduler serial --time-limit 600
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, add_decoupled_args, decoupled_config, environment, print_environment  # noqa: E402

from critneuron.cli import block_list  # noqa: E402
from critneuron.config import ScoreConfig, choices  # noqa: E402
from critneuron.errors import SolveError  # noqa: E402
from critneuron.experiments.decoupled import block_executor, decoupled_network, with_heads  # noqa: E402
from critneuron.experiments.store import Store  # noqa: E402
from critneuron.mip.blocks import block_batches, block_problems, solve_blocks  # noqa: E402
from critneuron.nets.data import load_split  # noqa: E402
from critneuron.nets.train import load_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_decoupled_args(parser, width=1.0, workers=2, workers_help="sub-MIPs solved at once (a Dask LocalCluster)")
    parser.add_argument("--scheduler", help="a Dask scheduler address, or 'serial' (default: a LocalCluster)")
    parser.add_argument("--first-lp", default="auto", choices=("auto", "simplex", "ipx"))
    parser.add_argument("--scaling", default="auto", choices=("auto", "on", "off"), help="ScoreConfig.scaling")
    parser.add_argument("--checkpoint", type=Path,
                        help="a decoupled checkpoint to score (its data config too) instead of training one")
    parser.add_argument("--mode", default="relaxed", choices=("relaxed", "exact"))
    parser.add_argument("--any-images", action="store_true", help="batches need not be classified correctly")
    parser.add_argument("--blocks", type=block_list, default=None,
                        help="solve only these blocks, 1-based: '3-13' or '1,8,13' (the tail is the last)")
    parser.add_argument("--block-bounds", default="network", choices=choices(ScoreConfig, "block_bounds"),
                        help="input boxes of the blocks (ScoreConfig.block_bounds): network (the authors') or local")
    parser.add_argument("--deep-first", action="store_true", help="start the deepest blocks first")
    parser.add_argument("--test-subset", type=int, default=None,
                        help="evaluate the network and its heads on this many test images (full-width VGG-16 on "
                        "CPUs: every head over the whole test set takes many minutes)")
    add_common_args(parser, "bench_decoupled")
    args = parser.parse_args(argv)
    env = environment()
    print_environment(env)
    if args.checkpoint:
        model, meta = load_checkpoint(args.checkpoint)
        data = meta["data_config"]
        net = with_heads(model.eval(), meta["heads"], meta["train_config"].seed)
        figures = {"checkpoint": str(args.checkpoint), "metrics": meta["metrics"]}
    else:
        run = decoupled_config(args, test_subset=args.test_subset)
        data = run.data
        net, figures = decoupled_network(run, Store(args.cache), "decoupled", progress=True)  # trained once per config
        figures = {k: figures[k] for k in ("train_seconds", "head_test_accuracy", "history")}
        figures["seconds_per_epoch"] = figures["train_seconds"] / max(args.epochs, 1)
        print(f"training: {figures['seconds_per_epoch']:.1f} s/epoch; test accuracy of heads 1.. and the network: "
              + " ".join(f"{a:.3f}" for a in figures["head_test_accuracy"]), flush=True)
    start = time.perf_counter()
    batches = block_batches(net, load_split(data, "train"), args.batch_size, args.seed, not args.any_images)
    problems = block_problems(net, batches, ScoreConfig().epsilon, args.block_bounds)
    if args.blocks and max(args.blocks) > len(problems):
        raise SystemExit(f"--blocks: block numbers run from 1 to {len(problems)}")
    problems = [problems[k - 1] for k in args.blocks or range(1, len(problems) + 1)]
    problem_seconds = time.perf_counter() - start
    print(f"{len(problems)} sub-MIPs prepared in {problem_seconds:.1f} s (whole-network bounds included)", flush=True)
    cfg = ScoreConfig(mode=args.mode, batch_size=args.batch_size, time_limit=args.time_limit, first_lp=args.first_lp,
                      seed=args.seed, scaling=args.scaling, block_bounds=args.block_bounds)
    rows: dict[str, dict] = {}
    local = "-local" * (args.block_bounds == "local")
    out = args.out / f"bench_decoupled-{args.model}-{args.width:g}-{args.scaling}{local}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(**extra) -> None:
        out.write_text(json.dumps({"args": vars(args), "environment": env, "training": figures,
                                   "prepare_s": problem_seconds, "blocks": rows, **extra}, indent=1, default=str))

    def record(problem, scores) -> None:
        prov, solver = scores.provenance, scores.provenance["solver"]
        rows[problem.name] = {
            "block": problem.name, "layers": problem.kept, "status": solver["status"], "rounds": solver["rounds"],
            "units": sum(c["units"] for c in prov["relu"].values()), "unstable": prov["unstable_units"],
            "variables": solver["n_variables"], "constraints": solver["n_constraints"],
            "bounds_s": prov["seconds"]["bounds"], "build_s": prov["seconds"]["build"],
            "solve_s": prov["seconds"]["solve"], "wall_s": prov["wall_seconds"], "peak_rss_gb": prov["peak_rss_gb"],
            "round_end_s": [round(h["seconds"], 2) for h in solver["history"]],
            "first_lp_s": solver["history"][0]["seconds"], "first_lp": solver["history"][0].get("algorithm"),
            "first_lp_iterations": solver["history"][0].get("iterations"), "nonzeros": solver["n_nonzeros"],
            "scaled": solver["scaling"]["applied"], "magnitude": solver["scaling"]["magnitude"],
            "final_point": solver["final_point"], "interior": solver["interior"],
            "row_violation": solver["row_violation"], "objective": solver["objective"],
            "selfcheck_error": prov["selfcheck_error"]}
        save()

    start = time.perf_counter()
    failed = ""
    try:
        with block_executor(args.scheduler, args.workers) as executor:
            solve_blocks(problems[::-1] if args.deep_first else problems, cfg, executor, progress=True, done=record)
    except SolveError as err:
        failed = str(err)
        rows.update({row["block"]: row for row in err.details.get("failed", [])})
    total = time.perf_counter() - start
    save(failed=failed, solve_wall_s=total)
    print(f"\n{'block':7} {'layers':18} {'unstable':>8} {'nonzeros':>9} {'scaled':>6} {'status':>14} {'rounds':>6} "
          f"{'1st LP s':>8} {'solve s':>8} {'wall s':>8} {'peak GB':>7}  final point")
    for p in problems:
        r = rows.get(p.name) or {"status": "failed"}
        if r["status"] == "failed":
            print(f"{p.name:7} {','.join(p.kept):18} {r.get('unstable_units') or '':>8} {r.get('nonzeros') or '':>9} "
                  f"{args.scaling:>6} {'failed':>14} {r.get('rounds') or 0:6d} {'':>8} {r.get('solve_s') or 0:8.1f} "
                  f"{r.get('wall_s') or 0:8.1f} {r.get('peak_rss_gb') or 0:7.1f}  none (see below)")
            continue
        print(f"{r['block']:7} {','.join(r['layers']):18} {r['unstable']:8d} {r['nonzeros']:9d} "
              f"{'yes' if r['scaled'] else 'no':>6} {r['status']:>14} {r['rounds']:6d} {r['first_lp_s']:8.1f} "
              f"{r['solve_s']:8.1f} {r['wall_s']:8.1f} {r['peak_rss_gb']:7.1f}  {r['final_point']} ({r['interior']})")
    print(f"all sub-MIPs: {total:.1f} s wall with {args.workers} workers; results: {out}")
    if failed:
        print(f"failed: {failed}")


if __name__ == "__main__":
    main()
