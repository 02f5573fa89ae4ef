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
big-M rows would each repeat) and the logits. Units with the same value share one column. The
first layer's input is the data, so e.g. LeNet-5's conv activations are affine in a handful of
scores and the LP has hundreds of columns instead of tens of thousands. A row in one column
becomes a bound on it; a row in none is dropped.

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
from pyomo.core.expr.numeric_expr import LinearExpression

from critneuron.mip.bounds import Bounds, forward, shift_scale, stability
from critneuron.config import ScoreConfig
from critneuron.mip.spec import AffineSpec, NetworkSpec, ReLUSpec

# Tangents of exp with a slope below this are not added: HiGHS drops matrix entries under 1e-9,
# and an exponential this small moves the log-sum-exp by less than the Kelley tolerance.
_MIN_SLOPE = 1e-8


@dataclass
class Rows:
    """Rows lower ≤ matrix·x ≤ upper (±inf: no bound), all in the group `group`."""

    group: str
    matrix: sp.csr_matrix
    lower: np.ndarray
    upper: np.ndarray


@dataclass
class Program:
    """The scoring model as sparse blocks: minimise cost·x subject to every `rows` chunk and
    col_lower ≤ x ≤ col_upper, x_j integer where `integer`. `groups` names the columns:
    (dotted name, first column, index keys), e.g. ("relu1.z", 40, [(b, j), ...])."""

    col_lower: np.ndarray
    col_upper: np.ndarray
    cost: np.ndarray
    integer: np.ndarray
    groups: list[tuple[str, int, list]]
    rows: list[Rows]

    @property
    def n_cols(self) -> int:
        """Number of columns."""
        return len(self.cost)

    @property
    def n_rows(self) -> int:
        """Number of rows over all chunks."""
        return sum(r.matrix.shape[0] for r in self.rows)

    def matrix(self) -> Rows:
        """All rows stacked into one (group: the first chunk's)."""
        chunks = self.rows
        if not chunks:
            return Rows("", sp.csr_matrix((0, self.n_cols)), np.zeros(0), np.zeros(0))
        mats = [sp.csr_matrix((r.matrix.data, r.matrix.indices, r.matrix.indptr),
                              shape=(r.matrix.shape[0], self.n_cols)) for r in chunks]
        return Rows(chunks[0].group, sp.vstack(mats, format="csr"),
                    np.concatenate([r.lower for r in chunks]), np.concatenate([r.upper for r in chunks]))


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
            self._pyomo = _PyomoModel(self.program)
        self._pyomo.sync()
        return self._pyomo.model

    @property
    def pyomo_vars(self) -> list:
        """The Pyomo variables in column order."""
        self.model  # noqa: B018 - builds the model on first use
        return self._pyomo.variables

    def add_lse_cuts(self, values: np.ndarray, samples: list[int]) -> Rows:
        """Cuts for the samples' log-sum-exp at the point `values` (all columns); returns the
        chunk, which is also appended to the program.

        Lifted form: for each exponential u_{b,k} ≥ exp(ẑ_{b,k} − t_b), the tangent at
        w = ζ_k − LSE(ζ), the point moved onto Σ_k exp = 1 (t_b := LSE). A point with t_b below
        its LSE by δ > 0 violates at least one of them (their right-hand sides sum to 1 + δ).
        Tangent form: t_b ≥ LSE(ζ) + softmax(ζ)ᵀ(ẑ_b − ζ). ζ: the point's logits ẑ_b.
        """
        zeta = values[self.logits[samples]]
        if self.lse == "tangent":
            rows = _tangent_cuts(self.logits[samples], self.loss_epigraph[samples], zeta, self.program.n_cols)
        else:
            lse = np.array([logsumexp(z) for z in zeta])
            rows = _exp_cuts(self, samples, zeta - lse[:, None])
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
        """Variables, binaries and constraints of the model as it is now."""
        return {"variables": self.program.n_cols, "binaries": int(self.program.integer.sum()),
                "constraints": self.program.n_rows}

    def score_values(self) -> dict[str, np.ndarray]:
        """Current values of the score variables, clipped to [0, 1]."""
        return {k: np.clip(self.values[cols], 0.0, 1.0) for k, cols in self.scores.items()}

    def logit_values(self) -> np.ndarray:
        """Current values of the logit variables (B × K)."""
        return self.values[self.logits]


