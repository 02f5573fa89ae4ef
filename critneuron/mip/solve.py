"""Solve a `Formulation` with HiGHS: MIP start, Kelley cuts for the log-sum-exp.

The program goes to HiGHS through one of two engines (`engines`, `ScoreConfig.backend`), scaled
where its magnitudes call for it (`scaling`, `ScoreConfig.scaling`); the optimum is then re-solved
inside its optimal face by interior point (`face`, `ScoreConfig.final_point`). Returns a
`SolveReport` (status, gap, rounds, times, algorithms, scaling, final point, solver name and
version) that is stored with every result.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from critneuron.config import ScoreConfig
from critneuron.errors import SolveError
from critneuron.mip.engines import TIGHT_FEASIBILITY, Appsi, Highspy
from critneuron.mip.face import interior
from critneuron.mip.formulation import Formulation
from critneuron.mip.highs import IPX, solver_version
from critneuron.mip.scaling import decide, violation

# `first_lp="auto"`: a first LP with this many nonzeros goes to interior point.
_IPM_FIRST_NONZEROS = 1_000_000
# Kelley rounds whose per-sample LSE gaps agree to this (relative) found the same point.
_STALLED = 1e-9


@dataclass
class SolveReport:
    """What happened in a solve; JSON-able through `to_dict`.

    `status`: HiGHS's ("optimal", "maxTimeLimit", ...), or the Kelley loop's when the LSE gap is
    still open: "maxIterations" (rounds exhausted) or "stalled" (the LP point stopped moving; see
    `_kelley`). `handover_seconds`: time spent getting the model, cuts, starts and solutions between the
    formulation and HiGHS; `highs_seconds`: inside HiGHS's `run`. `final_point`: the point the
    scores come from, "vertex" (the simplex/crossover or branch-and-bound point) or "interior"
    (inside the optimal face; `ScoreConfig.final_point`); a solve with no point raises
    `SolveError` with final_point "none" in its details. `interior`: what became of the interior
    re-solve: "accepted", "rejected (...)", "skipped (status ...)" when the Kelley loop did not end
    optimal, or "not requested". `rounds` counts Kelley rounds; each `history` entry names the
    HiGHS algorithm asked for (`algorithm`) and the iterations each one ran, and `restarted` where
    a hot re-solve was solved afresh (`engines.Highspy.run`). `scaling`: whether
    the program was scaled, by which rule (`scaling.Scaling.record`); `row_violation`: the
    largest violation of the unscaled rows and bounds at the returned point.
    """

    solver: str
    solver_version: str
    status: str
    objective: float
    bound: float | None
    gap: float | None
    rounds: int
    lse_gap: float
    n_cuts: int
    solve_seconds: float
    n_variables: int
    n_constraints: int
    n_binaries: int
    history: list[dict] = field(default_factory=list)
    handover_seconds: float = 0.0
    highs_seconds: float = 0.0
    final_point: str = "vertex"
    n_nonzeros: int = 0
    interior: str = "not requested"
    scaling: dict = field(default_factory=dict)
    row_violation: float | None = None

    def to_dict(self) -> dict:
        """Plain JSON-able form."""
        return asdict(self)


def _solve_once(engine, form: Formulation, cfg: ScoreConfig, remaining: float, point: np.ndarray | None,
                integer: bool, algorithm: str = "choose") -> dict:
    """One solve; returns status, whether a point was loaded, its objective and the bound.
    An LP (`integer` false) stopped early has no feasible point; a MIP may have an incumbent.
    `algorithm`: HiGHS's `solver` option (choose, simplex, ipx)."""
    out = engine.run(remaining, point, integer, algorithm)
    # The objective of the point actually loaded (the scores we return), not HiGHS's report.
    return {**out, "objective": form.objective_value() if out["feasible"] else None}


