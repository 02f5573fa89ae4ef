"""An independent oracle for the scoring program on tiny networks (tests only).

The paper's program (`../shared/PAPER_SPEC.md` §5) written again from its equations. It imports
nothing from `critneuron` (`tests/test_oracle.py` fails if it does), so a wrong formulation
cannot agree with itself here:

* bounds (§5.2) by W⁺L + W⁻U + b through torch's own functional ops, pools applied to L and U,
  BatchNorm split by the sign of its scale (not the package's centre/radius form);
* scored layers (§5.1): every Conv2d and every Linear except the last module; n_l (§5.5) is
  out_features for Linear and C_out·k_h·k_w for Conv2d;
* the score shift (§5.4) ã = a − (1 − s)·Ũ, Ũ = max(U, 0) when the next module is a ReLU, else U,
  applied by a forward hook on the torch module itself;
* a ReLU (§5.4 R1–R4): an unstable unit (L < 0 < U) gets z ≥ 0, z ≥ ã, z ≤ v·U,
  z ≤ ã − (1 − v)·L; a stable one is its activation pattern (§5.7): U ≤ 0 gives z = 0 and
  L ≤ ã ≤ 0, L ≥ 0 gives z = ã ∈ [0, U];
* the objective (§5.5) λ·(1/B)·Σ_b [LSE(ẑ_b) − ẑ_{b,y_b}] + Σ_l g_l − min_l g_l (g_1 alone when
  m = 1), g_l = Σ_i (s_i − 2)/n_l, with −min_l g_l as an epigraph variable w ≥ −g_l.

With the ReLUs replaced so, the network is affine in the variables (s, z, v, w); the oracle reads
that affine map off torch (value at 0 and autograd Jacobian) and minimises the smooth convex
objective over the polytope with SciPy's SLSQP and exact gradients. Relaxed mode (v ∈ [0, 1])
is that one convex solve; exact mode is a branch and bound over v ∈ {0, 1} of the unstable units.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import scipy.optimize as so
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch import nn

def scored_names(net: nn.Sequential) -> list[str]:
    """§5.1: every Conv2d, and every Linear except the last module."""
    children = list(net.named_children())
    return [name for i, (name, m) in enumerate(children)
            if isinstance(m, nn.Conv2d) or (isinstance(m, nn.Linear) and i < len(children) - 1)]


def penalty_norm(module: nn.Module) -> int:
    """§5.5: n_l = out_features (Linear), C_out·k_h·k_w (Conv2d)."""
    if isinstance(module, nn.Linear):
        return module.out_features
    kh, kw = module.kernel_size
    return module.out_channels * kh * kw


def _per_channel(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape((1, -1) + (1,) * (like.dim() - 2))


@torch.no_grad()
def interval_bounds(net: nn.Sequential, x: torch.Tensor, epsilon: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """§5.2: (L, U) of every child module's output over the box [x − ε, x + ε]."""
    lo, up = x - epsilon, x + epsilon
    out = []
    for m in net.children():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            pos, neg = m.weight.clamp(min=0), m.weight.clamp(max=0)
            if isinstance(m, nn.Linear):
                op = lambda inp, w: F.linear(inp, w)  # noqa: E731
            else:
                op = lambda inp, w: F.conv2d(inp, w, None, m.stride, m.padding)  # noqa: E731
            bias = 0.0 if m.bias is None else _per_channel(m.bias, lo)
            lo, up = op(lo, pos) + op(up, neg) + bias, op(up, pos) + op(lo, neg) + bias
        elif isinstance(m, nn.ReLU):
            lo, up = lo.clamp(min=0), up.clamp(min=0)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            scale = 1.0 / torch.sqrt(m.running_var + m.eps)
            shift = -m.running_mean * scale
            if m.affine:
                scale, shift = scale * m.weight, shift * m.weight + m.bias
            scale, shift = _per_channel(scale, lo), _per_channel(shift, lo)
            lo, up = (torch.where(scale >= 0, scale * lo, scale * up) + shift,
                      torch.where(scale >= 0, scale * up, scale * lo) + shift)
        elif isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten)):
            lo, up = m(lo), m(up)
        else:
            raise TypeError(f"oracle: no rule for {type(m).__name__}")
        out.append((lo, up))
    return out


