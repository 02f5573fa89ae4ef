"""The Pyomo form of a `Program` (the book's chapter 01 shows it; `backend="appsi"` solves it):
the same columns and rows as the sparse blocks, never a second copy of the formulation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyomo.environ as pe
from pyomo.core.expr.numeric_expr import LinearExpression

from critneuron.mip.program import Program


class PyomoModel:
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
