"""Solve a `Formulation`: persistent HiGHS (appsi), MIP start, Kelley cuts for the log-sum-exp.

Returns a `SolveReport` (status, gap, rounds, times, solver name and version) that is stored with
every result.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pyomo.environ as pe
from pyomo.contrib.appsi.base import TerminationCondition as TC

from critneuron.config import ScoreConfig
from critneuron.errors import SolveError
from critneuron.mip.formulation import Formulation, logsumexp

_FEASIBLE = {TC.optimal, TC.maxTimeLimit, TC.maxIterations, TC.objectiveLimit, TC.interrupted}


@dataclass
class SolveReport:
    """What happened in a solve; JSON-able through `to_dict`."""

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

    def to_dict(self) -> dict:
        """Plain JSON-able form."""
        return asdict(self)


def _lse_gaps(form: Formulation, logits: np.ndarray) -> np.ndarray:
    t = np.array([pe.value(v) for v in form.loss_epigraph], dtype=float)
    return np.array([logsumexp(z) for z in logits]) - t


def _make_solver(cfg: ScoreConfig):
    if cfg.solver != "appsi_highs":
        return pe.SolverFactory(cfg.solver)
    from pyomo.contrib.appsi.solvers import Highs

    opt = Highs()
    opt.config.load_solution = False
    opt.config.mip_gap = cfg.mip_gap
    # Between Kelley rounds only cuts are added (and, once, the binaries' domains change, passed
    # on explicitly): skip appsi's scan of every variable and constraint for other changes,
    # which on large models (deep VGG blocks) cost more than HiGHS's hot-started re-solve.
    for check in ("check_for_new_or_removed_vars", "check_for_new_or_removed_params", "check_for_new_objective",
                  "update_constraints", "update_vars", "update_params", "update_named_expressions",
                  "update_objective"):
        setattr(opt.update_config, check, False)
    opt.highs_options = {"threads": cfg.threads, "random_seed": cfg.seed, "output_flag": False}
    return opt


def highs_time_limit(opt, remaining: float) -> float:
    """HiGHS's `time_limit` that leaves `remaining` seconds for the next run: HiGHS (< 2.0) compares
    it with the run time accumulated over *all* runs of its object, so a Kelley loop that passed
    `remaining` alone was stopped early (after about half its limit)."""
    highs = getattr(opt, "_solver_model", None)  # appsi's highspy object, None before the first solve
    return max(remaining, 1.0) + (highs.getRunTime() if highs is not None else 0.0)


def _solve_once(opt, form: Formulation, cfg: ScoreConfig, remaining: float, warm_start: bool,
                integer: bool, algorithm: str = "choose") -> dict:
    """One solve; loads the incumbent if there is one and returns status, objective and bound.
    An LP (`integer` false) stopped early has no feasible point; a MIP may have an incumbent.
    `algorithm`: HiGHS's `solver` option (choose, simplex, ipm)."""
    if cfg.solver == "appsi_highs":
        opt.config.time_limit = highs_time_limit(opt, remaining)
        opt.config.warmstart = warm_start
        opt.highs_options = {**opt.highs_options, "solver": algorithm}
        res = opt.solve(form.model)
        status = res.termination_condition
        feasible = (status in _FEASIBLE if integer else status == TC.optimal) and res.best_feasible_objective is not None
        if feasible:
            res.solution_loader.load_vars()
        # The objective of the point actually loaded (the scores we return), not HiGHS's report.
        return {"status": status.name, "feasible": feasible, "bound": res.best_objective_bound,
                "objective": pe.value(form.model.objective) if feasible else None}
    res = opt.solve(form.model, load_solutions=False)
    cond = str(res.solver.termination_condition)
    feasible = len(res.solution) > 0
    if feasible:
        form.model.solutions.load_from(res)
    return {"status": cond, "feasible": feasible, "objective": pe.value(form.model.objective) if feasible else None,
            "bound": None}


def solver_version(cfg: ScoreConfig) -> str:
    """Version string of the configured solver, or 'unknown'."""
    if cfg.solver == "appsi_highs":
        import highspy

        return f"highspy {getattr(highspy, '__version__', '')} / HiGHS " + ".".join(
            map(str, _make_solver(cfg).version()))
    try:
        return str(pe.SolverFactory(cfg.solver).version())
    except Exception:  # noqa: BLE001 - third-party solvers report versions in many ways
        return "unknown"


def _set_warm_start(form: Formulation) -> None:
    for var, value in form.warm_start:
        var.set_value(value, skip_validation=True)


def _lift_epigraph(form: Formulation, logits: np.ndarray) -> None:
    """t_b := LSE(ẑ_b): makes the last incumbent feasible for every tangent cut (LSE is convex)."""
    for t, z in zip(form.loss_epigraph, logits):
        t.set_value(logsumexp(z), skip_validation=True)


