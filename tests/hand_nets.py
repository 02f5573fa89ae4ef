"""Networks small enough to solve on paper (their optima are derived in `test_oracle.py`)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def _set(module: nn.Module, weight, bias) -> nn.Module:
    with torch.no_grad():
        module.weight.copy_(torch.tensor(weight, dtype=torch.float32).reshape(module.weight.shape))
        module.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return module


def two_unit_net() -> nn.Sequential:
    """x(1) --fc1--> 2 --relu--> --fc2--> 2 logits, fc1 = [[1], [−1]], fc2 = [[1, 0], [−1, 0]], no bias::

        x=1 ──(+1)──► a0 = 1  ─relu─► z0 ──(+1)──► ẑ0
            └─(−1)──► a1 = −1 ─relu─► z1 ──(−1 on z0)─► ẑ1
    """
    return nn.Sequential(OrderedDict(fc1=_set(nn.Linear(1, 2), [[1.0], [-1.0]], [0.0, 0.0]), relu1=nn.ReLU(),
                                     fc2=_set(nn.Linear(2, 2), [[1.0, 0.0], [-1.0, 0.0]], [0.0, 0.0]))).eval()


def one_channel_conv() -> nn.Sequential:
    """1×2×2 image of ones --conv1(1→1, 2×2, weights 1/4)--> 1×1 --relu--> --flatten--> --fc1 [[1], [−1]]--> 2."""
    return nn.Sequential(OrderedDict(conv1=_set(nn.Conv2d(1, 1, 2), [0.25] * 4, [0.0]), relu1=nn.ReLU(),
                                     flatten=nn.Flatten(),
                                     fc1=_set(nn.Linear(1, 2), [[1.0], [-1.0]], [0.0, 0.0]))).eval()
