"""The scoring engine: the Pyomo model and the direct HiGHS path come from the same blocks and
agree; the lifted log-sum-exp gives the aggregated cut's optimum in fewer rounds; the MIP start
is a feasible point of the program."""

from collections import defaultdict

import numpy as np
import pyomo.environ as pe
import pytest
import torch
from pyomo.repn import generate_standard_repn

from critneuron.mip.bounds import interval_bounds
from critneuron.config import ScoreConfig
from critneuron.mip.engines import TIGHT_FEASIBILITY
from critneuron.mip.formulation import build_formulation
from critneuron.nets.models import build_model
from critneuron.mip.scores import score
from critneuron.mip.solve import solve
from critneuron.mip.spec import network_spec
from test_scoring import tiny_conv, tiny_fc
from tolerances import objective_tolerance


def _random_batch(net, shape, batch, seed=0):
    torch.manual_seed(seed)
    x = torch.rand(batch, *shape)
    with torch.no_grad():
        y = net(x).argmax(1)
    return x.double().numpy(), y.numpy()


CASES = {
    "tiny_fc": lambda: (tiny_fc(), (2,), 3, 0.3),  # wide box: unstable units, real binaries
    "tiny_conv": lambda: (tiny_conv(), (1, 4, 4), 3, 0.2),
    "fc3": lambda: (build_model("fc3").eval(), (3, 32, 32), 3, 1e-5),
    "lenet5": lambda: (build_model("lenet5").eval(), (3, 32, 32), 2, 1e-5),
}


def _formulation(case, mode="exact", epsilon=None, **kw):
    """The case's formulation (its input box half-width, or `epsilon`) and config."""
    net, shape, batch, eps = CASES[case]()
    eps = eps if epsilon is None else epsilon
    x, y = _random_batch(net, shape, batch)
    cfg = ScoreConfig(mode=mode, epsilon=eps, **kw)
    spec = network_spec(net, shape)
    return build_formulation(spec, interval_bounds(spec, x, eps), x, y, cfg), cfg


def _pyomo_rows(form):
    """Every constraint of the Pyomo model as (lower, {column: coefficient}, upper)."""
    column = {id(v): j for j, v in enumerate(form.pyomo_vars)}
    rows = []
    for con in form.model.component_data_objects(pe.Constraint, active=True):
        repn = generate_standard_repn(con.body, compute_values=True)
        coefs = defaultdict(float)
        for v, c in zip(repn.linear_vars, repn.linear_coefs):
            coefs[column[id(v)]] += c
        const = repn.constant
        lo = -np.inf if con.lower is None else pe.value(con.lower) - const
        hi = np.inf if con.upper is None else pe.value(con.upper) - const
        rows.append((lo, dict(coefs), hi))
    return rows


def _key(lo, coefs, hi):
    return (round(lo, 12), tuple(sorted((j, round(c, 12)) for j, c in coefs.items())), round(hi, 12))


@pytest.mark.parametrize("case", list(CASES))
def test_pyomo_model_is_the_program(case):
    """Same columns (bounds, integrality, costs) and the same rows, row for row."""
    form, _ = _formulation(case)
    prog = form.program
    variables = form.pyomo_vars
    assert len(variables) == prog.n_cols
    for j, v in enumerate(variables):
        assert (v.lb if v.lb is not None else -np.inf) == prog.col_lower[j]
        assert (v.ub if v.ub is not None else np.inf) == prog.col_upper[j]
        assert v.is_binary() == bool(prog.integer[j])
    objective = generate_standard_repn(form.model.objective.expr)
    costs = np.zeros(prog.n_cols)
    column = {id(v): j for j, v in enumerate(variables)}
    for v, c in zip(objective.linear_vars, objective.linear_coefs):
        costs[column[id(v)]] += c
    assert np.array_equal(costs, prog.cost)

    rows = prog.matrix()
    mat = rows.matrix
    blocks = [(rows.lower[i], dict(zip(mat.indices[mat.indptr[i]:mat.indptr[i + 1]].tolist(),
                                       mat.data[mat.indptr[i]:mat.indptr[i + 1]].tolist())), rows.upper[i])
              for i in range(mat.shape[0])]
    assert sorted(_key(*r) for r in _pyomo_rows(form)) == sorted(_key(*r) for r in blocks)
    # rows added later (cuts) reach the Pyomo model too
    before = form.sizes()["constraints"]
    form.add_lse_cuts(form.lifted(form.warm_start), [0])
    assert len(_pyomo_rows(form)) == form.sizes()["constraints"] > before


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mode", ["relaxed", "exact"])
def test_both_backends_reach_the_same_optimum(case, mode):
    objectives = {}
    for backend in ("highspy", "appsi"):
        form, cfg = _formulation(case, mode, backend=backend)
        report = solve(form, cfg)
        assert report.status == "optimal" and report.lse_gap <= cfg.kelley_tol
        assert report.solver == ("highspy" if backend == "highspy" else "appsi_highs")
        objectives[backend] = report.objective
    assert objectives["highspy"] == pytest.approx(objectives["appsi"], abs=objective_tolerance(cfg, objectives["appsi"]))


