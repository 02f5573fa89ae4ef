"""Solve a `Formulation` with HiGHS: MIP start, Kelley cuts for the log-sum-exp.

Two ways to hand the model over (`ScoreConfig.backend`), both from the formulation's sparse
blocks: ``highspy`` passes them straight to a `highspy.Highs` object and adds each round's cuts
to it (`addRows`); ``appsi`` goes through the Pyomo model and Pyomo's persistent appsi interface
(the engine before issue 16, kept for comparison). Returns a `SolveReport` (status, gap, rounds,
times, solver name and version) that is stored with every result.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import highspy
import numpy as np
import pyomo.environ as pe

from critneuron.config import ScoreConfig
from critneuron.errors import SolveError
from critneuron.mip.formulation import Formulation
from critneuron.mip.program import Rows, without_implied

_MS = highspy.HighsModelStatus
# HiGHS's model statuses under the names the reports have always used (Pyomo appsi's).
_STATUS = {_MS.kOptimal: "optimal", _MS.kTimeLimit: "maxTimeLimit", _MS.kIterationLimit: "maxIterations",
           _MS.kSolutionLimit: "maxIterations", _MS.kObjectiveBound: "objectiveLimit",
           _MS.kObjectiveTarget: "objectiveLimit", _MS.kInterrupt: "interrupted", _MS.kHighsInterrupt: "interrupted",
           _MS.kInfeasible: "infeasible", _MS.kUnbounded: "unbounded",
           _MS.kUnboundedOrInfeasible: "infeasibleOrUnbounded"}
_LOST = {_MS.kUnknown, _MS.kSolveError, _MS.kPostsolveError}
# `first_lp="auto"`: a first LP with this many nonzeros goes to interior point.
_IPM_FIRST_NONZEROS = 1_000_000
# A reduced cost above this (in magnitude) counts as nonzero: its score is pinned at its bound.
_PINNED = 1e-7
# Kelley rounds whose per-sample LSE gaps agree to this (relative) found the same point.
_STALLED = 1e-9
_STOPPED_WITH_POINT = {"optimal", "maxTimeLimit", "maxIterations", "objectiveLimit", "interrupted"}
_scheduler_threads: list[int] = []  # the thread count HiGHS's process-wide scheduler was started with


@dataclass
class SolveReport:
    """What happened in a solve; JSON-able through `to_dict`.

    `status`: HiGHS's ("optimal", "maxTimeLimit", ...), or the Kelley loop's when the LSE gap is
    still open: "maxIterations" (rounds exhausted) or "stalled" (the LP point stopped moving; see
    `_kelley`). `handover_seconds`: time spent getting the model, cuts, starts and solutions between the
    formulation and HiGHS; `highs_seconds`: inside HiGHS's `run`. `final_point`: "vertex" (the
    simplex optimum) or "interior" (`ScoreConfig.final_point`); `rounds` counts Kelley rounds.
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

    def to_dict(self) -> dict:
        """Plain JSON-able form."""
        return asdict(self)


def highs_time_limit(highs, remaining: float) -> float:
    """HiGHS's `time_limit` that leaves `remaining` seconds for the next run of the `highs`
    object (None before it exists): HiGHS (< 2.0) compares it with the run time accumulated over
    *all* runs of its object, so a Kelley loop that passed `remaining` alone was stopped early."""
    return max(remaining, 1.0) + (highs.getRunTime() if highs is not None else 0.0)


def solver_version(cfg: ScoreConfig) -> str:  # noqa: ARG001 - one solver today; kept per config for the store
    """Version string of the solver (the same for both backends: the same HiGHS solves)."""
    h = highspy.Highs()
    return f"highspy {getattr(highspy, '__version__', '')} / HiGHS {h.versionMajor()}.{h.versionMinor()}.{h.versionPatch()}"


def _options(cfg: ScoreConfig, **extra) -> dict:
    """HiGHS options of every solve of `cfg` (silent, its threads and seed), plus `extra`."""
    return {"output_flag": False, "threads": cfg.threads, "random_seed": cfg.seed, **extra}


