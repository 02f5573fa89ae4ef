"""Scaling of the program HiGHS solves (`mip.scaling`, `ScoreConfig.scaling`): the same optimum,
solutions and reduced costs mapped back onto the unscaled rows, the `auto` rule, the report."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from critneuron.config import ScoreConfig
from critneuron.errors import ConfigError
from critneuron.mip import scaling
from critneuron.mip.highs import highs_with
from critneuron.mip.program import Program, Rows
from critneuron.mip.scaling import SCALE_FROM, SCALE_FROM_COLUMNS, column_magnitudes, decide
from critneuron.mip.scores import score
from critneuron.mip.solve import solve
from test_engine import CASES, _formulation, _random_batch


def _violation(rows: Rows, lower, upper, x) -> float:
    act = rows.matrix @ x
    return max(np.max(rows.lower - act), np.max(act - rows.upper), np.max(lower - x), np.max(x - upper))


@pytest.mark.parametrize("case, mode, eps", [("tiny_fc", "exact", None), ("tiny_conv", "relaxed", None),
                                             ("fc3", "relaxed", None), ("lenet5", "relaxed", None),
                                             ("fc3", "relaxed", 30.0)])
def test_scaled_program_has_the_unscaled_optimum(case: str, mode: str, eps: float | None) -> None:
    """Scaling on and off reach the same optimum (relaxed: 1e-6 relative; exact: within the MIP
    gaps), and the scaled run's point satisfies the unscaled rows and bounds."""
    reports = {}
    for rule in ("off", "on"):
        form, cfg = _formulation(case, mode, epsilon=eps, scaling=rule)
        reports[rule] = solve(form, cfg)
        assert reports[rule].status == "optimal" and reports[rule].scaling["applied"] == (rule == "on")
        prog = form.program
        assert _violation(prog.matrix(), prog.col_lower, prog.col_upper, form.values) <= 1e-6
        assert reports[rule].row_violation == pytest.approx(
            max(_violation(prog.matrix(), prog.col_lower, prog.col_upper, form.values), 0.0), abs=1e-12)
    tol = 1e-6 if mode == "relaxed" else 2 * ScoreConfig().mip_gap
    assert reports["on"].objective == pytest.approx(reports["off"].objective, rel=tol)


def test_solution_and_reduced_costs_map_back_onto_the_unscaled_lp() -> None:
    """A random LP with entries over ten orders of magnitude, solved scaled: the mapped-back point
    is feasible for the unscaled rows with the unscaled optimum, and the mapped-back reduced costs
    are the unscaled LP's (cost − Aᵀy with the unscaled duals)."""
    rng = np.random.default_rng(0)
    m, n = 30, 12
    mat = sp.random(m, n, density=0.5, random_state=1, format="csr")
    mat.data = rng.normal(size=mat.nnz) * 10.0 ** rng.integers(-5, 6, mat.nnz)
    col_lower, col_upper = -(10.0 ** rng.integers(-2, 5, n)), 10.0 ** rng.integers(-2, 5, n)
    centre = mat @ rng.uniform(col_lower, col_upper) / 4
    width = np.abs(mat) @ (col_upper - col_lower) / 8 + 1e-6
    rows = Rows("test", mat, centre - width, centre + width)
    cost = rng.normal(size=n)
    prog = Program(col_lower, col_upper, cost, np.zeros(n, bool), [], [rows])
    scaling = decide(prog, rows, ScoreConfig(scaling="on"))
    assert scaling.applied and not np.all(scaling.cols == 1.0)
    assert np.all(np.log2(scaling.cols) == np.round(np.log2(scaling.cols)))  # powers of two
    plain = highs_with(cost, col_lower, col_upper, rows)
    scaled = highs_with(scaling.cost(cost), scaling.to_solver(col_lower), scaling.to_solver(col_upper),
                        scaling.rows(rows), options={"output_flag": False, **scaling.options()})
    plain.run()
    scaled.run()
    x = scaling.from_solver(np.asarray(scaled.getSolution().col_value))
    assert _violation(rows, col_lower, col_upper, x) <= 1e-6
    assert cost @ x == pytest.approx(plain.getInfo().objective_function_value, rel=1e-9)
    d = scaling.reduced_costs(np.asarray(scaled.getSolution().col_dual))
    y = np.asarray(plain.getSolution().row_dual)
    np.testing.assert_allclose(d, cost - mat.T @ y, atol=1e-7)