def logsumexp(z: np.ndarray) -> float:
    """Numerically stable log Σ exp(z) of a 1-D array."""
    top = float(np.max(z))
    return top + float(np.log(np.sum(np.exp(z - top))))


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


def _select(mask: np.ndarray) -> sp.csr_matrix:
    """Diagonal 0/1 matrix keeping the rows where `mask` is true."""
    return sp.diags(mask.astype(float), format="csr")


class _Builder:
    """Walks the spec once, emitting columns and rows (see the module docstring).

    Per sample b the current activation is ``expr[b] @ x + const[b]`` over the columns so far.
    """

    def __init__(self, spec: NetworkSpec, bounds: Bounds, x: np.ndarray, cfg: ScoreConfig, dense_limit: float):
        self.spec, self.bounds, self.cfg, self.dense_limit = spec, bounds, cfg, dense_limit
        self.batch = len(x)
        self.values = forward(spec, x)  # unshifted activations, for the warm start
        self.n_cols = 0
        self.lower, self.upper, self.integer, self.warm = [], [], [], []
        self.groups: list[tuple[str, int, list]] = []
        self.rows: list[Rows] = []
        self.tightened: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.counts: dict[str, dict[str, int]] = {}
        self.scores = {layer.name: self.columns(f"scores.{layer.name}", list(range(layer.n_units)), 0.0, 1.0, 1.0)
                       for layer in spec.scored}
        n_in = x[0].size
        self.expr = [sp.csr_matrix((n_in, self.n_cols))] * self.batch
        self.const = np.asarray(x, dtype=np.float64).reshape(self.batch, -1)

    def columns(self, group: str, keys: list, lower, upper, warm, integer: bool = False) -> np.ndarray:
        """New columns, one per key, with bounds and warm-start values (scalars or arrays)."""
        n = len(keys)
        idx = np.arange(self.n_cols, self.n_cols + n)
        for store, value in ((self.lower, lower), (self.upper, upper), (self.warm, warm)):
            store.append(np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)))
        self.integer.append(np.full(n, integer))
        self.groups.append((group, self.n_cols, keys))
        self.n_cols += n
        return idx

    def wide(self, mat: sp.csr_matrix) -> sp.csr_matrix:
        """`mat` (over the first columns) as a matrix over all columns so far."""
        mat = mat.tocsr()
        return sp.csr_matrix((mat.data, mat.indices, mat.indptr), shape=(mat.shape[0], self.n_cols))

    def pick(self, cols: np.ndarray, mask: np.ndarray, coef=1.0) -> sp.csr_matrix:
        """Row j: coef_j·x[cols[j]] where mask[j] and cols[j] ≥ 0, else empty."""
        coef = np.broadcast_to(np.asarray(coef, dtype=np.float64), cols.shape)
        keep = np.flatnonzero(mask & (cols >= 0))
        return sp.csr_matrix((coef[keep], (keep, cols[keep])), shape=(len(cols), self.n_cols))

    def emit(self, group: str, mat: sp.csr_matrix, lower, upper, const) -> None:
        """Rows lower ≤ mat·x + const ≤ upper (±inf: none); rows without a column are dropped,
        a row in one column tightens that column's bounds instead (the same feasible set)."""
        mat = self.wide(mat)
        mat.sum_duplicates()
        mat.eliminate_zeros()
        n = mat.shape[0]
        const = np.broadcast_to(np.asarray(const, dtype=np.float64), (n,))
        lower = np.broadcast_to(np.asarray(lower, dtype=np.float64), (n,)) - const
        upper = np.broadcast_to(np.asarray(upper, dtype=np.float64), (n,)) - const
        nnz = np.diff(mat.indptr)
        one = np.flatnonzero(nnz == 1)
        if one.size:
            first = mat.indptr[one]
            coef = mat.data[first]
            lo, hi = lower[one] / coef, upper[one] / coef
            self.tightened.append((mat.indices[first], np.where(coef > 0, lo, hi), np.where(coef > 0, hi, lo)))
        many = nnz >= 2
        if many.any():
            self.rows.append(Rows(group, mat[many], lower[many], upper[many]))

    def dense(self) -> bool:
        """Whether the current forms are dense enough to be worth new variables."""
        return sum(e.nnz for e in self.expr) / max(self.const.size, 1) > self.dense_limit

    def affine(self, idx: int, layer: AffineSpec) -> None:
        mat = layer.matrix
        self.expr = [(mat @ e).tocsr() for e in self.expr]
        self.const = (mat @ self.const.T).T + layer.offset
        if layer.scored:
            u_tilde = shift_scale(self.spec, self.bounds, idx)
            cols = self.scores[layer.name][layer.unit_of_output]
            rows = np.arange(len(cols))
            self.const = self.const - u_tilde
            self.expr = [self.wide(e) + sp.csr_matrix((u_tilde[b], (rows, cols)), shape=(len(cols), self.n_cols))
                         for b, e in enumerate(self.expr)]

    def replace(self, units: list[np.ndarray]) -> None:
        """The activation is now exactly the columns `units` (one per unit, −1 = 0)."""
        self.units = units
        n = self.const.shape[1]
        self.expr = [self.pick(cols, np.ones(n, dtype=bool)) for cols in units]
        self.const = np.zeros((self.batch, n))

    def _first_copies(self, b: int) -> np.ndarray:
        """For each unit of sample b, the first unit with the same affine form (itself if none):
        e.g. an adaptive pool that enlarges a 1×1 map repeats every value."""
        rows = sp.hstack([self.wide(self.expr[b]), sp.csr_matrix(self.const[b][:, None])], format="csr")
        rows.sum_duplicates()
        first: dict[tuple, int] = {}
        out = np.empty(rows.shape[0], dtype=np.int64)
        for j in range(rows.shape[0]):
            lo, hi = rows.indptr[j], rows.indptr[j + 1]
            out[j] = first.setdefault((rows.indices[lo:hi].tobytes(), rows.data[lo:hi].tobytes()), j)
        return out

    def materialise(self, idx: int, name: str) -> None:
        """Turn the current affine form into columns y with rows y = E x + c; units with identical
        forms share one column (duplicated columns make the LP degenerate and slow)."""
        n = self.const.shape[1]
        firsts = [self._first_copies(b) for b in range(self.batch)]
        uniques = [firsts[b] == np.arange(n) for b in range(self.batch)]
        keys = [(b, int(j)) for b in range(self.batch) for j in np.flatnonzero(uniques[b])]
        warm = np.concatenate([self.values[idx][b][uniques[b]] for b in range(self.batch)])
        cols = self.columns(f"{name}_out.y", keys, -np.inf, np.inf, warm)
        units, start = [], 0
        for b in range(self.batch):
            ys = np.full(n, -1)
            ys[uniques[b]] = cols[start:start + uniques[b].sum()]
            start += uniques[b].sum()
            sel = _select(uniques[b])
            self.emit(f"{name}_out.definition", self.pick(ys, uniques[b]) - sel @ self.wide(self.expr[b]),
                      0.0, 0.0, np.where(uniques[b], -self.const[b], 0.0))
            units.append(ys[firsts[b]])
        self.replace(units)

    def _unit_columns(self, group: str, mask: np.ndarray, lower, upper, warm, integer: bool = False) -> np.ndarray:
        """One column per (b, j) where mask (B × n); returns B × n column indices (−1: none)."""
        cols = np.full(mask.shape, -1)
        b, j = np.nonzero(mask)
        cols[b, j] = self.columns(group, list(zip(b.tolist(), j.tolist())), lower[b, j], upper[b, j], warm[b, j],
                                  integer)
        return cols

    def relu(self, idx: int, layer: ReLUSpec) -> None:
        lower, upper = self.bounds.lower[idx - 1], self.bounds.upper[idx - 1]
        pre = self.values[idx - 1]
        off, on, unstable = stability(lower, upper)
        if not self.cfg.presolve:
            off, on, unstable = np.zeros_like(off), np.zeros_like(on), np.ones_like(unstable)
        # Dense (or unpresolved) layers get a variable per live unit; sparse ones only per unstable unit.
        materialise = self.dense() or not self.cfg.presolve
        # An unstable unit's pre-activation appears in two big-M rows; when it is dense, it gets a
        # variable a = ã defined once (deep VGG heads: half the nonzeros of the LP).
        pre_var = self.cfg.presolve and self.dense()
        has_var = ~off if materialise else unstable
        inf = np.full(lower.shape, np.inf)
        zs = self._unit_columns(f"{layer.name}.z", has_var, np.zeros_like(lower), np.maximum(upper, 0.0),
                                np.maximum(pre, 0.0))
        vs = self._unit_columns(f"{layer.name}.v", unstable, np.zeros_like(lower), np.ones_like(upper),
                                (pre > 0).astype(float), self.cfg.mode == "exact")
        pres = self._unit_columns(f"{layer.name}.a", unstable if pre_var else np.zeros_like(unstable), -inf, inf, pre)
        for b in range(self.batch):
            self._relu_rows(f"{layer.name}.rows", b, zs[b], vs[b], pres[b] if pre_var else None, lower[b], upper[b],
                            off[b], on[b] & has_var[b], on[b] & ~has_var[b], unstable[b])
        self.counts[layer.name] = {"units": int(off.size), "off": int(off.sum()), "on": int(on.sum()),
                                   "unstable": int(unstable.sum())}
        if materialise:
            self.replace(list(zs))
            return
        # Sparse ReLU: on units keep their form, off units become 0, unstable units their new column.
        self.expr = [_select(on[b]) @ self.wide(self.expr[b]) + self.pick(zs[b], unstable[b])
                     for b in range(self.batch)]
        self.const = np.where(on, self.const, 0.0)

    def _relu_rows(self, group, b, zs, vs, pres, lo, up, off, on_var, on_expr, unstable) -> None:
        """Rows of sample b's ReLU units; `pres` (or None): the unstable units' pre-activation
        columns, defined here and used in their big-M rows instead of the form."""
        expr, c, none = self.wide(self.expr[b]), self.const[b], np.inf
        if off.any():  # L ≤ ã ≤ 0
            self.emit(group, _select(off) @ expr, np.where(off, lo, -none), np.where(off, 0.0, none),
                      np.where(off, c, 0.0))
        if on_var.any():  # z = ã (z ∈ [0, U] by its bounds)
            self.emit(group, self.pick(zs, on_var) - _select(on_var) @ expr, 0.0, 0.0, np.where(on_var, -c, 0.0))
        if on_expr.any():  # z = ã substituted: 0 ≤ ã ≤ U
            self.emit(group, _select(on_expr) @ expr, np.where(on_expr, 0.0, -none), np.where(on_expr, up, none),
                      np.where(on_expr, c, 0.0))
        if not unstable.any():
            return
        pre = _select(unstable) @ expr
        if pres is not None:  # a = ã, then the big-M rows in a
            self.emit(group, self.pick(pres, unstable) - pre, 0.0, 0.0, np.where(unstable, -c, 0.0))
            pre, c = self.pick(pres, unstable), np.zeros_like(c)
        z = self.pick(zs, unstable)
        # z ≥ ã
        self.emit(group, z - pre, np.where(unstable, 0.0, -none), none, np.where(unstable, -c, 0.0))
        # z ≤ ã − (1 − v)L  ⇔  z − ã − L v ≤ −L
        self.emit(group, z + self.pick(vs, unstable, -lo) - pre, -none, np.where(unstable, 0.0, none),
                  np.where(unstable, -c + lo, 0.0))
        # z ≤ v·max(U, 0)
        self.emit(group, z + self.pick(vs, unstable, -np.maximum(up, 0.0)), -none, np.where(unstable, 0.0, none), 0.0)

    def objective(self, y: np.ndarray, logits: np.ndarray, cost: dict[int, float]) -> None:
        """Loss epigraph t (and the lifted exponentials u), SumLargest penalty; `cost` collects
        the objective's coefficients by column."""
        cfg, batch, logits0 = self.cfg, self.batch, self.values[-1]
        keys = list(range(batch))
        if cfg.loss == "margin":
            self.t = self.columns("loss", keys, -np.inf, np.inf, logits0.max(axis=1))
            k = logits.shape[1]
            rows = np.repeat(np.arange(batch * k), 2)
            cols = np.stack([np.repeat(self.t, k), logits.ravel()], axis=1).ravel()
            vals = np.tile([1.0, -1.0], batch * k)
            self.emit("margin", sp.csr_matrix((vals, (rows, cols)), shape=(batch * k, self.n_cols)), 0.0, np.inf, 0.0)
        else:
            lse0 = np.array([logsumexp(z) for z in logits0])
            self.t = self.columns("loss", keys, -np.inf, np.inf, lse0)
        self.exps = np.zeros((batch, 0), dtype=np.int64)
        if cfg.loss == "ce" and cfg.lse == "lifted":
            k = logits.shape[1]
            p0 = np.exp(logits0 - lse0[:, None])
            self.exps = self.columns("exp.u", [(b, j) for b in range(batch) for j in range(k)], 0.0, 1.0,
                                     p0.ravel()).reshape(batch, k)
            rows = np.repeat(np.arange(batch), k)
            self.emit("exp.sum", sp.csr_matrix((np.ones(batch * k), (rows, self.exps.ravel())),
                                               shape=(batch, self.n_cols)), -np.inf, 1.0, 0.0)
        for b in range(batch):
            cost[self.t[b]] = cost.get(self.t[b], 0.0) + cfg.lambda_ / batch
            col = logits[b][int(y[b])]
            cost[col] = cost.get(col, 0.0) - cfg.lambda_ / batch
        self._sum_largest(cost)

    def _sum_largest(self, cost: dict[int, float]) -> None:
        """Sum of the m−1 largest g_l (g_1 when m = 1) as k·θ + Σ e_l, e_l ≥ g_l − θ, e_l ≥ 0."""
        layers = self.spec.scored
        k = max(len(layers) - 1, 1)
        g0 = [-1.0 * layer.n_units / layer.norm for layer in layers]  # g at s = 1
        top = sorted(g0, reverse=True)
        theta0 = top[k - 1] if len(top) >= k else 0.0
        theta = self.columns("theta", [None], -np.inf, np.inf, theta0)[0]
        excess = self.columns("excess", list(range(len(layers))), 0.0, np.inf, [max(g - theta0, 0.0) for g in g0])
        for i, layer in enumerate(layers):  # e_l + θ − Σ_i s_i / n_l ≥ −2·n_units / n_l
            cols = np.concatenate([[excess[i], theta], self.scores[layer.name]])
            vals = np.concatenate([[1.0, 1.0], np.full(layer.n_units, -1.0 / layer.norm)])
            mat = sp.csr_matrix((vals, (np.zeros(len(cols), dtype=int), cols)), shape=(1, self.n_cols))
            self.emit("sum_largest", mat, -2.0 * layer.n_units / layer.norm, np.inf, 0.0)
        cost[theta] = float(k)
        for col in excess:
            cost[col] = 1.0

    def program(self, cost: dict[int, float]) -> Program:
        """The emitted blocks, with every one-column row applied as a bound."""
        lower, upper = np.concatenate(self.lower), np.concatenate(self.upper)
        for cols, lo, hi in self.tightened:
            np.maximum.at(lower, cols, lo)
            np.minimum.at(upper, cols, hi)
        c = np.zeros(self.n_cols)
        c[list(cost)] = list(cost.values())
        return Program(lower, upper, c, np.concatenate(self.integer), self.groups, self.rows)