def _solve_mip(engine, form: Formulation, cfg: ScoreConfig, remaining: float, point: np.ndarray | None,
               algorithm: str) -> dict:
    """One MIP round, settled by LP work where that suffices. The LP relaxation (hot-started)
    bounds the MIP from below. Its indicators that are integral, the others at their warm-start
    value (the observed activation pattern), fixed and re-solved as an LP, give a feasible
    point; if it is within `cfg.mip_gap` of the bound it is the answer (the test HiGHS's branch
    and bound stops on). Otherwise HiGHS's branch and bound runs, started from that point (or
    from `point` when the fixed LP is infeasible)."""
    start = time.perf_counter()
    left = lambda: remaining - (time.perf_counter() - start)  # noqa: E731
    binaries = np.flatnonzero(form.program.integer)
    engine.set_integer(False)
    relaxed = _solve_once(engine, form, cfg, remaining, None, False, algorithm)
    if relaxed["feasible"] and cfg.warm_start:
        v = form.values[binaries]
        whole = np.abs(v - np.round(v)) <= 1e-9
        candidate = relaxed
        if not whole.all():
            engine.fix(np.where(whole, np.round(v), np.round(form.warm_start[binaries])))
            candidate = _solve_once(engine, form, cfg, left(), None, False)
            engine.fix(None)
        if candidate["feasible"]:
            if candidate["objective"] - relaxed["objective"] <= cfg.mip_gap * max(abs(candidate["objective"]), 1e-10):
                return {**candidate, "bound": relaxed["objective"]}
            point = form.values
    engine.set_integer(True)
    out = _solve_once(engine, form, cfg, left(), point, True, algorithm)
    engine.set_integer(False)
    return out


def solve(form: Formulation, cfg: ScoreConfig) -> SolveReport:
    """Solve, adding Kelley cuts until max_b LSE(ẑ_b) − t_b ≤ cfg.kelley_tol.

    With binaries and `cfg.lp_cuts_first` (exact mode), the cuts are first converged on the LP
    relaxation (cheap, hot-started re-solves), so that the MIP rounds need only the few cuts the
    relaxation's miss. A MIP round is settled by LPs where they prove the MIP gap (`_solve_mip`);
    otherwise it is HiGHS's branch and bound from a feasible point (the warm start, then the
    last incumbent with t lifted onto the LSE). Raises
    `SolveError` if a solve ends with no feasible solution (infeasible, or a time-out without an
    incumbent). A time-out with an incumbent returns it, with status and gap; so does a time-out
    in a later Kelley round, with the previous round's point (status maxTimeLimit, LSE gap as in
    that round). Such a point is the last round's vertex: the interior re-solve needs an optimum,
    and the report says it was skipped (`SolveReport.interior`).
    """
    start = time.perf_counter()
    rows = form.program.matrix()
    scaling = decide(form.program, rows, cfg)
    engine = (Highspy if cfg.backend == "highspy" else Appsi)(form, cfg, rows, scaling)
    del rows
    history: list[dict] = []
    integer = bool(form.program.integer.any())
    try:
        if integer and cfg.lp_cuts_first and cfg.loss == "ce":
            engine.set_integer(False)
            _kelley(engine, form, cfg, start, history, "lp")
        out, lse_gap = _kelley(engine, form, cfg, start, history, "mip" if integer else "lp")
    except SolveError as err:
        err.details["scaling"] = scaling.record()
        raise
    final, note = "vertex", "not requested"
    if cfg.final_point == "interior" and out["status"] != "optimal":
        note = f"skipped (status {out['status']})"
    elif cfg.final_point == "interior":
        out, lse_gap, note = interior(engine, form, cfg, start, history, out, lse_gap, scaling)
        final = "interior" if note == "accepted" else "vertex"
    report = _report(engine, form, cfg, out, history, lse_gap, time.perf_counter() - start, final)
    report.interior, report.scaling = note, scaling.record()
    report.row_violation = violation(form.program, form.values)
    return report


