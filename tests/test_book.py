"""The book: profile validation, notebook skeletons, papermill failures, and a real smoke build."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_notebook

from critneuron.config import ScoreConfig
from critneuron.machinery import book, verdicts
from critneuron.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
SKELETON = ("## Overview", "## Prerequisites", "## Settings of this build", "## Imports", "## 1. ",
            "## Summary", "### What's next?", "## References")


def write_notebook(path: Path, *sources: str) -> None:
    """A notebook whose first code cell is tagged `parameters`."""
    cells = [new_code_cell(src) for src in sources]
    cells[0].metadata["tags"] = ["parameters"]
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(new_notebook(cells=cells, metadata={"kernelspec": kernel}), path)


@pytest.fixture
def toy_notebooks(tmp_path: Path) -> Path:
    """notebooks/ with 01_fine, 02_broken (raises in its 3rd cell), 03_after, and profile toy.yaml."""
    folder = tmp_path / "notebooks"
    (folder / "profiles").mkdir(parents=True)
    write_notebook(folder / "01_fine.ipynb", "x = 0", "print(x)")
    write_notebook(folder / "02_broken.ipynb", "x = 0\ny = 0", "y = x + 1", "raise ValueError('boom')",
                   "z = 1")
    write_notebook(folder / "03_after.ipynb", "x = 0", "print(x)")
    (folder / "profiles" / "toy.yaml").write_text("timeout: 120\ncommon: {x: 1}\n02_broken: {y: 0}\n")
    return folder


RUN_COLUMNS = {"model", "dataset", "tau", "ref_test_acc", "pruned_test_acc", "pct_neurons_pruned"}
# method columns of the accuracy-vs-budget table hold test accuracies too
ACCURACY_COLUMNS = {"mip", "random", "critical", "snip", "snip-authors", "activation", "reference",
                    "magnitude-l1", "magnitude-l2"}


def _numbers(column: pd.Series) -> pd.Series:
    """A column's numbers; a "mean ± std" cell counts by its mean."""
    return pd.to_numeric(column.astype(str).str.split(" ± ").str[0], errors="raise")


def check_table_contents(tables: dict[str, pd.DataFrame]) -> None:
    """Every table has rows; accuracies lie in [0, 1] and percentages in [0, 100]; every solve
    status is optimal and its exact-mode self-check passed; the run tables have their columns."""
    assert tables
    for name, table in tables.items():
        assert len(table), f"{name} is empty"
        for column in table.columns:
            lower = column.lower()
            if lower.endswith("_acc") or "accuracy" in lower or lower in ACCURACY_COLUMNS:
                values = _numbers(table[column])
                assert values.between(0, 1).all(), f"{name}.{column}: accuracies outside [0, 1]"
            elif lower.startswith("pct_"):
                assert _numbers(table[column]).between(0, 100).all(), f"{name}.{column}: outside [0, 100]"
        if "status" in table:
            assert (table["status"] == "optimal").all(), f"{name}: statuses {sorted(set(table['status']))}"
        if "selfcheck_error" in table and "mode" in table:
            exact = table[table["mode"] == "exact"]
            assert (exact["selfcheck_error"] <= ScoreConfig().selfcheck_tol).all(), f"{name}: self-check failed"
        if "ref_test_acc" in table:
            assert RUN_COLUMNS <= set(table.columns), f"{name} lacks {sorted(RUN_COLUMNS - set(table.columns))}"


