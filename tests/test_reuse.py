"""Executed chapters kept from a build and reused while current (critneuron.machinery.reuse)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbformat.v4 import new_markdown_cell

from critneuron.experiments.fingerprint import Code
from critneuron.experiments.store import Store
from critneuron.machinery import book, reuse
from test_book import write_notebook

PARAMETERS = 'profile = "interactive"\nnotebook = "x"\noutput_dir = "."\nresults_dir = "results"\nkey = ""'
READER = ("from critneuron.machinery import book, pages\nimport pandas as pd\n"
          "store = pages.RecordingStore(results_dir)\nvalue = store.read('prune', key)['result']['value']\n"
          "book.save_table(pd.DataFrame({'value': [value]}), notebook, 'values', output_dir)\n"
          "pages.finish(profile, notebook, output_dir, store, [f'value {value}'])")
SUMMARY = ("from critneuron.machinery import book, pages\nfrom pathlib import Path\n"
           "Path(output_dir, 'summary.md').write_text(str(book.read_tables(output_dir)['01_reads__values']))\n"
           "pages.finish(profile, notebook, output_dir, None, ['summary'])")


def _build(folder: Path, executed: Path) -> dict[str, str]:
    profile = book.load_profile("kept", folder)
    runs = book.execute_notebooks(profile, book.list_notebooks(folder), executed, timeout=120)
    return {run.notebook: run.status for run in runs}


def test_chapters_are_reused_while_current_and_run_again_when_not(tmp_path: Path, toy_package: Path) -> None:
    folder, executed, kept = tmp_path / "notebooks", tmp_path / "executed", tmp_path / "kept"
    (folder / "profiles").mkdir(parents=True)
    executed.mkdir()
    store, code = Store(tmp_path / "results"), Code((f"{toy_package.name}.helpers",))
    key = store.key("prune", {"a": 1})
    store.write("prune", key, {"a": 1}, {"value": 7}, code=code)
    write_notebook(folder / "01_reads.ipynb", PARAMETERS, READER)
    write_notebook(folder / "02_summary.ipynb", PARAMETERS, SUMMARY)
    (folder / "profiles" / "kept.yaml").write_text(
        f"reuse: ../kept\ncommon: {{results_dir: ../results}}\n01_reads: {{key: {key}}}\n02_summary: {{key: ''}}\n")

    assert _build(folder, executed) == {"01_reads": "ok", "02_summary": "ok"}
    assert sorted(p.name for p in kept.iterdir()) == [
        "01_reads.build.json", "01_reads.ipynb", "01_reads.reads.json", "01_reads__values.csv"]
    assert json.loads((kept / "01_reads.reads.json").read_text())["reads"] == [["prune", key]]

    for path in executed.iterdir():  # a fresh clone: nothing executed, the kept copies and the store
        path.unlink()
    source = nbformat.read(folder / "01_reads.ipynb", as_version=4)
    source.cells.append(new_markdown_cell("New prose."))  # prose only: no rerun, today's text shown
    nbformat.write(source, folder / "01_reads.ipynb")
    assert _build(folder, executed) == {"01_reads": "reused", "02_summary": "ok"}  # the summary runs every build
    restored = nbformat.read(executed / "01_reads.ipynb", as_version=4)
    assert restored.cells[-1].source == "New prose."
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in restored.cells)
    assert (executed / "summary.md").is_file() and (executed / "01_reads__values.csv").is_file()

    helpers = toy_package / "helpers.py"  # the stored result's code changes: it is stale
    helpers.write_text(helpers.read_text().replace("2 * x", "x + x"))
    why = reuse.why_not_reusable(kept, folder / "01_reads.ipynb", {"results_dir": "../results", "key": key},
                                 folder / "../results")
    assert why == "1 of its 1 stored results missing or stale"
    assert _build(folder, executed) == {"01_reads": "ok", "02_summary": "ok"}
    assert not (kept / "02_summary.ipynb").exists()