def _kelley(engine, form: Formulation, cfg: ScoreConfig, start: float, history: list[dict],
            phase: str) -> tuple[dict, float]:
    """Solve and add cuts at the solution until the LSE gap closes; appends to `history`.

    A round whose LSE gaps equal the previous round's (to `_STALLED` relative) found the same
    point: its cuts were violated by less than HiGHS's feasibility tolerance, as the lifted
    form's per-exponential cuts are when the gap is a few 1e-7. From then on each round adds the
    aggregated tangent cut too (`Formulation.add_lse_cuts`). If the loop stalls with it as well,
    HiGHS's primal feasibility tolerance is lowered to `TIGHT_FEASIBILITY` (`Highspy.tighten`;
    the round is marked "tightened" in `history`); a stall after that means the gap left is below
    what the LP resolves, and the loop stops with status "stalled"."""
    out, lse_gap, first, last_gaps, aggregated = {}, float("inf"), True, None, False
    while len(history) < cfg.max_rounds:
        remaining = cfg.time_limit - (time.perf_counter() - start)
        # A start on a phase's first round (s = 1, observed activations) and on every MIP round
        # (the last incumbent with t lifted onto the LSE); an LP re-solve gets none, so HiGHS
        # hot-starts from its basis.
        point = None
        if cfg.warm_start and first:
            point = form.warm_start
        elif cfg.warm_start and phase == "mip":
            point = form.lifted(form.values)
        algorithm = IPX if first and phase == "lp" and _ipx_first(form, cfg) else "choose"
        previous = out
        out = (_solve_mip(engine, form, cfg, remaining, point, algorithm) if phase == "mip"
               else _solve_once(engine, form, cfg, remaining, point, False, algorithm))
        first = False
        if not out["feasible"] and previous and out["status"] == "maxTimeLimit":
            # The time ran out in a re-solve: the values are still the last round's point.
            out = {**previous, "status": "maxTimeLimit"}
            break
        if not out["feasible"]:
            sizes, seconds = form.sizes(), time.perf_counter() - start
            raise SolveError(f"HiGHS ({engine.name}) ended with status {out['status']} and no feasible "
                             f"solution in round {len(history) + 1} after {seconds:.1f}s "
                             f"(model: {sizes['variables']} variables, {sizes['constraints']} constraints, "
                             f"{sizes['nonzeros']} nonzeros)",
                             {"solver_status": out["status"], "rounds": len(history), "solve_s": seconds,
                              "final_point": "none", "iterations": out.get("iterations"), **sizes})
        gaps = form.lse_gaps() if cfg.loss == "ce" else np.zeros(1)
        lse_gap = float(np.max(gaps))
        history.append({"round": len(history) + 1, "phase": phase, "objective": out["objective"],
                        "lse_gap": lse_gap, "seconds": time.perf_counter() - start, "status": out["status"],
                        "algorithm": out.get("algorithm"), "iterations": out.get("iterations"),
                        **({"restarted": out["restarted"]} if "restarted" in out else {})})
        if lse_gap <= cfg.kelley_tol or out["status"] != "optimal":
            break
        if time.perf_counter() - start >= cfg.time_limit:  # cut short: t is still below the LSE
            out = {**out, "status": "maxTimeLimit"}
            break
        stalled = last_gaps is not None and np.allclose(gaps, last_gaps, rtol=_STALLED, atol=0.0)
        if stalled and (aggregated or form.lse == "tangent"):
            if any("tightened" in h for h in history):  # tightened once already
                out = {**out, "status": "stalled"}
                break
            engine.tighten()
            history[-1]["tightened"] = TIGHT_FEASIBILITY
            stalled = False
        aggregated, last_gaps = aggregated or stalled, gaps
        engine.add_rows(form.add_lse_cuts(form.values, [b for b, g in enumerate(gaps) if g > cfg.kelley_tol],
                                          aggregated))
    if lse_gap > cfg.kelley_tol and out.get("status") == "optimal":  # rounds exhausted
        out = {**out, "status": "maxIterations"}
    return out, lse_gap


def _ipx_first(form: Formulation, cfg: ScoreConfig) -> bool:
    """Whether a phase's first LP goes to IPX (`ScoreConfig.first_lp`): on a large LP a
    simplex from the warm start's basis crawls (full-width VGG-16 block 3, 3.5 M nonzeros: some
    2,000 dual simplex iterations in 75 s, far from optimal; interior point and crossover: 62 s)."""
    if cfg.first_lp == "auto":
        return form.sizes()["nonzeros"] >= _IPM_FIRST_NONZEROS
    return cfg.first_lp == "ipx"


def _report(engine, form, cfg, out, history, lse_gap, seconds, final_point: str) -> SolveReport:
    obj, bound = out["objective"], out["bound"]
    gap = None
    if obj is not None and bound is not None and np.isfinite(bound):
        gap = abs(obj - bound) / max(abs(obj), 1e-10)
    sizes = form.sizes()
    rounds = sum(h["phase"] != "interior" for h in history)
    return SolveReport(engine.name, solver_version(cfg), out["status"], float(obj), bound, gap, rounds,
                       lse_gap, form.n_cuts, seconds, sizes["variables"], sizes["constraints"],
                       sizes["binaries"], history, engine.handover_seconds, engine.highs_seconds, final_point,
                       sizes["nonzeros"])
