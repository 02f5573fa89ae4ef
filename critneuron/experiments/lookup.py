"""Stored runs found by their config and the part of their inputs known before computing (e.g. a
score by its config and the weights' hash, without the network that picks its batch): what
`machinery.plan` counts and what a stage reads when the store lacks the checkpoint it would need."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from critneuron.config import canonical_json
from critneuron.experiments import runfiles
from critneuron.experiments.fingerprint import is_current
from critneuron.experiments.store import Store


class StoreIndex:
    """Complete runs of some kinds by config: (key, inputs, fresh) of each."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def runs(self, kind: str, config: Any, **inputs: Any) -> list[tuple[str, dict, bool]]:
        """(key, inputs, fresh) of the complete runs of `kind` with `config` whose inputs hold `inputs`."""
        found = _table(self.store.root / kind).get(canonical_json(runfiles.plain(config)), [])
        return [(key, i, fresh) for key, i, fresh in found if all(i.get(k) == v for k, v in inputs.items())]

    def matches(self, kind: str, config: Any, **inputs: Any) -> list[tuple[dict, bool]]:
        """(inputs, fresh) of `runs`."""
        return [(i, fresh) for _key, i, fresh in self.runs(kind, config, **inputs)]


_TABLES: dict[Path, tuple[int, dict[str, list[tuple[str, dict, bool]]]]] = {}


def _table(folder: Path) -> dict[str, list[tuple[str, dict, bool]]]:
    """The runs of one kind's folder by canonical config, read again only when the folder changed
    (a run published or removed there, by this process or another)."""
    stamp = folder.stat().st_mtime_ns if folder.is_dir() else -1
    cached = _TABLES.get(folder.resolve())
    if cached is None or cached[0] != stamp:
        cached = _TABLES[folder.resolve()] = (stamp, _read(folder))
    return cached[1]


def _read(folder: Path) -> dict[str, list[tuple[str, dict, bool]]]:
    table: dict[str, list[tuple[str, dict, bool]]] = {}
    for run in sorted(folder.iterdir()) if folder.is_dir() else []:
        if run.name.startswith(".") or not (run / "result.json").is_file():
            continue
        meta = json.loads((run / "meta.json").read_text())
        config = canonical_json(json.loads((run / "config.json").read_text()))
        table.setdefault(config, []).append((run.name, meta.get("inputs", {}), is_current(meta.get("code"))))
    return table


def the_fresh_run(store: Store, kind: str, config: Any, **inputs: Any) -> dict | None:
    """The `Store.read` record of the one fresh run of `kind` with `config` whose inputs hold
    `inputs`; None when there is none or more than one."""
    fresh = [key for key, _inputs, ok in StoreIndex(store).runs(kind, config, **inputs) if ok]
    return store.read(kind, fresh[0]) if len(fresh) == 1 else None