@pytest.mark.parametrize("case", ["tiny_fc", "fc3", "lenet5"])
def test_lifted_lse_matches_the_aggregated_cut_in_fewer_rounds(case):
    reports = {}
    for lse in ("lifted", "tangent"):
        form, cfg = _formulation(case, "relaxed", lse=lse)
        reports[lse] = solve(form, cfg)
        assert reports[lse].lse_gap <= cfg.kelley_tol
    reference = reports["tangent"].objective
    assert reports["lifted"].objective == pytest.approx(reference, abs=objective_tolerance(cfg, reference))
    assert reports["lifted"].rounds <= reports["tangent"].rounds


@pytest.mark.parametrize("case", ["fc3", "lenet5"])
def test_kelley_loop_closes_a_gap_the_lifted_cuts_alone_cannot(case):
    """At kelley_tol 1e-7 the lifted cuts' violations fall under HiGHS's feasibility tolerance and
    the LP stops moving; the aggregated cut added from then on closes the gap, to the aggregated
    form's optimum."""
    reports = {}
    for lse in ("lifted", "tangent"):
        form, cfg = _formulation(case, "relaxed", lse=lse, kelley_tol=1e-7, final_point="vertex")
        reports[lse] = solve(form, cfg)
        assert reports[lse].status == "optimal" and reports[lse].lse_gap <= 1e-7
    assert reports["lifted"].objective == pytest.approx(reports["tangent"].objective, rel=1e-7)


@pytest.mark.parametrize("backend", ["highspy", "appsi"])
def test_kelley_loop_tightens_the_feasibility_tolerance_when_it_stalls(backend):
    """At kelley_tol 1e-9 fc3's point stops moving with the aggregated cut too (HiGHS reads its
    violation as within its 1e-7 feasibility tolerance); the loop then lowers that tolerance and
    closes the gap, where it used to stop as stalled."""
    form, cfg = _formulation("fc3", "relaxed", kelley_tol=1e-9, final_point="vertex", backend=backend)
    report = solve(form, cfg)
    assert report.status == "optimal" and report.lse_gap <= 1e-9
    assert [h["tightened"] for h in report.history if "tightened" in h] == [TIGHT_FEASIBILITY]


def test_kelley_loop_stops_as_stalled_below_what_the_lp_resolves():
    """fc3 here cannot get its LSE gap under 1e-10 (the LP's tolerances, tightened once): the
    loop stops, labelled `stalled`, when the point stops moving again, not after max_rounds."""
    form, cfg = _formulation("fc3", "relaxed", kelley_tol=1e-10, final_point="vertex")
    report = solve(form, cfg)
    assert report.status == "stalled" and report.lse_gap > cfg.kelley_tol and report.rounds < 30
    assert any("tightened" in h for h in report.history)


@pytest.mark.parametrize("case", list(CASES))
def test_warm_start_is_feasible_for_the_program(case):
    """s = 1 and the observed activations satisfy every row and bound (so HiGHS accepts it as the
    MIP start), before and after cuts at another point, once t is lifted onto the LSE."""
    form, _ = _formulation(case)
    prog = form.program

    def violation(point):
        rows = prog.matrix()
        act = rows.matrix @ point
        return max(np.max(rows.lower - act), np.max(act - rows.upper),
                   np.max(prog.col_lower - point), np.max(point - prog.col_upper))

    assert violation(form.warm_start) <= 1e-9
    other = form.warm_start.copy()
    other[form.logits] += np.random.default_rng(0).normal(0, 1, form.logits.shape)
    form.add_lse_cuts(form.lifted(other), list(range(len(form.logits))))
    assert violation(form.warm_start) <= 1e-9
    assert violation(other) > 1e-6  # the cuts do cut (t was not lifted)


