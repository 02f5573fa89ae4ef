"""The book's presentation: one table style, figures only with numbered captions, findings and
verdicts computed from results, and each page's provenance line."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from critneuron.experiments.fingerprint import Code
from critneuron.experiments.store import Store
from critneuron.machinery import book, findings, pages, reporting, verdicts

REPO = Path(__file__).resolve().parents[1]
SHOWN = {"show", "styled", "folded", "glue_figure", "set_style"}  # reporting functions whose value the page may show


def _is_shown(node: ast.AST | None) -> bool:
    """A table in the book's style, a Markdown text or nothing; never a bare DataFrame."""
    if node is None or isinstance(node, ast.Constant) and node.value is None:
        return True
    if isinstance(node, ast.IfExp):
        return _is_shown(node.body) and _is_shown(node.orelse)
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return func.value.id == "reporting" and func.attr in SHOWN or func.value.id == "pages"
    if isinstance(func, ast.Name) and func.id == "display":
        return all(_is_shown(arg) for arg in node.args)
    return isinstance(func, ast.Name) and func.id == "Markdown"


def presentation_problems(nb: nbformat.NotebookNode) -> list[str]:
    """What a chapter shows outside the book's style: a cell's value that is not a `reporting.show`
    table (a raw DataFrame or Series), a figure shown without `reporting.glue_figure`, or a glued
    figure with no numbered ``{glue:figure}`` and caption in a markdown cell."""
    problems, glued = [], []
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for number, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "parameters" in cell.metadata.get("tags", []):
            continue
        tree = ast.parse(cell.source)
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        if any(isinstance(c.func, ast.Attribute) and c.func.attr == "show" and getattr(c.func.value, "id", "") == "plt"
               for c in calls):
            problems.append(f"cell {number}: plt.show() shows a figure without a caption")
        displayed = [c for c in calls if isinstance(c.func, ast.Name) and c.func.id == "display"]
        last = tree.body[-1] if tree.body else None
        if isinstance(last, ast.Expr) and not _is_shown(last.value) or not all(map(_is_shown, displayed)):
            problems.append(f"cell {number}: shows a value that is not a reporting.show table")
        glued += [c.args[0].value for c in calls if isinstance(c.func, ast.Attribute) and c.func.attr == "glue_figure"]
    for key in glued:
        match = re.search(r"```\{glue:figure\} " + re.escape(key) + r"\n:name: [\w-]+\n\n(.+?)\n```", markdown, re.S)
        if not match or len(match.group(1).split()) < 8:
            problems.append(f"figure {key!r} has no numbered {{glue:figure}} with a caption")
    return problems


@pytest.mark.parametrize("notebook", book.list_notebooks(REPO / "notebooks"), ids=lambda p: p.stem)
def test_chapters_show_tables_and_figures_only_in_the_book_style(notebook: Path) -> None:
    assert presentation_problems(nbformat.read(notebook, as_version=4)) == []


def test_raw_frames_and_figures_without_caption_are_found() -> None:
    nb = new_notebook(cells=[
        new_code_cell("table = pd.DataFrame({'a': [1]})\ntable"),
        new_code_cell("display(table.round(2))"),
        new_code_cell("ax = table.plot()\nplt.show()"),
        new_code_cell("reporting.glue_figure('fig_x', ax, 'runs')"),
        new_markdown_cell("```{glue:figure} fig_x\n```"),
        new_code_cell("reporting.show(table, ['a'])"),
    ])
    assert presentation_problems(nb) == [
        "cell 0: shows a value that is not a reporting.show table",
        "cell 1: shows a value that is not a reporting.show table",
        "cell 2: plt.show() shows a figure without a caption",
        "cell 2: shows a value that is not a reporting.show table",
        "figure 'fig_x' has no numbered {glue:figure} with a caption",
    ]


def test_values_are_written_with_units_and_mean_std_over_seeds() -> None:
    assert [reporting.format_value(v, k) for v, k in [(0.97134, "fraction"), (12345, "count"), (3.14159, "seconds"),
                                                      (1234.6, "seconds"), (1.98e-5, "sci"), ("fc3", "name"),
                                                      ("fc3", "text")]] == \
        ["97.1", "12,345", "3.1", "1,235", "2.0e-05", "FC-3", "fc3"]  # a layer named fc3 keeps its name
    runs = pd.DataFrame({"model": ["fc3", "fc3", "lenet5"], "dataset": ["mnist"] * 3, "seed": [0, 1, 0],
                         "ref_test_acc": [0.98, 0.96, 0.99], "pruned_test_acc": [0.97, 0.95, 0.9],
                         "status": ["optimal"] * 3})
    table = reporting.paper_table(runs, ["ref_test_acc", "pruned_test_acc", "status"], by=["dataset", "model"])
    assert table.to_dict("records") == [
        {"Dataset": "MNIST", "Model": "FC-3", "Ref. test acc %": "97.0 ± 1.4", "Masked test acc %": "96.0 ± 1.4"},
        {"Dataset": "MNIST", "Model": "LeNet-5", "Ref. test acc %": "99.0", "Masked test acc %": "90.0"}]


