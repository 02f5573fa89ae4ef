"""Torch `nn.Sequential` -> tuple of plain layer specs (float64 numpy); the only torch-to-math bridge.

May import: config.
"""

from __future__ import annotations

from torch import nn


def scored_layer_names(model: nn.Sequential) -> list[str]:
    """Names of the modules that get importance scores: every Conv2d and every Linear but the last."""
    linears = [name for name, m in model.named_children() if isinstance(m, nn.Linear)]
    last = linears[-1] if linears else None
    return [
        name
        for name, m in model.named_children()
        if isinstance(m, nn.Conv2d) or (isinstance(m, nn.Linear) and name != last)
    ]
