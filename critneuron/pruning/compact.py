"""Physically smaller dense networks from masks, with outputs equal to the masked network's.

`compact_model` walks the flat `nn.Sequential` once. A pruned unit leaves its layer, and the
matching inputs leave the next Linear/Conv2d (through ReLU, AvgPool2d, BatchNorm running stats
and Flatten, where channel c of a C x H x W map becomes features c*H*W .. c*H*W + H*W - 1). A pruned unit
of the masked network is not silent: its pre-activation is its kept bias b (`keep-bias`) or 0
(`remove`), so it emits a constant, e.g. relu(b), or relu(BN(b)) in VGG, where BN in eval mode
uses running stats, so even `remove` leaves relu(-mean/sqrt(var+eps)). That constant is carried
through the layers in between by running each of them on a constant map, and folded into the
next Linear/Conv2d:

* Linear, or Conv2d without padding: every output sees the same constant inputs, so their
  contribution W[:, removed] @ v is added to the bias.
* Conv2d with zero padding (VGG): at the borders part of the kernel lands on the padding, so the
  contribution varies with the position. It is computed exactly as the convolution of the
  constant maps with the removed input channels' weights (same stride/padding) and stored as a
  (C_out, H_out, W_out) buffer `bias_map` of a `BorderBiasConv2d`, which adds it after the conv.
  The map is a buffer, not a parameter: parameter counts exclude it. It fixes the input size,
  so `arch` records `input_shape`.

The result is exact (up to float rounding) in eval mode; `compact_model` returns it in eval mode.
`arch` is a plain dict; `build_compact(arch)` rebuilds the modules, so `save_compact` writes
`arch.json` and `state_dict.pt` and `load_compact` needs nothing else.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from critneuron.errors import CompactionError, ConfigError, UnsupportedLayerError
from critneuron.nets.models import INPUT_SHAPE
from critneuron.nets.models import evaluating
from critneuron.config import Bias
from critneuron.pruning.masks import Masks, check_bias, check_masks, layer_shapes, unit_count


class BorderBiasConv2d(nn.Conv2d):
    """Conv2d plus a fixed per-position bias map of shape `map_shape` = (C_out, H_out, W_out)."""

    def __init__(self, *args: Any, map_shape: Sequence[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("bias_map", torch.zeros(*map_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.bias_map


@dataclass(frozen=True)
class _Flow:
    """The tensor between two layers: which dense channels/features are still there (`kept`), and
    the constant value of every dense one (meaningful only where it was removed)."""

    kept: torch.Tensor
    const: torch.Tensor


@dataclass(frozen=True)
class _Layer:
    name: str
    module: nn.Module
    in_shape: tuple[int, ...]
    masks: Masks
    bias: Bias


Entry = dict[str, Any]
State = dict[str, torch.Tensor]


def _entry(layer: _Layer, kind: str, **kwargs: Any) -> Entry:
    return {"name": layer.name, "type": kind, "kwargs": json.loads(json.dumps(kwargs))}


def _out_kept(layer: _Layer, device: torch.device) -> torch.Tensor:
    kept = layer.masks.kept.get(layer.name, range(unit_count(layer.module)))
    return torch.tensor(list(kept), dtype=torch.long, device=device)


def _out_const(layer: _Layer) -> torch.Tensor:
    """Pre-activation of each pruned unit of the masked network: its bias, or 0 under `remove`."""
    weight, bias = layer.module.weight, layer.module.bias
    if layer.bias == "keep-bias" and bias is not None:
        return bias.detach().clone()
    return torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)


def _removed_inputs(flow: _Flow) -> torch.Tensor:
    """The constants of the removed inputs, 0 at the kept ones."""
    dead = flow.const.clone()
    dead[flow.kept] = 0
    return dead


def _bias_state(layer: _Layer, fold: torch.Tensor, out: torch.Tensor) -> State:
    bias = layer.module.bias
    if bias is None:
        if fold.any():
            raise UnsupportedLayerError(f"{layer.name} has no bias to absorb the outputs of pruned units")
        return {}
    return {"bias": (bias.detach() + fold)[out]}


def compact_linear(layer: _Layer, flow: _Flow) -> tuple[Entry, State, _Flow]:
    """Keep the kept outputs and inputs of a Linear; fold removed inputs' constants into its bias."""
    module, weight = layer.module, layer.module.weight.detach()
    out = _out_kept(layer, weight.device)
    state = {"weight": weight[out][:, flow.kept], **_bias_state(layer, weight @ _removed_inputs(flow), out)}
    entry = _entry(
        layer, "Linear", in_features=len(flow.kept), out_features=len(out), bias=module.bias is not None
    )
    return entry, state, _Flow(out, _out_const(layer))


