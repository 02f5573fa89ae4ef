"""The independent oracle (`tests/oracle.py`) stays independent, and two nets solved on paper:
their optimum and scores are literal numbers, met by the package and by the oracle."""

from __future__ import annotations

import ast
import importlib.abc
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from critneuron.config import ScoreConfig
from critneuron.mip.scores import score
from hand_nets import one_channel_conv, two_unit_net
from oracle import TinyProgram
from tolerances import objective_tolerance, score_tolerance

ORACLE = Path(__file__).with_name("oracle.py")


class _RefuseCritneuron(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "critneuron":
            raise ImportError(f"the oracle imports {name}")
        return None


def test_oracle_imports_nothing_from_critneuron(monkeypatch):
    """Neither its import statements nor running the module (with the package hidden and its
    import refused) brings in the package it checks."""
    tree = ast.parse(ORACLE.read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert imported and not [name for name in imported if name.split(".")[0] == "critneuron"]
    for name in [m for m in sys.modules if m.split(".")[0] == "critneuron"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_RefuseCritneuron(), *sys.meta_path])
    spec = importlib.util.spec_from_file_location("oracle_alone", ORACLE)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "oracle_alone", module)
    spec.loader.exec_module(module)
    assert module.TinyProgram and not [m for m in sys.modules if m.split(".")[0] == "critneuron"]


# Both nets: ε = 0, so L = U = a. The one scored unit that is on has a = U = 1, so its shifted
# pre-activation is ã = 1 − (1 − s)·1 = s, its ReLU passes it (ã ∈ [0, U]), and the logits are
# (s, −s) for label 0: CE = log(e^s + e^−s) − s = log(1 + e^−2s). With one scored layer, P = g_1.
#
# two_unit_net, λ = 1: unit 1 is off (U = −1), so Ũ = max(U, 0) = 0 and s_1 is in no constraint;
#   f = log(1 + e^−2s0) + (s0 + s1 − 4)/2 (n_l = 2) gives s1 = 0 and
#   f'(s0) = −2/(1 + e^2s0) + 1/2 = 0 ⇔ e^2s0 = 3 ⇔ s0 = ln(3)/2 = 0.5493061443340549,
#   f* = ln(4/3) + (ln(3)/2 − 4)/2 = −1.4376648553811917.
# one_channel_conv, λ = 1/2: n_l = C_out·k_h·k_w = 1·2·2 = 4, so
#   f = ½ log(1 + e^−2s) + (s − 2)/4, f'(s) = −1/(1 + e^2s) + 1/4 = 0 ⇔ e^2s = 3 ⇔ s = ln(3)/2,
#   f* = ½ ln(4/3) + (ln(3)/2 − 2)/4 = −0.21883242769059583.
#   (With n_l = C_out = 1 instead, f' > 0 on [0, 1]: s = 0 and f* = ½ ln 2 − 2.)
# Curvature at the optimum: f'' = 4λ·e^2s/(1 + e^2s)² = 3λ/4 (= 0.75 and 0.375), so an objective
# within δ of f* puts s within √(2δ/f'') of the optimum.
HAND_SOLVED = [
    (two_unit_net, (1,), 1.0, -1.4376648553811917, {"fc1": [0.5493061443340549, 0.0]}),
    (one_channel_conv, (1, 2, 2), 0.5, -0.21883242769059583, {"conv1": [0.5493061443340549]}),
]


@pytest.mark.parametrize("make,shape,lambda_,optimum,scores", HAND_SOLVED, ids=["fc", "conv"])
@pytest.mark.parametrize("mode", ["exact", "relaxed"])
def test_hand_solved_nets_have_their_paper_optimum(make, shape, lambda_, optimum, scores, mode):
    net, x, y = make(), np.ones((1, *shape)), np.array([0])
    cfg = ScoreConfig(mode=mode, lambda_=lambda_, epsilon=0.0)
    result = score(net, x, y, cfg)
    assert result.provenance["solver"]["objective"] == pytest.approx(optimum, abs=objective_tolerance(cfg, optimum))
    for name, expected in scores.items():
        assert result.layers[name] == pytest.approx(expected, abs=score_tolerance(cfg, optimum, 3 * lambda_ / 4))
    oracle = TinyProgram(net, x, y, cfg.epsilon, lambda_).solve(mode)
    assert oracle.objective == pytest.approx(optimum, abs=1e-9)
    for name, expected in scores.items():
        assert oracle.scores[name] == pytest.approx(expected, abs=1e-5)
