"""Sizing of the `paper` profile on this machine (issue 24): CPU-hours per chapter from
`critneuron book --plan`'s stages (against an empty store, so everything is computed once), with
VGG-16 at each width and its transfers with 3 seeds or 1.

Stages are split into training (trainings, retrainings, heads, evaluations and fine-tuning) and
solving (scores and block scores); a solve with no measured rate counts at its time limit, an
upper bound, and is shown apart. The CIFAR-10 retrainings (kind "retrain" onto CIFAR-10: LeNet-5
MNIST → CIFAR-10 and its pruning at initialisation) are shown too: they cost in proportion to
their epochs.

Printed: the profile without VGG-16 per chapter, then what VGG-16 adds at each width with 3
transfer seeds and with 1.

Usage:
    CRITNEURON_DATA=../shared/data .venv/bin/python benchmarks/size_paper.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from critneuron.experiments.store import Store
from critneuron.machinery.book import load_profile
from critneuron.machinery.bookplan import CHAPTERS
from critneuron.machinery.plan import Planner, Stage
from critneuron.machinery.rates import Rates

REPO = Path(__file__).resolve().parents[1]
WIDTHS = (1.0, 0.5, 0.25, 0.125, 0.0625)
SOLVES = ("score", "block score", "solve")


def plan(params: dict, rates: Rates, width: float | None, vgg_seeds: list[int]) -> list[Stage]:
    """The paper profile's stages with VGG-16 at `width` (chapters 03 and 04; None: without
    VGG-16) and its transfers over `vgg_seeds` (the other pairs keep the profile's seeds)."""
    planner = Planner(Store(tempfile.mkdtemp(prefix="size-")), rates)
    for stem, chapter in CHAPTERS.items():
        own = dict(params[stem])
        if stem == "03_decoupled":
            own["runs"] = [[m, width if m == "vgg16" else w, t] for m, w, t in own["runs"]
                           if m != "vgg16" or width is not None]
        if stem == "04_generalization":
            vgg = [p for p in own["pairs"] if p[0] == "vgg16"]
            chapter(planner, stem, {**own, "pairs": [p for p in own["pairs"] if p[0] != "vgg16"]})
            if width is None:
                continue
            own = {**own, "pairs": vgg, "width": width, "seeds": vgg_seeds, "at_init": None}
        chapter(planner, stem, own)
    return planner.stages


def hours(stages: list[Stage]) -> dict[str, float]:
    """CPU-hours: training (trainings, retrainings, heads, evaluations, fine-tuning), measured
    solves, solves at their time limit, and the CIFAR-10 retrainings among the training."""
    out = {"train": 0.0, "solve": 0.0, "solve_bound": 0.0, "cifar_retrain": 0.0}
    for s in stages:
        seconds = s.counted or 0.0
        if s.kind == "retrain" and "→ cifar10" in s.what:
            out["cifar_retrain"] += seconds / 3600
        part = "train" if s.kind not in SOLVES else "solve_bound" if s.estimate.basis == "time limit" else "solve"
        out[part] += seconds / 3600
    return out


def _line(name: str, h: dict[str, float]) -> str:
    return (f"{name:<34} {h['train']:8.2f} {h['solve']:8.2f} {h['solve_bound']:8.2f} "
            f"{h['train'] + h['solve'] + h['solve_bound']:8.2f}   (CIFAR-10 retraining {h['cifar_retrain']:.2f})")


def _minus(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a[k] - b[k] for k in a}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=float, nargs="+", default=list(WIDTHS))
    args = parser.parse_args(argv)
    params = load_profile("paper", REPO / "notebooks").parameters
    rates = Rates.load(REPO / "benchmarks" / "rates.json")
    print(f"{'part':<34} {'train h':>8} {'solve h':>8} {'limit h':>8} {'total h':>8}")
    base_stages = plan(params, rates, None, [])
    base = hours(base_stages)
    for chapter in CHAPTERS:
        print(_line(f"without VGG-16: {chapter}", hours([s for s in base_stages if s.chapter == chapter])))
    print(_line("without VGG-16: all", base))
    for width in args.widths:
        for seeds in ([0, 1, 2], [0]):
            stages = plan(params, rates, width, seeds)
            vgg = _minus(hours(stages), base)
            for chapter in ("03_decoupled", "04_generalization"):
                part = _minus(hours([s for s in stages if s.chapter == chapter]),
                              hours([s for s in base_stages if s.chapter == chapter]))
                print(_line(f"VGG-16 x{width:g}, {len(seeds)} transfer seed(s): {chapter[:2]}", part))
            print(_line(f"VGG-16 x{width:g}, {len(seeds)} transfer seed(s): all", vgg), flush=True)


if __name__ == "__main__":
    main()
