"""Pyomo model of a trained network on a batch, with one importance score per neuron/channel.

What the net is lives in `spec`, its bounds in `bounds`; this module only encodes. Each sample's
activations are carried as affine expressions ``A·src + c + G·s`` (src: the sample's variables
so far, s: all scores). A stable unit gets no variable: its output z = ã (or 0) is substituted,
which is exact; so only unstable units get variables (z and v), plus whole layers whose
expressions have grown dense (to keep rows sparse; and a dense pre-activation of an unstable
unit, which its two big-M rows would each repeat) and the logits. Units that share a
variable (repeated values) share one column. The first layer's input is
the data, so e.g. LeNet-5's conv activations are affine in a handful of scores and the LP has
hundreds of columns instead of tens of thousands. The solver never appears here.

Formulation (ElAraby, Wolf, Carvalho, the authors' final code):

* score shift at a scored layer with pre-activation a and bounds [L, U]:
  :math:`\\tilde a = a - (1 - s)\\tilde U`, :math:`\\tilde U = \\max(U, 0)` if a ReLU follows, else U;
* ReLU of an unstable unit (L < 0 < U): :math:`z \\ge 0,\\ z \\ge \\tilde a,\\ z \\le v\\max(U,0),\\
  z \\le \\tilde a - (1 - v)L`, with v binary (``exact``) or in [0, 1] (``relaxed``);
* presolve of stable units, exactly equivalent to the four rows above: U ≤ 0 gives z = 0 and
  :math:`L \\le \\tilde a \\le 0`; L ≥ 0 gives :math:`z = \\tilde a \\in [0, U]`;
* objective :math:`\\lambda \\frac1B\\sum_b (t_b - \\hat z_{b,y_b}) + \\mathrm{SumLargest}_{m-1}(g)`,
  :math:`g_l = \\sum_i (s_i - 2)/n_l`, with :math:`t_b \\ge \\mathrm{LSE}(\\hat z_b)` enforced by
  tangent cuts (``ce``) or :math:`t_b \\ge \\hat z_{b,k}` (``margin``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyomo.environ as pe
import scipy.sparse as sp
from pyomo.core.expr.numeric_expr import LinearExpression

from critneuron.mip.bounds import Bounds, forward, shift_scale, stability
from critneuron.config import ScoreConfig
from critneuron.mip.spec import AffineSpec, NetworkSpec, ReLUSpec


@dataclass
class Formulation:
    """A built model and handles to the variables callers need."""

    model: pe.ConcreteModel
    scores: dict[str, list]
    logits: np.ndarray
    loss_epigraph: list
    labels: np.ndarray
    warm_start: list = field(default_factory=list)
    relu_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    n_cuts: int = 0

    def add_lse_cuts(self, points: np.ndarray, samples: list[int] | None = None) -> None:
        """Tangent cuts t_b ≥ LSE(ζ_b) + softmax(ζ_b)ᵀ(ẑ_b − ζ_b) at the given logits ζ (B × K)."""
        cuts = self.model.lse_cuts
        for b in range(len(points)) if samples is None else samples:
            zeta = np.asarray(points[b], dtype=np.float64)
            lse = logsumexp(zeta)
            p = np.exp(zeta - lse)
            expr = LinearExpression(constant=0.0, linear_coefs=[1.0] + (-p).tolist(),
                                    linear_vars=[self.loss_epigraph[b]] + list(self.logits[b]))
            cuts.add(expr >= float(lse - p @ zeta))
            self.n_cuts += 1

    def sizes(self) -> dict[str, int]:
        """Active variables, binaries and constraints of the model as it is now."""
        variables = list(self.model.component_data_objects(pe.Var, active=True))
        return {"variables": len(variables), "binaries": sum(1 for v in variables if v.is_binary()),
                "constraints": sum(1 for _ in self.model.component_data_objects(pe.Constraint, active=True))}

    def score_values(self) -> dict[str, np.ndarray]:
        """Current values of the score variables, clipped to [0, 1]."""
        return {k: np.clip(np.array([pe.value(v) for v in vs], dtype=float), 0.0, 1.0)
                for k, vs in self.scores.items()}

    def logit_values(self) -> np.ndarray:
        """Current values of the logit variables (B × K)."""
        return np.vectorize(pe.value, otypes=[float])(self.logits)


def logsumexp(z: np.ndarray) -> float:
    """Numerically stable log Σ exp(z) of a 1-D array."""
    top = float(np.max(z))
    return top + float(np.log(np.sum(np.exp(z - top))))


@dataclass
class _State:
    """Per-sample affine form of the current activation: A[b] @ src[b] + c[b] + G[b] @ s."""

    src: list[np.ndarray]  # per sample: object array of the variables so far (None: a fixed zero)
    a: list[sp.csr_matrix]
    c: np.ndarray
    g: list[sp.csr_matrix]

    def mean_row_nnz(self) -> float:
        """Average number of nonzeros of a row (variables + scores) over units and samples."""
        return sum(a.nnz + g.nnz for a, g in zip(self.a, self.g)) / max(self.c.size, 1)


def _tighten(var, coef: float, lower, upper, const: float) -> None:
    """Intersect var's bounds with lower ≤ coef·var + const ≤ upper (None = unbounded)."""
    ends = [None if b is None else (float(b) - const) / coef for b in (lower, upper)]
    lo, hi = ends if coef > 0 else ends[::-1]
    if lo is not None and (var.lb is None or lo > var.lb):
        var.setlb(lo)
    if hi is not None and (var.ub is None or hi < var.ub):
        var.setub(hi)


