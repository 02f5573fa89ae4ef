"""`critneuron book --plan`: stages of the smoke profile against a temporary store (missing, then
fresh once computed, stale once their code record changes), and estimates from measured rates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from critneuron.cli import main
from critneuron.errors import ConfigError
from critneuron.experiments.runs import trained_model
from critneuron.experiments.store import Store
from critneuron.machinery import chapters, reporting
from critneuron.machinery.book import load_profile
from critneuron.machinery.bookplan import book_plan, format_plan
from critneuron.machinery.plan import Stage, totals
from critneuron.machinery.rates import Estimate, Rates

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
RATES = Rates(training={"fc3|1|plain|end-to-end": {"train_s_per_image": 1e-3, "eval_s_per_image": 1e-4}},
              solves={"fc3|1|whole|relaxed": {"seconds": 2.0}})


def _train_stage(store: Store) -> object:
    stages = book_plan("smoke", NOTEBOOKS, rates=RATES, store=store, only=["01"])
    return next(s for s in stages if s.kind == "train")


def test_a_training_is_missing_then_fresh_then_stale(tmp_path: Path, shared_data_root: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRITNEURON_DATA", str(shared_data_root))
    store = Store(tmp_path)
    missing = _train_stage(store)
    assert (missing.status, missing.epochs, missing.images) == ("missing", 1, 1600)
    # 1 epoch of 1,600 images + 400 validation and 500 test images evaluated, at the rates above
    assert missing.estimate.seconds == pytest.approx(1600 * 1e-3 + 900 * 1e-4)
    assert missing.estimate.basis == "measured"

    run, _score = chapters.formulation_run(**load_profile("smoke", NOTEBOOKS).parameters["01_formulation"])
    trained_model(run, store)
    fresh = _train_stage(store)
    assert fresh.status == "fresh" and fresh.counted == 0.0 and fresh.whole == fresh.estimate.seconds > 0

    meta = next((tmp_path / "train").iterdir()) / "meta.json"
    record = json.loads(meta.read_text())
    record["code"]["fingerprint"] = "0" * 16  # computed by other code
    meta.write_text(json.dumps(record))
    assert _train_stage(store).status == "stale"


def test_a_stage_on_a_network_without_its_checkpoint_adds_its_training(tmp_path: Path, shared_data_root: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRITNEURON_DATA", str(shared_data_root))
    store = Store(tmp_path)
    run, _score = chapters.formulation_run(**load_profile("smoke", NOTEBOOKS).parameters["01_formulation"])
    trained_model(run, store)
    kinds = lambda: [(s.kind, s.status) for s in book_plan("smoke", NOTEBOOKS, rates=RATES, store=store, only=["01"])]  # noqa: E731
    assert kinds() == [("train", "fresh"), ("anatomy", "missing")]
    (Path(store.ls("train")[0]["path"]) / "artifacts" / "checkpoint.pt").unlink()  # a clone of a shipped store
    stages = book_plan("smoke", NOTEBOOKS, rates=RATES, store=store, only=["01"])
    assert [(s.kind, s.status) for s in stages] == [("train", "fresh"), ("checkpoint", "missing"), ("anatomy", "missing")]
    assert stages[1].estimate == stages[0].estimate and "checkpoint not stored" in stages[1].what
    assert stages[1].counted == stages[0].whole > 0 and stages[1].whole == 0  # from nothing: counted once


def test_the_stored_solves_of_chapter_01_and_the_plan_text(tmp_path: Path, shared_data_root: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRITNEURON_DATA", str(shared_data_root))
    stages = book_plan("smoke", NOTEBOOKS, rates=RATES, store=Store(tmp_path), only=["01"])
    [anatomy] = [s for s in stages if s.kind == "anatomy"]
    assert (anatomy.status, anatomy.what) == ("missing", "fc3 mnist seed 0: relaxed, exact solves")
    # the relaxed solve at its measured rate, the exact one at its time limit
    assert (anatomy.estimate.seconds, anatomy.estimate.basis) == (32.0, "measured + time limit")
    text = format_plan(stages)
    assert text.startswith("01_formulation: 0 fresh, 0 stale, 2 missing, 0 every build")
    assert text.splitlines()[-1].startswith("total to compute: 0.")
    whole = sum(s.estimate.seconds for s in stages)  # nothing stored: from nothing is all of it
    assert totals(stages)["01_formulation"]["whole_seconds"] == pytest.approx(whole)
    assert text.splitlines()[-1].endswith(f"from nothing: {whole / 3600:.2f} h")


def test_every_stage_of_a_chapter_has_its_own_label(tmp_path: Path, shared_data_root: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRITNEURON_DATA", str(shared_data_root))
    stages = book_plan("smoke", NOTEBOOKS, rates=RATES, store=Store(tmp_path), only=["03", "04"])
    labels = [(s.chapter, s.kind, s.what) for s in stages]
    assert len(labels) == len(set(labels))
    assert ("03_decoupled", "block score", "lenet5 mnist seed 0 block1 (block_bounds local)") in labels
    assert ("04_generalization", "retrain", "fc3 mnist seed 0 → fashion-mnist ×1 masks at lr 0.01 (lr control)") in labels


def test_a_partly_stored_group_counts_only_what_is_left() -> None:
    group = Stage("04", "retrain", "lenet5 mnist seed 0 → cifar10 ×4 masks (1 stored)", "missing",
                  estimate=Estimate(4 * 900.0, "measured"), left=0.75)
    assert (group.counted, group.whole) == (2700.0, 3600.0)
    assert (totals([group])["04"]["seconds"], totals([group])["04"]["whole_seconds"]) == (2700.0, 3600.0)
    assert format_plan([group]).splitlines()[1].endswith("(1 stored)  0.75 h (measured)")


def test_rates_fall_back_by_training_kind_then_width_then_none() -> None:
    rates = Rates(training={"vgg16|0.0625|augment|decoupled": {"train_s_per_image": 2e-3, "eval_s_per_image": 1e-4},
                            "lenet5|1|plain|end-to-end": {"train_s_per_image": 3e-4, "eval_s_per_image": 2e-5}},
                  solves={"lenet5|1|whole|relaxed": {"seconds": 3.0}})
    scaled = rates.training_seconds("vgg16", 0.125, True, "decoupled", 1, 1000, 0)
    assert (scaled.seconds, scaled.basis) == (pytest.approx(4 * 2.0), "vgg16|0.0625|augment|decoupled × width² ratio")
    other = rates.training_seconds("lenet5", 1.0, True, "end-to-end", 2, 1000, 0)
    assert (other.seconds, other.basis) == (pytest.approx(0.6), "as lenet5|1|plain|end-to-end")
    assert rates.training_seconds("fc4", 1.0, False, "end-to-end", 1, 10, 0).seconds is None
    block = rates.solve_seconds("lenet5", 1.0, "block1", "relaxed", 600)
    assert (block.seconds, block.basis) == (3.0, "as the whole network")
    assert rates.solve_seconds("vgg16", 1.0, "block1", "relaxed", 600).basis == "time limit"


def test_cli_plan_builds_nothing(capsys: pytest.CaptureFixture, shared_data_root: Path,
                                 monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CRITNEURON_DATA", str(shared_data_root))
    book_dir = tmp_path / "book"
    assert main(["book", "--profile", "smoke", "--plan", "--only", "01", "--book-dir", str(book_dir),
                 "--notebooks-dir", str(NOTEBOOKS)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("01_formulation: ") and "total to compute:" in out
    assert not book_dir.exists()


def test_the_pruning_sweep_run_as_chapter_02_runs_it_reads_fresh(tmp_path: Path, shared_data_root: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRITNEURON_DATA", str(shared_data_root))
    store = Store(tmp_path)
    params = load_profile("smoke", NOTEBOOKS).parameters["02_pruning"]
    reporting.sweep_rows(store, **chapters.pruning_sweep(**params))
    stages = {(s.kind, s.what.endswith("vertex")): s.status
              for s in book_plan("smoke", NOTEBOOKS, rates=RATES, store=store, only=["02"])}
    assert stages == {("train", False): "fresh", ("score", False): "fresh", ("prune row", False): "fresh",
                      ("score", True): "missing", ("budget", False): "missing"}


def test_the_shipped_profile_extends_paper_and_scores_one_full_width_vgg16(tmp_path: Path, shared_data_root: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRITNEURON_DATA", str(shared_data_root))
    shipped, paper = (load_profile(name, NOTEBOOKS) for name in ("shipped", "paper"))
    assert shipped.reuse == NOTEBOOKS / "../shipped/book" and paper.reuse is None
    assert shipped.parameters["02_pruning"] == paper.parameters["02_pruning"]  # inherited whole
    own = shipped.parameters["03_decoupled"]
    assert own["runs"][0] == ["vgg16", 0.0625, "decoupled"] and own["seeds"] == paper.parameters["03_decoupled"]["seeds"]
    full = chapters.full_width_config(**own)
    assert (full.model.name, full.model.width, full.train.epochs, full.score.time_limit) == ("vgg16", 1.0, 1, 600)
    assert own["full_width"]["correct_only"] is False  # one epoch: a head may classify no image of a class
    assert chapters.full_width_config(**paper.parameters["03_decoupled"]) is None
    with pytest.raises(ConfigError, match="unknown key"):
        chapters.full_width_config(**{**own, "full_width": {"epochs": 1, "time_limit": 1, "width": 2}})
    assert chapters.full_width_rules(own["full_width"]) == ["network"]  # the authors' boxes only
    assert chapters.full_width_rules({"epochs": 1}) == ["network", "local"]
    with pytest.raises(ConfigError, match=r"unknown block_bounds rule\(s\) \['box'\]"):
        chapters.full_width_config(**{**own, "full_width": {"epochs": 1, "time_limit": 1, "rules": ["box"]}})
    stages = book_plan("shipped", NOTEBOOKS, rates=RATES, store=Store(tmp_path), only=["03"])
    full_blocks = [s.what for s in stages if s.kind == "block score" and s.what.startswith("vgg16 cifar10")]
    assert len(full_blocks) == 13 and not any("local" in w for w in full_blocks)
    sources = chapters.transfer_sources(chapters.transfer_base(**shipped.parameters["04_generalization"]),
                                        **shipped.parameters["04_generalization"])
    seeds = {(src.model.name, b): sorted(s.train.seed for s, bb in sources if (s.model.name, bb) == (src.model.name, b))
             for src, b in sources}
    assert seeds[("vgg16", "mnist")] == [0] and seeds[("lenet5", "cifar10")] == [0, 1, 2]
    assert {src.model.width for src, _b in sources if src.model.name == "vgg16"} == {0.0625}