@dataclass
class OracleResult:
    """The optimum, the scores at it (per scored module), and how many ReLU inputs were unstable."""

    objective: float
    scores: dict[str, np.ndarray]
    n_unstable: int


class TinyProgram:
    """The scoring program of `net` on the batch (x, y) with box half-width ε and weight λ."""

    def __init__(self, net: nn.Sequential, x, y, epsilon: float, lambda_: float):
        self.net = copy.deepcopy(net).double().eval()
        self.x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        self.y = np.asarray(y, dtype=np.int64)
        self.lambda_ = float(lambda_)
        self.children = list(self.net.named_children())
        self.bounds = interval_bounds(self.net, self.x, epsilon)
        self.scored = scored_names(self.net)
        self._layout()
        self._read_affine_map()

    def _layout(self) -> None:
        """Variable slices: scores, then z and v of every unstable ReLU input, then w."""
        self.slices, start = {}, 0
        for name in self.scored:
            m = dict(self.children)[name]
            n = m.out_features if isinstance(m, nn.Linear) else m.out_channels
            self.slices[("s", name)] = slice(start, start + n)
            start += n
        self.unstable = {}
        for i, (name, m) in enumerate(self.children):
            if isinstance(m, nn.ReLU):
                lo, up = self.bounds[i - 1]
                self.unstable[name] = (lo < 0) & (up > 0)
                k = int(self.unstable[name].sum())
                self.slices[("z", name)] = slice(start, start + k)
                self.slices[("v", name)] = slice(start + k, start + 2 * k)
                start += 2 * k
        self.has_w = len(self.scored) >= 2
        self.slices["w"] = slice(start, start + int(self.has_w))
        self.n_vars = start + int(self.has_w)

    def _forward(self, theta: torch.Tensor) -> torch.Tensor:
        """Logits and every ReLU input, flattened, at the variables `theta` (affine in theta)."""
        h, pres = self.x, []
        for i, (name, m) in enumerate(self.children):
            if isinstance(m, nn.ReLU):
                lo, up = self.bounds[i - 1]
                pres.append(h.reshape(-1))
                unstable = self.unstable[name]
                z = torch.zeros_like(h).masked_scatter(unstable, theta[self.slices[("z", name)]])
                h = torch.where(unstable, z, h * (lo >= 0))
                continue
            h = m(h)
            if name in self.scored:
                up = self.bounds[i][1]
                nxt = self.children[i + 1][1] if i + 1 < len(self.children) else None
                u_tilde = up.clamp(min=0) if isinstance(nxt, nn.ReLU) else up
                s = _per_channel(theta[self.slices[("s", name)]], h)
                h = h - (1 - s) * u_tilde
        self.logit_shape = h.shape
        return torch.cat([h.reshape(-1)] + pres)

    def _read_affine_map(self) -> None:
        """The map is affine: its constant is the value at 0, column j the change at e_j."""
        with torch.no_grad():
            const = self._forward(torch.zeros(self.n_vars, dtype=torch.float64))
            cols = [self._forward(e) - const for e in torch.eye(self.n_vars, dtype=torch.float64)]
        self.const = const.numpy()
        self.jac = torch.stack(cols, dim=1).numpy() if cols else np.zeros((len(const), 0))
        self.n_logits = int(np.prod(self.logit_shape))
        self._constraints()

    def _constraints(self) -> None:
        """Rows G·θ ≥ h of the ReLUs and the SumLargest epigraph; variable bounds."""
        rows, rhs = [], []
        lower, upper = np.full(self.n_vars, -np.inf), np.full(self.n_vars, np.inf)
        at = self.n_logits
        for i, (name, m) in enumerate(self.children):
            if not isinstance(m, nn.ReLU):
                continue
            lo, up = (b.reshape(-1).numpy() for b in self.bounds[i - 1])
            n = lo.size
            pre_rows, pre_const = self.jac[at:at + n], self.const[at:at + n]
            at += n
            unstable = self.unstable[name].reshape(-1).numpy()
            for j in np.flatnonzero(~unstable):  # stable: its pattern's window
                low, high = (lo[j], 0.0) if up[j] <= 0 else (0.0, up[j])
                rows += [pre_rows[j], -pre_rows[j]]
                rhs += [low - pre_const[j], pre_const[j] - high]
            zs, vs = np.arange(self.n_vars)[self.slices[("z", name)]], np.arange(self.n_vars)[self.slices[("v", name)]]
            for j, zc, vc in zip(np.flatnonzero(unstable), zs, vs):
                ez, ev = np.eye(self.n_vars)[zc], np.eye(self.n_vars)[vc]
                rows += [ez - pre_rows[j], up[j] * ev - ez, pre_rows[j] + lo[j] * ev - ez]  # R2, R3, R4
                rhs += [pre_const[j], 0.0, lo[j] - pre_const[j]]
                lower[zc], upper[zc] = 0.0, up[j]  # R1 (z ≤ U follows from R3)
                lower[vc], upper[vc] = 0.0, 1.0
        for name in self.scored:
            sl = self.slices[("s", name)]
            lower[sl], upper[sl] = 0.0, 1.0
            if self.has_w:  # w + g_l ≥ 0
                row = np.zeros(self.n_vars)
                row[sl] = 1.0 / self.norm(name)
                row[self.slices["w"]] = 1.0
                rows.append(row)
                rhs.append(2.0 * (sl.stop - sl.start) / self.norm(name))
        self.G, self.h = np.array(rows).reshape(-1, self.n_vars), np.array(rhs)
        self.lower, self.upper = lower, upper

    def norm(self, name: str) -> int:
        """n_l of a scored module."""
        return penalty_norm(dict(self.children)[name])

    def objective(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """The objective and its gradient at theta."""
        logits = (self.jac[:self.n_logits] @ theta + self.const[:self.n_logits]).reshape(self.logit_shape)
        top = logits.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        batch = len(logits)
        picked = logits[np.arange(batch), self.y]
        value = self.lambda_ / batch * float(np.sum(lse - picked))
        d_logits = np.exp(logits - lse[:, None])
        d_logits[np.arange(batch), self.y] -= 1.0
        grad = self.lambda_ / batch * (self.jac[:self.n_logits].T @ d_logits.reshape(-1))
        for name in self.scored:
            sl = self.slices[("s", name)]
            value += float(np.sum(theta[sl] - 2.0)) / self.norm(name)
            grad[sl] += 1.0 / self.norm(name)
        if self.has_w:
            value += float(theta[self.slices["w"]][0])
            grad[self.slices["w"]] += 1.0
        return value, grad

    def _start(self, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
        """A start within the variable bounds: s = 1 where free, the ReLUs' z and v at their
        activation pattern layer by layer (z = max(ã, 0), v = [ã > 0]), w = max_l −g_l. With
        free scores it is feasible (the unpruned network)."""
        theta = np.clip(np.ones(self.n_vars), lower, upper)
        theta[self.slices["w"]] = 0.0
        for _ in range(len(self.unstable)):  # each pass settles one more layer's z
            values = self.jac @ theta + self.const
            at = self.n_logits
            for i, (name, m) in enumerate(self.children):
                if isinstance(m, nn.ReLU):
                    n = self.bounds[i - 1][0].numel()
                    pre = values[at:at + n][self.unstable[name].reshape(-1).numpy()]
                    at += n
                    zs, vs = self.slices[("z", name)], self.slices[("v", name)]
                    theta[vs] = np.clip((pre > 0).astype(float), lower[vs], upper[vs])
                    theta[zs] = np.clip(theta[vs] * np.maximum(pre, 0.0), lower[zs], upper[zs])
        if self.has_w:
            theta[self.slices["w"]] = self._w(theta)
        return theta

    def _w(self, theta: np.ndarray) -> float:
        """max_l −g_l at the scores of theta: the least w with w + g_l ≥ 0."""
        return max((2.0 * (sl.stop - sl.start) - float(theta[sl].sum())) / self.norm(name)
                   for name, sl in ((n, self.slices[("s", n)]) for n in self.scored))

    def _minimise(self, lower: np.ndarray, upper: np.ndarray) -> tuple[float, np.ndarray] | None:
        """min over lower ≤ θ ≤ upper, G·θ ≥ h; fixed variables are substituted. None: infeasible."""
        free = lower < upper
        base = np.where(free, 0.0, lower)
        embed = np.eye(self.n_vars)[:, free]
        theta = base
        if free.any():
            g, h = self.G[:, free], self.h - self.G @ base
            live = np.any(g != 0, axis=1)  # rows in fixed variables only: checked below, not by SLSQP
            g, h = g[live], h[live]

            def fun(t):
                value, grad = self.objective(base + embed @ t)
                return value, grad[free]

            start = self._start(lower, upper)[free]
            with threadpool_limits(1):  # a tiny problem: BLAS threads only wait for one another
                res = so.minimize(fun, start, jac=True, method="SLSQP",
                                  bounds=list(zip(lower[free], np.where(np.isinf(upper[free]), None, upper[free]))),
                                  constraints=[{"type": "ineq", "fun": lambda t: g @ t - h, "jac": lambda t: g}],
                                  options={"ftol": 1e-15, "maxiter": 3000})
            theta = base + embed @ res.x
        if self.has_w:  # w's best value for these scores (SLSQP may stop short on a linear objective)
            theta[self.slices["w"]] = self._w(theta)
        violation = np.max(self.h - self.G @ theta, initial=0.0)
        self.last_violation = violation
        if violation > self.feasibility_tol * (1.0 + np.max(np.abs(self.h), initial=0.0)):
            return None
        return self.objective(theta)[0], theta

    def solve(self, mode: str, scores: dict[str, np.ndarray] | None = None,
              feasibility_tol: float = 1e-8) -> OracleResult:
        """The optimum in `mode` ('exact' or 'relaxed'); with `scores`, the optimum with the scores
        fixed to them (the objective those scores achieve in the program), rows allowed to be
        violated by `feasibility_tol` (relative to the largest right-hand side).

        Exact mode is a depth-first branch and bound over the unstable units' v on the relaxed
        solves: a node whose relaxed optimum is no better than the best 0/1 point is dropped."""
        self.feasibility_tol = feasibility_tol
        lower, upper = self.lower.copy(), self.upper.copy()
        for name, values in (scores or {}).items():
            sl = self.slices[("s", name)]
            lower[sl] = upper[sl] = np.clip(values, 0.0, 1.0)
        v_cols = np.concatenate([np.arange(self.n_vars)[sl] for key, sl in self.slices.items() if key[0] == "v"]
                                + [np.zeros(0, dtype=int)])
        best, nodes = None, [(lower, upper)]
        while nodes:
            lo, up = nodes.pop()
            found = self._minimise(lo, up)
            if found is None or (best is not None and found[0] >= best[0] - 1e-12 * (1 + abs(best[0]))):
                continue
            v = found[1][v_cols]
            gap = np.minimum(v, 1.0 - v)
            if mode == "relaxed" or not len(v_cols) or gap.max() <= 1e-9:
                best = found
                continue
            col = v_cols[int(np.argmax(gap))]
            for side in (float(v[np.argmax(gap)] < 0.5), float(v[np.argmax(gap)] >= 0.5)):  # nearer side last
                lo2, up2 = lo.copy(), up.copy()
                lo2[col] = up2[col] = side
                nodes.append((lo2, up2))
        if best is None:
            raise ValueError("oracle: infeasible")
        return OracleResult(best[0], {name: best[1][self.slices[("s", name)]] for name in self.scored}, len(v_cols))