def _add_rows(con: pe.Constraint, parts: list[tuple[sp.csr_matrix, np.ndarray]], lower, upper, const) -> None:
    """Add rows lower ≤ Σ_parts M @ vars + const ≤ upper (None = unbounded); skip rows without
    variables; a row with one variable becomes a bound on it (the same feasible set, fewer rows)."""
    n = parts[0][0].shape[0]
    lower = np.broadcast_to(np.asarray(lower, dtype=object), (n,))
    upper = np.broadcast_to(np.asarray(upper, dtype=object), (n,))
    const = np.broadcast_to(np.asarray(const, dtype=np.float64), (n,))
    for i in range(n):
        coefs, vs = [], []
        for mat, variables in parts:
            lo, hi = mat.indptr[i], mat.indptr[i + 1]
            cols, vals = mat.indices[lo:hi], mat.data[lo:hi]
            picked = variables[cols]
            keep = np.not_equal(picked, None) & (vals != 0)
            coefs.extend(vals[keep].tolist())
            vs.extend(picked[keep].tolist())
        if not vs:
            continue
        if len(vs) == 1:  # a bound on one variable: tighten its bounds instead of adding a row
            _tighten(vs[0], coefs[0], lower[i], upper[i], float(const[i]))
            continue
        expr = LinearExpression(constant=float(const[i]), linear_coefs=coefs, linear_vars=vs)
        lo_i = None if lower[i] is None else float(lower[i])
        hi_i = None if upper[i] is None else float(upper[i])
        con.add(pe.inequality(lo_i, expr, hi_i) if lo_i is not None and hi_i is not None
                else (expr >= lo_i if hi_i is None else expr <= hi_i))


def _select(mask: np.ndarray) -> sp.csr_matrix:
    """Diagonal 0/1 matrix keeping the rows where `mask` is true."""
    return sp.diags(mask.astype(float), format="csr")


