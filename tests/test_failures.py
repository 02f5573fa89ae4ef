"""The failure paths of a solve: a wrong encoding is flagged by the self-check, an infeasible
program ends in the named `SolveError` (real HiGHS, nothing mocked)."""

from __future__ import annotations

import numpy as np
import pytest

import critneuron.mip.builder as builder
from critneuron.config import ScoreConfig
from critneuron.errors import SelfCheckWarning, SolveError
from critneuron.mip.bounds import interval_bounds
from critneuron.mip.formulation import build_formulation
from critneuron.mip.scores import score
from critneuron.mip.solve import solve
from critneuron.mip.spec import network_spec
from hand_nets import two_unit_net

X, Y = np.ones((1, 1)), np.array([0])


def test_a_wrong_encoding_is_flagged_by_the_self_check(monkeypatch):
    """The program built with half the score shift the torch check applies: the solved scores
    (s ≈ 0.55, not 1) give logits the torch network does not, so the run is flagged, not hidden."""
    right = builder.shift_scale
    monkeypatch.setattr(builder, "shift_scale", lambda spec, bounds, idx: 0.5 * right(spec, bounds, idx))
    cfg = ScoreConfig(mode="exact", lambda_=1.0, epsilon=0.0)
    with pytest.warns(SelfCheckWarning, match="self-check failed"):
        result = score(two_unit_net(), X, Y, cfg)
    assert result.provenance["selfcheck_passed"] is False
    assert result.provenance["selfcheck_error"] > cfg.selfcheck_tol


def test_the_right_encoding_passes_the_self_check_silently(recwarn):
    result = score(two_unit_net(), X, Y, ScoreConfig(mode="exact", lambda_=1.0, epsilon=0.0))
    assert result.provenance["selfcheck_passed"] is True
    assert not [w for w in recwarn if issubclass(w.category, SelfCheckWarning)]


@pytest.mark.parametrize("mode", ["exact", "relaxed"])
def test_an_infeasible_program_raises_solve_error(mode):
    """Logit ẑ_0 = z_0 = s_0 ≤ 1 (see `two_unit_net`); bounding it to [5, 6] leaves no point."""
    net, cfg = two_unit_net(), ScoreConfig(mode=mode, lambda_=1.0, epsilon=0.0)
    spec = network_spec(net, (1,))
    form = build_formulation(spec, interval_bounds(spec, X, cfg.epsilon), X, Y, cfg)
    column = form.logits[0, 0]
    form.program.col_lower[column], form.program.col_upper[column] = 5.0, 6.0
    with pytest.raises(SolveError, match="no feasible solution in round 1") as failed:
        solve(form, cfg)
    assert failed.value.details["solver_status"] == "infeasible" and failed.value.details["rounds"] == 0
    assert set(failed.value.details["iterations"]) == {"simplex", "ipm", "crossover"}
