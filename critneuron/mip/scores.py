"""The `Scores` type every scorer returns, and `score`: bounds -> formulation -> solve -> self-check.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from critneuron.mip.bounds import Bounds, interval_bounds, shift_scale
from critneuron.config import ScoreConfig, to_dict
from critneuron.errors import ConfigError, SelfCheckWarning, SolveError
from critneuron.mip.formulation import build_formulation
from critneuron.mip.solve import solve
from critneuron.mip.spec import AffineSpec, NetworkSpec, network_spec


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
        """Inverse of `to_dict`; ConfigError if `data` does not have its form (a method name and a
        mapping of layer names to lists of numbers)."""
        if not (isinstance(data, dict) and isinstance(data.get("method"), str) and isinstance(data.get("layers"), dict)
                and all(isinstance(v, list) for v in data["layers"].values())):
            keys = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
            raise ConfigError(f"not a scores file: expected 'method' and 'layers' (layer name -> list of scores), "
                              f"got {keys}")
        layers = {k: np.asarray(v, dtype=float) for k, v in data["layers"].items()}
        return cls(layers=layers, method=data["method"], provenance=data.get("provenance", {}))

    def save(self, path: str | Path) -> None:
        """Write as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, default=str))

    @classmethod
    def load(cls, path: str | Path) -> "Scores":
        """Read a file written by `save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def _torch_logits_with_shifts(model: nn.Sequential, x: np.ndarray, shifts: dict[str, np.ndarray]) -> np.ndarray:
    """The real torch network in float64 with ã = a − shift applied after each scored module."""
    net = copy.deepcopy(model).double().eval()
    handles = [
        getattr(net, name).register_forward_hook(
            lambda _m, _i, out, s=torch.from_numpy(shift): out - s.reshape(out.shape))
        for name, shift in shifts.items()
    ]
    with torch.no_grad():
        logits = net(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()
    for h in handles:
        h.remove()
    return logits


def _shifts(spec: NetworkSpec, bounds: Bounds, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """(1 − s)·Ũ per sample and output entry for every scored layer."""
    out = {}
    for idx, layer in enumerate(spec.layers):
        if isinstance(layer, AffineSpec) and layer.scored:
            out[layer.name] = (1.0 - scores[layer.name][layer.unit_of_output]) * shift_scale(spec, bounds, idx)
    return out


def score(model: nn.Sequential, x, y, cfg: ScoreConfig | None = None,
          batch_indices: list[int] | None = None,
          input_box: tuple[np.ndarray, np.ndarray] | None = None) -> Scores:
    """Score every neuron/channel of `model` with the MIP on the batch (x, y).

    `model` is a flat `nn.Sequential` of supported layers (see `spec.SUPPORTED`), evaluated in
    eval mode; x has shape (B, C, H, W) or (B, features). Bounds come from the box x ± ε, or
    from `input_box` = (lower, upper) around x (a sub-network inside a bigger one, as in
    `decoupled`). Returns `Scores` whose provenance holds
    the config, solver report, timings, ReLU stability counts and the self-check error (max
    |MIP logits − torch logits with the solved shifts|).

    A failed self-check (exact mode, error > `cfg.selfcheck_tol`) does not raise: it warns with
    `SelfCheckWarning` and the scores come back labelled `selfcheck_passed=False`, so a sweep
    keeps the run and every table shows the label. An infeasible solve, or one that times out
    without a feasible point, raises `SolveError`.

    Example:
        >>> s = score(model, x, y, ScoreConfig(mode="relaxed"))  # doctest: +SKIP
        >>> s.layers["fc1"].shape  # doctest: +SKIP
    """
    cfg = cfg or ScoreConfig()
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    y = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y, dtype=np.int64)
    times = {}
    t0 = time.perf_counter()
    spec = network_spec(model.eval(), tuple(x.shape[1:]))
    bounds = interval_bounds(spec, x, cfg.epsilon, input_box)
    times["bounds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    form = build_formulation(spec, bounds, x, y, cfg)
    times["build"] = time.perf_counter() - t0
    unstable = sum(c["unstable"] for c in form.relu_counts.values())
    try:
        report = solve(form, cfg)
    except SolveError as err:
        err.details.update(unstable_units=unstable, bounds_s=times["bounds"], build_s=times["build"])
        raise
    times["solve"] = report.solve_seconds
    values = form.score_values()
    torch_logits = _torch_logits_with_shifts(model, x, _shifts(spec, bounds, values))
    error = float(np.max(np.abs(form.logit_values() - torch_logits)))
    if cfg.mode == "exact" and error > cfg.selfcheck_tol:
        warnings.warn(f"self-check failed: MIP logits differ from the torch network by {error:.2e} "
                      f"(> {cfg.selfcheck_tol:g}); the encoding or the solver tolerances are off", SelfCheckWarning,
                      stacklevel=2)
    provenance = {
        "config": to_dict(cfg),
        "solver": report.to_dict(),
        "seconds": times,
        "relu": form.relu_counts,
        "unstable_units": unstable,
        "selfcheck_error": error,
        "selfcheck_passed": error <= cfg.selfcheck_tol,
        "batch_indices": None if batch_indices is None else [int(i) for i in batch_indices],
        "input_box": "epsilon" if input_box is None else "given",
        "labels": y.tolist(),
    }
    return Scores(layers=values, method="mip", provenance=provenance)
