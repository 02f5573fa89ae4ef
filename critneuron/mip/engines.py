"""The two ways `solve` hands the program to HiGHS (`ScoreConfig.backend`).

``highspy`` (`Highspy`) passes the program's sparse blocks, scaled by `scaling.Scaling`,
straight to a `highspy.Highs` object and adds each round's cuts to it (`addRows`); ``appsi``
(`Appsi`) goes through the Pyomo model and Pyomo's persistent appsi interface (the engine before
issue 16, kept for comparison; never scaled). Both load the point they find into
`Formulation.values` in the program's own (unscaled) columns.
"""

from __future__ import annotations

import time

import highspy
import numpy as np
import pyomo.environ as pe

from critneuron.config import ScoreConfig
from critneuron.mip.formulation import Formulation
from critneuron.mip.highs import IPX, LOST, highs_time_limit, highs_with, iterations, options, status_name
from critneuron.mip.program import Rows
from critneuron.mip.scaling import Scaling

STOPPED_WITH_POINT = {"optimal", "maxTimeLimit", "maxIterations", "objectiveLimit", "interrupted"}
# HiGHS's primal feasibility tolerance once a Kelley loop stalls (`Highspy.tighten`); its default is 1e-7.
TIGHT_FEASIBILITY = 1e-9
# The least simplex iterations a hot-started re-solve may take before it is solved afresh (`Highspy.hot_limit`).
HOT_ITERATIONS = 10_000