def highs_with(cost: np.ndarray, col_lower: np.ndarray, col_upper: np.ndarray, rows: Rows,
               integer: np.ndarray | None = None, offset: float = 0.0, options: dict | None = None) -> highspy.Highs:
    """A `highspy.Highs` holding min cost·x + offset s.t. rows, col_lower ≤ x ≤ col_upper (x_j
    integer where `integer`), with `options` set (default: silent)."""
    threads = (options or {}).get("threads")
    if threads is not None and _scheduler_threads and _scheduler_threads[0] != threads:
        # HiGHS keeps one thread scheduler per process and refuses (status "Not Set") a run that
        # asks for another thread count; restart it, so configs with other `threads` can follow.
        highspy.Highs.resetGlobalScheduler(True)
    if threads is not None:
        _scheduler_threads[:] = [threads]
    h = highspy.Highs()
    for key, value in (options or {"output_flag": False}).items():
        h.setOptionValue(key, value)
    n, mat = len(cost), rows.matrix
    kinds = np.zeros(n, np.int32) if integer is None else np.asarray(integer, dtype=np.int32)
    h.passModel(n, mat.shape[0], mat.nnz, int(highspy.MatrixFormat.kRowwise), int(highspy.ObjSense.kMinimize),
                offset, cost, col_lower, col_upper, rows.lower, rows.upper, mat.indptr.astype(np.int32),
                mat.indices.astype(np.int32), mat.data, kinds)
    return h


class _Highspy:
    """The program passed to a live `highspy.Highs`; cuts are added rows (the basis is kept)."""

    name = "highspy"

    def __init__(self, form: Formulation, cfg: ScoreConfig):
        start = time.perf_counter()
        self.form, self.highs_seconds = form, 0.0
        prog = form.program
        self.h = highs_with(prog.cost, prog.col_lower, prog.col_upper, prog.matrix(), prog.integer,
                            options=_options(cfg, mip_rel_gap=cfg.mip_gap))
        self.integer = np.flatnonzero(prog.integer).astype(np.int32)
        self.handover_seconds = time.perf_counter() - start

    def set_integer(self, integer: bool) -> None:
        """Make the binaries binary again, or continuous in [0, 1]."""
        kind = highspy.HighsVarType.kInteger if integer else highspy.HighsVarType.kContinuous
        self.h.changeColsIntegrality(len(self.integer), self.integer, np.full(len(self.integer), int(kind), np.uint8))

    def fix(self, values: np.ndarray | None) -> None:
        """Fix the binaries at `values`, or (None) give them back their bounds."""
        prog = self.form.program
        lower = prog.col_lower[self.integer] if values is None else values
        upper = prog.col_upper[self.integer] if values is None else values
        self.h.changeColsBounds(len(self.integer), self.integer, lower, upper)

    def reduced_costs(self) -> np.ndarray:
        """Reduced costs of the columns at the last solve (zeros after a branch and bound)."""
        sol = self.h.getSolution()
        return np.asarray(sol.col_dual) if sol.dual_valid else np.zeros(self.form.program.n_cols)

    def add_rows(self, rows: Rows) -> None:
        """Append rows to the live model."""
        start = time.perf_counter()
        m = rows.matrix
        self.h.addRows(m.shape[0], rows.lower, rows.upper, m.nnz, m.indptr[:-1].astype(np.int32),
                       m.indices.astype(np.int32), m.data)
        self.handover_seconds += time.perf_counter() - start

    def run(self, remaining: float, point: np.ndarray | None, integer: bool, algorithm: str) -> dict:
        """One HiGHS run (from `point` as a MIP start, if given); loads the point it found."""
        start = time.perf_counter()
        h = self.h
        h.setOptionValue("time_limit", highs_time_limit(h, remaining))
        h.setOptionValue("solver", algorithm)
        if point is not None:
            sol = highspy.HighsSolution()
            sol.col_value = point
            sol.value_valid = True
            h.setSolution(sol)
        ran = time.perf_counter()
        h.run()
        if not integer and h.getModelStatus() in _LOST:
            # A hot-started simplex can lose its way on large, badly scaled LPs (status Unknown):
            # drop the basis and solve the LP afresh by interior point (with crossover).
            h.clearSolver()
            h.setOptionValue("time_limit", highs_time_limit(h, remaining - (time.perf_counter() - ran)))
            h.setOptionValue("solver", "ipx")
            h.run()
        inside = time.perf_counter() - ran
        self.highs_seconds += inside
        model_status = h.getModelStatus()
        status = _STATUS.get(model_status, h.modelStatusToString(model_status))
        info = h.getInfo()
        if integer:
            feasible = status in _STOPPED_WITH_POINT and info.primal_solution_status == 2
            bound = info.mip_dual_bound
        else:
            feasible = status == "optimal"
            bound = info.objective_function_value if feasible else None
        if feasible:
            self.form.values = np.asarray(h.getSolution().col_value)
        self.handover_seconds += time.perf_counter() - start - inside
        return {"status": status, "feasible": feasible, "bound": bound}