def test_curves_over_seeds_have_one_point_per_setting() -> None:
    runs = pd.DataFrame({"tau": [0.2, 0.1, 0.2, 0.1, 0.3], "acc": [0.8, 0.9, 0.6, 0.9, 0.5]})
    curves = reporting.over_seeds(runs, "tau", ["acc"])
    assert curves["tau"].tolist() == [0.1, 0.2, 0.3]
    assert curves["acc"].tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert curves["acc_std"].tolist() == pytest.approx([0.0, 0.1414, 0.0], abs=1e-4)


def test_a_folded_table_names_itself_and_its_rows() -> None:
    html = reporting.folded(pd.DataFrame({"tau": [0.1, 0.2], "seed": [0, 1]}), "02_pruning__budget").data
    assert html.startswith('<details class="critneuron-folded"><summary><strong>02_pruning__budget</strong> (2 rows)')
    assert "critneuron-table" in html and html.endswith("</details>")


def test_a_long_folded_table_shows_its_first_rows_and_says_so() -> None:
    html = reporting.folded(pd.DataFrame({"seed": range(1000, 1500)}), "runs", max_rows=300).data
    assert "(500 rows, the first 300 shown)" in html
    assert ">1,299<" in html and ">1,300<" not in html


def test_a_non_optimal_status_is_shown_and_highlighted() -> None:
    runs = pd.DataFrame({"run": ["a", "b"], "solve_s": [1.0, 2.0], "status": ["optimal", "maxTimeLimit"]})
    html = reporting.show(runs).to_html()
    assert "Solve status" in html and "maxTimeLimit" in html and "background-color: #fde2e1" in html
    assert 'class="critneuron-table"' in html and "row_heading" not in html


def _tables(drop: float) -> dict[str, pd.DataFrame]:
    """Chapter tables as a build saves them: two pruning runs, the second losing `drop` of accuracy."""
    runs = pd.DataFrame({"model": ["fc3", "lenet5"], "width": [1.0, 1.0], "dataset": ["mnist", "mnist"],
                         "training": ["end-to-end"] * 2, "seed": [0, 0], "ref_test_acc": [0.98, 0.99],
                         "pruned_test_acc": [0.975, 0.99 - drop], "status": ["optimal"] * 2,
                         "selfcheck_error": [1e-12, 1e-10]})
    return {"02_pruning__pruning_runs": runs}


@pytest.mark.parametrize("drop, expected", [(0.005, verdicts.HOLDS), (0.05, verdicts.PARTLY)])
def test_verdicts_follow_the_saved_results(tmp_path: Path, drop: float, expected: str) -> None:
    for name, table in _tables(drop).items():
        book.save_table(table, *name.split("__"), tmp_path)
    claims = verdicts.verdicts(book.read_tables(tmp_path)).set_index("Claim")["Verdict"]
    assert claims["Pruning needs no fine-tuning"] == expected
    assert claims["Neuron importance is the solution of one program"] == verdicts.HOLDS
    assert claims["Masks generalise across datasets"] == verdicts.NOT_TESTED
    assert claims["Decoupled scoring scales to VGG-16"] == verdicts.NOT_TESTED


def test_introduction_includes_the_verdicts_that_the_summary_computes_from_stored_tables(tmp_path: Path) -> None:
    intro = (REPO / "book" / "intro.md").read_text()
    assert f"```{{include}} {book.EXECUTED.as_posix()}/{verdicts.VERDICTS_FILE}\n```" in intro
    summary = "\n".join(c.source for c in nbformat.read(REPO / "notebooks" / "06_results_summary.ipynb", 4).cells)
    assert "tables = book.read_tables(output_dir)" in summary
    assert "verdicts.write_verdicts(tables, provenance, output_dir)" in summary
    path = verdicts.write_verdicts(_tables(0.05), {"profile": "quick", "git_commit": "abc", "date": "2026-12-04"}, tmp_path)
    text = path.read_text()
    assert "| Pruning needs no fine-tuning |" in text and "**partly**" in text and "profile **quick**" in text
    assert "(_build/executed/02_pruning.ipynb)" in text


