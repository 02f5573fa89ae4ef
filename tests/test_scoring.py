"""The scoring MIP: bounds, formulation sizes, optimum against independent solves, self-check."""

from collections import OrderedDict
from itertools import product

import numpy as np
import pyomo.environ as pe
import pytest
import scipy.optimize as so
import torch
from torch import nn

from critneuron.mip.bounds import forward, interval_bounds, shift_scale, stability
from critneuron.config import ScoreConfig
from critneuron.errors import SolveError, UnsupportedLayerError
from critneuron.mip.formulation import _SEED_TANGENTS, build_formulation, logsumexp
from critneuron.mip.scores import score
from critneuron.mip.solve import solve
from critneuron.mip.spec import network_spec
from tolerances import HIGHS_FEASIBILITY, objective_tolerance


def tiny_fc() -> nn.Sequential:
    """2-4-3-2 ReLU network::

        x(2) --fc1--> 4 --relu1--> --fc2--> 3 --relu2--> --fc3--> 2 logits
    """
    torch.manual_seed(3)
    return nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc1=nn.Linear(2, 4), relu1=nn.ReLU(),
                                     fc2=nn.Linear(4, 3), relu2=nn.ReLU(), fc3=nn.Linear(3, 2))).eval()


def tiny_conv() -> nn.Sequential:
    """1×4×4 image --conv(1→2, 3×3)--> 2×2×2 --relu--> --pool 2--> 2 --flatten--> --fc(2→2)--> logits."""
    torch.manual_seed(1)
    return nn.Sequential(OrderedDict(conv1=nn.Conv2d(1, 2, 3), relu1=nn.ReLU(), pool1=nn.AvgPool2d(2),
                                     flatten=nn.Flatten(), fc1=nn.Linear(2, 2))).eval()


def _objective_of(spec, bounds, x, y, cfg, s_flat, pattern=None):
    """Objective and constraint slacks of the shifted network at scores s (independent of Pyomo)."""
    scored = spec.scored
    sizes = [layer.n_units for layer in scored]
    parts = np.split(s_flat, np.cumsum(sizes)[:-1])
    s = {layer.name: p for layer, p in zip(scored, parts)}
    shifts = {}
    for idx, layer in enumerate(spec.layers):
        if getattr(layer, "scored", False):
            shifts[layer.name] = (1 - s[layer.name][layer.unit_of_output]) * shift_scale(spec, bounds, idx)
    outs = forward(spec, x, shifts)
    slacks = []
    for idx, layer in enumerate(spec.layers):
        if not hasattr(layer, "matrix"):  # ReLU: the pre-activation must stay in [min(L,0), max(U,0)]
            pre = outs[idx - 1]
            lo, up = np.minimum(bounds.lower[idx - 1], 0), np.maximum(bounds.upper[idx - 1], 0)
            slacks += [(pre - lo).ravel(), (up - pre).ravel()]
    logits = outs[-1]
    loss = np.mean([logsumexp(z) - z[t] for z, t in zip(logits, y)])
    g = sorted(((p - 2).sum() / layer.norm for layer, p in zip(scored, parts)), reverse=True)
    k = max(len(g) - 1, 1)
    return cfg.lambda_ * loss + sum(g[:k]), np.concatenate(slacks)


def _independent_optimum(net, x, y, cfg, starts=6):
    """Best local optimum of the shifted network's objective over s ∈ [0,1] by SLSQP (multi-start)."""
    spec = network_spec(net, tuple(x.shape[1:]))
    bounds = interval_bounds(spec, x, cfg.epsilon)
    n = sum(layer.n_units for layer in spec.scored)
    rng = np.random.default_rng(0)
    best = np.inf
    for start in [np.ones(n)] + [rng.uniform(0, 1, n) for _ in range(starts)]:
        res = so.minimize(lambda s: _objective_of(spec, bounds, x, y, cfg, s)[0], start, method="SLSQP",
                          bounds=[(0, 1)] * n, options={"ftol": 1e-12, "maxiter": 500},
                          constraints=[{"type": "ineq", "fun": lambda s: _objective_of(spec, bounds, x, y, cfg, s)[1]}])
        if res.success and np.min(_objective_of(spec, bounds, x, y, cfg, res.x)[1]) > -1e-7:
            best = min(best, res.fun)
    return best


@pytest.mark.parametrize("make,shape", [(tiny_fc, (2,)), (tiny_conv, (1, 4, 4))])
def test_optimum_matches_independent_solve(make, shape):
    """All units stable (ε = 1e-5): the MIP is convex in s, and SLSQP on the true network agrees."""
    net = make()
    torch.manual_seed(0)
    x = torch.rand(4, *shape)
    y = torch.tensor([0, 1, 0, 1])
    cfg = ScoreConfig(mode="exact", lambda_=5.0)
    got = score(net, x, y, cfg).provenance["solver"]["objective"]
    expected = _independent_optimum(net, x.numpy().astype(float), y.numpy(), cfg)
    assert got == pytest.approx(expected, abs=objective_tolerance(cfg, expected))


