"""HiGHS through highspy: a model from sparse rows, options, statuses, version and time limits.

`solve`, its engines and the optimal-face solve all make their `highspy.Highs` objects here.
Interior point is requested by name: HiGHS's ``solver="ipm"`` means HiPO (its direct-factorization
interior point) when highspy-extras is installed and IPX otherwise, so the engine asks for
``"ipx"`` (IPX, the interior point every HiGHS build has) wherever it means IPX.
"""

from __future__ import annotations

import highspy
import numpy as np

from critneuron.config import ScoreConfig
from critneuron.mip.program import Rows

MS = highspy.HighsModelStatus
# HiGHS's model statuses under the names the reports have always used (Pyomo appsi's).
STATUS = {MS.kOptimal: "optimal", MS.kTimeLimit: "maxTimeLimit", MS.kIterationLimit: "maxIterations",
          MS.kSolutionLimit: "maxIterations", MS.kObjectiveBound: "objectiveLimit",
          MS.kObjectiveTarget: "objectiveLimit", MS.kInterrupt: "interrupted", MS.kHighsInterrupt: "interrupted",
          MS.kInfeasible: "infeasible", MS.kUnbounded: "unbounded",
          MS.kUnboundedOrInfeasible: "infeasibleOrUnbounded"}
LOST = {MS.kUnknown, MS.kSolveError, MS.kPostsolveError}
IPX = "ipx"  # HiGHS's `solver` value for IPX (not "ipm", which is HiPO when highspy-extras is installed)
_scheduler_threads: list[int] = []  # the thread count HiGHS's process-wide scheduler was started with


def status_name(h: highspy.Highs) -> str:
    """The model status of `h`'s last run under the reports' names."""
    model_status = h.getModelStatus()
    return STATUS.get(model_status, h.modelStatusToString(model_status))


def iterations(h: highspy.Highs) -> dict[str, int]:
    """Iteration counts of `h`'s last run by algorithm: which of them ran, and how far."""
    info = h.getInfo()
    return {"simplex": int(info.simplex_iteration_count), "ipm": int(info.ipm_iteration_count),
            "crossover": int(info.crossover_iteration_count)}


def highs_time_limit(highs, remaining: float) -> float:
    """HiGHS's `time_limit` that leaves `remaining` seconds for the next run of the `highs`
    object (None before it exists): HiGHS (< 2.0) compares it with the run time accumulated over
    *all* runs of its object, so a Kelley loop that passed `remaining` alone was stopped early."""
    return max(remaining, 1.0) + (highs.getRunTime() if highs is not None else 0.0)


def solver_version(cfg: ScoreConfig) -> str:  # noqa: ARG001 - one solver today; kept per config for the store
    """Version string of the solver (the same for both backends: the same HiGHS solves)."""
    h = highspy.Highs()
    return f"highspy {getattr(highspy, '__version__', '')} / HiGHS {h.versionMajor()}.{h.versionMinor()}.{h.versionPatch()}"


def options(cfg: ScoreConfig, **extra) -> dict:
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
