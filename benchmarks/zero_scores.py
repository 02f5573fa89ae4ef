"""How many units the authors' Random baseline loses from its pool because our scores are exact
zeros (issue 24, item 7).

The authors' Random draws, with replacement, among the units whose score is > 0. Our scores of
units pinned at 0 by their reduced cost are exactly 0 (`mip.face`: a score at its bound with a
reduced cost above 1e-7 is fixed there), where MOSEK's interior point would likely have returned
tiny positive values that stay in the pool. For every whole-network score in a result store, per
layer: units, exact zeros (left out of the pool), and scores in (0, 1e-6] (tiny but in the pool).

With `--accuracy PROFILE`, also the effect on Random's accuracy: for every run of the profile's
chapter 02 (trained and scored as the chapter does, from its store), the test accuracy without
fine-tuning of the authors' Random at the MIP's per-layer counts, drawn `--draws` times from our
pool (s > 0) and from the pool MOSEK would likely give (exact zeros as tiny positives, so every
unit).

Usage:
    .venv/bin/python benchmarks/zero_scores.py --store shipped
    .venv/bin/python benchmarks/zero_scores.py --store shipped --accuracy shipped --draws 10
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from critneuron.config import RunConfig, from_dict
from critneuron.experiments.runs import mip_scores, trained_model
from critneuron.experiments.store import Store
from critneuron.machinery import chapters
from critneuron.machinery.profiles import load_profile
from critneuron.machinery.sweepfile import expand, parse_sweep
from critneuron.mip.scores import Scores
from critneuron.nets.data import load_split
from critneuron.nets.train import evaluate
from critneuron.pruning.baselines import random_authors_masks
from critneuron.pruning.masks import apply_masks, masks_from_scores


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


def random_accuracy(profile: str, draws: int) -> list[dict]:
    """Per chapter-02 run of `profile`: the authors' Random's test accuracies (no fine-tuning), drawn
    from our pool (s > 0) and from every unit (exact zeros as tiny positives), `draws` seeds each."""
    params = load_profile(profile, Path("notebooks")).parameters["02_pruning"]
    store = Store(Path("notebooks") / params["results_dir"])
    out = []
    for config in expand(parse_sweep(chapters.sweep_file(chapters.pruning_sweep(**params)))):
        cfg = from_dict(RunConfig, config)
        model, _metrics = trained_model(cfg, store)
        scores = mip_scores(model, cfg, store)
        masks = masks_from_scores(scores, cfg.prune.resolve(cfg.model.name, cfg.data.dataset))
        every = Scores({n: np.where(np.asarray(v) == 0, 1e-12, v) for n, v in scores.layers.items()}, scores.method, {})
        test = load_split(cfg.data, "test")
        row = {"run": f"{cfg.model.name} {cfg.data.dataset} seed {cfg.train.seed}"}
        for pool, pooled in (("s>0", scores), ("all", every)):
            row[pool] = [evaluate(apply_masks(model, random_authors_masks(pooled, masks, seed), cfg.prune.bias), test)[0]
                         for seed in range(draws)]
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="shipped", help="result store root (default: shipped)")
    parser.add_argument("--accuracy", metavar="PROFILE", help="also Random's accuracy from both pools on PROFILE's chapter 02")
    parser.add_argument("--draws", type=int, default=10, help="Random draws per run and pool (default: 10)")
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
    if args.accuracy:
        print(f"\nauthors' Random, test accuracy without fine-tuning, mean ± std over {args.draws} draws")
        print(f"{'run':<28} {'pool s > 0':>16} {'pool: all units':>16} {'difference':>11}")
        for r in random_accuracy(args.accuracy, args.draws):
            ours, theirs = np.array(r["s>0"]), np.array(r["all"])
            print(f"{r['run']:<28} {ours.mean():>9.2%} ± {ours.std():.2%} {theirs.mean():>9.2%} ± {theirs.std():.2%}"
                  f" {(theirs.mean() - ours.mean()) * 100:>+10.2f}")


if __name__ == "__main__":
    main()