def selfcheck_warnings(executed: Path) -> list[str]:
    """Stems of the executed notebooks whose outputs carry a self-check warning."""
    flagged = []
    for path in sorted(executed.glob("*.ipynb")):
        outputs = [o for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code" for o in c.outputs]
        text = json.dumps(outputs)
        if "SelfCheckWarning" in text or "self-check failed" in text:
            flagged.append(path.stem)
    return flagged


def digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under a folder, keyed by name."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_smoke_book_builds_every_chapter_with_tables_and_figure(tmp_path: Path, temporary_results: Path) -> None:
    book_dir = tmp_path / "book"
    shutil.copytree(REPO / "book", book_dir, ignore=shutil.ignore_patterns("_build"))
    shutil.copytree(REPO / "docs", tmp_path / "docs")  # book/code.md includes docs/ARCHITECTURE.md
    profile = yaml.safe_load((NOTEBOOKS / "profiles" / "smoke.yaml").read_text())
    profile["common"]["results_dir"] = str(temporary_results)  # never the repository's results/
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(profile))
    before = digest(NOTEBOOKS)
    index = book.build_book(tmp_path / "smoke.yaml", notebooks_dir=NOTEBOOKS, book_dir=book_dir)
    assert index == book_dir / "_build" / "html" / "index.html" and index.is_file()
    assert digest(NOTEBOOKS) == before
    assert {"train", "score", "prune"} <= {p.name for p in temporary_results.iterdir()}
    html = book_dir / "_build" / "html"
    for page in ("intro", "deviations", "reproducibility", "code"):
        assert (html / f"{page}.html").is_file()
    stems = [nb.stem for nb in book.list_notebooks(NOTEBOOKS)]
    for stem in stems:
        page = (html / "_build" / "executed" / f"{stem}.html").read_text()
        assert "Traceback" not in page, stem
    executed = book_dir / "_build" / "executed"
    tables = book.read_tables(executed)
    check_table_contents(tables)
    assert not selfcheck_warnings(executed)
    assert {"status", "selfcheck_error", "ref_test_acc"} <= {c for t in tables.values() for c in t.columns}
    summary = (html / "_build" / "executed" / "06_results_summary.html").read_text()
    assert tables and all(name in summary for name in tables)
    assert "<table" in summary and "<img" in summary
    timings = json.loads((executed / "timings.json").read_text())
    assert sorted(timings) == stems and all(t["status"] == "ok" for t in timings.values())
    provenance = json.loads((executed / "profile.json").read_text())
    assert provenance["profile"] == "smoke" and provenance["versions"]["papermill"]
    intro = (html / "intro.html").read_text()
    claims = verdicts.verdicts(tables)
    assert "profile <strong>smoke</strong>" in intro and all(claim in intro for claim in claims["Claim"])
    assert all(f"<strong>{v}</strong>" in intro for v in claims["Verdict"])
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file() and "mathjax/tex-chtml.js" in intro
    for stem in stems:  # tables only in the book's style, parameters cells off the page
        page = (html / "_build" / "executed" / f"{stem}.html").read_text()
        assert 'class="dataframe"' not in page and "injected-parameters" not in page, stem


def test_table_checks_reject_wrong_numbers_and_flagged_notebooks(tmp_path: Path) -> None:
    good = pd.DataFrame({"model": ["fc3"], "dataset": ["mnist"], "tau": [0.1], "ref_test_acc": ["0.82 ± 0.01"],
                         "pruned_test_acc": [0.8], "pct_neurons_pruned": [50.0], "status": ["optimal"],
                         "mode": ["exact"], "selfcheck_error": [1e-12]})
    check_table_contents({"02_pruning__runs": good})
    for column, value, message in [("pruned_test_acc", 81.0, "accuracies outside"), ("pct_neurons_pruned", -1.0, "outside"),
                                   ("status", "maxTimeLimit", "statuses"), ("selfcheck_error", 0.3, "self-check")]:
        with pytest.raises(AssertionError, match=message):
            check_table_contents({"02_pruning__runs": good.assign(**{column: [value]})})
    with pytest.raises(AssertionError, match="lacks"):
        check_table_contents({"02_pruning__runs": good.drop(columns="tau")})
    with pytest.raises(AssertionError, match="empty"):
        check_table_contents({"02_pruning__runs": good.iloc[:0]})
    write_notebook(tmp_path / "01_ok.ipynb", "x = 0")
    flagged = nbformat.v4.new_notebook(cells=[new_code_cell("score(...)", outputs=[nbformat.v4.new_output(
        "stream", name="stderr", text="SelfCheckWarning: self-check failed: MIP logits differ")])])
    nbformat.write(flagged, tmp_path / "02_flagged.ipynb")
    assert selfcheck_warnings(tmp_path) == ["02_flagged"]