def test_unstable_units_match_enumeration_of_activation_patterns():
    """Wide box (unstable units, real binaries): the MIP optimum equals the best over all s-vertices
    refined by SLSQP, i.e. the exact MIP cannot be beaten by a feasible point of the true network."""
    net, cfg = tiny_fc(), ScoreConfig(mode="exact", epsilon=0.3)
    torch.manual_seed(0)
    x, y = torch.rand(2, 2), torch.tensor([0, 1])
    result = score(net, x, y, cfg)
    assert result.provenance["unstable_units"] > 0
    spec = network_spec(net, (2,))
    bounds = interval_bounds(spec, x.numpy().astype(float), cfg.epsilon)
    # every feasible vertex of the score box is an upper bound of the optimum
    tol = objective_tolerance(cfg, result.provenance["solver"]["objective"])
    for vertex in product([0.0, 1.0], repeat=7):
        obj, slack = _objective_of(spec, bounds, x.numpy().astype(float), y.numpy(), cfg, np.array(vertex))
        if slack.min() >= -1e-9:
            assert result.provenance["solver"]["objective"] <= obj + tol
    # and the MIP's own point, evaluated on the true network, achieves its objective
    s = np.concatenate([result.layers["fc1"], result.layers["fc2"]])
    obj, slack = _objective_of(spec, bounds, x.numpy().astype(float), y.numpy(), cfg, s)
    assert slack.min() >= -10 * HIGHS_FEASIBILITY
    assert obj == pytest.approx(result.provenance["solver"]["objective"], abs=tol)


def test_presolve_gives_same_optimum_as_full_big_m():
    net = tiny_fc()
    torch.manual_seed(0)
    x, y = torch.rand(3, 2), torch.tensor([0, 1, 1])
    for eps in (1e-5, 0.2):
        cfgs = [ScoreConfig(mode="exact", epsilon=eps, presolve=p) for p in (True, False)]
        objs = [score(net, x, y, cfg).provenance["solver"]["objective"] for cfg in cfgs]
        assert objs[0] == pytest.approx(objs[1], abs=sum(objective_tolerance(cfg, objs[1]) for cfg in cfgs))


@pytest.mark.parametrize("mode", ["exact", "relaxed"])
def test_substituting_stable_units_gives_same_optimum_as_variables_everywhere(mode):
    """dense_limit=0 gives every live unit a variable; the default substitutes stable ones."""
    net = tiny_conv()
    x = np.random.default_rng(2).uniform(0, 1, (3, 1, 4, 4))
    y = np.array([0, 1, 1])
    spec = network_spec(net, (1, 4, 4))
    cfg = ScoreConfig(mode=mode, epsilon=0.2, final_point="vertex")  # 6 of 24 conv units unstable
    bounds = interval_bounds(spec, x, cfg.epsilon)
    assert 0 < sum(stability(lo, up)[2].sum() for lo, up in zip(bounds.lower, bounds.upper))
    forms = [build_formulation(spec, bounds, x, y, cfg, dense_limit=d) for d in (0.0, 64.0)]
    sizes = [sum(1 for _ in f.model.component_data_objects(pe.Var)) for f in forms]
    assert sizes[1] < sizes[0]
    objs = [solve(f, cfg).objective for f in forms]
    assert objs[1] == pytest.approx(objs[0], abs=2 * objective_tolerance(cfg, objs[0]))


def test_repeated_units_become_one_column_with_the_same_optimum():
    """AdaptiveAvgPool2d(2) on a 1×1 map repeats each value 4 times: with every layer materialised,
    the next Linear's rows name each variable once (coefficients summed), and the optimum is
    that of the default (substituted) build."""
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(conv1=nn.Conv2d(1, 3, 3), relu1=nn.ReLU(), pool1=nn.AdaptiveAvgPool2d(2),
                                     flatten=nn.Flatten(), fc1=nn.Linear(12, 4), relu2=nn.ReLU(),
                                     fc2=nn.Linear(4, 2))).eval()
    x = np.random.default_rng(0).uniform(0, 1, (3, 1, 3, 3))
    y = np.array([0, 1, 1])
    spec = network_spec(net, (1, 3, 3))
    cfg = ScoreConfig(mode="relaxed", epsilon=0.3)
    bounds = interval_bounds(spec, x, cfg.epsilon)
    forms = [build_formulation(spec, bounds, x, y, cfg, dense_limit=d) for d in (0.0, 64.0)]
    fc1_rows = [c.body for c in forms[0].model.component_data_objects(pe.Constraint)
                if c.parent_block().name == "relu2"]
    assert fc1_rows
    for body in fc1_rows:
        names = [v.name for v in body.linear_vars]
        assert len(names) == len(set(names))
    objs = [solve(f, cfg).objective for f in forms]
    assert objs[0] == pytest.approx(objs[1], abs=2 * objective_tolerance(cfg, objs[1]))


