"""Measured CPU rates, and the estimates `machinery.plan` makes from them.

The rates file (``benchmarks/rates.json``) holds two sections, each saying how and when it was
measured: ``training`` (written by ``benchmarks/bench_training.py``: seconds per training image
and per evaluated image, one torch thread, keyed ``model|width|augment|training``) and
``solves`` (written by ``benchmarks/solve_rates.py`` from a result store: median seconds of one
scoring MIP, keyed ``model|width|part|mode``, part ``whole`` or a block's name).

When a case has no rate, the estimate says how it was made instead: the same model and width
trained otherwise, a width scaled from the nearest measured width by the width squared (its
convolutions' cost), a block solved as fast as its whole network, the solve's time limit (an
upper bound), or no estimate at all (None).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

RATES_FILE = Path("benchmarks") / "rates.json"


def rate_key(model: str, width: float, augment: bool, training: str) -> str:
    """The training section's key of one case."""
    return f"{model}|{width:g}|{'augment' if augment else 'plain'}|{training}"


def solve_key(model: str, width: float, part: str, mode: str) -> str:
    """The solves section's key: `part` is "whole" or a block's name."""
    return f"{model}|{width:g}|{part}|{mode}"


@dataclass(frozen=True)
class Estimate:
    """Estimated CPU seconds (None: no rate) and how the figure was made."""

    seconds: float | None
    basis: str


@dataclass(frozen=True)
class Rates:
    """The two sections of a rates file (empty when there is no file)."""

    training: dict = field(default_factory=dict)
    solves: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Rates":
        """The rates file at `path` (default `RATES_FILE`); empty rates if it does not exist."""
        path = Path(path if path is not None else RATES_FILE)
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text())
        return cls(data.get("training", {}).get("rates", {}), data.get("solves", {}).get("rates", {}))

    def per_image(self, model: str, width: float, augment: bool, training: str) -> tuple[dict | None, str]:
        """The training rates of a case and their basis, by preference: measured; the same model
        and width trained otherwise (with or without augmentation, greedily or end to end: the
        same convolutions); the nearest measured width of the model scaled by width²;
        (None, "no rate")."""
        key = rate_key(model, width, augment, training)
        if key in self.training:
            return self.training[key], "measured"
        cases = [(k.split("|"), v) for k, v in sorted(self.training.items()) if k.split("|")[0] == model]
        same = [(parts, v) for parts, v in cases if float(parts[1]) == width]
        if same:
            parts, rate = min(same, key=lambda pv: (pv[0][3] != training, pv[0][2] != key.split("|")[2]))
            return rate, f"as {'|'.join(parts)}"
        if cases:
            parts, rate = min(cases, key=lambda pv: (abs(float(pv[0][1]) - width), pv[0][3] != training))
            scale = (width / float(parts[1])) ** 2
            return {name: value * scale for name, value in rate.items() if name.endswith("per_image")}, \
                f"{'|'.join(parts)} × width² ratio"
        return None, "no rate"

    def training_seconds(self, model: str, width: float, augment: bool, training: str, epochs: int,
                         n_train: int, n_val: int, n_eval: int = 0) -> Estimate:
        """`epochs` passes over `n_train` images, each followed by evaluating `n_val`, then `n_eval`
        more evaluated images (test sets, pruned networks)."""
        rate, basis = self.per_image(model, width, augment, training)
        if rate is None:
            return Estimate(None, basis)
        evaluated = epochs * n_val + n_eval
        return Estimate(epochs * n_train * rate["train_s_per_image"] + evaluated * rate["eval_s_per_image"], basis)

    def solve_seconds(self, model: str, width: float, part: str, mode: str, time_limit: float) -> Estimate:
        """One scoring MIP: the measured median; for a block with none, the whole network's (a
        block's MIP is part of it); else its time limit (an upper bound; a block may also stop there)."""
        for key, basis in ((solve_key(model, width, part, mode), "measured"),
                           (solve_key(model, width, "whole", mode), "as the whole network")):
            rate = self.solves.get(key)
            if rate is not None:
                return Estimate(min(rate["seconds"], time_limit), basis)
        return Estimate(float(time_limit), "time limit")