def compact_conv(layer: _Layer, flow: _Flow) -> tuple[Entry, State, _Flow]:
    """Keep the kept output/input channels of a Conv2d; fold removed inputs into its bias (or bias map)."""
    module, weight = layer.module, layer.module.weight.detach()
    if module.groups != 1 or module.padding_mode != "zeros":
        raise UnsupportedLayerError(f"{layer.name}: only groups=1 and zero padding can be compacted")
    out = _out_kept(layer, weight.device)
    dead = _removed_inputs(flow).view(1, -1, 1, 1).expand(1, *layer.in_shape)
    fold = F.conv2d(dead, weight, None, module.stride, module.padding, module.dilation)[0]
    kwargs = dict(
        in_channels=len(flow.kept), out_channels=len(out), kernel_size=module.kernel_size,
        stride=module.stride, padding=module.padding, dilation=module.dilation, bias=module.bias is not None,
    )
    state = {"weight": weight[out][:, flow.kept]}
    if module.padding in ("valid", (0, 0)) or not fold.any():
        entry = _entry(layer, "Conv2d", **kwargs)
        state.update(_bias_state(layer, fold[:, 0, 0], out))
    else:
        entry = _entry(layer, "BorderBiasConv2d", map_shape=list(fold[out].shape), **kwargs)
        state.update(_bias_state(layer, torch.zeros_like(fold[:, 0, 0]), out), bias_map=fold[out])
    return entry, state, _Flow(out, _out_const(layer))


def _through(layer: _Layer, const: torch.Tensor) -> torch.Tensor:
    """Run the layer (eval mode) on constant maps; return the per-channel/feature constants it outputs."""
    x = const.view(1, -1, *[1] * (len(layer.in_shape) - 1)).expand(1, *layer.in_shape)
    with evaluating(layer.module):
        y = layer.module(x)
    if y.dim() > 2 and not torch.equal(y, y[..., :1, :1].expand_as(y)):
        raise UnsupportedLayerError(f"{layer.name}: constant channels do not stay constant (padding?)")
    return y.flatten(2)[0, :, 0] if y.dim() > 2 else y[0]


def compact_batchnorm(layer: _Layer, flow: _Flow) -> tuple[Entry, State, _Flow]:
    """Keep the running stats (and affine parameters) of the kept channels/features."""
    module = layer.module
    if module.running_mean is None:
        raise UnsupportedLayerError(f"{layer.name}: BatchNorm without running stats cannot be compacted")
    names = ["running_mean", "running_var"] + (["weight", "bias"] if module.affine else [])
    state = {name: getattr(module, name).detach()[flow.kept] for name in names}
    state["num_batches_tracked"] = module.num_batches_tracked.clone()
    entry = _entry(
        layer, type(module).__name__, num_features=len(flow.kept), eps=module.eps,
        momentum=module.momentum, affine=module.affine,
    )
    return entry, state, _Flow(flow.kept, _through(layer, flow.const))


_PASS_KWARGS = {
    nn.ReLU: ("inplace",),
    nn.AvgPool2d: ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
}


def compact_passthrough(layer: _Layer, flow: _Flow) -> tuple[Entry, State, _Flow]:
    """ReLU, AvgPool2d: same module, constants mapped through it."""
    kind = type(layer.module)
    entry = _entry(layer, kind.__name__, **{key: getattr(layer.module, key) for key in _PASS_KWARGS[kind]})
    return entry, {}, _Flow(flow.kept, _through(layer, flow.const))


def compact_flatten(layer: _Layer, flow: _Flow) -> tuple[Entry, State, _Flow]:
    """Channel c of a C x H x W input becomes features c*H*W + (0 .. H*W-1)."""
    module = layer.module
    if (module.start_dim, module.end_dim) != (1, -1):
        raise UnsupportedLayerError(f"{layer.name}: only Flatten(1, -1) can be compacted")
    positions = math.prod(layer.in_shape[1:])
    offsets = torch.arange(positions, device=flow.kept.device)
    kept = (flow.kept[:, None] * positions + offsets).flatten()
    entry = _entry(layer, "Flatten", start_dim=1, end_dim=-1)
    return entry, {}, _Flow(kept, _through(layer, flow.const))