def test_kelley_round_timed_out_keeps_the_last_rounds_point(monkeypatch):
    """A re-solve that hits the time limit returns the previous round's scores, marked maxTimeLimit."""
    import critneuron.mip.solve as solve_mod

    net = tiny_fc()
    torch.manual_seed(1)
    x, y = 4 * torch.rand(3, 2), torch.tensor([0, 1, 1])
    one_round = score(net, x, y, ScoreConfig(max_rounds=1))
    real, calls = solve_mod._solve_once, []

    def second_times_out(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            return real(*args, **kwargs)
        return {"status": "maxTimeLimit", "feasible": False, "objective": None, "bound": None}

    monkeypatch.setattr(solve_mod, "_solve_once", second_times_out)
    cut = score(net, x, y, ScoreConfig())
    report = cut.provenance["solver"]
    assert len(calls) == 2 and report["status"] == "maxTimeLimit" and report["rounds"] == 1
    assert report["objective"] == pytest.approx(one_round.provenance["solver"]["objective"])
    for name, values in one_round.layers.items():
        assert np.allclose(cut.layers[name], values)


def test_relaxed_objective_at_most_exact_and_kelley_tolerance():
    net = tiny_fc()
    torch.manual_seed(0)
    x, y = torch.rand(3, 2), torch.tensor([0, 1, 1])
    exact_cfg = ScoreConfig(mode="exact", epsilon=0.3)
    exact = score(net, x, y, exact_cfg)
    relaxed = score(net, x, y, ScoreConfig(mode="relaxed", epsilon=0.3))
    optimum = exact.provenance["solver"]["objective"]
    assert relaxed.provenance["solver"]["objective"] <= optimum + objective_tolerance(exact_cfg, optimum)
    for result in (exact, relaxed):
        assert result.provenance["solver"]["lse_gap"] <= exact_cfg.kelley_tol
    assert exact.provenance["selfcheck_error"] <= exact_cfg.selfcheck_tol


def test_bounds_contain_true_activations_in_the_box():
    net = tiny_conv()
    spec = network_spec(net, (1, 4, 4))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (3, 1, 4, 4))
    eps = 0.05
    b = interval_bounds(spec, x, eps)
    for _ in range(200):
        xs = x + rng.uniform(-eps, eps, x.shape)
        with torch.no_grad():
            outs = forward(spec, xs)
        for out, lo, up in zip(outs, b.lower, b.upper):
            assert np.all(out >= lo - 1e-12) and np.all(out <= up + 1e-12)
    # and the float64 spec equals torch on the centre
    with torch.no_grad():
        ref = net.double()(torch.from_numpy(x)).numpy()
    assert np.allclose(forward(spec, x)[-1], ref, atol=1e-12)


def test_formulation_sizes_hand_counted():
    """ε = 1e-5, 4 samples of tiny_fc: count variables and rows by hand from the stability masks."""
    net = tiny_fc()
    torch.manual_seed(0)
    x = np.random.default_rng(0).uniform(0, 1, (4, 2))
    y = np.array([0, 1, 0, 1])
    spec = network_spec(net, (2,))
    b = interval_bounds(spec, x, 1e-5)
    off1, on1, un1 = stability(b.lower[1], b.upper[1])
    off2, on2, un2 = stability(b.lower[3], b.upper[3])
    assert un1.sum() == un2.sum() == 0
    form = build_formulation(spec, b, x, y, ScoreConfig(mode="exact"))
    # scores, logits, t, theta, excess, u (lifted LSE): stable units have no variable
    n_vars = 7 + 4 * 2 + 4 + 1 + 2 + 4 * 2
    # A dead first-layer unit has Ũ = 0, so its row L ≤ a ≤ 0 holds a constant and is dropped. A row
    # in one variable is a bound: every live first-layer row (s1_j only), and a second-layer row
    # whose sample has a single live first-layer unit (dead units: s1 of it; live: s1 of it and s2_j).
    live1 = on1.sum(axis=1)
    relu_rows = int(sum(off2[b].sum() * (live1[b] >= 2) + on2[b].sum() * (live1[b] >= 1) for b in range(4)))
    # relu, logits, Σ_k u_bk ≤ 1, a tangent per u_bk at the warm start and at each seed point
    # (each exp(w) ≥ 1e-8 here), sum-largest
    rows = relu_rows + 4 * 2 + 4 * (1 + 2) + 4 * 2 * len(_SEED_TANGENTS) + 2
    assert off1.sum() > 0 and relu_rows > 0
    # a live first-layer unit's row s1_j ≥ 1 − a/Ũ became a bound
    assert np.any(form.program.col_lower[form.scores["fc1"]] > 0)
    # rows whose both sides the column bounds imply are left out (here: ReLU rows)
    assert 0 < form.program.n_implied < relu_rows
    rows -= form.program.n_implied
    assert form.sizes() == {"variables": n_vars, "binaries": 0, "constraints": rows,
                            "nonzeros": form.program.matrix().matrix.nnz}

    assert sum(1 for _ in form.model.component_data_objects(pe.Var)) == n_vars
    assert sum(1 for _ in form.model.component_data_objects(pe.Constraint)) == rows


