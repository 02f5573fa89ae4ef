"""Block-local against the authors' input boxes (`ScoreConfig.block_bounds`), side by side on one
decoupled network: per block the unstable units, LP size, status, final point, solve time, relaxed
self-check error and pruned units, and the pruned network's test accuracy (no fine-tuning) per rule.

The network (with its heads) is trained greedily with `config.paper_train_config` through
`experiments.decoupled.decoupled_network` in the result store --cache, as chapter 03 does (the
quick profile: --width 0.0625 --epochs 3); the blocks are scored there too, once per rule
(`experiments.decoupled.block_bounds_comparison`).

Usage:
    CRITNEURON_DATA=../shared/data OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_block_bounds.py \
        --width 0.0625 --epochs 3 --time-limit 300
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, add_decoupled_args, decoupled_config, environment, print_environment  # noqa: E402

from critneuron.config import ScoreConfig, choices  # noqa: E402
from critneuron.experiments.decoupled import block_bounds_comparison, decoupled_network  # noqa: E402
from critneuron.experiments.store import Store  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_decoupled_args(parser, width=0.0625, workers=1, workers_help="sub-MIPs solved at once (1: serial)")
    parser.add_argument("--rules", nargs="+", default=None, choices=choices(ScoreConfig, "block_bounds"),
                        help="block_bounds rules to score (default: both)")
    add_common_args(parser, "bench_block_bounds")
    args = parser.parse_args(argv)
    env = environment()
    print_environment(env)
    run = dataclasses.replace(decoupled_config(args), score=ScoreConfig(batch_size=args.batch_size,
                                                                        time_limit=args.time_limit, seed=args.seed))
    store = Store(args.cache)
    decoupled_network(run, store, "decoupled", progress=True)  # trained first, with its progress shown
    rows = block_bounds_comparison(run, store, "decoupled", args.workers, args.rules)
    out = args.out / f"bench_block_bounds-{args.model}-{args.width:g}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "environment": env, "rows": rows}, indent=1, default=str))
    show = lambda value, spec: "-" if value is None else format(value, spec)  # noqa: E731 - a failed block's unknowns
    print(f"\n{'rule':8} {'block':8} {'unstable':>8} {'vars':>7} {'rows':>7} {'nonzeros':>9} {'status':>13} "
          f"{'point':>8} {'used':>4} {'solve s':>8} {'self-check':>10} {'pruned':>9}")
    for r in rows:
        print(f"{r['block_bounds']:8} {r['block']:8} {show(r['unstable_units'], '8d')} {show(r['variables'], '7d')} "
              f"{show(r['constraints'], '7d')} {show(r['nonzeros'], '9d')} {r['status']:>13} {r['final_point']:>8} "
              f"{'yes' if r['usable'] else 'no':>4} {show(r['solve_s'], '8.1f')} {show(r['selfcheck_error'], '10.1e')} "
              f"{r['pruned']:4d}/{r['units']:<4d}")
    for rule in dict.fromkeys(r["block_bounds"] for r in rows):
        mine = [r for r in rows if r["block_bounds"] == rule]
        print(f"{rule}: pruned test accuracy {mine[0]['pruned_test_acc']:.4f} at tau {mine[0]['tau']}, "
              f"solve {sum(r['solve_s'] or 0 for r in mine):.1f} s in all; results: {out}")


if __name__ == "__main__":
    main()
