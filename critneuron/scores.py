"""The `Scores` type every scorer returns, and `score`: bounds -> formulation -> solve -> self-check.

May import: config, spec, bounds, formulation, solve, models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Scores:
    """Per-layer importance scores keyed by torch module name, plus how they were made.

    `layers[name]` is a 1-D float array with one entry per output neuron (Linear) or output
    channel (Conv2d) of the module `name` in the scored `nn.Sequential`. Higher means more
    important. `method` names the scorer ('mip', 'random', 'magnitude-l1', 'snip', ...);
    `provenance` holds whatever makes the scores reproducible (config, seed, solver report).
    """

    layers: dict[str, np.ndarray]
    method: str
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return {
            "method": self.method,
            "layers": {k: np.asarray(v, dtype=float).tolist() for k, v in self.layers.items()},
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Scores":
        """Inverse of `to_dict`."""
        layers = {k: np.asarray(v, dtype=float) for k, v in data["layers"].items()}
        return cls(layers=layers, method=data["method"], provenance=data.get("provenance", {}))

    def save(self, path: str | Path) -> None:
        """Write as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, default=str))

    @classmethod
    def load(cls, path: str | Path) -> "Scores":
        """Read a file written by `save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))
