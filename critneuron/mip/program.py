"""The scoring program as sparse blocks: columns (bounds, costs, integrality) in named groups and
rows lo ≤ A x ≤ hi in named groups. `formulation` emits it; `solve` hands it to HiGHS and
`pyomo_model` makes the documented Pyomo model from it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class Rows:
    """Rows lower ≤ matrix·x ≤ upper (±inf: no bound), all in the group `group`."""

    group: str
    matrix: sp.csr_matrix
    lower: np.ndarray
    upper: np.ndarray


def implied_sides(matrix: sp.csr_matrix, lower: np.ndarray, upper: np.ndarray, col_lower: np.ndarray,
                  col_upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of lower ≤ matrix·x ≤ upper, whether each side holds for every x in the column
    bounds (its activity's interval-arithmetic minimum ≥ lower; maximum ≤ upper; ±inf sides hold):
    such a side can be dropped without changing the feasible set."""
    pos, neg = matrix.maximum(0.0), matrix.minimum(0.0)
    with np.errstate(invalid="ignore"):  # inf · 0 where a column is unbounded but has no entry
        lo = np.nan_to_num(pos @ col_lower + neg @ col_upper, nan=-np.inf)
        hi = np.nan_to_num(pos @ col_upper + neg @ col_lower, nan=np.inf)
    return (lower == -np.inf) | (lo >= lower), (upper == np.inf) | (hi <= upper)


def without_implied(rows: Rows, col_lower: np.ndarray, col_upper: np.ndarray) -> tuple[Rows, int]:
    """`rows` without the sides the column bounds imply (`implied_sides`); rows with both sides
    implied are left out. Returns the rows kept and how many were left out."""
    low_holds, up_holds = implied_sides(rows.matrix, rows.lower, rows.upper, col_lower, col_upper)
    keep = ~(low_holds & up_holds)
    kept = Rows(rows.group, rows.matrix[keep], np.where(low_holds, -np.inf, rows.lower)[keep],
                np.where(up_holds, np.inf, rows.upper)[keep])
    return kept, int((~keep).sum())


@dataclass
class Program:
    """The scoring model as sparse blocks: minimise cost·x subject to every `rows` chunk and
    col_lower ≤ x ≤ col_upper, x_j integer where `integer`. `groups` names the columns:
    (dotted name, first column, index keys), e.g. ("relu1.z", 40, [(b, j), ...]). `n_implied`
    counts the emitted rows left out because the column bounds imply both their sides."""

    col_lower: np.ndarray
    col_upper: np.ndarray
    cost: np.ndarray
    integer: np.ndarray
    groups: list[tuple[str, int, list]]
    rows: list[Rows]
    n_implied: int = 0  # rows left out because the column bounds imply them

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
