"""Torch `nn.Sequential` -> `NetworkSpec`: plain float64 data, the only torch-to-math bridge.

Every supported module becomes either an `AffineSpec` (a sparse matrix and an offset acting on
the flattened C×H×W activation) or a `ReLUSpec`. Bounds and the MIP formulation read only these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
import scipy.sparse as sp
from torch import nn

from critneuron.errors import UnsupportedLayerError
from critneuron.nets.models import scored_layer_names

SUPPORTED = "Linear, Conv2d, ReLU, AvgPool2d, AdaptiveAvgPool2d, BatchNorm1d/2d (eval), Flatten, Dropout/Identity"


@dataclass(frozen=True)
class AffineSpec:
    """y = matrix @ x + offset on flattened activations.

    `scored` layers (Conv2d and all Linear but the last) carry `unit_of_output`, mapping each
    output entry to its neuron/channel, `n_units`, and `norm` (n_l of the paper's penalty:
    out_features for Linear, C_out·k_h·k_w for Conv2d).
    """

    name: str
    kind: str
    matrix: sp.csr_matrix
    offset: np.ndarray
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    scored: bool = False
    unit_of_output: np.ndarray | None = None
    n_units: int = 0
    norm: int = 0


@dataclass(frozen=True)
class ReLUSpec:
    """Elementwise max(0, x)."""

    name: str
    shape: tuple[int, ...]


LayerSpec = Union[AffineSpec, ReLUSpec]


@dataclass(frozen=True)
class NetworkSpec:
    """The whole network as specs, with the input shape (without batch)."""

    layers: tuple[LayerSpec, ...]
    in_shape: tuple[int, ...]

    @property
    def scored(self) -> list[AffineSpec]:
        """Scored layers in order."""
        return [layer for layer in self.layers if isinstance(layer, AffineSpec) and layer.scored]


def _np(t) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def linear_spec(name: str, m: nn.Linear, in_shape: tuple, scored: bool) -> AffineSpec:
    """Linear layer; scored neurons are its outputs."""
    if int(np.prod(in_shape)) != m.in_features:
        raise UnsupportedLayerError(f"{name}: Linear expects {m.in_features} inputs, got shape {in_shape}")
    w = _np(m.weight)
    b = _np(m.bias) if m.bias is not None else np.zeros(m.out_features)
    n = m.out_features
    return AffineSpec(name, "linear", sp.csr_matrix(w), b, in_shape, (n,), scored,
                      np.arange(n) if scored else None, n if scored else 0, n if scored else 0)


def _conv_matrix(w: np.ndarray, in_shape: tuple, stride, padding) -> tuple[sp.csr_matrix, tuple]:
    """Sparse matrix of a 2-D convolution (no groups, no dilation) on flattened C×H×W."""
    c_out, c_in, kh, kw = w.shape
    _, h, wd = in_shape
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    co, oy, ox, ci, ky, kx = np.meshgrid(
        np.arange(c_out), np.arange(oh), np.arange(ow), np.arange(c_in), np.arange(kh), np.arange(kw),
        indexing="ij",
    )
    iy, ix = oy * sh + ky - ph, ox * sw + kx - pw
    ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < wd)
    rows = ((co * oh + oy) * ow + ox)[ok]
    cols = ((ci * h + iy) * wd + ix)[ok]
    vals = w[co[ok], ci[ok], ky[ok], kx[ok]]
    mat = sp.csr_matrix((vals, (rows, cols)), shape=(c_out * oh * ow, c_in * h * wd))
    return mat, (c_out, oh, ow)


def conv2d_spec(name: str, m: nn.Conv2d, in_shape: tuple) -> AffineSpec:
    """Conv2d layer; scored units are its output channels."""
    if m.groups != 1 or _pair(m.dilation) != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise UnsupportedLayerError(f"{name}: only Conv2d with groups=1, dilation=1 and numeric zero padding")
    if len(in_shape) != 3 or in_shape[0] != m.in_channels:
        raise UnsupportedLayerError(f"{name}: Conv2d expects {m.in_channels} input channels, got shape {in_shape}")
    w = _np(m.weight)
    mat, out_shape = _conv_matrix(w, in_shape, _pair(m.stride), _pair(m.padding))
    b = _np(m.bias) if m.bias is not None else np.zeros(m.out_channels)
    per_channel = out_shape[1] * out_shape[2]
    unit = np.repeat(np.arange(m.out_channels), per_channel)
    kh, kw = _pair(m.kernel_size)
    return AffineSpec(name, "conv2d", mat, b[unit], in_shape, out_shape, True, unit,
                      m.out_channels, m.out_channels * kh * kw)


def avgpool_spec(name: str, m: nn.AvgPool2d, in_shape: tuple) -> AffineSpec:
    """AvgPool2d without padding, as a convolution with a constant kernel per channel."""
    if _pair(m.padding) != (0, 0) or m.ceil_mode:
        raise UnsupportedLayerError(f"{name}: only AvgPool2d without padding or ceil_mode")
    kh, kw = _pair(m.kernel_size)
    stride = _pair(m.stride if m.stride is not None else m.kernel_size)
    c, h, wd = in_shape
    single, (_, oh, ow) = _conv_matrix(np.full((1, 1, kh, kw), 1.0 / (kh * kw)), (1, h, wd), stride, (0, 0))
    mat = sp.block_diag([single] * c, format="csr")
    return AffineSpec(name, "avgpool2d", mat, np.zeros(c * oh * ow), in_shape, (c, oh, ow))


def _adaptive_bins(n_in: int, n_out: int) -> sp.csr_matrix:
    """torch's adaptive average bins on one axis: output i averages inputs ⌊i·n/m⌋ .. ⌈(i+1)·n/m⌉ − 1."""
    rows, cols, vals = [], [], []
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        rows += [i] * (end - start)
        cols += range(start, end)
        vals += [1.0 / (end - start)] * (end - start)
    return sp.csr_matrix((vals, (rows, cols)), shape=(n_out, n_in))


