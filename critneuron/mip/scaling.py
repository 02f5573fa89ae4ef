"""Formulation-preserving scaling of the program HiGHS solves (`ScoreConfig.scaling`).

Interval bounds of a deep block can be 10⁴–10⁵ times the activations they bound, and then the
big-M rows mix entries from 10⁻⁷ to 10⁸ (full-width VGG-16's tail: one row's entries differ by
3·10¹³); IPX then converges only imprecisely and crossover starts from an infeasible basis. The
scaled program is A' = R·A·C, x = C·x', cost' = C·cost, column bounds C⁻¹·bounds, row sides
R·sides, with every factor a power of two (exact in floating point):

* column j: C_j ≈ √B_j, B_j the magnitude bound of the column: max(|lower|, |upper|) where both
  bounds are finite; for a free column defined by an equality row (y = W·x + b), the magnitude
  that row implies by interval arithmetic from the other columns' B;
* row i: R_i ≈ 1 / max_j |a_ij·C_j|, so every row's largest entry is 1 (cuts added later too).

HiGHS drops matrix entries below `small_matrix_value` (default 1e-9), which a scaled row's small
entries can be, so the scaled model is passed with `SMALL_MATRIX_VALUE`. Solutions and reduced
costs come back as x = C·x' and d = d' / C; feasibility is checked on the unscaled rows
(`violation`). `decide` applies it by the rule of `SCALE_FROM` and `SCALE_FROM_COLUMNS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from critneuron.config import ScoreConfig
from critneuron.mip.program import Program, Rows

# `scaling: auto` scales a program whose largest magnitude (matrix entry, finite column bound or
# row side) reaches `SCALE_FROM`, or which has `SCALE_FROM_COLUMNS` columns. Full-width VGG-16
# (1 decoupled epoch, the authors' bounds): the tail (magnitude 5.2e7, 62,677 columns), where the
# unscaled first LP runs past 420 s and the scaled one is optimal in ~40 s; blocks 7-12 (magnitude
# ~5e2, 95,621-249,046 columns), where the unscaled first LP's clean-up simplex after crossover runs
# past 30 min and scaled block 7 is optimal in 25 min (crossover 5,975 and simplex 126 iterations
# against 5,121 and 47,118+). Blocks 1-6 (at most 27,081 columns, magnitude <= 96) are faster
# unscaled and stay so, as do the small nets and the ×1/16 blocks (benchmarks/README.md, issue 22).
SCALE_FROM = 1e4
SCALE_FROM_COLUMNS = 50_000
SMALL_MATRIX_VALUE = 1e-12  # HiGHS's smallest allowed; no entry of a scaled program is below it
_PASSES = 6  # rounds of implied magnitudes (a definition row may use another definition's column)
_MIN_MAGNITUDE = 1e-3


@dataclass
class Scaling:
    """Column factors `cols` (x = cols·x'; all ones when not `applied`) and why."""

    cols: np.ndarray
    applied: bool
    rule: str
    magnitude: float
    notes: dict = field(default_factory=dict)

    def subset(self, keep: np.ndarray) -> Scaling:
        """The same scaling on the columns `keep` (a boolean mask)."""
        return Scaling(self.cols[keep], self.applied, self.rule, self.magnitude, self.notes)

    def rows(self, rows: Rows) -> Rows:
        """`rows` (over this scaling's columns) scaled: columns by `cols`, then each row by a power
        of two of its largest entry."""
        if not self.applied:
            return rows
        mat = (rows.matrix @ sp.diags(self.cols)).tocsr()
        biggest = abs(mat).max(axis=1).toarray().ravel()
        factor = np.exp2(np.round(-np.log2(np.where(biggest > 0, biggest, 1.0))))
        return Rows(rows.group, (sp.diags(factor) @ mat).tocsr(), rows.lower * factor, rows.upper * factor)

    def cost(self, cost: np.ndarray) -> np.ndarray:
        """The scaled program's costs."""
        return cost * self.cols

    def to_solver(self, x: np.ndarray) -> np.ndarray:
        """A point (or column bounds) of the program in the scaled columns."""
        return x / self.cols

    def from_solver(self, x: np.ndarray) -> np.ndarray:
        """A point of the scaled program in the program's columns."""
        return x * self.cols

    def reduced_costs(self, d: np.ndarray) -> np.ndarray:
        """Reduced costs of the scaled program as the program's."""
        return d / self.cols

    def options(self) -> dict:
        """HiGHS options the scaled program needs."""
        return {"small_matrix_value": SMALL_MATRIX_VALUE} if self.applied else {}

    def record(self) -> dict:
        """JSON-able summary for the solve report."""
        out = {"applied": self.applied, "rule": self.rule, "magnitude": self.magnitude, "threshold": SCALE_FROM,
               "column_threshold": SCALE_FROM_COLUMNS, **self.notes}
        if self.applied:
            out.update(small_matrix_value=SMALL_MATRIX_VALUE,
                       col_factors=[float(self.cols.min()), float(self.cols.max())])
        return out


def magnitude(program: Program, rows: Rows) -> float:
    """Largest |matrix entry|, finite |column bound| or finite |row side| of the program."""
    values = [np.abs(rows.matrix.data), np.abs(program.col_lower), np.abs(program.col_upper),
              np.abs(rows.lower), np.abs(rows.upper)]
    return float(max(np.max(v[np.isfinite(v)], initial=0.0) for v in values))


def decide(program: Program, rows: Rows, cfg: ScoreConfig) -> Scaling:
    """The scaling of `program` (its stacked `rows`) under `cfg.scaling`: ``on``, ``off``, or
    ``auto`` (applied from a magnitude of `SCALE_FROM` or `SCALE_FROM_COLUMNS` columns on; never
    with the appsi backend, which passes the Pyomo model as it is)."""
    big = magnitude(program, rows)
    large = big >= SCALE_FROM or program.n_cols >= SCALE_FROM_COLUMNS
    apply = cfg.scaling == "on" or (cfg.scaling == "auto" and cfg.backend == "highspy" and large)
    if not apply:
        return Scaling(np.ones(program.n_cols), False, cfg.scaling, big)
    cols = np.exp2(np.round(0.5 * np.log2(np.maximum(column_magnitudes(program, rows), _MIN_MAGNITUDE))))
    cols[program.integer] = 1.0  # binaries stay 0/1
    return Scaling(cols, True, cfg.scaling, big)


def column_magnitudes(program: Program, rows: Rows) -> np.ndarray:
    """A bound on |x_j| per column: from its bounds where both are finite, else from the equality
    rows in which it is the one column without such a bound (|x_j| ≤ (Σ_k |a_k|·B_k + |rhs|) / |a_j|,
    repeated so that definitions of definitions get one too); 1 where neither gives one."""
    lower, upper = program.col_lower, program.col_upper
    mags = np.where(np.isfinite(lower) & np.isfinite(upper), np.maximum(np.abs(lower), np.abs(upper)), np.nan)
    eq = np.flatnonzero(np.isfinite(rows.lower) & (rows.lower == rows.upper))
    defs = abs(rows.matrix[eq]).tocsr()
    rhs = np.abs(rows.lower[eq])
    row_of = np.repeat(np.arange(len(eq)), np.diff(defs.indptr))
    for _ in range(_PASSES):
        unknown = np.isnan(mags)
        entry_unknown = unknown[defs.indices]
        alone = (np.bincount(row_of, weights=entry_unknown, minlength=len(eq)) == 1)[row_of] & entry_unknown
        if not alone.any():
            break
        known = defs @ np.nan_to_num(mags, nan=0.0) + rhs
        implied = np.full(len(mags), np.inf)
        np.minimum.at(implied, defs.indices[alone], known[row_of[alone]] / defs.data[alone])
        hit = np.isfinite(implied)
        mags[hit] = implied[hit]
    return np.nan_to_num(mags, nan=1.0)


def violation(program: Program, x: np.ndarray) -> float:
    """Largest violation of the (unscaled) program's rows and column bounds at x."""
    rows = program.matrix()
    activity = rows.matrix @ x
    return float(max(np.max(rows.lower - activity, initial=0.0), np.max(activity - rows.upper, initial=0.0),
                     np.max(program.col_lower - x, initial=0.0), np.max(x - program.col_upper, initial=0.0)))
