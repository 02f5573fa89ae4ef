"""Stored runs found by their config and the part of their inputs known before computing (e.g. a
score by its config and the weights' hash, without the network that picks its batch): what
`machinery.plan` counts and what a stage reads when the store lacks the checkpoint it would need."""

from __future__ import annotations

import json
from typing import Any

from critneuron.config import canonical_json
from critneuron.experiments import runfiles
from critneuron.experiments.fingerprint import is_current
from critneuron.experiments.store import Store


class StoreIndex:
    """Complete runs of some kinds by config, read once: (key, inputs, fresh) of each."""

    def __init__(self, store: Store) -> None:
        self.store, self._kinds = store, {}

    def runs(self, kind: str, config: Any, **inputs: Any) -> list[tuple[str, dict, bool]]:
        """(key, inputs, fresh) of the complete runs of `kind` with `config` whose inputs hold `inputs`."""
        if kind not in self._kinds:
            self._kinds[kind] = self._read(kind)
        found = self._kinds[kind].get(canonical_json(runfiles.plain(config)), [])
        return [(key, i, fresh) for key, i, fresh in found if all(i.get(k) == v for k, v in inputs.items())]

    def matches(self, kind: str, config: Any, **inputs: Any) -> list[tuple[dict, bool]]:
        """(inputs, fresh) of `runs`."""
        return [(i, fresh) for _key, i, fresh in self.runs(kind, config, **inputs)]

    def _read(self, kind: str) -> dict[str, list[tuple[str, dict, bool]]]:
        table: dict[str, list[tuple[str, dict, bool]]] = {}
        folder = self.store.root / kind
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