def test_score_reports_where_the_time_went():
    net, shape, batch, eps = CASES["tiny_fc"]()
    x, y = _random_batch(net, shape, batch)
    report = score(net, torch.from_numpy(x), torch.from_numpy(y), ScoreConfig(epsilon=eps)).provenance["solver"]
    assert 0 < report["highs_seconds"] <= report["solve_seconds"]
    assert 0 < report["handover_seconds"] <= report["solve_seconds"]


@pytest.mark.parametrize("case", ["tiny_fc", "tiny_conv"])
@pytest.mark.parametrize("mip_gap", [1e-4, 0.0])
def test_exact_mode_gives_the_branch_and_bound_optimum(case, mip_gap):
    """MIP rounds settled by LPs (relaxation bound + the indicators fixed), or by HiGHS's branch
    and bound when they do not prove the gap (mip_gap = 0), give the optimum of plain branch
    and bound rounds (no LP phase, no warm start), at an integral point."""
    form, cfg = _formulation(case, "exact", mip_gap=mip_gap, final_point="vertex")  # the MIP rounds' own point
    report = solve(form, cfg)
    binaries = form.values[form.program.integer]
    assert form.program.integer.any() and np.allclose(binaries, np.round(binaries), atol=1e-6)
    assert {h["phase"] for h in report.history} == {"lp", "mip"}
    plain, plain_cfg = _formulation(case, "exact", lp_cuts_first=False, warm_start=False)
    reference = solve(plain, plain_cfg)
    assert report.status == reference.status == "optimal"
    assert report.gap <= max(mip_gap, 1e-9) and report.lse_gap <= cfg.kelley_tol
    both = objective_tolerance(cfg, reference.objective) + objective_tolerance(plain_cfg, reference.objective)
    assert report.objective == pytest.approx(reference.objective, abs=both)


def test_mip_round_settled_by_lps_when_they_prove_the_gap(monkeypatch):
    """With a gap the fixed-pattern LP meets, no branch and bound runs, and the answer is an
    integral point whose objective is within the reported gap of the branch-and-bound optimum."""
    import critneuron.mip.solve as solve_mod

    real, integer_solves = solve_mod._solve_once, []

    def counting(engine, form, cfg, remaining, point, integer, algorithm="choose"):
        integer_solves.append(integer)
        return real(engine, form, cfg, remaining, point, integer, algorithm)

    monkeypatch.setattr(solve_mod, "_solve_once", counting)
    form, cfg = _formulation("tiny_fc", "exact", mip_gap=0.5, final_point="vertex")
    report = solve(form, cfg)
    assert not any(integer_solves) and report.history[-1]["phase"] == "mip"
    binaries = form.values[form.program.integer]
    assert np.allclose(binaries, np.round(binaries), atol=1e-9)
    monkeypatch.setattr(solve_mod, "_solve_once", real)
    plain, plain_cfg = _formulation("tiny_fc", "exact", lp_cuts_first=False, warm_start=False)
    optimum = solve(plain, plain_cfg).objective
    assert report.bound <= optimum + 1e-6 <= report.objective + 2e-6
    assert report.objective - optimum <= report.gap * abs(report.objective) + 1e-6


@pytest.mark.parametrize("case, mode", [("tiny_fc", "exact"), ("tiny_fc", "relaxed"), ("lenet5", "relaxed")])
@pytest.mark.parametrize("backend", ["highspy", "appsi"])
def test_interior_final_point_keeps_the_optimum(case: str, mode: str, backend: str) -> None:
    """The interior point of the optimal face (the default, as the authors' MOSEK) has the vertex's
    objective; only scores the objective leaves free may move, and the binaries stay put."""
    reports, values = {}, {}
    for point in ("vertex", "interior"):
        form, cfg = _formulation(case, mode, final_point=point, backend=backend)
        reports[point], values[point] = solve(form, cfg), form.values[np.flatnonzero(form.program.integer)]
    assert reports["vertex"].final_point == "vertex" and reports["interior"].final_point == "interior"
    assert reports["interior"].status == "optimal" and reports["interior"].lse_gap <= cfg.kelley_tol
    vertex = reports["vertex"].objective
    assert reports["interior"].objective == pytest.approx(vertex, abs=objective_tolerance(cfg, vertex))
    assert reports["interior"].rounds == reports["vertex"].rounds  # the interior re-solve is no Kelley round
    assert reports["interior"].history[-1]["phase"] == "interior"
    if mode == "exact":
        np.testing.assert_array_equal(np.round(values["interior"]), np.round(values["vertex"]))


