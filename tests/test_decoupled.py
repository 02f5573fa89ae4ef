"""Decoupled scoring: block split, heads, greedy training, sub-MIPs (input boxes, self-check,
parallel = serial) and the cached end-to-end run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
import socket
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from critneuron.mip import blocks
from critneuron.nets import heads as dec
from critneuron.mip.bounds import forward, interval_bounds, module_bounds
from critneuron.config import DataConfig, ModelConfig, PruneConfig, RunConfig, ScoreConfig, paper_train_config
from critneuron.errors import ConfigError, SolveError, UnsupportedLayerError
from critneuron.nets.data import load_split
from critneuron.experiments.decoupled import (
    block_bounds_comparison, block_executor, decoupled_mip_scores, decoupled_network, decoupled_run,
)
from critneuron.experiments.rows import table_row
from critneuron.pruning.masks import Masks
from critneuron.nets.models import build_model
from critneuron.mip.scores import Scores
from critneuron.mip.spec import network_spec
from critneuron.experiments.store import Store


def toy() -> nn.Sequential:
    """3×32×32 --conv(3→2, 8, stride 8)--> 2×4×4 --relu--> --conv(2→3, 3)--> 3×2×2 --relu--> --fc(12→10)."""
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 2, 8, stride=8), relu1=nn.ReLU(),
                                     conv2=nn.Conv2d(2, 3, 3), relu2=nn.ReLU(), flatten=nn.Flatten(),
                                     fc1=nn.Linear(12, 10))).eval()


def toy_problems(mode_seed: int = 0, block_bounds: str = "network") -> tuple[dec.Decoupled, list[blocks.BlockProblem], np.ndarray]:
    net = dec.Decoupled.build(toy(), seed=0)
    gen = torch.Generator().manual_seed(mode_seed)
    for p in net.heads.parameters():  # untrained heads: random but not all-zero weights
        p.data = torch.randn(p.shape, generator=gen) * 0.5
    for head in net.heads:  # BatchNorm running statistics away from the identity
        head.head_bn1.running_mean.uniform_(-0.1, 0.1, generator=gen)
        head.head_bn2.running_var.uniform_(0.5, 2.0, generator=gen)
    x = torch.rand(3, 3, 32, 32, generator=gen)
    y = torch.tensor([0, 1, 2])
    batch = (x, y, torch.arange(3))
    return net, blocks.block_problems(net, [batch, batch], epsilon=1e-3, block_bounds=block_bounds), x.double().numpy()


def test_split_blocks_of_the_paper_networks() -> None:
    assert dec.split_blocks(build_model("lenet5")) == [
        ["conv1", "relu1"], ["pool1", "conv2", "relu2", "pool2", "flatten", "fc1", "relu3", "fc2", "relu4", "fc3"]]
    parts = dec.split_blocks(build_model("vgg16", width=0.0625))
    assert len(parts) == 13 and parts[0] == ["conv1", "bn1", "relu1"] and parts[2] == ["pool1", "conv3", "bn3", "relu3"]
    assert parts[-1] == ["conv13", "bn13", "relu13", "pool5", "flatten", "fc1", "bn14", "relu14", "fc2"]
    with pytest.raises(UnsupportedLayerError, match="has none"):
        dec.split_blocks(build_model("fc3"))


def test_heads_follow_the_block_outputs() -> None:
    net = dec.Decoupled.build(build_model("vgg16", width=0.0625), seed=0)
    assert len(net.heads) == 12 and net.names()[-1] == "tail"
    head = net.heads[0]  # block 1: 4 channels at 32×32
    assert head.head_pool.output_size == 8 and head.head_conv.in_channels == 4 and head.head_fc1.in_features == 16
    assert head.head_conv.bias is None and not head.head_bn1.affine
    assert net.heads[11].head_pool.output_size == 1  # block 12 at 2×2
    x = torch.rand(2, 3, 32, 32)
    for k in range(12):
        assert net.classifier(k).eval()(x).shape == (2, 10)
    assert net.kept_layers(0) == ["conv1"] and net.kept_layers(12) == ["conv13", "fc1"]


def test_adaptive_pool_spec_matches_torch_on_uneven_bins() -> None:
    pool = nn.Sequential(OrderedDict(p=nn.AdaptiveAvgPool2d((3, 5))))
    x = torch.rand(2, 2, 7, 11, dtype=torch.float64)
    spec = network_spec(pool, (2, 7, 11))
    layer = spec.layers[0]
    ours = (layer.matrix @ x.reshape(2, -1).numpy().T).T
    assert np.allclose(ours, pool(x).reshape(2, -1).numpy(), atol=1e-12)


def test_block_inputs_and_boxes_come_from_the_whole_network() -> None:
    net, problems, x = toy_problems()
    assert [p.name for p in problems] == ["block1", "tail"] and problems[0].input_box is None
    spec = network_spec(net.model, (3, 32, 32))
    bounds = interval_bounds(spec, x, 1e-3)
    relu1 = [layer.name for layer in spec.layers].index("relu1")
    lower, upper = problems[1].input_box
    assert np.allclose(lower.reshape(3, -1), bounds.lower[relu1]) and np.allclose(upper.reshape(3, -1), bounds.upper[relu1])
    with torch.no_grad():
        expected = net.prefix(1).double()(torch.from_numpy(x)).numpy()
    net.model.float()
    assert np.allclose(problems[1].x, expected, atol=1e-12)
    assert (upper - lower).max() > 2e-3  # wider than the ε-box: the box really is propagated


def test_local_block_bounds_box_each_block_by_its_own_inputs() -> None:
    """`block_bounds: local`: the same inputs, boxed by x ± ε; the tail's relaxation then has fewer
    unstable units and describes the network more closely; the rule is in the rows and checked."""
    _net, network, _x = toy_problems()
    _net, local, _x = toy_problems(block_bounds="local")
    assert local[0].input_box is None and [p.block_bounds for p in local] == ["local"] * 2
    np.testing.assert_array_equal(local[1].x, network[1].x)
    lower, upper = local[1].input_box
    np.testing.assert_allclose(upper - local[1].x, 1e-3)
    np.testing.assert_array_equal(lower, np.maximum(local[1].x - 1e-3, 0))
    cfg = ScoreConfig(time_limit=60)
    wide = blocks.solve_block(network[1], cfg)
    tight = blocks.solve_block(local[1], dataclasses.replace(cfg, block_bounds="local"))
    assert tight.provenance["unstable_units"] < wide.provenance["unstable_units"]
    assert tight.provenance["selfcheck_error"] <= wide.provenance["selfcheck_error"]
    rows = blocks.combine([wide], "decoupled").provenance["blocks"] + blocks.combine([tight], "decoupled").provenance["blocks"]
    assert [r["block_bounds"] for r in rows] == ["network", "local"]
    with pytest.raises(ConfigError, match="built with block_bounds 'local', the config says 'network'"):
        blocks.solve_block(local[1], cfg)
    with pytest.raises(ConfigError, match="block_bounds must be one of"):
        blocks.block_problems(_net, [(torch.rand(1, 3, 32, 32), torch.tensor([0]), torch.arange(1))] * 2, 1e-3, "global")


def test_only_usable_blocks_give_scores_and_every_block_keeps_its_row() -> None:
    """A block stopped by a limit or failed adds no scores; a relaxed block above selfcheck_tol is
    used and flagged; in exact mode a failed self-check makes a block unusable."""
    _net, problems, _x = toy_problems()
    first, tail = blocks.solve_blocks(problems, ScoreConfig(time_limit=60))
    limited = Scores(tail.layers, tail.method, {**tail.provenance, "solver": {**tail.provenance["solver"],
                                                                                     "status": "maxTimeLimit"}})
    combined = blocks.combine([first, limited], "decoupled")
    rows = combined.provenance["blocks"]
    assert list(combined.layers) == ["conv1"] and [r["usable"] for r in rows] == [True, False]
    assert rows[0]["final_point"] in ("interior", "vertex") and rows[0]["selfcheck_error"] is not None
    runs = [h["iterations"] for h in first.provenance["solver"]["history"]]
    assert rows[0]["iterations"] == {k: sum(r[k] for r in runs) for k in runs[0]} and sum(rows[0]["iterations"].values()) > 0
    failed = blocks.failure_row(problems[1], "no point", {"iterations": {"ipm": 7}})
    assert failed["iterations"] == {"ipm": 7}
    rows = blocks.combine([first, failed], "decoupled").provenance["blocks"]
    assert rows[1]["final_point"] == "none" and not rows[1]["usable"] and rows[1]["block_bounds"] == "network"
    assert blocks.failure_row(problems[0], "no point", {})["dropped"] == rows[0]["dropped"] == ["head_conv", "head_fc1"]
    assert blocks.usable("stalled", "relaxed", False) and blocks.usable("optimal", "relaxed", False)
    assert not blocks.usable("optimal", "exact", False) and not blocks.usable("maxIterations", "relaxed", True)


def test_sub_mip_self_check_passes_and_keeps_only_network_layers() -> None:
    _net, problems, _x = toy_problems()
    result = blocks.solve_block(problems[0], ScoreConfig(mode="exact", time_limit=60))
    prov = result.provenance
    assert list(result.layers) == ["conv1"] and prov["dropped_layers"] == ["head_conv", "head_fc1"]
    assert prov["solver"]["status"] == "optimal" and prov["selfcheck_passed"], prov["selfcheck_error"]
    assert prov["input_box"] == "epsilon"
    tail = blocks.solve_block(problems[1], ScoreConfig(mode="exact", time_limit=60))
    assert tail.provenance["selfcheck_passed"] and tail.provenance["input_box"] == "given"


def test_parallel_solves_give_the_serial_scores() -> None:
    _net, problems, _x = toy_problems()
    cfg = ScoreConfig(time_limit=60)
    seen = []
    serial = blocks.solve_blocks(problems, cfg, done=lambda p, s: seen.append(p.name))
    with block_executor(None, workers=2) as executor:  # a Dask LocalCluster of two worker processes
        assert executor is not None
        parallel = blocks.solve_blocks(problems, cfg, executor)
    assert sorted(seen) == ["block1", "tail"]
    assert all(s.provenance["peak_rss_gb"] > 0 for s in serial + parallel)
    for a, b in zip(serial, parallel):
        assert list(a.layers) == list(b.layers)
        for name in a.layers:
            np.testing.assert_array_equal(a.layers[name], b.layers[name])
    combined = blocks.combine(serial, "decoupled")
    assert list(combined.layers) == ["conv1", "conv2"] and combined.provenance["training"] == "decoupled"
    assert [row["block"] for row in combined.provenance["blocks"]] == ["block1", "tail"]


def test_decoupled_training_trains_a_classifier_and_leaves_the_network_plain(shared_data_root) -> None:
    data = DataConfig(dataset="mnist", root=str(shared_data_root), subset=3000, test_subset=500)
    train, val, test = (load_split(data, s) for s in ("train", "val", "test"))
    model = build_model("lenet5", seed=0)
    net = dec.Decoupled.build(model, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = dec.train_decoupled(net, train, val, paper_train_config("lenet5", "mnist", epochs=2),
                                 progress=False)
    assert set(model.state_dict()) == set(build_model("lenet5").state_dict())  # heads are not part of it
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k.endswith("weight"))
    accuracies = dec.head_accuracies(net, test)
    assert len(accuracies) == 2 and accuracies[-1] > 0.6, accuracies  # the end-to-end network classifies
    blocks.block_batches(net, train, 10, seed=0, correct_only=False)
    # evaluating containers over the shared modules leaves the network and heads in eval mode
    assert not any(m.training for m in [*model.modules(), *net.heads.modules()])
    assert len(result.history) == 2 and len(result.history[0]["sub_models"]) == 2
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    dec.train_decoupled(net, train, val, paper_train_config("lenet5", "mnist", epochs=1),
                        training="end-to-end", progress=False)
    assert all(torch.equal(frozen[k], v) for k, v in model.state_dict().items())  # heads only


def test_decoupled_run_is_cached_and_reports_every_block(shared_data_root, tmp_path, monkeypatch) -> None:
    cfg = RunConfig(data=DataConfig(dataset="mnist", root=str(shared_data_root), subset=3000, test_subset=500),
                    model=ModelConfig(name="lenet5"),
                    train=dataclasses.replace(paper_train_config("lenet5", "mnist", epochs=2), batch_size=32),
                    score=ScoreConfig(time_limit=60), prune=PruneConfig(threshold=0.2))
    store = Store(tmp_path / "results")
    row = decoupled_run(cfg, store)
    assert row["training"] == "decoupled" and [b["block"] for b in row["blocks"]] == ["block1", "tail"]
    assert all(b["status"] == "optimal" for b in row["blocks"])
    assert set(row["scores"]) == {"conv1", "conv2", "fc1", "fc2"}
    assert row["pruned"]["test"]["accuracy"] > 0.3 and "random" in row and "critical" in row
    n_runs = len(store.ls())
    again = decoupled_run(cfg, store)
    assert len(store.ls()) == n_runs and again["scores"] == row["scores"]
    net, _metrics = decoupled_network(cfg, store)
    assert torch.equal(net.heads[0].head_fc2.weight, decoupled_network(cfg, store)[0].heads[0].head_fc2.weight)

    comparison = block_bounds_comparison(cfg, store)  # network: the stored blocks; local: two new ones
    assert [(r["block_bounds"], r["block"]) for r in comparison] == [
        ("network", "block1"), ("network", "tail"), ("local", "block1"), ("local", "tail")]
    assert comparison[0]["unstable_units"] == comparison[2]["unstable_units"]  # block 1: the same box
    assert comparison[3]["unstable_units"] <= comparison[1]["unstable_units"]
    assert comparison[0]["pruned_test_acc"] == row["pruned"]["test"]["accuracy"]
    assert sum(r["pruned"] for r in comparison[:2]) == sum(Masks.from_dict(row["masks"]).n_pruned().values())
    assert len(store.ls("score")) == 4
    checkpoint = Path(store.ls("train")[0]["path"]) / "artifacts" / "checkpoint.pt"
    checkpoint.unlink()  # as in a clone of a shipped store: the stored rows need no network
    assert decoupled_run(cfg, store) == row and block_bounds_comparison(cfg, store) == comparison
    assert not checkpoint.exists()
    net, _metrics = decoupled_network(cfg, store)  # trained again here: the same weights on this machine

    real_score = blocks.score

    def tail_fails(model, x, y, score_cfg, *args):  # the tail's solve ends without a point (as a time-out would)
        if "fc2" in dict(model.named_children()):
            raise SolveError("HiGHS ended with status maxTimeLimit and no feasible solution",
                             {"solver_status": "maxTimeLimit", "rounds": 0})
        return real_score(model, x, y, score_cfg, *args)

    monkeypatch.setattr(blocks, "score", tail_fails)
    cut = dataclasses.replace(cfg, score=dataclasses.replace(cfg.score, time_limit=61))  # new keys: solved again
    row = decoupled_run(cut, store)
    assert [(b["status"], b["usable"], b["final_point"]) for b in row["blocks"]][1] == ("failed", False, "none")
    assert set(row["scores"]) == {"conv1"} and set(row["masks"]["kept"]) == {"conv1"}
    flat = table_row(row)
    assert flat["unused_mips"] == 1 and flat["status"] == "failed" and flat["solve_s"] == row["blocks"][0]["solve_s"]
    assert flat["block_bounds"] == "network"

    monkeypatch.setattr(blocks, "score", real_score)  # the failure is stored: this host does not solve it again
    assert len(store.ls("score")) == 6 and decoupled_run(cut, store)["blocks"][1]["status"] == "failed"
    with pytest.raises(SolveError, match="tail: HiGHS ended with status maxTimeLimit"):
        decoupled_mip_scores(net, cut, store, "decoupled")
    monkeypatch.setattr(socket, "gethostname", lambda: "elsewhere")  # another machine solves it again
    assert [b["status"] for b in decoupled_run(cut, store)["blocks"]] == ["optimal", "optimal"]

    scored = len(store.ls("score"))  # a barely trained head may classify no image of a class: any images then
    anyhow = block_bounds_comparison(cfg, store, rules=["local"], correct_only=False)
    assert [r["block"] for r in anyhow] == ["block1", "tail"] and len(store.ls("score")) > scored


@pytest.mark.parametrize("name, width", [("lenet5", 1.0), ("vgg16", 1 / 16)])
def test_module_bounds_equal_the_spec_bounds(name: str, width: float) -> None:
    """The whole-network bounds of block problems come from the modules (no unrolled matrices):
    the same intervals and values as the spec's, on a net with non-trivial BatchNorm statistics."""
    model = build_model(name, width=width, seed=1)
    with torch.no_grad():
        model.train()(torch.rand(64, 3, 32, 32))  # moves BatchNorm running statistics
    model.eval()
    x = torch.rand(4, 3, 32, 32).double().numpy()
    spec = network_spec(model, (3, 32, 32))
    bounds, values = interval_bounds(spec, x, 1e-3), forward(spec, x)
    ours = module_bounds(model, x, 1e-3)
    assert list(ours) == [layer.name for layer in spec.layers]
    for i, layer in enumerate(spec.layers):
        value, lower, upper = (a.reshape(len(x), -1) for a in ours[layer.name])
        scale = 1.0 + np.abs(bounds.upper[i]).max()
        for a, b in ((value, values[i]), (lower, bounds.lower[i]), (upper, bounds.upper[i])):
            assert np.abs(a - b).max() <= 1e-12 * scale, layer.name