class _Appsi:
    """The Pyomo model through Pyomo's persistent appsi HiGHS interface; cuts are added to the
    Pyomo model, which appsi passes on at the next solve."""

    name = "appsi_highs"

    def __init__(self, form: Formulation, cfg: ScoreConfig):
        from pyomo.contrib.appsi.solvers import Highs

        start = time.perf_counter()
        self.form, self.highs_seconds = form, 0.0
        self.model, self.variables = form.model, form.pyomo_vars
        opt = self.opt = Highs()
        opt.config.load_solution = False
        opt.config.mip_gap = cfg.mip_gap
        # Between Kelley rounds only cuts are added (and, once, the binaries' domains change, passed
        # on explicitly): skip appsi's scan of every variable and constraint for other changes.
        for check in ("check_for_new_or_removed_vars", "check_for_new_or_removed_params", "check_for_new_objective",
                      "update_constraints", "update_vars", "update_params", "update_named_expressions",
                      "update_objective"):
            setattr(opt.update_config, check, False)
        self.options = {"threads": cfg.threads, "random_seed": cfg.seed, "output_flag": False}
        opt.set_instance(self.model)
        self.binaries = [self.variables[j] for j in np.flatnonzero(form.program.integer)]
        self.handover_seconds = time.perf_counter() - start

    def set_integer(self, integer: bool) -> None:
        """Make the binaries binary again, or continuous in [0, 1]."""
        for v in self.binaries:
            v.domain = pe.Binary if integer else pe.UnitInterval
        self.opt.update_variables(self.binaries)

    def fix(self, values: np.ndarray | None) -> None:
        """Fix the binaries at `values`, or (None) free them."""
        for j, v in enumerate(self.binaries):
            if values is None:
                v.unfix()
            else:
                v.fix(float(values[j]))
        self.opt.update_variables(self.binaries)

    def reduced_costs(self) -> np.ndarray:
        """Reduced costs of the columns at the last solve (zeros after a branch and bound)."""
        if self.opt._solver_model.getSolution().dual_valid:
            costs = self.opt.get_reduced_costs(self.variables)
            return np.array([costs[v] for v in self.variables], dtype=float)
        return np.zeros(len(self.variables))

    def add_rows(self, rows: Rows) -> None:  # noqa: ARG002 - the rows are in the program already
        """Add the program's new rows to the Pyomo model (appsi picks them up at the next solve)."""
        start = time.perf_counter()
        self.form.model  # noqa: B018 - syncs the Pyomo model with the program
        self.handover_seconds += time.perf_counter() - start

    def run(self, remaining: float, point: np.ndarray | None, integer: bool, algorithm: str) -> dict:
        """One solve (from `point` as a MIP start, if given); loads the point it found."""
        from pyomo.common.timing import HierarchicalTimer

        start = time.perf_counter()
        opt = self.opt
        opt.config.time_limit = highs_time_limit(opt._solver_model, remaining)
        opt.config.warmstart = point is not None
        if point is not None:
            for v, value in zip(self.variables, point):
                v.set_value(float(value), skip_validation=True)
        opt.highs_options = {**self.options, "solver": algorithm}
        timer = HierarchicalTimer()
        res = opt.solve(self.model, timer=timer)
        status = res.termination_condition.name
        feasible = ((status in _STOPPED_WITH_POINT if integer else status == "optimal")
                    and res.best_feasible_objective is not None)
        if feasible:
            res.solution_loader.load_vars()
            self.form.values = np.array([v.value for v in self.variables], dtype=float)
        highs = timer.get_total_time("optimize")
        self.highs_seconds += highs
        self.handover_seconds += time.perf_counter() - start - highs
        return {"status": status, "feasible": feasible, "bound": res.best_objective_bound}