class _Builder:
    """Walks the spec once, creating one Pyomo block per ReLU and per materialised layer.

    Activations stay affine expressions in (earlier variables, scores) as long as they are
    sparse: a stable unit needs no variable of its own (z = ã or z = 0 is substituted), which
    is exact and leaves only unstable units, dense layers and the logits as variables.
    """

    def __init__(self, spec: NetworkSpec, bounds: Bounds, x: np.ndarray, cfg: ScoreConfig, dense_limit: float):
        self.spec, self.bounds, self.cfg, self.dense_limit = spec, bounds, cfg, dense_limit
        self.batch = len(x)
        self.m = pe.ConcreteModel(name="critneuron")
        self.values = forward(spec, x)  # unshifted activations, for the warm start
        self.warm: list = []
        self.counts: dict[str, dict[str, int]] = {}
        self._build_scores()
        self.n_scores = len(self.s_all)
        n_in = x[0].size
        self.state = _State([np.empty(0, dtype=object)] * self.batch, [sp.csr_matrix((n_in, 0))] * self.batch,
                            np.asarray(x, dtype=np.float64).reshape(self.batch, -1),
                            [sp.csr_matrix((n_in, self.n_scores))] * self.batch)

    def _build_scores(self) -> None:
        self.m.scores = pe.Block()
        self.scores, self.offsets, flat = {}, {}, []
        for layer in self.spec.scored:
            var = pe.Var(range(layer.n_units), bounds=(0.0, 1.0))
            self.m.scores.add_component(layer.name, var)
            self.offsets[layer.name] = len(flat)
            self.scores[layer.name] = [var[i] for i in range(layer.n_units)]
            flat.extend(self.scores[layer.name])
            self.warm.extend((v, 1.0) for v in self.scores[layer.name])
        self.s_all = np.array(flat, dtype=object)

    def dense(self) -> bool:
        """Whether the current expressions are dense enough to be worth new variables."""
        return self.state.mean_row_nnz() > self.dense_limit

    def affine(self, idx: int, layer: AffineSpec) -> None:
        st, mat = self.state, layer.matrix
        st.a = [(mat @ a).tocsr() for a in st.a]
        st.c = (mat @ st.c.T).T + layer.offset
        st.g = [(mat @ g).tocsr() for g in st.g]
        if layer.scored:
            self._shift(idx, layer)

    def _shift(self, idx: int, layer: AffineSpec) -> None:
        u_tilde = shift_scale(self.spec, self.bounds, idx)
        n_out = len(layer.unit_of_output)
        cols = self.offsets[layer.name] + layer.unit_of_output
        for b in range(self.batch):
            self.state.c[b] = self.state.c[b] - u_tilde[b]
            shift = sp.csr_matrix((u_tilde[b], (np.arange(n_out), cols)), shape=(n_out, self.n_scores))
            self.state.g[b] = (self.state.g[b] + shift).tocsr()

    def _parts(self, b: int) -> list[tuple[sp.csr_matrix, np.ndarray]]:
        st = self.state
        return [(st.g[b], self.s_all), (st.a[b], st.src[b])]

    def _replace_state(self, units: list[np.ndarray]) -> None:
        """The activation is now exactly the variables `units` (one per unit, None = 0).

        A variable that several units share (repeated values, e.g. an adaptive pool enlarging a
        1×1 map) becomes one column of A, so the next affine layer sums its coefficients instead
        of listing the variable once per copy (4× fewer nonzeros in a deep VGG head's Linear).
        """
        n = self.state.c.shape[1]
        self.units = units
        src, a = [], []
        for per_unit in units:
            column: dict[int, int] = {}
            rows, cols, variables = [], [], []
            for j, var in enumerate(per_unit):
                if var is None:
                    continue
                k = column.setdefault(id(var), len(variables))
                if k == len(variables):
                    variables.append(var)
                rows.append(j)
                cols.append(k)
            src.append(np.array(variables, dtype=object))
            a.append(sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, len(variables))))
        self.state = _State(src, a, np.zeros((self.batch, n)), [sp.csr_matrix((n, self.n_scores))] * self.batch)

    def _first_copies(self, b: int) -> np.ndarray:
        """For each unit of sample b, the first unit with the same affine form (itself if none):
        e.g. an adaptive pool that enlarges a 1×1 map repeats every value."""
        st = self.state
        rows = sp.hstack([st.a[b], st.g[b], sp.csr_matrix(st.c[b][:, None])], format="csr")
        rows.sum_duplicates()
        first: dict[tuple, int] = {}
        out = np.empty(rows.shape[0], dtype=np.int64)
        for j in range(rows.shape[0]):
            lo, hi = rows.indptr[j], rows.indptr[j + 1]
            out[j] = first.setdefault((rows.indices[lo:hi].tobytes(), rows.data[lo:hi].tobytes()), j)
        return out

    def materialise(self, idx: int, name: str) -> None:
        """Turn the current affine form into variables y with rows y = A src + c + G s; units with
        identical forms share one variable (duplicated columns make the LP degenerate and slow)."""
        n = self.state.c.shape[1]
        blk = pe.Block()
        self.m.add_component(f"{name}_out", blk)
        firsts = [self._first_copies(b) for b in range(self.batch)]
        blk.y = pe.Var([(b, j) for b in range(self.batch) for j in np.unique(firsts[b])])
        blk.definition = pe.ConstraintList()
        src = []
        for b in range(self.batch):
            unique = firsts[b] == np.arange(n)
            ys = np.array([blk.y[b, j] if unique[j] else None for j in range(n)], dtype=object)
            sel = _select(unique)
            neg = [(-(sel @ m), v) for m, v in self._parts(b)]
            _add_rows(blk.definition, [(sel, ys)] + neg, 0.0, 0.0, np.where(unique, -self.state.c[b], 0.0))
            self.warm.extend((ys[j], self.values[idx][b][j]) for j in np.flatnonzero(unique))
            src.append(ys[firsts[b]])
        self._replace_state(src)

    def relu(self, idx: int, layer: ReLUSpec) -> None:
        lower, upper = self.bounds.lower[idx - 1], self.bounds.upper[idx - 1]
        off, on, unstable = stability(lower, upper)
        if not self.cfg.presolve:
            off, on, unstable = np.zeros_like(off), np.zeros_like(on), np.ones_like(unstable)
        # Dense (or unpresolved) layers get a variable per live unit; sparse ones only per unstable unit.
        materialise = self.dense() or not self.cfg.presolve
        # An unstable unit's pre-activation appears in two big-M rows; when it is dense, it gets a
        # variable a = ã defined once (deep VGG heads: half the nonzeros of the LP).
        pre_var = self.cfg.presolve and self.dense()
        has_var = ~off if materialise else unstable
        n = lower.shape[1]
        blk = pe.Block()
        self.m.add_component(layer.name, blk)
        blk.z = pe.Var([(b, j) for b in range(self.batch) for j in np.flatnonzero(has_var[b])],
                       bounds=lambda _, b, j: (0.0, max(float(upper[b, j]), 0.0)))
        v_domain = pe.Binary if self.cfg.mode == "exact" else pe.UnitInterval
        blk.v = pe.Var([(b, j) for b in range(self.batch) for j in np.flatnonzero(unstable[b])],
                       domain=v_domain)
        blk.a = pe.Var([(b, j) for b in range(self.batch) for j in np.flatnonzero(unstable[b])] if pre_var else [])
        blk.rows = pe.ConstraintList()
        zs = [np.array([blk.z[b, j] if has_var[b, j] else None for j in range(n)], dtype=object)
              for b in range(self.batch)]
        for b in range(self.batch):
            pres = (np.array([blk.a[b, j] if unstable[b, j] else None for j in range(n)], dtype=object)
                    if pre_var else None)
            self._relu_rows(blk, b, zs[b], pres, lower[b], upper[b], off[b], on[b] & has_var[b], on[b] & ~has_var[b],
                            unstable[b])
            self._relu_warm(blk, b, zs[b], pres, unstable[b], self.values[idx - 1][b])
        self.counts[layer.name] = {"units": int(off.size), "off": int(off.sum()), "on": int(on.sum()),
                                   "unstable": int(unstable.sum())}
        if materialise:
            self._replace_state(zs)
        else:
            self._substitute(zs, on, unstable)

    def _substitute(self, zs: list[np.ndarray], on: np.ndarray, unstable: np.ndarray) -> None:
        """After a sparse ReLU: on units keep their expression, off units become 0, unstable
        units become their new variable (appended to the sample's variables)."""
        st = self.state
        n = st.c.shape[1]
        for b in range(self.batch):
            new = np.flatnonzero(unstable[b])
            pick = sp.csr_matrix((np.ones(len(new)), (new, np.arange(len(new)))), shape=(n, len(new)))
            st.a[b] = sp.hstack([_select(on[b]) @ st.a[b], pick], format="csr")
            st.src[b] = np.concatenate([st.src[b], zs[b][new]])
            st.g[b] = (_select(on[b]) @ st.g[b]).tocsr()
        st.c = np.where(on, st.c, 0.0)

    def _relu_rows(self, blk, b, zs, pres, lo, up, off, on_var, on_expr, unstable) -> None:
        """Rows of sample b's ReLU units; `pres` (or None): the unstable units' pre-activation
        variables, defined here and used in their big-M rows instead of the expression."""
        st, n = self.state, len(zs)
        pre = self._parts(b)
        neg_pre = [(-m, v) for m, v in pre]
        ident = sp.identity(n, format="csr")
        c = st.c[b]
        if off.any():  # L ≤ ã ≤ 0
            _add_rows(blk.rows, [(_select(off) @ m, v) for m, v in pre], np.where(off, lo, None),
                      np.where(off, 0.0, None), np.where(off, c, 0.0))
        if on_var.any():  # z = ã (z ∈ [0, U] by its bounds)
            _add_rows(blk.rows, [(_select(on_var) @ ident, zs)] + [(_select(on_var) @ m, v) for m, v in neg_pre],
                      0.0, 0.0, np.where(on_var, -c, 0.0))
        if on_expr.any():  # z = ã substituted: 0 ≤ ã ≤ U
            _add_rows(blk.rows, [(_select(on_expr) @ m, v) for m, v in pre], np.where(on_expr, 0.0, None),
                      np.where(on_expr, up, None), np.where(on_expr, c, 0.0))
        if unstable.any():
            vs = np.array([blk.v[b, j] if unstable[j] else None for j in range(n)], dtype=object)
            sel = _select(unstable)
            if pres is not None:  # a = ã, then the big-M rows in a
                _add_rows(blk.rows, [(sel @ ident, pres)] + [(sel @ m, v) for m, v in neg_pre], 0.0, 0.0,
                          np.where(unstable, -c, 0.0))
                neg_pre, c = [(-ident, pres)], np.zeros(n)
            # z ≥ ã
            _add_rows(blk.rows, [(sel @ ident, zs)] + [(sel @ m, v) for m, v in neg_pre],
                      np.where(unstable, 0.0, None), None, np.where(unstable, -c, 0.0))
            # z ≤ ã − (1 − v)L  ⇔  z − ã − L v ≤ −L
            _add_rows(blk.rows, [(sel @ ident, zs), (sel @ sp.diags(-lo, format="csr"), vs)]
                      + [(sel @ m, v) for m, v in neg_pre], None, np.where(unstable, 0.0, None),
                      np.where(unstable, -c + lo, 0.0))
            # z ≤ v·max(U, 0)
            _add_rows(blk.rows, [(sel @ ident, zs), (sel @ sp.diags(-np.maximum(up, 0.0), format="csr"), vs)],
                      None, np.where(unstable, 0.0, None), 0.0)

    def _relu_warm(self, blk, b, zs, pres, unstable, pre_values) -> None:
        for j, z in enumerate(zs):
            if z is not None:
                self.warm.append((z, max(float(pre_values[j]), 0.0)))
            if unstable[j]:
                self.warm.append((blk.v[b, j], float(pre_values[j] > 0)))
                if pres is not None:
                    self.warm.append((pres[j], float(pre_values[j])))


