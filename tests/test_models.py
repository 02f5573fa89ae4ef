"""Architectures: parameter counts, output shapes, child names, width, initialisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from critneuron.catalog import model_names
from critneuron.errors import ConfigError
from critneuron.nets.models import build_model, conv_bias_bound, init_weights

PARAMETERS = {"fc3": 953_010, "fc4": 645_810, "lenet5": 62_006, "vgg16": 14_982_474}

CHILDREN = {
    "fc3": "flatten fc1 relu1 fc2 relu2 fc3",
    "fc4": "flatten fc1 relu1 fc2 relu2 fc3 relu3 fc4",
    "lenet5": "conv1 relu1 pool1 conv2 relu2 pool2 flatten fc1 relu3 fc2 relu4 fc3",
    "vgg16": "conv1 bn1 relu1 conv2 bn2 relu2 pool1 "
    "conv3 bn3 relu3 conv4 bn4 relu4 pool2 "
    "conv5 bn5 relu5 conv6 bn6 relu6 conv7 bn7 relu7 pool3 "
    "conv8 bn8 relu8 conv9 bn9 relu9 conv10 bn10 relu10 pool4 "
    "conv11 bn11 relu11 conv12 bn12 relu12 conv13 bn13 relu13 pool5 "
    "flatten fc1 bn14 relu14 fc2",
}


def test_catalog_holds_the_papers_models() -> None:
    assert model_names() == tuple(PARAMETERS) == tuple(CHILDREN)


@pytest.mark.parametrize("name", model_names())
def test_parameter_count(name: str) -> None:
    assert sum(p.numel() for p in build_model(name).parameters()) == PARAMETERS[name]


@pytest.mark.parametrize("name", model_names())
def test_child_names_and_output_shape(name: str) -> None:
    model = build_model(name)
    assert isinstance(model, nn.Sequential)
    assert " ".join(n for n, _ in model.named_children()) == CHILDREN[name]
    assert model.eval()(torch.rand(3, 3, 32, 32)).shape == (3, 10)


def test_vgg16_layers_and_width() -> None:
    full = build_model("vgg16")
    assert (full.conv1.in_channels, full.conv1.out_channels, full.conv1.padding) == (3, 64, (1, 1))
    assert not full.bn1.affine and not full.bn14.affine and isinstance(full.pool5, nn.AvgPool2d)
    narrow = build_model("vgg16", width=0.25)
    convs = [m.out_channels for m in narrow if isinstance(m, nn.Conv2d)]
    assert convs == [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128]
    assert (narrow.fc1.in_features, narrow.fc1.out_features, narrow.fc2.in_features) == (128, 128, 128)
    assert build_model("vgg16", width=1e-3).conv13.out_channels == 1


def test_initialisation() -> None:
    model = build_model("vgg16", width=0.5)
    conv = torch.cat([m.weight.flatten() for m in model if isinstance(m, nn.Conv2d)])
    assert abs(conv.std().item() - 0.02) < 0.001 and abs(conv.mean().item()) < 0.001
    fc1 = model.fc1.weight
    assert abs(fc1.std().item() - (2 / fc1.shape[1]) ** 0.5) < 0.01  # Kaiming normal, fan in
    assert all(torch.all(m.bias == 0) for m in model if isinstance(m, nn.Linear))


def test_conv_biases_keep_pytorchs_default_uniform_initialisation() -> None:
    """The authors' weights_init zeroes Linear biases only; conv biases are U(±1/√fan_in)."""
    model = build_model("lenet5", seed=1)
    for conv, fan_in in ((model.conv1, 3 * 25), (model.conv2, 6 * 25)):
        bound = fan_in ** -0.5
        assert conv_bias_bound(conv) == pytest.approx(bound)
        assert torch.all(conv.bias != 0) and torch.all(conv.bias.abs() <= bound)
    biases = torch.cat([m.bias for m in build_model("vgg16", width=0.5) if isinstance(m, nn.Conv2d)])
    assert biases.min() < 0 < biases.max() and len(biases.unique()) == len(biases)


def test_affine_batchnorm_initialisation() -> None:
    bn = nn.BatchNorm1d(4096)
    init_weights(nn.Sequential(bn), torch.Generator().manual_seed(0))
    assert abs(bn.weight.mean().item() - 1) < 0.002 and abs(bn.weight.std().item() - 0.02) < 0.002
    assert torch.all(bn.bias == 0)


def test_seeded_initialisation() -> None:
    """Every parameter, conv biases included, comes from the seed, not from torch's global RNG."""
    states = []
    for seed, global_seed in ((3, 0), (3, 1), (4, 0)):
        torch.manual_seed(global_seed)
        states.append(build_model("lenet5", seed=seed).state_dict())
    first, again, other = states
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["conv1.weight"], other["conv1.weight"])
    assert not torch.equal(first["conv1.bias"], other["conv1.bias"])


@pytest.mark.parametrize(
    ("name", "width", "message"),
    [("resnet", 1.0, "model must be one of 'fc3'.*got 'resnet'"), ("lenet5", 0.5, "applies to vgg16 only")],
)
def test_bad_arguments(name: str, width: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(name, width)
