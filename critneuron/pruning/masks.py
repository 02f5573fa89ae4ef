"""Masks from scores (threshold, per-layer mean, fixed counts), applying and freezing them, counts.

A `Masks` record keeps, per scored module name, the sorted indices of the kept units (Linear
output neurons, Conv2d output channels) and the layer size; it is plain JSON and replays on any
copy of the model. Pruning a unit zeroes its incoming weights (and, under `remove`, its bias);
nothing is retrained. Parameter and FLOP counts of the physically compacted network are computed
here analytically; `critneuron.pruning.compact` builds that network and its tests check the two agree.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from critneuron.config import Bias, PruneConfig
from critneuron.errors import ConfigError, UnsupportedLayerError
from critneuron.mip.scores import Scores
from critneuron.nets.models import INPUT_SHAPE, evaluating, scored_layer_names


@dataclass(frozen=True)
class Masks:
    """Kept unit indices per scored module name, and each layer's size.

    Example:
        >>> m = Masks(kept={"fc1": [0, 2]}, sizes={"fc1": 3})
        >>> m.pruned("fc1"), m.n_pruned()
        ([1], {'fc1': 1})
    """

    kept: dict[str, list[int]]
    sizes: dict[str, int]

    def __post_init__(self) -> None:
        if list(self.kept) != list(self.sizes):
            raise ConfigError(f"masks: kept layers {list(self.kept)} != sized layers {list(self.sizes)}")
        for name, idx in self.kept.items():
            size = self.sizes[name]
            if list(idx) != sorted(set(idx)) or any(not 0 <= int(i) < size for i in idx):
                raise ConfigError(f"masks: kept indices of {name} must be sorted, unique and in [0, {size})")

    def pruned(self, name: str) -> list[int]:
        """Sorted indices of the pruned units of layer `name`."""
        return sorted(set(range(self.sizes[name])) - set(self.kept[name]))

    def n_pruned(self) -> dict[str, int]:
        """Number of pruned units per layer."""
        return {name: self.sizes[name] - len(idx) for name, idx in self.kept.items()}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return {"kept": {k: [int(i) for i in v] for k, v in self.kept.items()}, "sizes": dict(self.sizes)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Masks":
        """Inverse of `to_dict`."""
        return cls(kept={k: list(v) for k, v in data["kept"].items()}, sizes=dict(data["sizes"]))

    def save(self, path: str | Path) -> None:
        """Write as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Masks":
        """Read a file written by `save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def masks_from_scores(scores: Scores, threshold: Union[float, str]) -> Masks:
    """Prune unit i of layer l iff s_i < tau; tau = `threshold`, or each layer's mean score for 'mean'.

    Example:
        >>> s = Scores(layers={"fc1": np.array([0.05, 0.5, 0.3])}, method="mip")
        >>> masks_from_scores(s, 0.1).kept, masks_from_scores(s, "mean").kept
        ({'fc1': [1, 2]}, {'fc1': [1, 2]})
    """
    tau = PruneConfig(threshold=threshold).threshold
    if tau is None:
        raise ConfigError("threshold must be a number or 'mean'; PruneConfig.resolve gives the paper's")
    kept, sizes = {}, {}
    for name, values in scores.layers.items():
        values = np.asarray(values, dtype=float)
        layer_tau = values.mean() if tau == "mean" else tau
        kept[name] = np.flatnonzero(values >= layer_tau).tolist()
        sizes[name] = len(values)
    return Masks(kept=kept, sizes=sizes)


def masks_with_counts(scores: Scores, n_pruned: Mapping[str, int]) -> Masks:
    """Prune exactly `n_pruned[l]` lowest-scored units of each layer l (ties: lower index first)."""
    if set(n_pruned) != set(scores.layers):
        raise ConfigError(f"n_pruned covers {sorted(n_pruned)}, scores cover {sorted(scores.layers)}")
    kept, sizes = {}, {}
    for name, values in scores.layers.items():
        values = np.asarray(values, dtype=float)
        if not 0 <= n_pruned[name] <= len(values):
            raise ConfigError(f"cannot prune {n_pruned[name]} of the {len(values)} units of {name}")
        order = np.argsort(values, kind="stable")
        kept[name] = sorted(order[n_pruned[name]:].tolist())
        sizes[name] = len(values)
    return Masks(kept=kept, sizes=sizes)


def mask_agreement(a: Masks, b: Masks) -> dict[str, dict[str, float]]:
    """Per layer: the share of units both masks treat alike, the Jaccard index of their pruned
    sets (1 when both prune nothing) and how many each prunes."""
    if a.sizes != b.sizes:
        raise ConfigError(f"masks of different layers or sizes: {a.sizes} vs {b.sizes}")
    out = {}
    for name, size in a.sizes.items():
        pa, pb = set(a.pruned(name)), set(b.pruned(name))
        union = pa | pb
        out[name] = {"agreement": 1.0 - len(pa ^ pb) / size, "jaccard": len(pa & pb) / len(union) if union else 1.0,
                     "pruned_a": len(pa), "pruned_b": len(pb)}
    return out


def check_bias(bias: str) -> str:
    """`bias` if it is 'keep-bias' or 'remove', else ConfigError (the check of `PruneConfig`)."""
    return PruneConfig(bias=bias).bias


def check_masks(model: nn.Sequential, masks: Masks) -> None:
    """Raise ConfigError unless every masked layer is a scored module of `model` of the right size."""
    scored = scored_layer_names(model)
    for name, size in masks.sizes.items():
        if name not in scored:
            raise ConfigError(f"masks name {name!r}, which is not a scored layer; scored: {scored}")
        units = unit_count(getattr(model, name))
        if units != size:
            raise ConfigError(f"masks give {name} {size} units, the model has {units}")


def unit_count(module: nn.Module) -> int:
    """Output neurons of a Linear, output channels of a Conv2d."""
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def apply_masks(model: nn.Sequential, masks: Masks, bias: Bias = "keep-bias") -> nn.Sequential:
    """A deep copy of `model` whose pruned units have zero incoming weights (and zero bias under `remove`).

    Under `keep-bias` (the authors' choice) a pruned unit still outputs relu(b).
    """
    check_bias(bias)
    check_masks(model, masks)
    frozen = [name for name, module in model.named_children() if parametrize.is_parametrized(module)]
    if frozen:
        raise ConfigError(f"apply_masks needs a plain model, {frozen} are frozen: call unfreeze_masks first")
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for name, mask in unit_masks(pruned, masks).items():
            module = getattr(pruned, name)
            module.weight.mul_(_weight_view(mask, module.weight))
            if bias == "remove" and module.bias is not None:
                module.bias.mul_(mask)
    return pruned


def unit_masks(model: nn.Sequential, masks: Masks) -> dict[str, torch.Tensor]:
    """Per masked layer, a 0/1 vector over its units (1 = kept), in the layer's dtype and device."""
    out = {}
    for name, idx in masks.kept.items():
        weight = getattr(model, name).weight
        mask = torch.zeros(masks.sizes[name], dtype=weight.dtype, device=weight.device)
        mask[idx] = 1
        out[name] = mask
    return out


def _weight_view(mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *[1] * (weight.dim() - 1))


class _UnitMask(nn.Module):
    """Parametrization tensor -> tensor * mask, the mask broadcast over a unit's incoming weights."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor * _weight_view(self.mask, tensor)


def freeze_masks(model: nn.Sequential, masks: Masks, bias: Bias = "keep-bias") -> None:
    """Keep the pruned weights (and biases under `remove`) exactly zero while `model` is retrained.

    In place. Uses `torch.nn.utils.parametrize`: each masked layer's `weight` becomes
    `original * mask`, so the forward pass and every read of `module.weight` see exact zeros
    whatever the optimizer does to `original`. Zeroing gradients (hooks) is not enough:
    momentum buffers and RMSprop/Adam moments filled before the freeze keep moving a weight
    whose gradient is zero, and coupled weight decay then feeds the moved value back;
    re-zeroing after every step would need a handle on the optimizer here.
    The masked entries of `original` are zeroed too. Existing optimizers keep working (the
    Parameter object is the same). Call `unfreeze_masks` to get plain modules and state_dict keys.
    """
    check_bias(bias)
    check_masks(model, masks)
    for name, mask in unit_masks(model, masks).items():
        module = getattr(model, name)
        tensors = ["weight", "bias"] if bias == "remove" and module.bias is not None else ["weight"]
        for tensor_name in tensors:
            with torch.no_grad():
                getattr(module, tensor_name).mul_(_weight_view(mask, getattr(module, tensor_name)))
            parametrize.register_parametrization(module, tensor_name, _UnitMask(mask.clone()))


def unfreeze_masks(model: nn.Sequential) -> None:
    """Undo `freeze_masks` in place, keeping the masked (zeroed) values as plain parameters.

    Never unfreeze a deep copy of a frozen model while the original is still used (or the
    reverse): torch shares the parametrized class between copies, and unfreezing one deletes
    the other's `weight` property.
    """
    for module in model.children():
        if parametrize.is_parametrized(module):
            for tensor_name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)


def layer_shapes(
    model: nn.Sequential, input_shape: tuple[int, ...] = INPUT_SHAPE
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """(input shape, output shape) of one sample at every named child, from a dummy eval forward."""
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    param = next(model.parameters())
    x = torch.zeros(1, *input_shape, dtype=param.dtype, device=param.device)
    with evaluating(model), torch.no_grad():
        for name, module in model.named_children():
            y = module(x)
            shapes[name] = (tuple(x.shape[1:]), tuple(y.shape[1:]))
            x = y
    return shapes


def _kept_units(module: nn.Module, name: str, masks: Masks | None) -> int:
    if masks is not None and name in masks.kept:
        return len(masks.kept[name])
    return unit_count(module)


def count_params_flops(
    model: nn.Sequential, masks: Masks | None = None, input_shape: tuple[int, ...] = INPUT_SHAPE
) -> tuple[int, int]:
    """Parameters and multiply-accumulates (Linear/Conv2d, one sample) of the network compacted by `masks`.

    With `masks=None` the dense network. Removing a unit removes its weights and bias and the
    matching inputs of the next Linear/Conv2d (a channel feeds H*W inputs after a Flatten).
    """
    shapes = layer_shapes(model, input_shape)
    alive, params, macs = input_shape[0], 0, 0
    for name, module in model.named_children():
        in_shape, out_shape = shapes[name]
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            out = _kept_units(module, name, masks)
            fan_in = alive * int(np.prod(getattr(module, "kernel_size", (1,))))
            params += out * fan_in + (out if module.bias is not None else 0)
            macs += out * fan_in * int(np.prod(out_shape[1:]))
            alive = out
        elif isinstance(module, nn.Flatten):
            alive *= int(np.prod(in_shape[1:]))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            params += 2 * alive if module.affine else 0
        elif any(True for _ in module.parameters()):
            raise UnsupportedLayerError(f"cannot count the parameters of {name} ({type(module).__name__})")
    return params, macs


def _fan_in(module: nn.Module) -> int:
    return module.weight[0].numel()


def pruning_stats(
    model: nn.Sequential, masks: Masks, input_shape: tuple[int, ...] = INPUT_SHAPE
) -> dict[str, Any]:
    """Neurons pruned per layer and overall, the authors' pruning %, and dense vs compact sizes.

    `pct_params_pruned` is the authors' measure: the fan-in weights of the pruned units
    (in_features per Linear neuron, C_in*k_h*k_w per Conv2d channel) over all parameters of
    `model`, x100. `params_*` count parameters, `flops_*` multiply-accumulates of Linear and
    Conv2d layers on one `input_shape` input, of the dense and of the compacted network.
    """
    check_masks(model, masks)
    n_pruned = masks.n_pruned()
    layers = {
        name: {"neurons": size, "pruned": n_pruned[name], "pct_pruned": 100.0 * n_pruned[name] / size}
        for name, size in masks.sizes.items()
    }
    neurons, pruned = sum(masks.sizes.values()), sum(n_pruned.values())
    removed = sum(n * _fan_in(getattr(model, name)) for name, n in n_pruned.items())
    total = sum(p.numel() for p in model.parameters())
    params_dense, flops_dense = count_params_flops(model, None, input_shape)
    params_compact, flops_compact = count_params_flops(model, masks, input_shape)
    return {
        "layers": layers,
        "neurons": neurons,
        "neurons_pruned": pruned,
        "pct_neurons_pruned": 100.0 * pruned / neurons if neurons else 0.0,
        "params_total": total,
        "fan_in_weights_removed": removed,
        "pct_params_pruned": 100.0 * removed / total,
        "params_dense": params_dense,
        "params_compact": params_compact,
        "flops_dense": flops_dense,
        "flops_compact": flops_compact,
    }
