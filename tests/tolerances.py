"""Test tolerances that follow from the solver settings a result was made with, not fixed constants."""

from __future__ import annotations

import math

from critneuron.config import ScoreConfig

# HiGHS's default primal/dual feasibility tolerance: an LP optimum is optimal up to this, per row.
HIGHS_FEASIBILITY = 1e-7


def objective_tolerance(cfg: ScoreConfig, objective: float) -> float:
    """How far a reported optimum may be from the true one under `cfg`: the Kelley loop stops once
    LSE(ẑ_b) − t_b ≤ kelley_tol for every sample, so the mean loss term is within λ·kelley_tol; an
    exact-mode solve stops at the relative MIP gap; and the LP itself is optimal up to HiGHS's
    feasibility tolerance (scaled by the objective's size)."""
    size = max(abs(objective), 1.0)
    gap = cfg.mip_gap * size if cfg.mode == "exact" else 0.0
    return cfg.lambda_ * cfg.kelley_tol + gap + HIGHS_FEASIBILITY * size


def score_tolerance(cfg: ScoreConfig, objective: float, curvature: float) -> float:
    """How far a score may be from the optimum's when the objective has second derivative
    `curvature` along it: an objective within δ puts the score within √(2δ/curvature)."""
    return math.sqrt(2 * objective_tolerance(cfg, objective) / curvature)
