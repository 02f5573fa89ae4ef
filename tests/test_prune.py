"""Tests of critneuron.pruning.masks: masks from scores, applying and freezing them, counts."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from critneuron.config import paper_train_config
from critneuron.errors import ConfigError
from critneuron.nets.data import TensorData
from critneuron.nets.models import build_model
from critneuron.pruning.masks import (
    Masks,
    apply_masks,
    count_params_flops,
    freeze_masks,
    mask_agreement,
    masks_from_scores,
    masks_with_counts,
    pruning_stats,
    unfreeze_masks,
)
from critneuron.mip.scores import Scores
from critneuron.nets.train import train_model


def tiny_net() -> nn.Sequential:
    """A 2-3-2-2 ReLU network with seeded weights and non-zero biases.

        x (2) -> fc1 (3) -> relu1 -> fc2 (2) -> relu2 -> out (2)

    Parameters: fc1 2*3+3 = 9, fc2 3*2+2 = 8, out 2*2+2 = 6; 23 in all.
    """
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            [("fc1", nn.Linear(2, 3)), ("relu1", nn.ReLU()), ("fc2", nn.Linear(3, 2)),
             ("relu2", nn.ReLU()), ("out", nn.Linear(2, 2))]
        )
    )


def scores_of(**layers: list[float]) -> Scores:
    return Scores(layers={k: np.array(v) for k, v in layers.items()}, method="hand")


def test_masks_from_scores_threshold_prunes_strictly_below() -> None:
    s = scores_of(fc1=[0.05, 0.5, 0.1, 0.2], fc2=[0.0, 1.0])
    masks = masks_from_scores(s, 0.1)
    assert masks.kept == {"fc1": [1, 2, 3], "fc2": [1]}
    assert masks.sizes == {"fc1": 4, "fc2": 2}
    assert masks.pruned("fc1") == [0]
    assert masks.n_pruned() == {"fc1": 1, "fc2": 1}


def test_masks_from_scores_mean_uses_each_layers_mean() -> None:
    s = scores_of(fc1=[0.05, 0.5, 0.1, 0.2], fc2=[0.9, 1.0])
    masks = masks_from_scores(s, "mean")  # means 0.2125 and 0.95
    assert masks.kept == {"fc1": [1], "fc2": [1]}


@pytest.mark.parametrize("bad", ["median", 1.5, None])
def test_masks_from_scores_rejects_bad_threshold(bad) -> None:
    with pytest.raises(ConfigError, match="threshold"):
        masks_from_scores(scores_of(fc1=[0.5]), bad)


def test_masks_json_round_trip(tmp_path) -> None:
    masks = Masks(kept={"conv1": [0, 3], "fc1": []}, sizes={"conv1": 6, "fc1": 2})
    masks.save(tmp_path / "m.json")
    assert Masks.load(tmp_path / "m.json") == masks


@pytest.mark.parametrize("kept", [[2, 0], [0, 0], [0, 6]])
def test_masks_reject_unsorted_duplicate_or_out_of_range(kept) -> None:
    with pytest.raises(ConfigError, match="sorted, unique and in \\[0, 6\\)"):
        Masks(kept={"conv1": kept}, sizes={"conv1": 6})


def test_masks_with_counts_breaks_ties_by_index() -> None:
    s = scores_of(fc1=[0.5, 0.1, 0.1, 0.3], fc2=[0.2, 0.2])
    assert masks_with_counts(s, {"fc1": 1, "fc2": 1}).kept == {"fc1": [0, 2, 3], "fc2": [1]}
    assert masks_with_counts(s, {"fc1": 3, "fc2": 0}).kept == {"fc1": [0], "fc2": [0, 1]}


def test_masks_with_counts_rejects_bad_counts() -> None:
    s = scores_of(fc1=[0.5, 0.1])
    with pytest.raises(ConfigError, match="cannot prune 3 of the 2 units of fc1"):
        masks_with_counts(s, {"fc1": 3})
    with pytest.raises(ConfigError, match="n_pruned covers"):
        masks_with_counts(s, {"fc2": 1})


def test_apply_masks_lenet5_zeroes_exactly_the_pruned_channels_and_neurons() -> None:
    model = build_model("lenet5", seed=1)
    masks = Masks(
        kept={"conv1": [0, 2, 3, 5], "fc1": [i for i in range(120) if i != 7]},
        sizes={"conv1": 6, "fc1": 120},
    )
    for module in model.children():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.uniform_(module.bias, 0.1, 0.2)
    pruned = apply_masks(model, masks, "keep-bias")
    w, w0 = pruned.conv1.weight, model.conv1.weight
    assert int((w == 0).sum()) == 2 * 3 * 5 * 5
    assert torch.all(w[[1, 4]] == 0) and torch.equal(w[[0, 2, 3, 5]], w0[[0, 2, 3, 5]])
    assert torch.all(pruned.fc1.weight[7] == 0) and int((pruned.fc1.weight == 0).sum()) == 400
    assert torch.equal(pruned.conv1.bias, model.conv1.bias)
    assert torch.equal(pruned.conv2.weight, model.conv2.weight)
    assert int((model.conv1.weight == 0).sum()) == 0  # the original is untouched


def test_apply_masks_remove_zeroes_biases_too() -> None:
    model = tiny_net()
    masks = Masks(kept={"fc1": [0, 2]}, sizes={"fc1": 3})
    removed = apply_masks(model, masks, "remove")
    assert removed.fc1.bias[1] == 0 and torch.equal(removed.fc1.bias[[0, 2]], model.fc1.bias[[0, 2]])


def test_keep_bias_pruned_unit_outputs_relu_of_its_bias() -> None:
    model = tiny_net()
    with torch.no_grad():
        model.fc1.bias.copy_(torch.tensor([0.3, 0.7, -0.2]))
    pruned = apply_masks(model, Masks(kept={"fc1": [0, 2]}, sizes={"fc1": 3}))
    hidden = pruned[:2](torch.randn(5, 2))
    assert torch.equal(hidden[:, 1], torch.full((5,), 0.7))


def test_apply_masks_rejects_last_linear_bad_size_and_bias() -> None:
    model = tiny_net()
    with pytest.raises(ConfigError, match="'out', which is not a scored layer"):
        apply_masks(model, Masks(kept={"out": [0]}, sizes={"out": 2}))
    with pytest.raises(ConfigError, match="masks give fc1 4 units, the model has 3"):
        apply_masks(model, Masks(kept={"fc1": [0]}, sizes={"fc1": 4}))
    with pytest.raises(ConfigError, match="bias must be one of"):
        apply_masks(model, Masks(kept={"fc1": [0]}, sizes={"fc1": 3}), "zero")


def test_pruning_stats_tiny_net_by_hand() -> None:
    masks = Masks(kept={"fc1": [0, 2], "fc2": [1]}, sizes={"fc1": 3, "fc2": 2})
    stats = pruning_stats(tiny_net(), masks, input_shape=(2,))
    assert stats["layers"]["fc1"] == {"neurons": 3, "pruned": 1, "pct_pruned": pytest.approx(100 / 3)}
    assert stats["layers"]["fc2"] == {"neurons": 2, "pruned": 1, "pct_pruned": 50.0}
    assert (stats["neurons"], stats["neurons_pruned"], stats["pct_neurons_pruned"]) == (5, 2, 40.0)
    # fan-in of the pruned fc1 neuron: 2 weights; of the pruned fc2 neuron: 3 weights
    assert stats["fan_in_weights_removed"] == 5 and stats["params_total"] == 23
    assert stats["pct_params_pruned"] == pytest.approx(100 * 5 / 23)
    # compact: fc1 2x2+2, fc2 1x2+1, out 2x1+2
    assert (stats["params_dense"], stats["params_compact"]) == (23, 6 + 3 + 4)
    assert (stats["flops_dense"], stats["flops_compact"]) == (6 + 6 + 4, 4 + 2 + 2)


def test_pruning_stats_lenet5_by_hand() -> None:
    model = build_model("lenet5")
    masks = Masks(kept={"conv1": [0, 2, 3, 5]}, sizes={"conv1": 6})
    stats = pruning_stats(model, masks)
    assert stats["fan_in_weights_removed"] == 2 * 3 * 5 * 5
    assert stats["params_total"] == stats["params_dense"] == 456 + 2416 + 48120 + 10164 + 850
    assert stats["pct_params_pruned"] == pytest.approx(100 * 150 / 62006)
    assert stats["params_compact"] == 4 * 76 + (16 * 4 * 25 + 16) + 48120 + 10164 + 850
    dense_tail = 400 * 120 + 120 * 84 + 84 * 10
    assert stats["flops_dense"] == 6 * 75 * 28 * 28 + 16 * 150 * 10 * 10 + dense_tail
    assert stats["flops_compact"] == 4 * 75 * 28 * 28 + 16 * 100 * 10 * 10 + dense_tail


@pytest.mark.parametrize("name", ["fc3", "fc4", "lenet5", "vgg16"])
def test_dense_counts_match_the_real_models(name: str) -> None:
    model = build_model(name, width=1 / 16 if name == "vgg16" else 1.0)
    params, _ = count_params_flops(model)
    assert params == sum(p.numel() for p in model.parameters())


def _train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 2, generator=generator), torch.randint(0, 2, (16,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


OPTIMIZERS = {
    "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-2),
    "rmsprop-wd": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.9, weight_decay=5e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
}


def _pruned_mid_training(optimizer: str, masks: Masks, bias: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    """tiny_net trained 3 steps, then masked in place: the optimizer state still pushes pruned weights."""
    model = tiny_net()
    opt = OPTIMIZERS[optimizer](model.parameters())
    _train_steps(model, opt, 3)
    model.load_state_dict(apply_masks(model, masks, bias).state_dict())
    return model, opt


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("bias", ["keep-bias", "remove"])
def test_freeze_masks_keeps_pruned_weights_zero(optimizer: str, bias: str) -> None:
    masks = Masks(kept={"fc1": [0, 2], "fc2": [1]}, sizes={"fc1": 3, "fc2": 2})
    control, opt = _pruned_mid_training(optimizer, masks, bias)
    _train_steps(control, opt, 2)
    assert control.fc1.weight[1].abs().sum() > 0  # without the freeze the zeros do not survive
    model, opt = _pruned_mid_training(optimizer, masks, bias)
    freeze_masks(model, masks, bias)
    before = model.fc1.weight.detach().clone()
    _train_steps(model, opt, 5)
    assert torch.all(model.fc1.weight[1] == 0) and torch.all(model.fc2.weight[0] == 0)
    assert not torch.equal(model.fc1.weight[[0, 2]], before[[0, 2]])
    assert (model.fc1.bias[1] == 0) == (bias == "remove")
    unfreeze_masks(model)
    assert set(model.state_dict()) == set(tiny_net().state_dict())
    assert torch.all(model.fc1.weight[1] == 0) and torch.all(model.fc2.weight[0] == 0)


def synthetic_split(n: int, seed: int) -> TensorData:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=generator)
    return TensorData(images, torch.arange(n) % 10, torch.arange(n), "mnist", "train", "synthetic")


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])  # RMSprop; SGD + Nesterov + weight decay
def test_frozen_lenet5_survives_train_model(dataset: str) -> None:
    model = build_model("lenet5", seed=0)
    masks = Masks(kept={"conv1": [0, 2, 3, 5], "fc1": list(range(0, 120, 2))}, sizes={"conv1": 6, "fc1": 120})
    tuned = apply_masks(model, masks, "remove")
    freeze_masks(tuned, masks, "remove")
    cfg = paper_train_config("lenet5", dataset, epochs=2)
    train_model(tuned, synthetic_split(64, 0), synthetic_split(32, 1), cfg, progress=False)
    assert torch.all(tuned.conv1.weight[[1, 4]] == 0) and torch.all(tuned.conv1.bias[[1, 4]] == 0)
    assert torch.all(tuned.fc1.weight[1::2] == 0)
    assert not torch.equal(tuned.conv1.weight[0], model.conv1.weight[0])
    with pytest.raises(ConfigError, match=r"\['conv1', 'fc1'\] are frozen: call unfreeze_masks first"):
        apply_masks(tuned, masks)
    unfreeze_masks(tuned)
    assert set(tuned.state_dict()) == set(model.state_dict()) and torch.all(tuned.fc1.weight[1::2] == 0)


def test_masks_name_their_inconsistencies_count_whole_layers_and_compare():
    with pytest.raises(ConfigError, match=r"kept layers \['fc1'\] != sized layers \['fc2'\]"):
        Masks(kept={"fc1": [0]}, sizes={"fc2": 1})
    scores = Scores(layers={"fc1": np.array([0.3, 0.1, 0.2])}, method="mip")
    assert masks_with_counts(scores, {"fc1": 3}).kept == {"fc1": []}
    with pytest.raises(ConfigError, match="cannot prune 4 of the 3 units of fc1"):
        masks_with_counts(scores, {"fc1": 4})
    a, b = Masks(kept={"fc1": [0, 1]}, sizes={"fc1": 4}), Masks(kept={"fc1": [1, 2]}, sizes={"fc1": 4})
    # pruned {2, 3} and {0, 3}: units 1 and 3 treated alike, Jaccard |{3}| / |{0, 2, 3}|
    assert mask_agreement(a, b) == {"fc1": {"agreement": 0.5, "jaccard": 1 / 3, "pruned_a": 2, "pruned_b": 2}}
