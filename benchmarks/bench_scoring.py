"""Where the time of one scoring MIP goes, for our formulation and for the straightforward one.

For each model (trained on MNIST with the paper's optimiser, or reused from --cache) and each
mode, one balanced batch B = 10 is scored twice in the same run:

  ours   ScoreConfig(mode=m): stable-unit presolve (no indicator and no variable for a unit
         whose sign the interval bounds fix: its output is substituted), a MIP start from s = 1
         and the observed activations, and in exact mode Kelley cuts converged on the LP
         relaxation before the MIP rounds;
  plain  ScoreConfig(mode=m, presolve=False, warm_start=False, lp_cuts_first=False): a variable
         and an indicator v per ReLU unit, no presolve, no warm start, Kelley rounds on the MIP
         itself. Same loss (CE by Kelley cuts), same tolerances.

Timings (seconds): bounds (interval bounds), build (Pyomo model), solve (the whole Kelley loop as
`critneuron.mip.solve` measures it), total = bounds + build + solve. The solve is split further by
wrapping the appsi HiGHS interface's `solve` with a Pyomo `HierarchicalTimer` (the hook appsi
provides): `translate` = appsi `set_instance` (first hand-over of the Pyomo model to highspy) +
`update` (passing each round's new cuts to HiGHS), `highs` = `Highs.run()` itself, i.e. HiGHS's own time
(its presolve, LP/MIP search); the rest of `solve` is Kelley bookkeeping (reading the logits,
adding cuts), MIP-start hand-over and loading solutions. `outside %` = share of total that is not
`highs`. `wall` = the whole `score()` call (adds counting the model's size and the torch self-check);
`CPU` = the process CPU time of that call (all threads): on a busy machine wall > CPU shows how
much the other load slowed the run down.

Usage:
    CRITNEURON_DATA=/work/shared/data .venv/bin/python benchmarks/bench_scoring.py \
        --models fc3 fc4 lenet5 --modes exact relaxed --epochs 2 --time-limit 600
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

import torch
from pyomo.common.timing import HierarchicalTimer
from torch import nn

from _common import add_common_args, environment, format_table, load_mnist, print_environment, \
    trained_model, write_results
from critneuron.config import ScoreConfig
from critneuron.errors import CritneuronError, SolveError
from critneuron.nets.data import mip_batch
from critneuron.mip.scores import score

VARIANTS = {
    "ours": {},  # presolve=True, warm_start=True (the defaults)
    "plain": {"presolve": False, "warm_start": False, "lp_cuts_first": False},
}

KEY = [("model", "model", "s"), ("mode", "mode", "s"), ("variant", "variant", "s")]
SIZE_COLUMNS = KEY + [
    ("unstable", "unstable", "d"), ("indicators", "ReLU v", "d"),
    ("n_variables", "#vars", "d"), ("n_constraints", "#rows", "d"), ("n_binaries", "#bin", "d"),
    ("rounds", "Kelley rounds", "d"), ("objective", "objective", ".6f"), ("gap", "MIP gap", ".1e"),
    ("status", "status", "s"),
]
TIME_COLUMNS = KEY + [
    ("bounds_s", "bounds", ".3f"), ("build_s", "build", ".2f"), ("solve_s", "solve", ".2f"),
    ("total_s", "total", ".2f"), ("translate_s", "translate", ".2f"), ("highs_s", "HiGHS", ".2f"),
    ("outside_pct", "outside %", ".1f"), ("wall_s", "wall", ".2f"), ("cpu_s", "CPU", ".2f"),
]


@contextlib.contextmanager
def highs_timer() -> Iterator[dict[str, Any]]:
    """Within the block, every appsi HiGHS solve reports into one `HierarchicalTimer`.

    Yields a dict that holds, after the block, `translate` (set_instance + update), `highs`
    (Highs.run), `load` (appsi's solution fetch), `highs_reported` (HiGHS's own run clock,
    `getRunTime()`, after the last solve; it accumulates over the runs of one Highs object, and
    `critneuron.mip.solve` makes one per score() call) and `calls`.
    """
    from pyomo.contrib.appsi.solvers.highs import Highs

    timer, original, out = HierarchicalTimer(), Highs.solve, {"calls": 0, "highs_reported": 0.0}

    def solve(self, model, timer_arg=None):  # noqa: ARG001 - timer_arg: appsi's own parameter, unused here
        res = original(self, model, timer=timer)
        out["calls"] += 1
        out["highs_reported"] = float(getattr(res, "wallclock_time", 0.0) or 0.0)
        return res

    Highs.solve = solve
    try:
        yield out
    finally:
        Highs.solve = original
        names = timer.timers  # top-level timers only
        total = lambda key: timer.get_total_time(key) if key in names else 0.0  # noqa: E731
        out.update(translate=total("set_instance") + total("update"), highs=total("optimize"),
                   load=total("load solution"))


def run_one(model: nn.Sequential, x, y, idx, cfg: ScoreConfig) -> dict[str, Any]:
    """Score once with `cfg`; the row of the table (or the error)."""
    with highs_timer() as ht:
        start, cpu = time.perf_counter(), time.process_time()
        try:
            scores = score(model, x, y, cfg, batch_indices=idx.tolist())
        except SolveError as err:
            return {"status": "error", "error": str(err), "wall_s": time.perf_counter() - start}
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    prov = scores.provenance
    sec, solver = prov["seconds"], prov["solver"]
    total = sec["bounds"] + sec["build"] + sec["solve"]
    highs = ht["highs"] if ht["calls"] else None
    return {
        "indicators": prov["unstable_units"],
        "units": sum(c["units"] for c in prov["relu"].values()),
        "n_variables": solver["n_variables"], "n_constraints": solver["n_constraints"],
        "n_binaries": solver["n_binaries"],
        "bounds_s": sec["bounds"], "build_s": sec["build"], "solve_s": sec["solve"], "total_s": total,
        "translate_s": ht["translate"] if ht["calls"] else None, "highs_s": highs,
        "solve_other_s": None if highs is None else sec["solve"] - highs - ht["translate"],
        "highs_reported_s": ht["highs_reported"] if ht["calls"] else None,
        "outside_pct": None if highs is None else 100.0 * (total - highs) / total,
        "wall_s": wall, "cpu_s": cpu, "rounds": solver["rounds"], "objective": solver["objective"],
        "bound": solver["bound"], "gap": solver["gap"], "status": solver["status"],
        "lse_gap": solver["lse_gap"], "selfcheck_error": prov["selfcheck_error"],
        "solver_version": solver["solver_version"], "history": solver["history"], "relu": prov["relu"],
    }


def warm_up() -> None:
    """One tiny solve, so the first timed run does not pay for imports and first calls."""
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc1=nn.Linear(4, 6), relu1=nn.ReLU(),
                                    fc2=nn.Linear(6, 3))).eval()
    x = torch.rand(3, 4)
    with torch.no_grad():
        y = net(x).argmax(1)
    for variant in VARIANTS.values():
        score(net, x, y, ScoreConfig(mode="exact", batch_size=3, **variant))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["fc3", "fc4", "lenet5"])
    parser.add_argument("--modes", nargs="+", default=["exact", "relaxed"], choices=["exact", "relaxed"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    add_common_args(parser, "bench_scoring")
    args = parser.parse_args(argv)

    env = environment()
    print_environment(env)
    print(f"settings: epochs {args.epochs}, subset {args.subset}, B {args.batch_size}, "
          f"time limit {args.time_limit:g} s, seed {args.seed}\n")
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
            unstable = None
            for variant in args.variants:
                cfg = ScoreConfig(mode=mode, time_limit=args.time_limit, batch_size=args.batch_size,
                                  seed=args.seed, **VARIANTS[variant])
                print(f"  {mode:8s} {variant:6s} ...", end=" ", flush=True)
                row = {"model": name, "mode": mode, "variant": variant, **run_one(model, x, y, idx, cfg)}
                if variant == "ours" and row["status"] != "error":
                    unstable = row["indicators"]
                row["unstable"] = unstable
                rows.append(row)
                print(f"{row['status']} in {row['wall_s']:.2f} s", flush=True)
    print()
    print("model size and result:")
    print(format_table(rows, SIZE_COLUMNS))
    print("\ntime, seconds (total = bounds + build + solve; translate and HiGHS are parts of solve):")
    print(format_table(rows, TIME_COLUMNS))
    comparisons = compare(rows)
    if comparisons:
        print("\nplain / ours (same model, mode, batch):")
        print(format_table(comparisons, [
            ("model", "model", "s"), ("mode", "mode", "s"), ("total_ratio", "total b/a", ".2f"),
            ("solve_ratio", "solve b/a", ".2f"), ("highs_ratio", "HiGHS b/a", ".2f"),
            ("obj_diff", "|obj_a - obj_b|", ".2e"), ("rel_obj_diff", "rel", ".2e"),
            ("status", "status a/b", "s")]))
    print("\nunstable = ReLU units (x batch) whose sign the interval bounds leave open; ReLU v = "
          "indicator variables in the model (plain: every unit); outside % = 100 (total - HiGHS) / total; "
          "a b/a ratio with b at its time limit is a lower bound.")
    csv_path, json_path = write_results(args.out, "bench_scoring", rows, {
        "environment": env, "settings": vars(args) | {"cache": str(args.cache), "out": str(args.out)},
        "comparisons": comparisons})
    print(f"written: {csv_path}, {json_path}")
    return 0


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each (model, mode) with both variants: time ratios plain/ours and objective agreement."""
    out = []
    index = {(r["model"], r["mode"], r["variant"]): r for r in rows}
    for (model, mode, variant), a in index.items():
        b = index.get((model, mode, "plain"))
        if variant != "ours" or b is None or "error" in (a["status"], b["status"]):
            continue
        ratio = lambda key: b[key] / a[key] if a.get(key) and b.get(key) is not None else None  # noqa: E731
        diff = abs(a["objective"] - b["objective"])
        out.append({"model": model, "mode": mode, "total_ratio": ratio("total_s"), "solve_ratio": ratio("solve_s"),
                    "highs_ratio": ratio("highs_s"), "obj_diff": diff,
                    "rel_obj_diff": diff / max(abs(a["objective"]), 1e-12),
                    "status": f"{a['status']}/{b['status']}"})
    return out


if __name__ == "__main__":
    sys.exit(main())