HANDLERS: dict[type, Callable[[_Layer, _Flow], tuple[Entry, State, _Flow]]] = {
    nn.Linear: compact_linear,
    nn.Conv2d: compact_conv,
    nn.BatchNorm1d: compact_batchnorm,
    nn.BatchNorm2d: compact_batchnorm,
    nn.ReLU: compact_passthrough,
    nn.AvgPool2d: compact_passthrough,
    nn.Flatten: compact_flatten,
}
BUILDERS: dict[str, Callable[..., nn.Module]] = {
    cls.__name__: cls for cls in (*HANDLERS, BorderBiasConv2d)
}


@torch.no_grad()
def _unbuildable_empty_layers(model: nn.Sequential, masks: Masks) -> list[str]:
    """Layers that keep no unit and would compact to a Conv2d or BatchNorm with 0 channels (an
    empty Linear without a BatchNorm after it compacts fine: its successor sees zeros)."""
    empty, last = [], None
    for name, module in model.named_children():
        if name in masks.kept:
            last = None if masks.kept[name] else name
            if last and isinstance(module, nn.Conv2d):
                empty.append(last)
        elif last and isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and last not in empty:
            empty.append(last)
    return empty


def compact_model(
    model: nn.Sequential, masks: Masks, bias: Bias = "keep-bias", input_shape: tuple[int, ...] = INPUT_SHAPE
) -> tuple[nn.Sequential, dict[str, Any]]:
    """The network without its pruned units, equal in eval mode to `apply_masks(model, masks, bias)`.

    Returns the compact network (eval mode, same child names) and its `arch` dict. A convolution,
    or a layer followed by a BatchNorm, that keeps no unit raises CompactionError.
    """
    check_bias(bias)
    check_masks(model, masks)
    empty = _unbuildable_empty_layers(model, masks)
    if empty:
        raise CompactionError(f"cannot compact: layer(s) {empty} keep none of their units, and torch cannot run "
                              "a Conv2d or BatchNorm with 0 channels; evaluate the pruned network with apply_masks "
                              "instead")
    shapes = layer_shapes(model, input_shape)
    param = next(model.parameters())
    flow = _Flow(
        torch.arange(input_shape[0], device=param.device),
        torch.zeros(input_shape[0], dtype=param.dtype, device=param.device),
    )
    entries, state = [], {}
    for name, module in model.named_children():
        kind = parametrize.type_before_parametrizations(module)  # frozen layers compact like plain ones
        if kind not in HANDLERS:
            supported = ", ".join(cls.__name__ for cls in HANDLERS)
            raise UnsupportedLayerError(f"cannot compact {name} ({kind.__name__}); supported: {supported}")
        entry, layer_state, flow = HANDLERS[kind](_Layer(name, module, shapes[name][0], masks, bias), flow)
        entries.append(entry)
        state.update({f"{name}.{key}": value for key, value in layer_state.items()})
    arch = {"input_shape": list(input_shape), "dtype": str(param.dtype).removeprefix("torch."), "layers": entries}
    compact = build_compact(arch).to(param.device)
    compact.load_state_dict(state)
    return compact.eval(), arch


def build_compact(arch: dict[str, Any]) -> nn.Sequential:
    """Fresh modules (default-initialised; load a state_dict) of the architecture described by `arch`."""
    unknown = [e["type"] for e in arch["layers"] if e["type"] not in BUILDERS]
    if unknown:
        raise ConfigError(f"arch has unknown layer types {unknown}; known: {sorted(BUILDERS)}")
    with warnings.catch_warnings():  # a fully pruned layer has zero-size weights; values come later
        warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op")
        layers = OrderedDict((e["name"], BUILDERS[e["type"]](**e["kwargs"])) for e in arch["layers"])
    return nn.Sequential(layers).to(getattr(torch, arch["dtype"]))


def save_compact(path: str | Path, model: nn.Sequential, arch: dict[str, Any]) -> None:
    """Write `arch.json` and `state_dict.pt` into the folder `path` (created if missing)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "arch.json").write_text(json.dumps(arch, indent=1))
    torch.save(model.state_dict(), folder / "state_dict.pt")


def load_compact(path: str | Path) -> tuple[nn.Sequential, dict[str, Any]]:
    """Read a folder written by `save_compact`: the compact network (eval mode, CPU) and its arch."""
    folder = Path(path)
    arch = json.loads((folder / "arch.json").read_text())
    model = build_compact(arch)
    model.load_state_dict(torch.load(folder / "state_dict.pt", map_location="cpu", weights_only=True))
    return model.eval(), arch
