"""Where the time of one scoring MIP goes: the engine before issue 16 against the current one.

For each model (trained on MNIST with the paper's optimiser, or reused from --cache) and each
mode, one balanced batch B = 10 is scored by both engines in the same process, each --repeat
times (the best run of each is kept):

  old  ScoreConfig(mode=m, backend="appsi", lse="tangent"): the engine of commit ae561ad: the
       model through Pyomo and its persistent appsi HiGHS interface, the log-sum-exp by
       aggregated tangent cuts t_b >= LSE(z) + softmax(z)'(z_b - z);
  new  ScoreConfig(mode=m): the formulation's sparse blocks straight to highspy (passModel,
       cuts by addRows on the live solver), the lifted log-sum-exp (sum_k u_k <= 1, a tangent
       cut per exponential).

Both solve the same formulation (the same emitted blocks), tolerances, one solver thread.

Timings (seconds): bounds (interval bounds), build (the formulation's blocks), hand-over
(everything between the blocks and HiGHS: old = Pyomo model, appsi set_instance, per-round
updates, MIP starts and loading solutions; new = passModel, addRows, setSolution,
getSolution), HiGHS (inside `Highs.run`), total = the whole `score()` call (bounds, build,
solve, torch self-check); outside % = 100 (total - HiGHS) / total. CPU = process CPU time of
the call: on a busy machine wall > CPU shows how much other load slowed the run.

Usage:
    CRITNEURON_DATA=/work/shared/data .venv/bin/python benchmarks/bench_scoring.py \
        --models fc3 lenet5 --modes relaxed exact --epochs 2 --repeat 3
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from _common import add_common_args, environment, format_table, load_mnist, print_environment, \
    trained_model, write_results
from critneuron.config import ScoreConfig
from critneuron.errors import CritneuronError, SolveError
from critneuron.nets.batches import mip_batch
from critneuron.mip.scores import score

ENGINES = {
    "old": {"backend": "appsi", "lse": "tangent"},
    "new": {},  # the defaults
}

KEY = [("model", "model", "s"), ("mode", "mode", "s"), ("engine", "engine", "s")]
COLUMNS = KEY + [
    ("n_variables", "#vars", "d"), ("n_constraints", "#rows", "d"), ("n_binaries", "#bin", "d"),
    ("rounds", "rounds", "d"), ("bounds_s", "bounds", ".3f"), ("build_s", "build", ".3f"),
    ("handover_s", "hand-over", ".3f"), ("highs_s", "HiGHS", ".3f"), ("total_s", "total", ".3f"),
    ("outside_pct", "outside %", ".1f"), ("cpu_s", "CPU", ".2f"), ("objective", "objective", ".9f"),
    ("gap", "MIP gap", ".1e"), ("status", "status", "s"),
]


def run_one(model: nn.Sequential, x, y, idx, cfg: ScoreConfig) -> dict[str, Any]:
    """Score once with `cfg`; the row of the table (or the error)."""
    start, cpu = time.perf_counter(), time.process_time()
    try:
        scores = score(model, x, y, cfg, batch_indices=idx.tolist())
    except SolveError as err:
        return {"status": "error", "error": str(err), "total_s": time.perf_counter() - start}
    total, cpu = time.perf_counter() - start, time.process_time() - cpu
    prov = scores.provenance
    sec, solver = prov["seconds"], prov["solver"]
    return {
        "n_variables": solver["n_variables"], "n_constraints": solver["n_constraints"],
        "n_binaries": solver["n_binaries"], "rounds": solver["rounds"],
        "bounds_s": sec["bounds"], "build_s": sec["build"], "handover_s": solver["handover_seconds"],
        "highs_s": solver["highs_seconds"], "solve_s": sec["solve"], "total_s": total,
        "outside_pct": 100.0 * (total - solver["highs_seconds"]) / total, "cpu_s": cpu,
        "objective": solver["objective"], "bound": solver["bound"], "gap": solver["gap"],
        "status": solver["status"], "lse_gap": solver["lse_gap"], "selfcheck_error": prov["selfcheck_error"],
        "solver_version": solver["solver_version"], "history": solver["history"],
    }


def warm_up() -> None:
    """One tiny solve per engine, so the first timed run does not pay for imports and first calls."""
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc1=nn.Linear(4, 6), relu1=nn.ReLU(),
                                    fc2=nn.Linear(6, 3))).eval()
    x = torch.rand(3, 4)
    with torch.no_grad():
        y = net(x).argmax(1)
    for engine in ENGINES.values():
        score(net, x, y, ScoreConfig(mode="exact", batch_size=3, **engine))


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each (model, mode) with both engines: old/new ratios and the objective difference."""
    out = []
    index = {(r["model"], r["mode"], r["engine"]): r for r in rows}
    for (model, mode, engine), new in index.items():
        old = index.get((model, mode, "old"))
        if engine != "new" or old is None or "error" in (old["status"], new["status"]):
            continue
        diff = abs(old["objective"] - new["objective"])
        out.append({"model": model, "mode": mode,
                    "rounds": f"{old['rounds']} -> {new['rounds']}",
                    **{f"{k}_ratio": old[f"{k}_s"] / new[f"{k}_s"] for k in ("total", "highs", "handover", "build")},
                    "obj_diff": diff, "rel_obj_diff": diff / max(abs(old["objective"]), 1e-12),
                    "status": f"{old['status']}/{new['status']}"})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["fc3", "lenet5"])
    parser.add_argument("--modes", nargs="+", default=["relaxed", "exact"], choices=["exact", "relaxed"])
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--repeat", type=int, default=2, help="runs per engine; the fastest is kept")
    add_common_args(parser, "bench_scoring")
    args = parser.parse_args(argv)

    env = environment()
    print_environment(env)
    print(f"settings: epochs {args.epochs}, subset {args.subset}, B {args.batch_size}, "
          f"time limit {args.time_limit:g} s, seed {args.seed}, best of {args.repeat}\n")
    warm_up()
    data = load_mnist(args.subset)
    rows: list[dict[str, Any]] = []
    for name in args.models:
        model, info = trained_model(name, args.epochs, args.cache, args.subset, args.seed, data)
        print(f"{name}: test accuracy {info['test_accuracy']:.4f} "
              + ("(cached checkpoint)" if info["reused"] else f"(trained in {info['train_seconds']:.1f} s)"),
              flush=True)
        try:
            x, y, idx = mip_batch(model, data[1], batch_size=args.batch_size, seed=args.seed)
        except CritneuronError as err:  # too few correctly classified images (undertrained model)
            print(f"{name}: skipped: {err}", flush=True)
            continue
        for mode in args.modes:
            for engine in args.engines:
                cfg = ScoreConfig(mode=mode, time_limit=args.time_limit, batch_size=args.batch_size,
                                  seed=args.seed, **ENGINES[engine])
                print(f"  {mode:8s} {engine:4s} ...", end=" ", flush=True)
                runs = [run_one(model, x, y, idx, cfg) for _ in range(args.repeat)]
                best = min(runs, key=lambda r: r["total_s"])
                rows.append({"model": name, "mode": mode, "engine": engine, **best,
                             "totals_s": [r["total_s"] for r in runs]})
                print(f"{best['status']}, total " + " / ".join(f"{r['total_s']:.2f}" for r in runs) + " s",
                      flush=True)
    print()
    print(format_table(rows, COLUMNS))
    comparisons = compare(rows)
    if comparisons:
        print("\nold / new (same model, mode, batch; time ratios > 1: the new engine is faster):")
        print(format_table(comparisons, [
            ("model", "model", "s"), ("mode", "mode", "s"), ("rounds", "rounds old -> new", "s"),
            ("total_ratio", "total", ".2f"), ("highs_ratio", "HiGHS", ".2f"), ("handover_ratio", "hand-over", ".1f"),
            ("build_ratio", "build", ".2f"), ("obj_diff", "|obj_old - obj_new|", ".2e"),
            ("rel_obj_diff", "rel", ".2e"), ("status", "status old/new", "s")]))
    print("\nbuild: the formulation's blocks (both engines); hand-over: old = Pyomo model + appsi, new = "
          "highspy calls; total: the whole score() call; outside % = 100 (total - HiGHS) / total.")
    csv_path, json_path = write_results(args.out, "bench_scoring", rows, {
        "environment": env, "settings": vars(args) | {"cache": str(args.cache), "out": str(args.out)},
        "comparisons": comparisons})
    print(f"written: {csv_path}, {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
