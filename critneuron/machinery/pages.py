"""What every chapter page shows besides its evidence: the provenance line under the title, the
"Settings of this build" box and the findings that open the chapter.

A chapter reads its results through a `RecordingStore`, which notes the code record of every
stored run it reads; its last cell calls `finish`, which glues (MyST-NB ``glue``) the provenance
line, including whether every one of those runs is fresh (`experiments.fingerprint.is_current`),
and the findings. The chapter's first markdown cell pastes both under the title.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from IPython.display import Markdown
from myst_nb import glue

from critneuron.experiments.fingerprint import is_current
from critneuron.experiments.store import Store
from critneuron.machinery.book import read_provenance
from critneuron.machinery.reuse import record_reads
from critneuron.machinery.reporting import styled

INTERACTIVE = "interactive"
PROVENANCE_FILE = "provenance.md"


class RecordingStore(Store):
    """A `Store` that remembers the code record of every run read through it (chapters' provenance)."""

    def __init__(self, root: Any = None) -> None:
        super().__init__(root)
        self.runs_read: dict[tuple[str, str], dict | None] = {}

    def read(self, kind: str, key: str) -> dict:
        """`Store.read`, noting the run's code record."""
        run = super().read(kind, key)
        self.runs_read[(kind, key)] = run["meta"].get("code")
        return run

    def freshness(self) -> tuple[int, int]:
        """(runs read, of which fresh: computed by today's code)."""
        return len(self.runs_read), sum(is_current(code) for code in self.runs_read.values())


def _build(profile: str, output_dir: str) -> dict | None:
    """The provenance of the book build this page belongs to; None for a run by hand."""
    if profile == INTERACTIVE:
        return None
    try:
        provenance = read_provenance(output_dir)
    except FileNotFoundError:
        return None
    return provenance if provenance["profile"] == profile else None


def _commit(text: str | None) -> str:
    if not text:
        return "unknown commit"
    return f"commit `{text[:10]}{'-dirty' if text.endswith('-dirty') else ''}`"


def freshness(store: RecordingStore | None) -> str:
    """Whether every stored result a page read is fresh (a page without a store reads this build's tables)."""
    if store is None:
        return "from the tables the chapters of this build saved"
    total, fresh = store.freshness()
    if total == fresh:
        return f"all {total:,} stored results on this page fresh (computed by this code)"
    return f"**{total - fresh:,} of {total:,} stored results on this page stale** (computed by older code)"


def provenance_line(profile: str, output_dir: str | Path, tail: str) -> str:
    """One line: profile, commit and date of the build, then `tail` (e.g. `freshness`)."""
    build = _build(profile, str(output_dir))
    if build is None:
        head = f"Profile **{profile}** (run by hand, not by `critneuron book`)"
    else:
        date = build["date"].replace("T", " ")[:16] + " UTC"
        head = f"Profile **{profile}** · {_commit(build['git_commit'])} · built {date}"
    return f"{head} · {tail}."


def write_static_provenance(profile: str, output_dir: str | Path) -> Path:
    """Write ``provenance.md``, the line the book's static pages (introduction, deviations, ...) include
    under their title: the build's profile, commit and date."""
    path = Path(output_dir) / PROVENANCE_FILE
    path.write_text(provenance_line(profile, output_dir, "the results on these pages come from that build") + "\n")
    return path


def settings_table(profile: str, notebook: str, output_dir: str) -> pd.DataFrame:
    """The parameters the profile set for this notebook (name, value), as `critneuron book` injected them."""
    build = _build(profile, output_dir)
    if build is None:
        return pd.DataFrame({"Parameter": ["profile"], "Value": [f"{profile}: the parameters cell's defaults"]})
    values = build["parameters"].get(notebook, {})
    text = {name: ", ".join(map(str, v)) if isinstance(v, list) else str(v) for name, v in values.items()}
    return pd.DataFrame({"Parameter": ["profile", *text], "Value": [profile, *text.values()]})


def settings(profile: str, notebook: str, output_dir: str) -> None:
    """Glue the "Settings of this build" table as ``settings``."""
    glue("settings", styled(settings_table(profile, notebook, output_dir)), display=False)


def finish(profile: str, notebook: str, output_dir: str, store: RecordingStore | None,
           findings: Sequence[str]) -> None:
    """Glue the page's ``provenance`` line and its ``findings`` (one bullet each), and note which
    stored results it read (`machinery.reuse`); call it last."""
    glue("provenance", Markdown(provenance_line(profile, output_dir, freshness(store))), display=False)
    glue("findings", Markdown("\n".join(f"- {line}" for line in findings)), display=False)
    if profile != INTERACTIVE:
        record_reads(output_dir, notebook, None if store is None else list(store.runs_read))
