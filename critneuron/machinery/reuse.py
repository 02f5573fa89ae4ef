"""Executed chapters kept from an earlier build, reused while they are current.

A profile may name a folder of executed notebooks (``reuse:``, e.g. the shipped profile's
``../shipped/book``). Before `critneuron book` runs a chapter it looks there: the executed copy
is reused, with the tables and files it wrote, when

- the notebook's code cells are what they were (`source_hash`; its prose is taken from today's
  notebook, `with_current_prose`),
- the profile gives it the same parameters, and
- every stored result it read (``<stem>.reads.json``, written by `pages.finish`) is complete in
  today's result store and fresh (computed by today's code);

a chapter that read no stored result (the results summary) describes the build itself (its
chapters' timings, its commit), so it is never kept and runs every build (seconds). Anything
else runs again, reading the store and computing only what is missing or stale. After a build,
the chapters it executed are copied back into the folder (`keep_executed`), so it always holds
the newest executed copy of each.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from critneuron.experiments.store import Store

BUILD_SUFFIX = ".build.json"
READS_SUFFIX = ".reads.json"


def source_hash(notebook: Path) -> str:
    """SHA-256 (16 hex digits) of a notebook's code cells and their tags (outputs and markdown
    excluded: a reused copy takes today's markdown, so prose edits need no rerun)."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    digest = hashlib.sha256()
    for cell in cells:
        if cell["cell_type"] == "code":
            digest.update("".join(cell["source"]).encode())
            digest.update(json.dumps(cell.get("metadata", {}).get("tags", [])).encode())
    return digest.hexdigest()[:16]


def record_build(executed_dir: Path, src: Path, parameters: dict[str, Any], outputs: list[str]) -> Path:
    """Write ``<stem>.build.json`` next to an executed notebook: its source hash, parameters and the
    files it wrote."""
    path = executed_dir / f"{src.stem}{BUILD_SUFFIX}"
    path.write_text(json.dumps({"source": source_hash(src), "parameters": parameters,
                                "outputs": sorted(outputs)}, indent=2) + "\n")
    return path


def record_reads(output_dir: str | Path, notebook: str, runs_read: list[tuple[str, str]] | None) -> Path:
    """Write ``<notebook>.reads.json``: the (kind, key) of every stored result the chapter read
    (None: it read no result store)."""
    path = Path(output_dir) / f"{notebook}{READS_SUFFIX}"
    path.write_text(json.dumps({"reads": None if runs_read is None else sorted(map(list, runs_read))}) + "\n")
    return path


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def why_not_reusable(reuse_dir: Path, src: Path, parameters: dict[str, Any], results_root: Path) -> str | None:
    """None if the executed copy of `src` in `reuse_dir` may be reused; else the reason."""
    stem = src.stem
    build, reads = _load(reuse_dir / f"{stem}{BUILD_SUFFIX}"), _load(reuse_dir / f"{stem}{READS_SUFFIX}")
    if build is None or reads is None or not (reuse_dir / src.name).is_file():
        return "no executed copy"
    if build["source"] != source_hash(src):
        return "its code cells changed"
    if build["parameters"] != json.loads(json.dumps(parameters)):
        return "its parameters changed"
    if reads["reads"] is None:
        return "it reads no stored result: it describes this build"
    store = Store(results_root)
    stale = sum(store.record(kind, key)["code"] != "fresh" for kind, key in reads["reads"])
    return f"{stale} of its {len(reads['reads'])} stored results missing or stale" if stale else None


def with_current_prose(executed: dict, source: dict) -> dict:
    """The executed notebook with the markdown cells of today's `source`: its code cells (same
    code, `source_hash`) keep their outputs, papermill's injected cell stays after the parameters."""
    injected = [c for c in executed["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    ran = iter([c for c in executed["cells"] if c["cell_type"] == "code" and c not in injected])
    cells = []
    for cell in source["cells"]:
        cells.append(next(ran) if cell["cell_type"] == "code" else cell)
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            cells += injected
    return {**executed, "cells": cells}


def _copy(from_dir: Path, src: Path, to_dir: Path) -> None:
    build = _load(from_dir / f"{src.stem}{BUILD_SUFFIX}") or {}
    for name in [f"{src.stem}{BUILD_SUFFIX}", f"{src.stem}{READS_SUFFIX}", *build.get("outputs", [])]:
        shutil.copy2(from_dir / name, to_dir / name)


def restore(reuse_dir: Path, src: Path, executed_dir: Path) -> None:
    """Put the kept executed copy of `src` (with today's prose), its records and the files it
    wrote into `executed_dir`."""
    _copy(reuse_dir, src, executed_dir)
    notebook = with_current_prose(json.loads((reuse_dir / src.name).read_text()), json.loads(src.read_text()))
    (executed_dir / src.name).write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")


def keep_executed(executed_dir: Path, src: Path, reuse_dir: Path) -> None:
    """Copy a chapter this build executed (notebook, records, written files) into `reuse_dir`;
    a chapter that read no stored result describes its build and is not kept."""
    reads = _load(executed_dir / f"{src.stem}{READS_SUFFIX}")
    if reads is None or reads["reads"] is None:
        return
    reuse_dir.mkdir(parents=True, exist_ok=True)
    _copy(executed_dir, src, reuse_dir)
    shutil.copy2(executed_dir / src.name, reuse_dir / src.name)
