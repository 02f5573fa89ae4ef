"""The optimum re-solved inside its optimal face by interior point (`ScoreConfig.final_point`).

Simplex returns a vertex of the optimal face; an interior-point solver (the authors' MOSEK)
returns a point in its relative interior, where scores that the objective does not pin down sit
inside (0, 1) instead of at 0 or 1. `interior` re-solves the optimal face by IPX without
crossover, through the same scaling as the Kelley loop's program.
"""

from __future__ import annotations

import time

import numpy as np

from critneuron.config import ScoreConfig
from critneuron.mip.formulation import Formulation
from critneuron.mip.highs import IPX, highs_with, iterations, options, status_name
from critneuron.mip.program import Rows, without_implied
from critneuron.mip.scaling import Scaling

# A reduced cost above this (in magnitude) counts as nonzero: its score is pinned at its bound.
_PINNED = 1e-7


def interior(engine, form: Formulation, cfg: ScoreConfig, start: float, history: list[dict], out: dict,
             lse_gap: float, scaling: Scaling) -> tuple[dict, float, str]:
    """The optimum `out` re-solved on its optimal face (`face`). Kept only if it reaches the same
    objective (to `kelley_tol` relative, or `mip_gap` with binaries) with the LSE gap still
    closed; else the vertex stays. Returns the result, its LSE gap and what happened to the
    interior point: "accepted", or "rejected (...)" with the reason."""
    vertex = form.values.copy()
    inner = face(form, engine.reduced_costs(), cfg, cfg.time_limit - (time.perf_counter() - start), scaling)
    engine.highs_seconds += inner.pop("seconds")
    gap = float(np.max(form.lse_gaps())) if inner["feasible"] and cfg.loss == "ce" else 0.0
    # A MIP's point is optimal only to its gap (and feasible only to HiGHS's MIP tolerances), and
    # the face's LP, with the binaries fixed, may land a little above it within that gap.
    tol = cfg.mip_gap if form.program.integer.any() else cfg.kelley_tol
    same = inner["feasible"] and abs(inner["objective"] - out["objective"]) <= tol * max(1.0, abs(out["objective"]))
    history.append({"round": len(history) + 1, "phase": "interior", "objective": inner["objective"], "lse_gap": gap,
                    "seconds": time.perf_counter() - start, "status": inner["status"], "algorithm": IPX,
                    "iterations": inner["iterations"]})
    if same and gap <= cfg.kelley_tol:
        return {**out, "objective": inner["objective"]}, gap, "accepted"
    form.values = vertex
    reason = (f"status {inner['status']}" if not inner["feasible"] else
              "objective differs" if not same else "log-sum-exp gap reopened")
    return out, lse_gap, f"rejected ({reason})"


def face(form: Formulation, reduced_costs: np.ndarray, cfg: ScoreConfig, remaining: float, scaling: Scaling) -> dict:
    """Solve the optimal face of the program at the current optimum (`form.values`) by IPX,
    without crossover or presolve (presolve would fix free columns at a bound); loads the point
    if HiGHS reports it optimal. A score at a bound whose reduced cost pushes it there is at that
    bound in every optimum (complementary slackness), so it is fixed; so are the binaries, and
    rows that the remaining column bounds imply are left out."""
    prog, values = form.program, form.values
    lower, upper = prog.col_lower.copy(), prog.col_upper.copy()
    binaries = np.flatnonzero(prog.integer)
    lower[binaries] = upper[binaries] = np.round(values[binaries])
    scores = np.concatenate(list(form.scores.values()))
    d = reduced_costs[scores]
    at_lower = (np.abs(values[scores] - lower[scores]) <= 1e-9) & (d > _PINNED)
    at_upper = (np.abs(values[scores] - upper[scores]) <= 1e-9) & (d < -_PINNED)
    upper[scores[at_lower]] = lower[scores[at_lower]]
    lower[scores[at_upper]] = upper[scores[at_upper]]
    # Fixed columns leave the LP (their terms move into the row bounds): IPX's barrier does not
    # take zero-width boxes well.
    free = lower < upper
    rows = prog.matrix()
    shift = rows.matrix[:, ~free] @ lower[~free]
    face_rows, _ = without_implied(Rows("face", rows.matrix[:, free].tocsr(), rows.lower - shift, rows.upper - shift),
                                   lower[free], upper[free])
    scaled = scaling.subset(free)
    h = highs_with(scaled.cost(prog.cost[free]), scaled.to_solver(lower[free]), scaled.to_solver(upper[free]),
                   scaled.rows(face_rows), offset=float(prog.cost[~free] @ lower[~free]),
                   options=options(cfg, solver=IPX, run_crossover="off", presolve="off", time_limit=max(remaining, 1.0),
                                   **scaled.options()))
    ran = time.perf_counter()
    h.run()
    seconds = time.perf_counter() - ran
    status = status_name(h)
    feasible = status == "optimal"
    if feasible:
        form.values = lower.copy()
        form.values[free] = scaled.from_solver(np.asarray(h.getSolution().col_value))
    return {"status": status, "feasible": feasible, "objective": form.objective_value() if feasible else None,
            "seconds": seconds, "iterations": iterations(h)}
