"""Interval arithmetic from the ε-box around each input, on a `NetworkSpec` (or on the torch
modules themselves, for networks too large to unroll); stability of ReLU units.

Plain float64 arrays in and out.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Collection

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from critneuron.errors import ConfigError, UnsupportedLayerError
from critneuron.mip.spec import SUPPORTED, AffineSpec, NetworkSpec, ReLUSpec


@dataclass(frozen=True)
class Bounds:
    """Per layer of the spec, lower and upper bounds of its output, each of shape (B, n)."""

    lower: tuple[np.ndarray, ...]
    upper: tuple[np.ndarray, ...]


def interval_bounds(spec: NetworkSpec, x: np.ndarray, epsilon: float,
                    input_box: tuple[np.ndarray, np.ndarray] | None = None) -> Bounds:
    """Bounds of every layer's output over the box [x - ε, x + ε] (per sample, float64), or over
    `input_box` = (lower, upper) when given (e.g. a network's bounds where a sub-network starts).

    An affine map y = Mx + o sends the box with centre c and radius r to centre Mc + o and
    radius |M| r, which equals the usual W⁺L + W⁻U form; a ReLU clamps both ends at 0.
    """
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if input_box is None:
        lo, up = x - epsilon, x + epsilon
    else:
        lo, up = (np.asarray(b, dtype=np.float64).reshape(x.shape) for b in input_box)
        slack = 1e-9 * (1.0 + np.abs(x))
        if np.any(lo > x + slack) or np.any(up < x - slack):
            raise ConfigError("input_box must contain the inputs x")
        lo, up = np.minimum(lo, x), np.maximum(up, x)  # absorb rounding of the bounds' centre
    lowers, uppers = [], []
    for layer in spec.layers:
        if isinstance(layer, AffineSpec):
            centre, radius = (lo + up) / 2, (up - lo) / 2
            centre = (layer.matrix @ centre.T).T + layer.offset
            radius = (abs(layer.matrix) @ radius.T).T
            lo, up = centre - radius, centre + radius
        else:
            lo, up = np.maximum(lo, 0.0), np.maximum(up, 0.0)
        lowers.append(lo)
        uppers.append(up)
    return Bounds(tuple(lowers), tuple(uppers))


def forward(spec: NetworkSpec, x: np.ndarray, shifts: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """Float64 forward pass through the spec; returns every layer's output.

    `shifts[name]` (shape (B, n_out)) is subtracted from the output of the affine layer `name`.
    """
    z = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    outs = []
    for layer in spec.layers:
        if isinstance(layer, AffineSpec):
            z = (layer.matrix @ z.T).T + layer.offset
            if shifts and layer.name in shifts:
                z = z - shifts[layer.name]
        else:
            z = np.maximum(z, 0.0)
        outs.append(z)
    return outs


def stability(lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks (off, on, unstable) of ReLU inputs: U ≤ 0, L ≥ 0, and L < 0 < U."""
    off = upper <= 0
    on = (lower >= 0) & ~off
    return off, on, ~(off | on)


def stability_counts(spec: NetworkSpec, bounds: Bounds) -> list[dict]:
    """Per ReLU layer: how many (sample, unit) pairs are off, on and unstable on the bounds."""
    rows = []
    for idx, layer in enumerate(spec.layers):
        if isinstance(layer, ReLUSpec):
            off, on, unstable = stability(bounds.lower[idx - 1], bounds.upper[idx - 1])
            rows.append({"layer": layer.name, "off": int(off.sum()), "on": int(on.sum()), "unstable": int(unstable.sum())})
    return rows


def shift_scale(spec: NetworkSpec, bounds: Bounds, idx: int) -> np.ndarray:
    """Ũ of the score shift ã = a − (1 − s)·Ũ at layer `idx`: max(U, 0) if a ReLU follows, else U."""
    upper = bounds.upper[idx]
    nxt = spec.layers[idx + 1] if idx + 1 < len(spec.layers) else None
    return np.maximum(upper, 0.0) if isinstance(nxt, ReLUSpec) else upper


@torch.no_grad()
def module_bounds(model: nn.Sequential, x: np.ndarray, epsilon: float,
                  keep: Collection[str] | None = None) -> dict[str, tuple[np.ndarray, ...]]:
    """Per child module of `model` (those named in `keep`, default all): its output on `x` and its
    lower and upper bounds over the box [x - ε, x + ε], float64 arrays of shape (B, *output shape).

    The same interval arithmetic as `interval_bounds` (an affine module maps the centre through
    itself and the radius through its absolute value; a ReLU clamps both ends), but computed with
    the modules themselves, so memory scales with the activations, not with unrolled matrices
    (a full-width VGG-16's specs take gigabytes).
    """
    net = copy.deepcopy(model).double().eval()
    value = torch.as_tensor(np.asarray(x, dtype=np.float64))
    lo, up = value - epsilon, value + epsilon
    out = {}
    for name, module in net.named_children():
        value = module(value)
        if isinstance(module, nn.ReLU):
            lo, up = lo.clamp(min=0), up.clamp(min=0)
        else:
            centre, radius = module((lo + up) / 2), _absolute(module, name)((up - lo) / 2)
            lo, up = centre - radius, centre + radius
        if keep is None or name in keep:
            out[name] = (value.numpy(), lo.numpy(), up.numpy())
    return out


def _absolute(module: nn.Module, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The linear part of an affine module with every coefficient made non-negative: the map
    that sends a box's radius to the radius of its image."""
    if isinstance(module, nn.Linear):
        return lambda r: r @ module.weight.abs().T
    if isinstance(module, nn.Conv2d):
        return lambda r: F.conv2d(r, module.weight.abs(), None, module.stride, module.padding, module.dilation,
                                  module.groups)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        scale = (module.running_var + module.eps).rsqrt() * (module.weight if module.affine else 1.0)
        shape = (1, -1) + (1,) * (2 if isinstance(module, nn.BatchNorm2d) else 0)
        return lambda r: r * scale.abs().reshape(shape)
    if isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Identity)):
        return module  # linear with non-negative coefficients already
    raise UnsupportedLayerError(f"layer {name!r} ({type(module).__name__}) has no MIP encoding; supported: {SUPPORTED}")