def solve(form: Formulation, cfg: ScoreConfig) -> SolveReport:
    """Solve, adding Kelley tangent cuts until max_b LSE(ẑ_b) − t_b ≤ cfg.kelley_tol.

    With binaries and `cfg.lp_cuts_first` (exact mode), the cuts are first converged on the LP
    relaxation (cheap, hot-started re-solves), so that the MIP rounds, each a full branch and
    bound, need only the few cuts the relaxation's miss. Raises `SolveError` if a solve ends
    with no feasible solution (infeasible, or a time-out without an incumbent). A time-out with
    an incumbent returns it, with status and gap; so does a time-out in a later Kelley round,
    with the previous round's point (status maxTimeLimit, LSE gap as in that round).
    """
    start = time.perf_counter()
    opt = _make_solver(cfg)
    if cfg.warm_start:
        _set_warm_start(form)
    binaries = [v for v in form.model.component_data_objects(pe.Var) if v.is_binary()]
    history: list[dict] = []
    if binaries and cfg.lp_cuts_first and cfg.loss == "ce":
        for v in binaries:
            v.domain = pe.UnitInterval
        _kelley(opt, form, cfg, start, history, "lp")
        for v in binaries:
            v.domain = pe.Binary
        if cfg.solver == "appsi_highs":
            opt.update_variables(binaries)
        if cfg.warm_start:
            _set_warm_start(form)  # the LP's point is fractional; the initial one stays feasible
    out, lse_gap = _kelley(opt, form, cfg, start, history, "mip" if binaries else "lp")
    return _report(form, cfg, out, history, lse_gap, time.perf_counter() - start)


def _kelley(opt, form: Formulation, cfg: ScoreConfig, start: float, history: list[dict],
            phase: str) -> tuple[dict, float]:
    """Solve and add tangent cuts at the solution until the LSE gap closes; appends to `history`."""
    out, lse_gap, first = {}, float("inf"), True
    while len(history) < cfg.max_rounds:
        remaining = cfg.time_limit - (time.perf_counter() - start)
        # A MIP start on a phase's first round and on every MIP round (the last incumbent with t
        # lifted onto the LSE); an LP re-solve gets none, so HiGHS hot-starts from its basis.
        algorithm = "ipm" if first and phase == "lp" and cfg.first_lp == "ipm" else "choose"
        previous = out
        out = _solve_once(opt, form, cfg, remaining, cfg.warm_start and (first or phase == "mip"), phase == "mip",
                          algorithm)
        first = False
        if not out["feasible"] and previous and out["status"] == TC.maxTimeLimit.name:
            # The time ran out in a re-solve: the variables still hold the last round's point.
            out = {**previous, "status": TC.maxTimeLimit.name}
            break
        if not out["feasible"]:
            sizes = form.sizes()
            raise SolveError(f"solver {cfg.solver} ended with status {out['status']} and no feasible "
                             f"solution in round {len(history) + 1} after {time.perf_counter() - start:.1f}s "
                             f"(model: {sizes['variables']} variables, {sizes['constraints']} constraints)")
        logits = form.logit_values()
        gaps = _lse_gaps(form, logits) if cfg.loss == "ce" else np.zeros(1)
        lse_gap = float(np.max(gaps))
        history.append({"round": len(history) + 1, "phase": phase, "objective": out["objective"],
                        "lse_gap": lse_gap, "seconds": time.perf_counter() - start, "status": out["status"]})
        timed_out = out["status"] != TC.optimal.name and cfg.solver == "appsi_highs"
        if lse_gap <= cfg.kelley_tol or timed_out:
            break
        if time.perf_counter() - start >= cfg.time_limit:  # cut short: t is still below the LSE
            out = {**out, "status": TC.maxTimeLimit.name}
            break
        form.add_lse_cuts(logits, [b for b, g in enumerate(gaps) if g > cfg.kelley_tol])
        if phase == "mip":
            _lift_epigraph(form, logits)
    if lse_gap > cfg.kelley_tol and out.get("status") == TC.optimal.name:  # rounds exhausted
        out = {**out, "status": TC.maxIterations.name}
    return out, lse_gap


def _report(form, cfg, out, history, lse_gap, seconds) -> SolveReport:
    obj, bound = out["objective"], out["bound"]
    gap = None
    if obj is not None and bound is not None and np.isfinite(bound):
        gap = abs(obj - bound) / max(abs(obj), 1e-10)
    sizes = form.sizes()
    return SolveReport(cfg.solver, solver_version(cfg), out["status"], float(obj), bound, gap, len(history),
                       lse_gap, form.n_cuts, seconds, sizes["variables"], sizes["constraints"],
                       sizes["binaries"], history)
