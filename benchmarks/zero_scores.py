"""How many units the authors' Random baseline loses from its pool because our scores are exact
zeros (issue 24, item 7).

The authors' Random draws, with replacement, among the units whose score is > 0. Our scores of
units pinned at 0 by their reduced cost are exactly 0 (`mip.face`: a score at its bound with a
reduced cost above 1e-7 is fixed there), where MOSEK's interior point would likely have returned
tiny positive values that stay in the pool. For every whole-network score in a result store, per
layer: units, exact zeros (left out of the pool), and scores in (0, 1e-6] (tiny but in the pool).

Usage:
    .venv/bin/python benchmarks/zero_scores.py --store shipped
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from critneuron.experiments.store import Store


def rows(store: Store) -> list[dict]:
    """One row per (dataset, layer) of every fresh whole-network score: units, zeros, tiny."""
    out = []
    for record in store.ls("score"):
        if record["status"] != "complete" or record["code"] != "fresh":
            continue
        run = store.read("score", record["key"])
        if "block" in run["config"]:  # decoupled blocks: the whole-network scores are the question
            continue
        for layer, values in run["result"]["layers"].items():
            s = np.asarray(values, dtype=float)
            out.append({"dataset": run["meta"]["inputs"]["dataset"], "layers": "/".join(run["result"]["layers"]),
                        "layer": layer, "units": s.size, "zeros": int((s == 0).sum()),
                        "tiny": int(((s > 0) & (s <= 1e-6)).sum())})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="shipped", help="result store root (default: shipped)")
    args = parser.parse_args(argv)
    found = rows(Store(args.store))
    totals: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in found:
        entry = totals[(r["dataset"], r["layers"], r["layer"])]
        entry[0] += 1
        entry[1] += r["units"]
        entry[2] += r["zeros"]
        entry[3] += r["tiny"]
    print(f"{'dataset':<14} {'scored layers':<20} {'layer':<6} {'scores':>6} {'units':>7} {'exact 0':>8} {'share':>6}"
          f" {'(0,1e-6]':>9}")
    for (dataset, layers, layer), (n, units, zeros, tiny) in sorted(totals.items()):
        print(f"{dataset:<14} {layers:<20} {layer:<6} {n:>6} {units:>7} {zeros:>8} {zeros / units:>6.1%} {tiny:>9}")


if __name__ == "__main__":
    main()
