"""Layer-by-layer emission of the scoring program's sparse blocks (`Program`): columns for the
scores, unstable units, dense layers and logits, and the rows of the score shifts, the big-M
ReLUs and the objective pieces. The mathematics is in `formulation`'s docstring."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from critneuron.config import ScoreConfig
from critneuron.mip.bounds import Bounds, forward, shift_scale, stability
from critneuron.mip.program import Program, Rows, without_implied
from critneuron.mip.spec import AffineSpec, NetworkSpec, ReLUSpec


def logsumexp(z: np.ndarray) -> float:
    """Numerically stable log Σ exp(z) of a 1-D array."""
    top = float(np.max(z))
    return top + float(np.log(np.sum(np.exp(z - top))))


def _select(mask: np.ndarray) -> sp.csr_matrix:
    """Diagonal 0/1 matrix keeping the rows where `mask` is true."""
    return sp.diags(mask.astype(float), format="csr")


class ProgramBuilder:
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

    def cheaper_as_columns(self, layer: AffineSpec, products: list[sp.csr_matrix]) -> bool:
        """Whether `layer`'s input is better made columns first: its forms multiplied out through
        the layer (`products`) hold more than twice the nonzeros of the columns' definitions plus
        the layer's rows over them (e.g. a VGG head's Linear(4C, 4C) after a 2×2 average pool:
        each input is a mean of four columns, so the layer's rows would repeat every weight four
        times)."""
        if not any(e.nnz for e in self.expr):
            return False
        weights_per_input = np.diff(layer.matrix.tocsc().indptr)
        as_columns = 0
        for e in self.expr:  # inputs with a constant form need no column
            live = np.diff(e.tocsr().indptr) > 0
            as_columns += e.nnz + int(live.sum()) + int(weights_per_input[live].sum())
        return 2 * as_columns < sum(p.nnz for p in products)

    def affine(self, idx: int, layer: AffineSpec) -> None:
        mat = layer.matrix
        products = [(mat @ e).tocsr() for e in self.expr]
        if idx > 0 and self.cheaper_as_columns(layer, products):
            self.materialise(idx - 1, self.spec.layers[idx - 1].name)
            products = [(mat @ e).tocsr() for e in self.expr]
        self.expr = products
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
        """The emitted blocks, with every one-column row applied as a bound, and without the row
        sides those bounds imply (LeNet-5: 28 % of the rows; the same feasible set)."""
        lower, upper = np.concatenate(self.lower), np.concatenate(self.upper)
        for cols, lo, hi in self.tightened:
            np.maximum.at(lower, cols, lo)
            np.minimum.at(upper, cols, hi)
        c = np.zeros(self.n_cols)
        c[list(cost)] = list(cost.values())
        rows, implied = [], 0
        for chunk in self.rows:
            kept, left_out = without_implied(Rows(chunk.group, self.wide(chunk.matrix), chunk.lower, chunk.upper),
                                             lower, upper)
            implied += left_out
            if kept.matrix.shape[0]:
                rows.append(kept)
        return Program(lower, upper, c, np.concatenate(self.integer), self.groups, rows, implied)