def _solve_once(engine, form: Formulation, cfg: ScoreConfig, remaining: float, point: np.ndarray | None,
                integer: bool, algorithm: str = "choose") -> dict:
    """One solve; returns status, whether a point was loaded, its objective and the bound.
    An LP (`integer` false) stopped early has no feasible point; a MIP may have an incumbent.
    `algorithm`: HiGHS's `solver` option (choose, simplex, ipx: HiGHS's "ipm" means HiPO when
    highspy-extras is installed, so IPX is asked for by name)."""
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
    that round).
    """
    start = time.perf_counter()
    engine = (_Highspy if cfg.backend == "highspy" else _Appsi)(form, cfg)
    history: list[dict] = []
    integer = bool(form.program.integer.any())
    if integer and cfg.lp_cuts_first and cfg.loss == "ce":
        engine.set_integer(False)
        _kelley(engine, form, cfg, start, history, "lp")
    out, lse_gap = _kelley(engine, form, cfg, start, history, "mip" if integer else "lp")
    final = "vertex"
    if cfg.final_point == "interior" and out["status"] == "optimal":
        out, lse_gap, final = _interior(engine, form, cfg, start, history, out, lse_gap)
    return _report(engine, form, cfg, out, history, lse_gap, time.perf_counter() - start, final)


def _interior(engine, form: Formulation, cfg: ScoreConfig, start: float, history: list[dict], out: dict,
              lse_gap: float) -> tuple[dict, float, str]:
    """The optimum re-solved by interior point without crossover: a point in the relative interior
    of the optimal face, as an interior-point solver (the authors' MOSEK) returns, where simplex
    returns a vertex. Scores that the objective does not pin down then sit inside (0, 1) instead
    of at 0 or 1. The LP solved is the optimal face's: binaries fixed at their values, and so is
    every score whose reduced cost pins it at a bound in every optimum; rows that the remaining
    column bounds imply are left out (`_face`). Kept only if it reaches the same objective (to
    `kelley_tol` relative, or `mip_gap` with binaries) with the LSE gap still closed; else the
    vertex stays ("vertex (interior rejected)")."""
    vertex = form.values.copy()
    inner = _face(form, engine.reduced_costs(), cfg, cfg.time_limit - (time.perf_counter() - start))
    engine.highs_seconds += inner.pop("seconds")
    gap = float(np.max(form.lse_gaps())) if inner["feasible"] and cfg.loss == "ce" else 0.0
    # A MIP's point is optimal only to its gap (and feasible only to HiGHS's MIP tolerances), and
    # the face's LP, with the binaries fixed, may land a little above it within that gap.
    tol = cfg.mip_gap if form.program.integer.any() else cfg.kelley_tol
    same = inner["feasible"] and abs(inner["objective"] - out["objective"]) <= tol * max(1.0, abs(out["objective"]))
    history.append({"round": len(history) + 1, "phase": "interior", "objective": inner["objective"], "lse_gap": gap,
                    "seconds": time.perf_counter() - start, "status": inner["status"]})
    if same and gap <= cfg.kelley_tol:
        return {**out, "objective": inner["objective"]}, gap, "interior"
    form.values = vertex
    return out, lse_gap, "vertex (interior rejected)"


def _face(form: Formulation, reduced_costs: np.ndarray, cfg: ScoreConfig, remaining: float) -> dict:
    """Solve the optimal face of the program at the current optimum (`form.values`) by HiGHS's
    interior point, without crossover or presolve (presolve would fix free columns at a bound);
    loads the point if HiGHS reports it optimal. A score at a bound whose reduced cost pushes it
    there is at that bound in every optimum (complementary slackness), so it is fixed."""
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
    h = highs_with(prog.cost[free], lower[free], upper[free], face_rows, offset=float(prog.cost[~free] @ lower[~free]),
                   options=_options(cfg, solver="ipx", run_crossover="off", presolve="off",
                                    time_limit=max(remaining, 1.0)))
    ran = time.perf_counter()
    h.run()
    seconds = time.perf_counter() - ran
    model_status = h.getModelStatus()
    status = _STATUS.get(model_status, h.modelStatusToString(model_status))
    feasible = status == "optimal"
    if feasible:
        form.values = lower.copy()
        form.values[free] = h.getSolution().col_value
    return {"status": status, "feasible": feasible, "objective": form.objective_value() if feasible else None,
            "seconds": seconds}


def _kelley(engine, form: Formulation, cfg: ScoreConfig, start: float, history: list[dict],
            phase: str) -> tuple[dict, float]:
    """Solve and add cuts at the solution until the LSE gap closes; appends to `history`.

    A round whose LSE gaps equal the previous round's (to `_STALLED` relative) found the same
    point: its cuts were violated by less than HiGHS's feasibility tolerance, as the lifted
    form's per-exponential cuts are when the gap is a few 1e-7. From then on each round adds the
    aggregated tangent cut too (`Formulation.add_lse_cuts`); if the loop stalls with it as well,
    the gap left is below what the LP resolves, and the loop stops with status "stalled"."""
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
        algorithm = "ipx" if first and phase == "lp" and _ipm_first(form, cfg) else "choose"
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
                             {"solver_status": out["status"], "rounds": len(history), "solve_s": seconds, **sizes})
        gaps = form.lse_gaps() if cfg.loss == "ce" else np.zeros(1)
        lse_gap = float(np.max(gaps))
        history.append({"round": len(history) + 1, "phase": phase, "objective": out["objective"],
                        "lse_gap": lse_gap, "seconds": time.perf_counter() - start, "status": out["status"]})
        if lse_gap <= cfg.kelley_tol or out["status"] != "optimal":
            break
        if time.perf_counter() - start >= cfg.time_limit:  # cut short: t is still below the LSE
            out = {**out, "status": "maxTimeLimit"}
            break
        stalled = last_gaps is not None and np.allclose(gaps, last_gaps, rtol=_STALLED, atol=0.0)
        if stalled and (aggregated or form.lse == "tangent"):
            out = {**out, "status": "stalled"}
            break
        aggregated, last_gaps = aggregated or stalled, gaps
        engine.add_rows(form.add_lse_cuts(form.values, [b for b, g in enumerate(gaps) if g > cfg.kelley_tol],
                                          aggregated))
    if lse_gap > cfg.kelley_tol and out.get("status") == "optimal":  # rounds exhausted
        out = {**out, "status": "maxIterations"}
    return out, lse_gap


def _ipm_first(form: Formulation, cfg: ScoreConfig) -> bool:
    """Whether a phase's first LP goes to interior point (`ScoreConfig.first_lp`): on a large LP a
    simplex from the warm start's basis crawls (full-width VGG-16 block 3, 3.5 M nonzeros: some
    2,000 dual simplex iterations in 75 s, far from optimal; interior point and crossover: 62 s)."""
    if cfg.first_lp == "auto":
        return form.sizes()["nonzeros"] >= _IPM_FIRST_NONZEROS
    return cfg.first_lp == "ipm"


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