def test_implied_row_sides_hold_on_the_box_and_leave_the_optimum():
    """A side that `implied_sides` flags holds at every point of the column box (checked at its
    corners and at random points), and an LP without the flagged sides has the same optimum."""
    import scipy.sparse as sp

    from critneuron.mip.program import Rows, implied_sides
    from critneuron.mip.highs import highs_with

    rng = np.random.default_rng(0)
    n, m = 4, 60
    mat = sp.random(m, n, density=0.6, random_state=0, format="csr")
    mat.data = rng.normal(size=mat.nnz)
    col_lower, col_upper = -rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    centre = mat @ ((col_lower + col_upper) / 2)
    lower = np.where(rng.uniform(size=m) < 0.8, centre - rng.uniform(0, 2, m), -np.inf)
    upper = np.where(rng.uniform(size=m) < 0.8, centre + rng.uniform(0, 2, m), np.inf)
    low_holds, up_holds = implied_sides(mat, lower, upper, col_lower, col_upper)
    assert 0 < (low_holds & up_holds).sum() < m  # some rows go, some stay
    corners = np.array(np.meshgrid(*zip(col_lower, col_upper))).reshape(n, -1).T
    points = np.vstack([corners, rng.uniform(col_lower, col_upper, (500, n))])
    activity = (mat @ points.T).T
    assert np.all(activity[:, low_holds] >= lower[low_holds] - 1e-12)
    assert np.all(activity[:, up_holds] <= upper[up_holds] + 1e-12)
    # a side not flagged is violated at some corner (the interval minimum/maximum is attained)
    assert np.all((activity[:, ~low_holds] < lower[~low_holds]).any(axis=0))

    def optimum(lo, hi, keep):
        h = highs_with(rng_cost, col_lower, col_upper, Rows("test", mat[keep], lo[keep], hi[keep]))
        h.run()
        return h.getInfo().objective_function_value

    for seed in range(5):
        rng_cost = np.random.default_rng(seed).normal(size=n)
        full = optimum(lower, upper, np.ones(m, bool))
        reduced = optimum(np.where(low_holds, -np.inf, lower), np.where(up_holds, np.inf, upper),
                          ~(low_holds & up_holds))
        assert reduced == pytest.approx(full, abs=1e-9)


@pytest.mark.parametrize("case", ["tiny_conv", "lenet5"])
def test_interior_point_of_the_reduced_face_is_the_full_lps(case: str) -> None:
    """Fixing the scores that reduced costs pin and leaving out implied rows does not move the
    interior point: it equals HiGHS's interior point (no crossover, no presolve) of the whole LP."""
    from critneuron.mip.highs import highs_with

    form, cfg = _formulation(case, "relaxed", final_point="interior")
    report = solve(form, cfg)
    assert report.final_point == "interior"
    reduced = np.concatenate([form.values[c] for c in form.scores.values()])
    prog = form.program
    h = highs_with(prog.cost, prog.col_lower, prog.col_upper, prog.matrix(),
                   options={"output_flag": False, "solver": "ipx", "run_crossover": "off", "presolve": "off",
                            "threads": 1})
    h.run()
    assert h.modelStatusToString(h.getModelStatus()) == "Optimal"
    whole = np.asarray(h.getSolution().col_value)
    full = np.concatenate([whole[c] for c in form.scores.values()])
    assert np.abs(reduced - full).max() <= 1e-4


def test_an_lp_highs_loses_is_solved_afresh_by_interior_point(monkeypatch):
    """A re-solve that ends with status Unknown (a hot-started simplex lost on a large, badly
    scaled LP; seen on a VGG block) is solved again from scratch by interior point, and the
    scoring still ends optimal at the same objective."""
    import highspy

    import critneuron.mip.engines as engines

    form, cfg = _formulation("fc3", "relaxed", final_point="vertex")
    reference = solve(form, cfg).objective
    algorithms = []

    class Losing:
        """The engine's Highs, except that its second run reports status Unknown once."""

        def __init__(self, h):
            self._h, self._runs, self._lost = h, 0, False

        def __getattr__(self, name):
            return getattr(self._h, name)

        def run(self):
            self._runs += 1
            algorithms.append(self._h.getOptions().solver)
            self._lost = self._runs == 2
            return self._h.run()

        def getModelStatus(self):
            return highspy.HighsModelStatus.kUnknown if self._lost else self._h.getModelStatus()

        def clearSolver(self):
            self._lost = False
            return self._h.clearSolver()

    real_init = engines.Highspy.__init__

    def losing_init(self, *args):
        real_init(self, *args)
        self.h = Losing(self.h)

    monkeypatch.setattr(engines.Highspy, "__init__", losing_init)
    form, cfg = _formulation("fc3", "relaxed", final_point="vertex")
    report = solve(form, cfg)
    assert algorithms[2] == "ipx"  # the lost second run was repeated by interior point (IPX, by name)
    assert report.history[1]["algorithm"] == "ipx"
    assert report.status == "optimal" and report.objective == pytest.approx(reference,
                                                                             abs=objective_tolerance(cfg, reference))