def test_raising_notebook_fails_the_build_with_its_name_and_cell(toy_notebooks: Path, tmp_path: Path) -> None:
    book_dir = tmp_path / "book"
    with pytest.raises(book.BookError, match=r"02_broken: failed in cell 3 .*ValueError: boom"):
        book.build_book("toy", notebooks_dir=toy_notebooks, book_dir=book_dir)
    executed = book_dir / "_build" / "executed"
    assert (executed / "01_fine.ipynb").is_file() and (executed / "03_after.ipynb").is_file()
    statuses = {k: v["status"] for k, v in json.loads((executed / "timings.json").read_text()).items()}
    assert statuses == {"01_fine": "ok", "02_broken": "failed", "03_after": "ok"}
    injected = [c for c in nbformat.read(executed / "01_fine.ipynb", 4).cells
                if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "remove-cell" in injected[0].metadata["tags"]
    assert not (book_dir / "_build" / "html").exists()


def test_timeout_interrupts_the_notebook_and_names_the_cell(toy_notebooks: Path, tmp_path: Path) -> None:
    write_notebook(toy_notebooks / "04_slow.ipynb", "x = 0", "import time\ntime.sleep(120)")
    runs = book.execute_notebooks(book.load_profile("toy", toy_notebooks), [toy_notebooks / "04_slow.ipynb"],
                                  tmp_path, timeout=4)
    assert runs[0].status == "timeout" and runs[0].wall_s < 60
    assert "timed out after 4 s in cell 2 ('import time')" in runs[0].message


def test_profile_parameters_merge_common_and_notebook_keys(toy_notebooks: Path) -> None:
    (toy_notebooks / "profiles" / "toy.yaml").write_text("common: {x: 1}\n02_broken: {x: 2, y: 3}\n")
    profile = book.load_profile("toy", toy_notebooks)
    assert profile.parameters == {"01_fine": {"x": 1}, "02_broken": {"x": 2, "y": 3}, "03_after": {"x": 1}}
    assert profile.timeout is None and profile.name == "toy"


@pytest.mark.parametrize("text, message", [
    ("common: {}\n07_missing: {x: 1}\n", r"unknown notebook key\(s\) \['07_missing'\]"),
    ("common: {x: 1, epoch: 1}\n02_broken: {y: 0}\n", r"'common' sets \['epoch'\], which no notebook declares"),
    ("common: {x: 1}\n02_broken: {y: 0, epoch: 1}\n", r"notebook 02_broken has no parameter\(s\) \['epoch'\]"),
    ("common: {x: 1}\n", r"notebook 02_broken declares parameter\(s\) \['y'\] that the profile does not set"),
    ("common: {output_dir: x}\n", r"'common' sets \['output_dir'\], which book.py injects"),
    ("01_fine: [1, 2]\n", r"'01_fine' must be a mapping"),
    ("timeout: -5\n", r"timeout must be a positive number or null, got -5"),
    ("common: {x: [1\n", r"invalid YAML"),
])
def test_invalid_profiles_raise_config_error(toy_notebooks: Path, text: str, message: str) -> None:
    (toy_notebooks / "profiles" / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"profile .*bad\.yaml: " + message):
        book.load_profile("bad", toy_notebooks)


def test_missing_profile_names_the_available_ones(toy_notebooks: Path) -> None:
    with pytest.raises(ConfigError, match=r"profile 'smok' not found at .*smok\.yaml; available: toy"):
        book.load_profile("smok", toy_notebooks)


def test_only_selects_by_stem_or_number_and_rejects_unknown(toy_notebooks: Path) -> None:
    notebooks = book.list_notebooks(toy_notebooks)
    assert [nb.stem for nb in book.select_notebooks(notebooks, ["03", "01_fine"])] == ["01_fine", "03_after"]
    with pytest.raises(ConfigError, match=r"--only '09': no such notebook"):
        book.select_notebooks(notebooks, ["09"])


@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_repository_profiles_fit_the_notebooks(profile: str) -> None:
    loaded = book.load_profile(profile, NOTEBOOKS)
    assert sorted(loaded.parameters) == [nb.stem for nb in book.list_notebooks(NOTEBOOKS)]


@pytest.mark.parametrize("notebook", book.list_notebooks(NOTEBOOKS), ids=lambda p: p.stem)
def test_notebooks_follow_the_skeleton_and_have_no_outputs(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert sum(line.startswith("# ") for md in markdown for line in md.splitlines()) == 1
    positions = [next(i for i, md in enumerate(markdown) if md.startswith(h)) for h in SKELETON]
    assert positions == sorted(positions)
    assert "{glue:md}`provenance`" in markdown[0] and "```{glue:md} findings" in markdown[0]
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert {"parameters", "remove-cell"} <= set(code[0].metadata.get("tags", []))
    hidden = {"hide-input", "remove-input", "remove-cell"}  # code collapsed by default, or not on the page
    assert all(hidden & set(c.metadata.get("tags", [])) for c in code[1:])
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert not any("def " in c.source for c in code)


def test_save_table_round_trips_and_rejects_bad_names(tmp_path: Path) -> None:
    table = pd.DataFrame({"model": ["lenet5"], "accuracy": [0.99]})
    path = book.save_table(table, "02_pruning", "accuracy", tmp_path)
    assert path == tmp_path / "02_pruning__accuracy.csv"
    pd.testing.assert_frame_equal(book.read_tables(tmp_path)["02_pruning__accuracy"], table)
    with pytest.raises(ConfigError, match=r"table name .* got '../x'"):
        book.save_table(table, "02_pruning", "../x", tmp_path)


def test_relative_data_root_is_made_absolute_for_notebooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CRITNEURON_DATA", "../shared/data")
    monkeypatch.delenv("CRITNEURON_CACHE", raising=False)
    env = book.notebook_env(tmp_path / "notebooks" / "01_x.ipynb")
    assert env["CRITNEURON_DATA"] == str((tmp_path / ".." / "shared" / "data").resolve())
    assert "CRITNEURON_CACHE" not in env
    monkeypatch.delenv("CRITNEURON_DATA")
    assert book.notebook_env(tmp_path / "notebooks" / "01_x.ipynb")["CRITNEURON_DATA"] == str(tmp_path / "data")


def test_a_profile_extends_another_section_by_section(toy_notebooks: Path) -> None:
    (toy_notebooks / "profiles" / "child.yaml").write_text("extends: toy\ntimeout: 5\n02_broken: {x: 3}\n")
    child, base = book.load_profile("child", toy_notebooks), book.load_profile("toy", toy_notebooks)
    assert child.timeout == 5 and child.parameters["02_broken"] == {"x": 3, "y": 0}
    assert child.parameters["01_fine"] == base.parameters["01_fine"] == {"x": 1}
    (toy_notebooks / "profiles" / "loop.yaml").write_text("extends: loop\n")
    with pytest.raises(ConfigError, match="'extends' must name another profile"):
        book.load_profile("loop", toy_notebooks)


def test_provenance_commit_is_dirty_for_changed_code_not_for_what_a_build_writes(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "shipped").mkdir()
    (tmp_path / "notebooks" / "01_a.ipynb").write_text("{}")
    (tmp_path / "shipped" / "record.json").write_text("{}")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "x")
    profile = book.Profile("shipped", None, {"01_a": {"results_dir": "../shipped"}})

    def commit() -> str:
        path = book.write_provenance(profile, tmp_path / "notebooks", tmp_path)
        return json.loads(path.read_text())["git_commit"]

    clean = commit()
    assert re.fullmatch(r"[0-9a-f]{40}", clean)
    (tmp_path / "shipped" / "record.json").write_text('{"new": 1}')  # what a build writes: still clean
    assert commit() == clean
    (tmp_path / "notebooks" / "01_a.ipynb").write_text('{"cells": []}')  # code changed: dirty
    assert commit() == clean + "-dirty"