def test_free_definition_columns_get_the_magnitude_their_row_implies() -> None:
    """y = 3·a − 2·b with |a| ≤ 4, |b| ≤ 10 (y free) gives |y| ≤ 32; w = y + 1 (w free, defined
    from y) gives |w| ≤ 33; a column no row defines gets 1."""
    inf = np.inf
    mat = sp.csr_matrix(np.array([[3.0, -2.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0, 0.0]]))
    rows = Rows("defs", mat, np.array([0.0, -1.0]), np.array([0.0, -1.0]))
    prog = Program(np.array([-4.0, -10.0, -inf, -inf, 0.0]), np.array([4.0, 10.0, inf, inf, inf]), np.zeros(5),
                   np.zeros(5, bool), [], [rows])
    np.testing.assert_array_equal(column_magnitudes(prog, rows), [4.0, 10.0, 32.0, 33.0, 1.0])


def test_auto_scales_from_the_threshold_and_only_with_highspy() -> None:
    """`auto` leaves the small nets' programs alone and scales one whose bounds reach
    `SCALE_FROM`; `on`/`off` force it; appsi is never scaled, and `on` with appsi is refused."""
    small, _ = _formulation("fc3", "relaxed")
    wide, _ = _formulation("fc3", "relaxed", epsilon=30.0)
    for form, expect in ((small, False), (wide, True)):
        rows = form.program.matrix()
        auto = decide(form.program, rows, ScoreConfig())
        assert auto.applied == expect == (auto.magnitude >= SCALE_FROM)
        assert decide(form.program, rows, ScoreConfig(scaling="on")).applied
        assert not decide(form.program, rows, ScoreConfig(scaling="off")).applied
        assert not decide(form.program, rows, ScoreConfig(backend="appsi")).applied
    with pytest.raises(ConfigError, match="scaling: 'on' needs the highspy backend"):
        ScoreConfig(scaling="on", backend="appsi")


def test_auto_scales_a_program_with_many_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """`auto` also scales a program of `SCALE_FROM_COLUMNS` columns whatever its magnitude (the
    deep full-width VGG-16 blocks), here with the threshold lowered to fc3's column count."""
    form, _ = _formulation("fc3", "relaxed")
    rows = form.program.matrix()
    assert form.program.n_cols < SCALE_FROM_COLUMNS and not decide(form.program, rows, ScoreConfig()).applied
    monkeypatch.setattr(scaling, "SCALE_FROM_COLUMNS", form.program.n_cols)
    auto = decide(form.program, rows, ScoreConfig())
    assert auto.applied and auto.magnitude < SCALE_FROM
    assert auto.record()["column_threshold"] == form.program.n_cols


def test_provenance_records_scaling_algorithms_and_final_point() -> None:
    net, shape, batch, _ = CASES["tiny_fc"]()
    x, y = _random_batch(net, shape, batch)
    report = score(net, torch.from_numpy(x), torch.from_numpy(y), ScoreConfig(epsilon=3e4)).provenance["solver"]
    assert report["scaling"]["applied"] and report["scaling"]["rule"] == "auto"
    assert report["scaling"]["magnitude"] >= SCALE_FROM and report["scaling"]["small_matrix_value"] == 1e-12
    assert report["row_violation"] <= 1e-6
    assert report["final_point"] == "interior" and report["interior"] == "accepted"
    assert report["history"][-1]["algorithm"] == "ipx" and report["history"][-1]["iterations"]["ipm"] > 0
    assert all("iterations" in h for h in report["history"])


def test_a_solve_that_does_not_end_optimal_says_so() -> None:
    """Rounds exhausted: the scores are the last round's vertex, and the report says the interior
    re-solve was skipped, and why."""
    form, cfg = _formulation("fc3", "relaxed", max_rounds=1)
    report = solve(form, cfg)
    assert report.status == "maxIterations"
    assert report.final_point == "vertex" and report.interior == "skipped (status maxIterations)"