def build_formulation(spec: NetworkSpec, bounds: Bounds, x: np.ndarray, y: np.ndarray,
                      cfg: ScoreConfig, dense_limit: float = 64.0) -> Formulation:
    """Build the scoring MIP for inputs x (B × ...) with labels y; see the module docstring.

    `dense_limit`: an activation becomes variables (at a ReLU or after average pooling) once its
    affine forms average more than this many nonzeros per unit; below it, stable units are
    substituted. Any value gives the same optimum; it only trades rows' density for size.
    """
    builder = _Builder(spec, bounds, x, cfg, dense_limit)
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
    if cfg.loss == "ce":  # the first cuts: at the unpruned network's logits
        form.add_lse_cuts(form.lifted(form.warm_start), list(range(len(x))))
    return form


class _PyomoModel:
    """Pyomo form of a `Program`: a variable per column in blocks named by the column groups, a
    `ConstraintList` per row group; rows appended to the program later are added by `sync`."""

    def __init__(self, program: Program):
        self.program = program
        self.model = pe.ConcreteModel(name="critneuron")
        self.variables: list = []
        for name, start, keys in program.groups:
            scalar = keys == [None]
            var = pe.Var() if scalar else pe.Var(keys, dense=True)
            self._place(name, var)
            data = [var] if scalar else [var[k] for k in keys]
            for col, v in enumerate(data, start):
                lo, hi = program.col_lower[col], program.col_upper[col]
                if program.integer[col]:
                    v.domain = pe.Binary  # the only integers are the ReLU indicators
                v.setlb(None if np.isneginf(lo) else float(lo))
                v.setub(None if np.isposinf(hi) else float(hi))
            self.variables.extend(data)
        nz = np.flatnonzero(program.cost)
        self.model.objective = pe.Objective(expr=LinearExpression(
            constant=0.0, linear_coefs=program.cost[nz].tolist(), linear_vars=[self.variables[j] for j in nz]))
        self.n_chunks = 0

    def _place(self, name: str, component) -> Any:
        """Add `component` at the dotted path `name`, creating blocks on the way."""
        *blocks, leaf = name.split(".")
        parent = self.model
        for part in blocks:
            if parent.component(part) is None:
                parent.add_component(part, pe.Block())
            parent = parent.component(part)
        parent.add_component(leaf, component)
        return component

    def sync(self) -> None:
        """Add the program's rows that the model does not have yet."""
        for chunk in self.program.rows[self.n_chunks:]:
            con = self.model.find_component(chunk.group) or self._place(chunk.group, pe.ConstraintList())
            mat = chunk.matrix
            for i in range(mat.shape[0]):
                lo, hi = mat.indptr[i], mat.indptr[i + 1]
                expr = LinearExpression(constant=0.0, linear_coefs=mat.data[lo:hi].tolist(),
                                        linear_vars=[self.variables[j] for j in mat.indices[lo:hi]])
                low, up = chunk.lower[i], chunk.upper[i]
                if low == up:
                    con.add(expr == float(low))
                elif np.isneginf(low):
                    con.add(expr <= float(up))
                elif np.isposinf(up):
                    con.add(expr >= float(low))
                else:
                    con.add(pe.inequality(float(low), expr, float(up)))
        self.n_chunks = len(self.program.rows)
