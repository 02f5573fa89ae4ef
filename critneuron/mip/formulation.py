"""The scoring MIP of a trained network on a batch, with one importance score per neuron/channel.

What the net is lives in `spec`, its bounds in `bounds`; this module only encodes. The builder
emits the model once, as sparse blocks (`Program`: columns with bounds, costs and integrality;
rows lo ≤ A x ≤ hi in named groups). Everything else is made from those blocks: the solver's
model (`solve` passes them straight to HiGHS) and the Pyomo model (`Formulation.model`, the
documented form of the same program). There is no second copy of the formulation.

Each sample's activations are carried as affine forms ``E·x + c`` in the columns x created so
far (scores included). A stable unit gets no column: its output z = ã (or 0) is substituted,
which is exact; so only unstable units get columns (z and v), plus whole layers whose forms have
grown dense (to keep rows sparse; and a dense pre-activation of an unstable unit, which its two
big-M rows would each repeat), a layer's input whose forms the layer would multiply out into
many more nonzeros (`ProgramBuilder.cheaper_as_columns`), and the logits. Units with the same
value share one column. The first layer's input is the data, so e.g. LeNet-5's conv activations
are affine in a handful of scores and the LP has hundreds of columns instead of tens of
thousands. A row in one column becomes a bound on it; a row in none is dropped, and so is a row
side that the column bounds imply.

Formulation (ElAraby, Wolf, Carvalho, the authors' final code):

* score shift at a scored layer with pre-activation a and bounds [L, U]:
  :math:`\\tilde a = a - (1 - s)\\tilde U`, :math:`\\tilde U = \\max(U, 0)` if a ReLU follows, else U;
* ReLU of an unstable unit (L < 0 < U): :math:`z \\ge 0,\\ z \\ge \\tilde a,\\ z \\le v\\max(U,0),\\
  z \\le \\tilde a - (1 - v)L`, with v binary (``exact``) or in [0, 1] (``relaxed``);
* presolve of stable units, exactly equivalent to the four rows above: U ≤ 0 gives z = 0 and
  :math:`L \\le \\tilde a \\le 0`; L ≥ 0 gives :math:`z = \\tilde a \\in [0, U]`;
* objective :math:`\\lambda \\frac1B\\sum_b (t_b - \\hat z_{b,y_b}) + \\mathrm{SumLargest}_{m-1}(g)`,
  :math:`g_l = \\sum_i (s_i - 2)/n_l`, with :math:`t_b \\ge \\mathrm{LSE}(\\hat z_b)` (``ce``) or
  :math:`t_b \\ge \\hat z_{b,k}` (``margin``). ``ce`` is written in its lifted (separable) form
  :math:`\\sum_k u_{b,k} \\le 1,\\ u_{b,k} \\ge e^{\\hat z_{b,k} - t_b}`, each exponential enforced by
  tangent cuts (``lse="lifted"``), or by tangent cuts of LSE itself (``lse="tangent"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyomo.environ as pe
import scipy.sparse as sp

from critneuron.mip.bounds import Bounds
from critneuron.mip.builder import ProgramBuilder, logsumexp
from critneuron.config import ScoreConfig
from critneuron.mip.program import Program, Rows
from critneuron.mip.pyomo_model import PyomoModel
from critneuron.mip.spec import NetworkSpec, ReLUSpec

# Tangents of exp with a slope below this are not added: HiGHS drops matrix entries under 1e-9,
# and an exponential this small moves the log-sum-exp by less than the Kelley tolerance.
_MIN_SLOPE = 1e-8
# Lifted form: every exponential also starts with tangents at these w = ẑ − t (exp(w) ≤ 1 at any
# feasible point), so the first LPs already see the curve; LeNet-5 on MNIST needs 7 Kelley rounds
# instead of 11, and a full-width VGG block's early re-solves move far less.
_SEED_TANGENTS = (0.0, -0.1, -0.2, -0.3, -0.4, -0.5, -0.6, -0.7, -0.8, -0.9, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
                  -9.0, -13.0)


@dataclass
class Formulation:
    """A built model: its `Program`, the columns callers need, and the current point `values`.

    `scores[name]`, `logits` (B × K), `loss_epigraph` (t_b) and `exps` (B × K, the lifted form's
    u_{b,k}; empty otherwise) hold column indices. `warm_start` is a full point (s = 1 and the
    observed activations). `model` is the Pyomo form of the same program.
    """

    program: Program
    scores: dict[str, np.ndarray]
    logits: np.ndarray
    loss_epigraph: np.ndarray
    labels: np.ndarray
    lse: str
    exps: np.ndarray
    warm_start: np.ndarray
    relu_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    n_cuts: int = 0
    values: np.ndarray | None = None
    _pyomo: Any = None

    @property
    def model(self) -> pe.ConcreteModel:
        """The Pyomo model of the program (built on first use; rows added since are appended)."""
        if self._pyomo is None:
            self._pyomo = PyomoModel(self.program)
        self._pyomo.sync()
        return self._pyomo.model

    @property
    def pyomo_vars(self) -> list:
        """The Pyomo variables in column order."""
        self.model  # noqa: B018 - builds the model on first use
        return self._pyomo.variables

    def add_lse_cuts(self, values: np.ndarray, samples: list[int], aggregated: bool = False) -> Rows:
        """Cuts for the samples' log-sum-exp at the point `values` (all columns); returns the
        chunk, which is also appended to the program.

        Lifted form: for each exponential u_{b,k} ≥ exp(ẑ_{b,k} − t_b), the tangent at
        w = ζ_k − LSE(ζ), the point moved onto Σ_k exp = 1 (t_b := LSE). A point with t_b below
        its LSE by δ > 0 violates at least one of them (their right-hand sides sum to 1 + δ).
        Tangent form: t_b ≥ LSE(ζ) + softmax(ζ)ᵀ(ẑ_b − ζ). ζ: the point's logits ẑ_b.
        `aggregated`: in the lifted form, the tangent-form cut too. It is the lifted cuts summed
        with weights softmax(ζ), so it cuts off nothing more in exact arithmetic; but it is violated
        by the whole δ where each lifted cut is violated by a share of it, which can fall under the
        LP solver's feasibility tolerance (the loop then stalls; see `solve._kelley`).
        """
        zeta = values[self.logits[samples]]
        tangents = (_tangent_cuts(self.logits[samples], self.loss_epigraph[samples], zeta, self.program.n_cols)
                    if self.lse == "tangent" or aggregated else None)
        if self.lse == "tangent":
            rows = tangents
        else:
            lse = np.array([logsumexp(z) for z in zeta])
            rows = _exp_cuts(self, samples, zeta - lse[:, None])
            if tangents is not None:
                rows = Rows(rows.group, sp.vstack([rows.matrix, tangents.matrix], format="csr"),
                            np.concatenate([rows.lower, tangents.lower]), np.concatenate([rows.upper, tangents.upper]))
        self.program.rows.append(rows)
        self.n_cuts += rows.matrix.shape[0]
        return rows

    def lifted(self, values: np.ndarray) -> np.ndarray:
        """`values` with t_b := LSE(ẑ_b) (and u_{b,k} := exp(ẑ_{b,k} − t_b)): feasible for every
        cut, since LSE and exp are convex; the start of the next MIP round."""
        out = values.copy()
        zeta = values[self.logits]
        t = np.array([logsumexp(z) for z in zeta])
        out[self.loss_epigraph] = t
        if self.exps.size:
            out[self.exps] = np.exp(zeta - t[:, None])
        return out

    def lse_gaps(self) -> np.ndarray:
        """LSE(ẑ_b) − t_b at the current point, per sample."""
        return np.array([logsumexp(z) for z in self.logit_values()]) - self.values[self.loss_epigraph]

    def objective_value(self) -> float:
        """Objective at the current point."""
        return float(self.program.cost @ self.values)

    def sizes(self) -> dict[str, int]:
        """Variables, binaries, constraints and their nonzeros of the model as it is now."""
        return {"variables": self.program.n_cols, "binaries": int(self.program.integer.sum()),
                "constraints": self.program.n_rows, "nonzeros": sum(r.matrix.nnz for r in self.program.rows)}

    def score_values(self) -> dict[str, np.ndarray]:
        """Current values of the score variables, clipped to [0, 1]."""
        return {k: np.clip(self.values[cols], 0.0, 1.0) for k, cols in self.scores.items()}

    def logit_values(self) -> np.ndarray:
        """Current values of the logit variables (B × K)."""
        return self.values[self.logits]


def _tangent_cuts(logits: np.ndarray, t: np.ndarray, zeta: np.ndarray, n_cols: int) -> Rows:
    """t_b − softmax(ζ_b)ᵀ ẑ_b ≥ LSE(ζ_b) − softmax(ζ_b)ᵀ ζ_b, one row per sample."""
    lse = np.array([logsumexp(z) for z in zeta])
    p = np.exp(zeta - lse[:, None])
    batch, k = logits.shape
    rows = np.repeat(np.arange(batch), k + 1)
    cols = np.concatenate([t[:, None], logits], axis=1).ravel()
    vals = np.concatenate([np.ones((batch, 1)), -p], axis=1).ravel()
    mat = sp.csr_matrix((vals, (rows, cols)), shape=(batch, n_cols))
    return Rows("lse_cuts", mat, lse - np.sum(p * zeta, axis=1), np.full(batch, np.inf))


def _exp_cuts(form: Formulation, samples: list[int], w: np.ndarray) -> Rows:
    """u_{b,k} − e ẑ_{b,k} + e t_b ≥ e (1 − w_{b,k}), e = exp(w_{b,k}) (the tangent of exp at
    w, samples × classes), where the slope e is not negligible."""
    e = np.exp(w)
    keep = e >= _MIN_SLOPE
    u, z = form.exps[samples][keep], form.logits[samples][keep]
    t = np.broadcast_to(form.loss_epigraph[samples][:, None], keep.shape)[keep]
    e, w = e[keep], w[keep]
    n = len(e)
    rows = np.repeat(np.arange(n), 3)
    cols = np.stack([u, z, t], axis=1).ravel()
    vals = np.stack([np.ones(n), -e, e], axis=1).ravel()
    mat = sp.csr_matrix((vals, (rows, cols)), shape=(n, form.program.n_cols))
    return Rows("lse_cuts", mat, e * (1.0 - w), np.full(n, np.inf))


def build_formulation(spec: NetworkSpec, bounds: Bounds, x: np.ndarray, y: np.ndarray,
                      cfg: ScoreConfig, dense_limit: float = 64.0) -> Formulation:
    """Build the scoring MIP for inputs x (B × ...) with labels y; see the module docstring.

    `dense_limit`: an activation becomes variables (at a ReLU or after average pooling) once its
    affine forms average more than this many nonzeros per unit; below it, stable units are
    substituted. Any value gives the same optimum; it only trades rows' density for size.
    """
    builder = ProgramBuilder(spec, bounds, x, cfg, dense_limit)
    layers = spec.layers
    for idx, layer in enumerate(layers):
        if isinstance(layer, ReLUSpec):
            builder.relu(idx, layer)
            continue
        builder.affine(idx, layer)
        last = idx == len(layers) - 1
        nxt = None if last else layers[idx + 1]
        if last or (layer.kind == "avgpool2d" and not isinstance(nxt, ReLUSpec) and builder.dense()):
            builder.materialise(idx, layer.name)
    logits = np.array(builder.units, dtype=np.int64)
    cost: dict[int, float] = {}
    builder.objective(np.asarray(y), logits, cost)
    form = Formulation(builder.program(cost), builder.scores, logits, builder.t, np.asarray(y), cfg.lse,
                       builder.exps, np.concatenate(builder.warm), builder.counts)
    if cfg.loss == "ce":  # the first cuts: at the unpruned network's logits (and the seed tangents)
        form.add_lse_cuts(form.lifted(form.warm_start), list(range(len(x))))
        if cfg.lse == "lifted":
            everyone = list(range(len(x)))
            for w in _SEED_TANGENTS:
                rows = _exp_cuts(form, everyone, np.full(form.exps.shape, w))
                form.program.rows.append(rows)
                form.n_cuts += rows.matrix.shape[0]
    return form
