"""Mask transfer across datasets: masks held at zero while retraining, A's initialisation reused,
a small end-to-end transfer and pruning at initialisation on the real datasets, and the cache."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from critneuron.pruning.baselines import baseline_masks, random_scores
from critneuron.config import DataConfig, ModelConfig, RunConfig, ScoreConfig, paper_train_config
from critneuron.experiments.runs import mip_scores, trained_model
from critneuron.nets.models import build_model
from critneuron.pruning.masks import masks_from_scores, pruning_stats
from critneuron.experiments.store import Store
from critneuron.catalog import model_record
from critneuron.errors import ConfigError
from critneuron.machinery import book, chapters
from critneuron.experiments.transfer import VARIANTS, at_init_rows, at_init_settings, at_init_source, transfer_plan, masked_weights_max, source_config, source_masks, \
    train_masked, transfer_rows

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(shared_data_root: Path) -> RunConfig:
    """Small runs: 2,000 training images (1,600 train, 400 val), 500 test images, 30 s solves."""
    data = DataConfig(root=str(shared_data_root), subset=2000, test_subset=500)
    return RunConfig(data=data, score=ScoreConfig(time_limit=30))


@pytest.mark.parametrize("schedule", ["mnist", "cifar10"])  # RMSprop; SGD with momentum and weight decay
def test_masked_weights_stay_exactly_zero_through_retraining(base: RunConfig, schedule: str) -> None:
    init = build_model("lenet5", seed=3).state_dict()
    like = masks_from_scores(random_scores(build_model("lenet5"), 7), 0.5)
    masks = baseline_masks("random", build_model("lenet5"), like, seed=1)
    train_cfg = dataclasses.replace(paper_train_config("lenet5", schedule, epochs=1), batch_size=32)
    model = train_masked(ModelConfig("lenet5"), init, masks, base.data, train_cfg)
    assert masked_weights_max(build_model("lenet5", seed=3), masks) > 0.01  # the init had them non-zero
    assert masked_weights_max(model, masks) == 0.0
    for name in masks.kept:
        kept = masks.kept[name]
        assert not torch.equal(model.state_dict()[f"{name}.weight"][kept], init[f"{name}.weight"][kept])


def test_retraining_starts_from_the_given_initialisation(base: RunConfig) -> None:
    init = build_model("fc3", seed=5).state_dict()
    masks = masks_from_scores(random_scores(build_model("fc3"), 2), 0.3)
    zero_epochs = paper_train_config("lenet5", "mnist", epochs=0)
    model = train_masked(ModelConfig("fc3"), init, masks, base.data, zero_epochs)
    for name in ("fc1", "fc2"):
        expected = init[f"{name}.weight"].clone()
        expected[masks.pruned(name)] = 0
        assert torch.equal(model.state_dict()[f"{name}.weight"], expected)


def test_transfer_run_on_small_subsets(base: RunConfig, tmp_path: Path) -> None:
    store = Store(tmp_path)
    cfg = source_config(base, "fc3", "mnist", seed=0, epochs=1)
    rows = transfer_rows(cfg, ["fashion-mnist"], store, epochs=1)
    assert [r["variant"] for r in rows] == list(VARIANTS)
    assert {(r["source"], r["target"], r["model"], r["epochs"], r["at_init"]) for r in rows} == {
        ("mnist", "fashion-mnist", "fc3", 1, False)}
    # the MIP mask of A's trained network at the paper's tau; random and SNIP prune the same counts
    model, _ = trained_model(cfg, store)
    mip = masks_from_scores(mip_scores(model, cfg, store), 0.1)
    init, masks = source_masks(cfg, store)
    assert masks["mip"] == mip and masks["reference"] is None
    assert masks["random"].n_pruned() == masks["snip"].n_pruned() == mip.n_pruned()
    assert masks["random"] != mip and masks["snip"] != mip
    assert all(torch.equal(init[k], v) for k, v in build_model("fc3", seed=0).state_dict().items())
    pct = pruning_stats(model, mip)["pct_neurons_pruned"]
    assert 0 < pct < 100
    authors = pruning_stats(model, masks["snip-authors"])["pct_neurons_pruned"]  # its own counts: 45 % of all kept
    assert [r["pct_neurons_pruned"] for r in rows] == [0.0, pct, pct, pct, authors] and 0 < authors < 100
    assert all(r["masked_weights_max"] == 0.0 for r in rows)
    assert all(0.3 < r["test_accuracy"] <= 1 for r in rows)  # Fashion-MNIST after 1 short epoch; chance is 0.1
    assert len({r["test_accuracy"] for r in rows}) > 1
    reference = source_config(base, "fc3", "fashion-mnist", seed=0, epochs=1)  # the ordinary experiment on B
    assert rows[0]["test_accuracy"] == trained_model(reference, store)[1]["test_accuracy"]
    runs = len(store.ls("retrain"))
    assert runs == 4 and transfer_rows(cfg, ["fashion-mnist"], store, epochs=1) == rows
    assert len(store.ls("retrain")) == runs and len(store.ls("train")) == 2


def test_stored_transfers_need_no_checkpoint_of_the_source(base: RunConfig, tmp_path: Path) -> None:
    """As in a clone of a shipped store (no checkpoints): the rows come back from the masks' record,
    and with that record gone too, from the masks the retrainings themselves hold; nothing trains."""
    store = Store(tmp_path)
    cfg = source_config(base, "fc3", "mnist", seed=0, epochs=1)
    rows = transfer_rows(cfg, ["fashion-mnist"], store, epochs=1)
    _init, masks = source_masks(cfg, store)
    [stored] = store.ls("masks")
    assert "recovered_from" not in store.read("masks", stored["key"])["result"]
    checkpoints = [Path(r["path"]) / "artifacts" / "checkpoint.pt" for r in store.ls("train")]
    for path in checkpoints:
        path.unlink()
    assert transfer_rows(cfg, ["fashion-mnist"], store, epochs=1) == rows
    shutil.rmtree(stored["path"])
    assert transfer_rows(cfg, ["fashion-mnist"], store, epochs=1) == rows
    [recovered] = store.ls("masks")
    retrained = {r["key"] for r in store.ls("retrain")}
    assert set(store.read("masks", recovered["key"])["result"]["recovered_from"]) == retrained and len(retrained) == 4
    assert source_masks(cfg, store)[1] == masks
    assert not any(path.exists() for path in checkpoints)


def test_pruning_at_initialisation_scores_the_untrained_network(base: RunConfig, tmp_path: Path) -> None:
    store = Store(tmp_path)
    rows = at_init_rows(base, store, model="fc3", targets=["mnist"], epochs=1, seeds=[0])
    assert [r["variant"] for r in rows] == list(VARIANTS) and all(r["at_init"] for r in rows)
    assert {r["tau"] for r in rows} == {0.2} and 0 < rows[1]["pct_neurons_pruned"] < 100
    epochs = sorted(store.read("train", r["key"])["config"]["train"]["epochs"] for r in store.ls("train"))
    assert epochs == [0, 1]  # the scored network is the initialisation; the reference the ordinary run
    score = store.read("score", store.ls("score")[0]["key"])
    assert (score["config"]["lambda_"], score["config"]["batch_size"], score["config"]["epsilon"]) == (1.0, 5, 1e-5)


def test_decoupled_source_masks_come_from_block_scores(base: RunConfig, tmp_path: Path) -> None:
    """VGG-16's masks come from decoupled scoring (the default for models the paper trains decoupled); here LeNet-5
    forced through the same path on a small subset."""
    store = Store(tmp_path)
    cfg = source_config(dataclasses.replace(base, data=dataclasses.replace(base.data, subset=10000)),
                        "lenet5", "mnist", seed=0, epochs=3)
    init, masks = source_masks(cfg, store, decoupled=True)
    assert model_record("vgg16").training == "decoupled" and model_record("lenet5").training == "end-to-end"
    blocks = [store.read("score", r["key"])["config"]["block"] for r in store.ls("score")]
    assert sorted(blocks) == ["block1", "tail"]
    assert store.read("train", store.ls("train")[0]["key"])["config"]["training"] == "decoupled"
    assert masks["random"].n_pruned() == masks["snip"].n_pruned() == masks["mip"].n_pruned()
    assert all(torch.equal(init[k], v) for k, v in build_model("lenet5", seed=0).state_dict().items())


def test_paper_profile_resolves_to_the_papers_transfer_schedules() -> None:
    """PAPER_SPEC §9.1 and §9.3, from the paper profile's chapter-4 settings, without training."""
    params = book.load_profile("paper", REPO / "notebooks").parameters["04_generalization"]
    base = RunConfig()
    vgg = [pair for pair in params["pairs"] if pair[0] == "vgg16"]
    assert vgg == [["vgg16", "cifar10", "mnist"], ["vgg16", "cifar10", "fashion-mnist"]]
    source = source_config(base, "vgg16", "cifar10", 0, params["epochs"], params["width"])
    assert model_record("vgg16").training == "decoupled" and source.model.width == 1.0
    assert (source.train.optimizer, source.train.lr, source.train.epochs) == ("sgd", 0.1, 30)
    plan = transfer_plan(source, ["mnist", "fashion-mnist"], params["epochs"])
    for target in ("mnist", "fashion-mnist"):
        retrain, reference = plan[target]["retrain"], plan[target]["reference"]
        assert (retrain.optimizer, retrain.lr, retrain.epochs) == ("sgd", 0.1, 30)
        assert reference.data.dataset == target and reference.train == retrain  # the ordinary (decoupled) experiment on B
    lenet = transfer_plan(source_config(base, "lenet5", "mnist", 0, params["epochs"]), ["cifar10"], params["epochs"])
    assert (lenet["cifar10"]["retrain"].lr, lenet["cifar10"]["retrain"].epochs) == (0.1, 256)
    assert lenet["cifar10"]["reference"].train.lr == 1e-2  # the CIFAR-10 reference keeps its own lr
    settings = at_init_settings(**params["at_init"])
    assert len(settings["seeds"]) == 5 and at_init_source(base, 0, settings).train.epochs == 0
    at_init = transfer_plan(at_init_source(base, 0, settings), settings["targets"], settings["epochs"], at_init=True)
    assert {t: (p["retrain"].optimizer, p["retrain"].epochs) for t, p in at_init.items()} == {
        "mnist": ("rmsprop", 20), "fashion-mnist": ("rmsprop", 20), "cifar10": ("sgd", 256)}


def test_the_learning_rate_control_names_its_sources_and_rejects_bad_settings() -> None:
    params = book.load_profile("paper", REPO / "notebooks").parameters["04_generalization"]
    base = chapters.transfer_base(**params)
    [(source, target)] = chapters.lr_control_sources(base, **params)
    assert (source.model.name, source.data.dataset, source.train.seed, target) == ("lenet5", "mnist", 1, "cifar10")
    assert transfer_plan(source, [target], params["epochs"])[target]["retrain"].lr == 0.1  # the control's other rate
    assert chapters.lr_control_sources(base, **{**params, "lr_control": None}) == []
    with pytest.raises(ConfigError, match="exactly the keys"):
        chapters.lr_control_sources(base, **{**params, "lr_control": {"lr": 0.01, "pairs": []}})
    with pytest.raises(ConfigError, match=r"\['reference'\]: not retrained masks"):
        chapters.lr_control_sources(base, **{**params, "lr_control": {**params["lr_control"], "masks": ["reference"]}})
