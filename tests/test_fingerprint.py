"""Code fingerprints: what each stage's fingerprint covers, and which edits change it."""

from __future__ import annotations

from pathlib import Path

import pytest

from critneuron.experiments import budget, decoupled
from critneuron.experiments import runs as experiment
from critneuron.experiments import transfer
from critneuron.experiments.fingerprint import Code, FingerprintError, _closure, fingerprint, git_commit, is_current
from critneuron.machinery.sweepfile import load_sweep

REPO = Path(__file__).resolve().parents[1]
MIP_MODULES = ("critneuron.mip.scores", "critneuron.mip.formulation", "critneuron.mip.solve", "critneuron.mip.bounds")


def modules(code: Code) -> set[str]:
    """Modules that `code` reaches, whole or by some definition."""
    return {name.partition(":")[0] for name in _closure(code.all_entries())}


def test_training_covers_the_training_code_and_not_the_mip() -> None:
    for code in (experiment.TRAIN_CODE, decoupled.DECOUPLED_TRAIN_CODE):
        reached = modules(code)
        assert {"critneuron.nets.train", "critneuron.nets.models", "critneuron.nets.data", "critneuron.config"} <= reached
        assert not reached & set(MIP_MODULES), reached
    assert "critneuron.nets.heads" in modules(decoupled.DECOUPLED_TRAIN_CODE)


def test_scoring_covers_the_mip_modules_whole_and_training() -> None:
    closure = _closure(experiment.SCORE_CODE.all_entries())
    assert set(MIP_MODULES) <= set(closure)  # whole modules: any edit there counts
    assert set(experiment.TRAIN_CODE.all_entries()) <= set(experiment.SCORE_CODE.all_entries())
    for code in decoupled.BLOCK_SCORE_CODE.values():
        assert set(MIP_MODULES) <= set(_closure(code.all_entries()))


def test_every_declared_stage_and_shipped_sweep_resolves() -> None:
    codes = [experiment.TRAIN_CODE, decoupled.DECOUPLED_TRAIN_CODE, decoupled.HEADS_CODE, experiment.SCORE_CODE,
             *decoupled.BLOCK_SCORE_CODE.values(), budget.BUDGET_CODE, transfer.RETRAIN_CODE]
    codes += [load_sweep(path).code for path in sorted((REPO / "sweeps").glob("*.yaml"))]
    record = experiment.SCORE_CODE.record()
    assert len({code.fingerprint() for code in codes}) >= 7 and is_current(record)
    assert record["commit"] == git_commit() and (git_commit() is None or len(git_commit()) == 40)


def test_whole_module_entries_follow_relative_imports_and_see_every_edit(toy_package: Path) -> None:
    name = toy_package.name
    code = Code((f"{name}.compute",))
    before = code.fingerprint()
    assert set(_closure(code.all_entries())) == {f"{name}.compute", f"{name}.helpers"}
    helpers = toy_package / "helpers.py"
    helpers.write_text(helpers.read_text() + "# a comment and blank lines change nothing\n\n")
    assert code.fingerprint() == before
    helpers.write_text(helpers.read_text() + "\n\ndef unused():\n    pass\n")  # a new no-op function
    assert code.fingerprint() != before


def test_definition_entries_cover_what_they_use_and_nothing_else(toy_package: Path) -> None:
    name = toy_package.name
    stage = Code((f"{name}.glue:stage",))
    before, record = stage.fingerprint(), stage.record()
    glue = toy_package / "glue.py"
    glue.write_text(glue.read_text().replace("def other(x):\n    return x", "def other(x):\n    return -x"))
    assert stage.fingerprint() == before and is_current(record)  # `other` is not part of `stage`
    glue.write_text(glue.read_text().replace("def _helper(x):\n    return x", "def _helper(x):\n    return x + 0"))
    assert stage.fingerprint() != before and not is_current(record)
    after_helper = stage.fingerprint()
    compute = toy_package / "compute.py"
    compute.write_text(compute.read_text() + "\n\ndef noop():\n    pass\n")  # other modules: by definition too
    assert stage.fingerprint() == after_helper
    (toy_package / "helpers.py").write_text("def double(x):\n    return x + x\n")  # used by compute.run
    assert stage.fingerprint() != after_helper


def test_stages_after_others_include_their_code(toy_package: Path) -> None:
    name = toy_package.name
    first = Code((f"{name}.helpers",))
    second = Code((f"{name}.glue:other",), after=(first,))
    assert second.all_entries() == (f"{name}.glue:other", f"{name}.helpers")
    before = second.fingerprint()
    (toy_package / "helpers.py").write_text("def double(x):\n    return x + x\n")
    assert second.fingerprint() != before


@pytest.mark.parametrize("entry, message", [
    ("critneuron.no_such_module", "no Python source module"),
    ("critneuron.experiments.runs:no_such_definition", "defines no 'no_such_definition'"),
])
def test_a_missing_entry_is_a_named_error_and_its_record_is_not_current(entry: str, message: str) -> None:
    with pytest.raises(FingerprintError, match=message):
        fingerprint((entry,))
    assert not is_current({"entries": [entry], "fingerprint": "0" * 16})
    assert not is_current(None)


def test_whole_modules_follow_other_packages_by_definition(toy_package: Path) -> None:
    name = toy_package.name
    sub = toy_package / "sub"
    sub.mkdir()
    (sub / "__init__.py").write_text("")
    (sub / "kernel.py").write_text(f"from {name}.glue import other\n\n\ndef kernel(x):\n    return other(x)\n")
    code = Code((f"{name}.sub.kernel",))
    assert set(_closure(code.all_entries())) == {f"{name}.sub.kernel", f"{name}.glue:other", f"{name}.glue:<module>"}
    before = code.fingerprint()
    glue = toy_package / "glue.py"
    glue.write_text(glue.read_text() + "\n\ndef added(x):\n    return x\n")  # beside `other`: not part of it
    assert code.fingerprint() == before
    glue.write_text(glue.read_text().replace("def other(x):\n    return x", "def other(x):\n    return -x"))
    assert code.fingerprint() != before


def test_names_only_in_annotations_are_not_followed(toy_package: Path) -> None:
    name = toy_package.name
    (toy_package / "typed.py").write_text(
        f"from __future__ import annotations\n\nfrom {name}.glue import other, _helper\n\n\n"
        "def stage(x: other) -> other:\n    y: other = x\n    return _helper(y)\n")
    assert set(_closure((f"{name}.typed:stage",))) == {
        f"{name}.typed:stage", f"{name}.typed:<module>", f"{name}.glue:_helper", f"{name}.glue:<module>"}


def test_training_ignores_new_code_beside_it_and_scoring_settings() -> None:
    reached = set(_closure(experiment.TRAIN_CODE.all_entries()))
    assert "critneuron.nets.train:train_model" in reached and "critneuron.nets.data:load_split" in reached
    assert not {"critneuron.nets.train", "critneuron.config", "critneuron.config:ScoreConfig"} & reached
    assert "critneuron.mip.solve" not in modules(transfer.RETRAIN_CODE)
    prune_rows = load_sweep(REPO / "sweeps" / "lambda.yaml").code
    assert "critneuron.mip.solve" in modules(prune_rows) and "critneuron.nets.train" in modules(prune_rows)
    for code in (experiment.TRAIN_CODE, prune_rows):  # storing a result does not change it
        assert not {"critneuron.experiments.store", "critneuron.experiments.fingerprint"} & modules(code)