def adaptive_avgpool_spec(name: str, m: nn.AdaptiveAvgPool2d, in_shape: tuple) -> AffineSpec:
    """AdaptiveAvgPool2d (bins may overlap) as a per-channel Kronecker product of 1-D bin averages."""
    c, h, wd = in_shape
    oh, ow = (m.output_size, m.output_size) if isinstance(m.output_size, int) else m.output_size
    oh, ow = oh or h, ow or wd
    single = sp.kron(_adaptive_bins(h, oh), _adaptive_bins(wd, ow), format="csr")
    mat = sp.block_diag([single] * c, format="csr")
    return AffineSpec(name, "avgpool2d", mat, np.zeros(c * oh * ow), in_shape, (c, oh, ow))


def batchnorm_spec(name: str, m: nn.modules.batchnorm._BatchNorm, in_shape: tuple) -> AffineSpec:
    """BatchNorm in eval mode: a per-channel affine map from the running statistics."""
    if m.running_mean is None:
        raise UnsupportedLayerError(f"{name}: BatchNorm without running statistics")
    scale = 1.0 / np.sqrt(_np(m.running_var) + m.eps)
    shift = -_np(m.running_mean) * scale
    if m.affine:
        scale, shift = scale * _np(m.weight), shift * _np(m.weight) + _np(m.bias)
    per = int(np.prod(in_shape[1:])) if len(in_shape) > 1 else 1
    scale, shift = np.repeat(scale, per), np.repeat(shift, per)
    return AffineSpec(name, "batchnorm", sp.diags(scale, format="csr"), shift, in_shape, in_shape)


def identity_spec(name: str, kind: str, in_shape: tuple, out_shape: tuple) -> AffineSpec:
    """Flatten, Dropout (eval) and Identity: the identity on flattened activations."""
    n = int(np.prod(in_shape))
    return AffineSpec(name, kind, sp.identity(n, format="csr"), np.zeros(n), in_shape, out_shape)


def _layer_spec(name: str, m: nn.Module, shape: tuple, scored: set[str]) -> LayerSpec:
    if isinstance(m, nn.Linear):
        return linear_spec(name, m, shape, name in scored)
    if isinstance(m, nn.Conv2d):
        return conv2d_spec(name, m, shape)
    if isinstance(m, nn.ReLU):
        return ReLUSpec(name, shape)
    if isinstance(m, nn.AvgPool2d):
        return avgpool_spec(name, m, shape)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return adaptive_avgpool_spec(name, m, shape)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return batchnorm_spec(name, m, shape)
    if isinstance(m, nn.Flatten):
        return identity_spec(name, "flatten", shape, (int(np.prod(shape)),))
    if isinstance(m, (nn.Dropout, nn.Identity)):
        return identity_spec(name, "identity", shape, shape)
    raise UnsupportedLayerError(
        f"module {name!r} of type {type(m).__name__} is not supported by the MIP formulation; "
        f"supported: {SUPPORTED}"
    )


def network_spec(model: nn.Sequential, in_shape: tuple[int, ...] = (3, 32, 32)) -> NetworkSpec:
    """Translate a flat `nn.Sequential` (in eval semantics) into a `NetworkSpec`.

    Raises `UnsupportedLayerError` naming the first module without an encoding.
    """
    if not isinstance(model, nn.Sequential):
        raise UnsupportedLayerError(f"expected a flat nn.Sequential, got {type(model).__name__}")
    scored = set(scored_layer_names(model))
    layers, shape = [], tuple(in_shape)
    for name, m in model.named_children():
        layer = _layer_spec(name, m, shape, scored)
        shape = layer.shape if isinstance(layer, ReLUSpec) else layer.out_shape
        layers.append(layer)
    return NetworkSpec(tuple(layers), tuple(in_shape))