def test_unsupported_layer_is_named():
    net = nn.Sequential(OrderedDict(fc1=nn.Linear(2, 2), act=nn.Tanh(), fc2=nn.Linear(2, 2)))
    with pytest.raises(UnsupportedLayerError, match=r"'act' of type Tanh .* supported: Linear, Conv2d"):
        network_spec(net, (2,))


def test_timeout_without_incumbent_raises_named_error(monkeypatch):
    net = tiny_fc()
    x, y = torch.rand(2, 2), torch.tensor([0, 1])
    import critneuron.mip.solve as solve_mod

    monkeypatch.setattr(solve_mod, "_solve_once", lambda *a, **k: {"status": "maxTimeLimit", "feasible": False,
                                                                       "objective": None, "bound": None})
    with pytest.raises(SolveError, match="maxTimeLimit and no feasible solution"):
        score(net, x, y, ScoreConfig())


def test_margin_loss_is_lp_and_solves():
    net = tiny_fc()
    x, y = torch.rand(3, 2), torch.tensor([0, 1, 1])
    result = score(net, x, y, ScoreConfig(loss="margin"))
    assert result.provenance["solver"]["rounds"] == 1
    assert all(np.all((v >= 0) & (v <= 1)) for v in result.layers.values())


def test_kelley_loop_cut_short_is_not_reported_optimal():
    net = tiny_fc()
    torch.manual_seed(1)
    x, y = 4 * torch.rand(3, 2), torch.tensor([0, 1, 1])
    assert score(net, x, y, ScoreConfig()).provenance["solver"]["rounds"] > 1
    report = score(net, x, y, ScoreConfig(max_rounds=1)).provenance["solver"]
    assert report["lse_gap"] > 1e-6 and report["status"] == "maxIterations"


def test_highs_time_limit_counts_the_runs_so_far():
    """HiGHS compares time_limit with its object's total run time over all runs (before 2.0)."""
    from types import SimpleNamespace

    from critneuron.mip.highs import highs_time_limit

    assert highs_time_limit(None, 30.0) == 30.0
    used = SimpleNamespace(getRunTime=lambda: 250.0)
    assert highs_time_limit(used, 30.0) == 280.0 and highs_time_limit(used, 0.0) == 251.0
    net = tiny_fc()
    torch.manual_seed(1)
    x, y = 4 * torch.rand(3, 2), torch.tensor([0, 1, 1])
    for backend in ("highspy", "appsi"):
        report = score(net, x, y, ScoreConfig(time_limit=5, backend=backend)).provenance["solver"]
        assert report["rounds"] > 1 and report["status"] == "optimal"  # the limit works across rounds


@pytest.mark.parametrize("module,shape,message", [
    (nn.Conv2d(1, 1, 3, dilation=2), (1, 6, 6), "only Conv2d with groups=1, dilation=1 and numeric zero padding"),
    (nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), (1, 6, 6), "only Conv2d with groups=1"),
    (nn.Conv2d(2, 2, 3, groups=2), (2, 6, 6), "only Conv2d with groups=1"),
    (nn.Conv2d(1, 1, 3), (2, 6, 6), r"layer: Conv2d expects 1 input channels, got shape \(2, 6, 6\)"),
    (nn.AvgPool2d(2, padding=1), (1, 6, 6), "layer: only AvgPool2d without padding or ceil_mode"),
], ids=["dilation", "padding_mode", "groups", "channels", "avgpool_padding"])
def test_layer_options_without_an_encoding_are_named(module, shape, message):
    with pytest.raises(UnsupportedLayerError, match=message):
        network_spec(nn.Sequential(OrderedDict(layer=module)), shape)