def test_findings_quote_the_numbers_of_the_tables() -> None:
    runs = _tables(0.05)["02_pruning__pruning_runs"].assign(
        pct_neurons_pruned=[50.25, 30.0], pct_params_pruned=[40.0, 20.0], random_test_acc=[0.5, 0.6],
        critical_test_acc=[0.1, 0.2], run=["fc3 / mnist", "lenet5 / mnist"])
    budget = pd.DataFrame({"run": ["fc3 / mnist"], "tau": [0.1], "pct_neurons_pruned": [50.25], "mip": [0.97],
                           "random": [0.6], "snip": [0.9]})
    flips = pd.DataFrame({"units_changing_side": [0, 3]})
    lines = findings.pruning(runs, budget, flips)
    assert lines[0] == ("Without fine-tuning, the MIP masks remove 30.0–50.2 % of the neurons (20.0–40.0 % of the "
                        "parameters); the masked accuracy is within 1 point of the reference in 1 of 2 runs (worst: "
                        "5.0 points lost, LeNet-5 / MNIST).")
    assert "the best baseline there, snip, 90.0 %" in lines[2]
    assert lines[3] == "Vertex and interior scores give the same mask in 1 of 2 runs; the most units changing side: 3."


def test_a_mask_that_does_not_transfer_is_named_with_every_number() -> None:
    variants = ["reference", "mip", "random", "snip", "snip-authors"]
    runs = pd.DataFrame([{"model": m, "source": "mnist", "target": t, "at_init": False, "seed": 0, "variant": v,
                          "lr": 0.1, "test_accuracy": acc}
                         for m, t, accs in (("lenet5", "cifar10", [0.688, 0.1, 0.238, 0.206, 0.44]),
                                            ("fc3", "fashion-mnist", [0.88, 0.875, 0.86, 0.85, 0.8]))
                         for v, acc in zip(variants, accs)])
    lines = findings.generalization(runs)
    assert lines[0].startswith("Trained on the target dataset, the MIP mask is within 1 point of the dense "
                               "reference in 1 of 2 pairs (worst: 58.8 points lost)")
    assert lines[1:] == ["LeNet-5: MNIST → CIFAR-10: the MIP mask retrains to chance (10.0 %) at lr 0.1, against "
                         "68.8 % for the dense reference; masks of the same counts: the random mask 23.8 %, our SNIP mask "
                         "20.6 %, the authors' SNIP mask 44.0 %."]


def test_the_learning_rate_control_quotes_each_mask_at_each_rate() -> None:
    rows = pd.DataFrame([{"model": "lenet5", "source": "mnist", "target": "cifar10", "seed": 1, "variant": v, "lr": lr,
                          "test_accuracy": acc} for v, lr, acc in (("mip", 0.1, 0.1), ("random", 0.1, 0.3126),
                                                                   ("mip", 0.01, 0.6), ("random", 0.01, 0.58))])
    assert findings.lr_control(rows) == [
        "Learning-rate control, LeNet-5: MNIST → CIFAR-10, seed 1: the MIP mask 10.0 % at lr 0.1, 60.0 % at lr 0.01; "
        "the random mask 31.3 % at lr 0.1, 58.0 % at lr 0.01."]
    assert findings.lr_control(pd.DataFrame([])) == []


def test_provenance_line_says_whether_every_stored_result_read_is_fresh(tmp_path: Path) -> None:
    store = Store(tmp_path / "results")
    store.write("train", "fresh", {"a": 1}, {"x": 1}, code=Code(("critneuron.config",)))
    store.write("train", "old", {"a": 2}, {"x": 2})  # no code recorded: reads as stale
    recording = pages.RecordingStore(tmp_path / "results")
    recording.read("train", "fresh")
    assert pages.freshness(recording) == "all 1 stored results on this page fresh (computed by this code)"
    recording.read("train", "old")
    assert recording.freshness() == (2, 1)
    profile = book.Profile("smoke", None, {"02_pruning": {"seeds": [0, 1], "mode": "relaxed"}})
    book.write_provenance(profile, REPO / "notebooks", tmp_path)
    line = pages.provenance_line("smoke", tmp_path, pages.freshness(recording))
    assert re.fullmatch(r"Profile \*\*smoke\*\* · commit `\w{10}(-dirty)?` · built \d{4}-\d\d-\d\d \d\d:\d\d UTC · "
                        r"\*\*1 of 2 stored results on this page stale\*\* \(computed by older code\)\.", line), line
    assert pages.settings_table("smoke", "02_pruning", str(tmp_path)).to_dict("list") == {
        "Parameter": ["profile", "seeds", "mode"], "Value": ["smoke", "0, 1", "relaxed"]}
    assert "run by hand" in pages.provenance_line("interactive", tmp_path, "x")