def test_a_hot_re_solve_past_its_iteration_limit_is_solved_afresh(monkeypatch):
    """A hot-started re-solve that runs past `Highspy.hot_limit` simplex iterations (a dual simplex
    cycling at a degenerate vertex; seen on a VGG-16 ×1/16 block) is solved afresh with the first
    LP's algorithm, the history says so, and the scoring ends optimal at the same objective. With
    the real limit nothing is restarted."""
    import critneuron.mip.engines as engines

    form, cfg = _formulation("fc3", "relaxed", final_point="vertex")
    reference = solve(form, cfg)
    assert len(reference.history) > 1 and not any("restarted" in h for h in reference.history)
    monkeypatch.setattr(engines.Highspy, "hot_limit", lambda self: 1)
    form, cfg = _formulation("fc3", "relaxed", final_point="vertex")
    report = solve(form, cfg)
    restarted = [h for h in report.history if h.get("restarted") == "iteration limit"]
    assert restarted and all(h["algorithm"] == report.history[0]["algorithm"] for h in restarted)
    assert all(h["iterations"]["simplex"] > 1 for h in restarted)  # the limited run and the solve afresh
    assert report.status == "optimal" and report.objective == pytest.approx(
        reference.objective, abs=objective_tolerance(cfg, reference.objective))


def test_a_layer_input_made_columns_keeps_the_optimum_with_fewer_nonzeros(monkeypatch):
    """Pooled unstable units feeding a Linear: the pool's outputs become columns (the Linear's
    rows then list each once instead of repeating every weight per pooled unit), and the program
    has the optimum of the one without them, with fewer nonzeros."""
    from collections import OrderedDict

    from torch import nn

    from critneuron.mip.builder import ProgramBuilder

    torch.manual_seed(3)
    net = nn.Sequential(OrderedDict(conv1=nn.Conv2d(1, 6, 3, padding=1), relu1=nn.ReLU(), pool1=nn.AvgPool2d(2),
                                    flatten=nn.Flatten(), fc1=nn.Linear(6 * 4 * 4, 24), relu2=nn.ReLU(),
                                    fc2=nn.Linear(24, 3))).eval()
    x, y = _random_batch(net, (1, 8, 8), 3, seed=1)
    spec = network_spec(net, (1, 8, 8))
    cfg = ScoreConfig(mode="relaxed", epsilon=0.2, final_point="vertex")
    results = {}
    for rule in ("on", "off"):
        if rule == "off":
            monkeypatch.setattr(ProgramBuilder, "cheaper_as_columns", lambda self, layer, products: False)
        form = build_formulation(spec, interval_bounds(spec, x, 0.2), x, y, cfg)
        groups = [g[0] for g in form.program.groups]
        nonzeros = sum(r.matrix.nnz for r in form.program.rows)
        results[rule] = (solve(form, cfg), groups, nonzeros)
    (on, on_groups, on_nnz), (off, off_groups, off_nnz) = results["on"], results["off"]
    assert "flatten_out.y" in on_groups and "flatten_out.y" not in off_groups
    assert on_nnz < off_nnz
    assert on.status == off.status == "optimal"
    assert on.objective == pytest.approx(off.objective, abs=objective_tolerance(cfg, off.objective))


def test_solves_with_another_thread_count_follow_in_one_process():
    """HiGHS keeps one thread scheduler per process, started with the first run's thread count;
    a config with another `threads` still solves (it ended with status "Not Set" before)."""
    for threads in (1, 2, 1):
        form, cfg = _formulation("tiny_fc", "relaxed", threads=threads)
        assert solve(form, cfg).status == "optimal"