def build_formulation(spec: NetworkSpec, bounds: Bounds, x: np.ndarray, y: np.ndarray,
                      cfg: ScoreConfig, dense_limit: float = 64.0) -> Formulation:
    """Build the scoring MIP for inputs x (B × ...) with labels y; see the module docstring.

    `dense_limit`: an activation becomes variables (at a ReLU or after average pooling) once its
    affine expressions average more than this many nonzeros per unit; below it, stable units
    are substituted. Any value gives the same optimum; it only trades rows' density for size.
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
    logits = np.array(builder.units, dtype=object)
    form = Formulation(builder.m, builder.scores, logits, [], np.asarray(y), builder.warm, builder.counts)
    _add_objective(form, spec, cfg, builder.values[-1])
    return form


def _add_objective(form: Formulation, spec: NetworkSpec, cfg: ScoreConfig, logits0: np.ndarray) -> None:
    """Loss epigraph, SumLargest penalty and the objective; first LSE cuts at the unpruned logits."""
    m, batch = form.model, len(form.logits)
    m.loss = pe.Var(range(batch))
    form.loss_epigraph = [m.loss[b] for b in range(batch)]
    m.lse_cuts = pe.ConstraintList()
    if cfg.loss == "margin":
        m.margin = pe.ConstraintList()
        for b in range(batch):
            for z in form.logits[b]:
                m.margin.add(m.loss[b] >= z)
        form.warm_start.extend((m.loss[b], float(np.max(logits0[b]))) for b in range(batch))
    else:
        form.add_lse_cuts(logits0)
        form.warm_start.extend((m.loss[b], logsumexp(logits0[b])) for b in range(batch))
    penalty = _sum_largest_penalty(form, spec)
    loss = sum(m.loss[b] - form.logits[b][int(form.labels[b])] for b in range(batch))
    m.objective = pe.Objective(expr=cfg.lambda_ / batch * loss + penalty, sense=pe.minimize)


def _sum_largest_penalty(form: Formulation, spec: NetworkSpec):
    """Sum of the m−1 largest g_l (g_1 when m = 1) as k·θ + Σ u_l, u_l ≥ g_l − θ, u_l ≥ 0."""
    m, layers = form.model, spec.scored
    k = max(len(layers) - 1, 1)
    m.theta = pe.Var()
    m.excess = pe.Var(range(len(layers)), bounds=(0.0, None))
    m.sum_largest = pe.ConstraintList()
    g_values = []
    for i, layer in enumerate(layers):
        s = form.scores[layer.name]
        g = (sum(s) - 2.0 * layer.n_units) / layer.norm
        m.sum_largest.add(m.excess[i] >= g - m.theta)
        g_values.append(-1.0 * layer.n_units / layer.norm)
    top = sorted(g_values, reverse=True)
    theta0 = top[k - 1] if len(top) >= k else 0.0
    form.warm_start.append((m.theta, theta0))
    form.warm_start.extend((m.excess[i], max(g - theta0, 0.0)) for i, g in enumerate(g_values))
    return k * m.theta + sum(m.excess[i] for i in range(len(layers)))