class Highspy:
    """The program passed to a live `highspy.Highs` (scaled by `scaling`); cuts are added rows
    (the basis is kept)."""

    name = "highspy"

    def __init__(self, form: Formulation, cfg: ScoreConfig, rows: Rows, scaling: Scaling):
        start = time.perf_counter()
        self.form, self.scaling, self.highs_seconds = form, scaling, 0.0
        prog = form.program
        scaled = scaling.rows(rows)
        if scaling.applied:  # evidence that HiGHS's small_matrix_value dropped nothing
            scaling.notes["smallest_entry"] = float(np.min(np.abs(scaled.matrix.data), initial=np.inf))
        self.h = highs_with(scaling.cost(prog.cost), scaling.to_solver(prog.col_lower),
                            scaling.to_solver(prog.col_upper), scaled, prog.integer,
                            options=options(cfg, mip_rel_gap=cfg.mip_gap, **scaling.options()))
        del scaled
        self.integer = np.flatnonzero(prog.integer).astype(np.int32)
        self.no_limit = self.h.getOptionValue("simplex_iteration_limit")[1]
        self.first_lp: dict | None = None  # the first LP run's algorithm and iterations: the hot re-solves' yardstick
        self.handover_seconds = time.perf_counter() - start

    def set_integer(self, integer: bool) -> None:
        """Make the binaries binary again, or continuous in [0, 1]."""
        kind = highspy.HighsVarType.kInteger if integer else highspy.HighsVarType.kContinuous
        self.h.changeColsIntegrality(len(self.integer), self.integer, np.full(len(self.integer), int(kind), np.uint8))

    def fix(self, values: np.ndarray | None) -> None:
        """Fix the binaries at `values`, or (None) give them back their bounds (binaries are not
        scaled)."""
        prog = self.form.program
        lower = prog.col_lower[self.integer] if values is None else values
        upper = prog.col_upper[self.integer] if values is None else values
        self.h.changeColsBounds(len(self.integer), self.integer, lower, upper)

    def reduced_costs(self) -> np.ndarray:
        """Reduced costs of the columns at the last solve (zeros after a branch and bound)."""
        sol = self.h.getSolution()
        if not sol.dual_valid:
            return np.zeros(self.form.program.n_cols)
        return self.scaling.reduced_costs(np.asarray(sol.col_dual))

    def tighten(self) -> None:
        """Lower HiGHS's primal feasibility tolerance to `TIGHT_FEASIBILITY`.

        HiGHS checks feasibility in its own scaled space, where a cut violated by 2e-6 at the
        point (full-width VGG-16 block 11, block-local bounds) can read as satisfied to its 1e-7:
        the re-solve then runs 0 iterations and the Kelley loop stalls."""
        self.h.setOptionValue("primal_feasibility_tolerance", TIGHT_FEASIBILITY)

    def add_rows(self, rows: Rows) -> None:
        """Append rows to the live model."""
        start = time.perf_counter()
        scaled = self.scaling.rows(rows)
        m = scaled.matrix
        self.h.addRows(m.shape[0], scaled.lower, scaled.upper, m.nnz, m.indptr[:-1].astype(np.int32),
                       m.indices.astype(np.int32), m.data)
        self.handover_seconds += time.perf_counter() - start

    def run(self, remaining: float, point: np.ndarray | None, integer: bool, algorithm: str) -> dict:
        """One HiGHS run (from `point` as a MIP start, if given); loads the point it found. An LP
        re-solve without a point hot-starts from the basis; one that runs past `hot_limit` or loses
        its way is solved afresh, and the result says so (`restarted`)."""
        start = time.perf_counter()
        h = self.h
        h.setOptionValue("time_limit", highs_time_limit(h, remaining))
        h.setOptionValue("solver", algorithm)
        if point is not None:
            sol = highspy.HighsSolution()
            sol.col_value = self.scaling.to_solver(point)
            sol.value_valid = True
            h.setSolution(sol)
        hot = not integer and point is None and self.first_lp is not None
        h.setOptionValue("simplex_iteration_limit", self.hot_limit() if hot else self.no_limit)
        ran = time.perf_counter()
        h.run()
        counts, restarted = iterations(h), None
        if hot and h.getModelStatus() == highspy.HighsModelStatus.kIterationLimit:
            # A hot-started dual simplex can cycle at a degenerate vertex once cuts are added
            # (VGG-16 ×1/16 block 7: 400,000 iterations at one objective, where the first LP took
            # 33,117 and a solve afresh 51,173): past what a solve afresh costs, solve afresh.
            algorithm, restarted = self.first_lp["algorithm"], "iteration limit"
            counts = self._afresh(remaining - (time.perf_counter() - ran), algorithm, counts)
        if not integer and h.getModelStatus() in LOST:
            # A hot-started simplex can lose its way on large, badly scaled LPs (status Unknown):
            # drop the basis and solve the LP afresh by interior point (with crossover).
            algorithm, restarted = IPX, "lost"
            counts = self._afresh(remaining - (time.perf_counter() - ran), algorithm, counts)
        if not integer and self.first_lp is None:
            self.first_lp = {"algorithm": algorithm, "iterations": sum(counts.values())}
        inside = time.perf_counter() - ran
        self.highs_seconds += inside
        status = status_name(h)
        info = h.getInfo()
        if integer:
            feasible = status in STOPPED_WITH_POINT and info.primal_solution_status == 2
            bound = info.mip_dual_bound
        else:
            feasible = status == "optimal"
            bound = info.objective_function_value if feasible else None
        if feasible:
            self.form.values = self.scaling.from_solver(np.asarray(h.getSolution().col_value))
        self.handover_seconds += time.perf_counter() - start - inside
        return {"status": status, "feasible": feasible, "bound": bound, "algorithm": algorithm,
                "iterations": counts, **({"restarted": restarted} if restarted else {})}

    def hot_limit(self) -> int:
        """Simplex iterations a hot-started LP re-solve may take: as many as the first LP took
        (at least `HOT_ITERATIONS`). No shipped re-solve took more than 1.05 times that."""
        return max(HOT_ITERATIONS, self.first_lp["iterations"])

    def _afresh(self, remaining: float, algorithm: str, counts: dict[str, int]) -> dict[str, int]:
        """Drop the basis and solve again with `algorithm` and no iteration limit; the iterations
        of both runs."""
        h = self.h
        h.clearSolver()
        h.setOptionValue("time_limit", highs_time_limit(h, remaining))
        h.setOptionValue("simplex_iteration_limit", self.no_limit)
        h.setOptionValue("solver", algorithm)
        h.run()
        return {k: counts[k] + v for k, v in iterations(h).items()}


class Appsi:
    """The Pyomo model through Pyomo's persistent appsi HiGHS interface; cuts are added to the
    Pyomo model, which appsi passes on at the next solve. Never scaled."""

    name = "appsi_highs"

    def __init__(self, form: Formulation, cfg: ScoreConfig, rows: Rows, scaling: Scaling):  # noqa: ARG002
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

    def tighten(self) -> None:
        """As `Highspy.tighten`, through the options of the next solve."""
        self.options["primal_feasibility_tolerance"] = TIGHT_FEASIBILITY

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
        feasible = ((status in STOPPED_WITH_POINT if integer else status == "optimal")
                    and res.best_feasible_objective is not None)
        if feasible:
            res.solution_loader.load_vars()
            self.form.values = np.array([v.value for v in self.variables], dtype=float)
        highs = timer.get_total_time("optimize")
        self.highs_seconds += highs
        self.handover_seconds += time.perf_counter() - start - highs
        return {"status": status, "feasible": feasible, "bound": res.best_objective_bound, "algorithm": algorithm,
                "iterations": iterations(opt._solver_model)}
