"""The verdict on each of the paper's claims, computed from the tables the chapters saved in this
build (`book.read_tables`), and the Markdown table the introduction includes (`VERDICTS_FILE`).

The rule (`RULE`): a claim *holds* when its test passes in every row (each model and dataset,
means over seeds), *partly* when in some rows, *not reproduced* when in none, and is *not tested
at these settings* when the build has no row for it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from critneuron.config import ScoreConfig
from critneuron.machinery.findings import TOLERANCE, points, run_means, transfer_means
from critneuron.machinery.reporting import NAMES, STATUS_OK, format_value

SELFCHECK_TOL = ScoreConfig().selfcheck_tol  # largest difference between the program's logits and torch's
HOLDS, PARTLY, NOT_REPRODUCED, NOT_TESTED = "holds", "partly", "not reproduced", "not tested at these settings"
RULE = (f"*holds*: the test passes in every row (each model and dataset, means over seeds); *partly*: in some rows; "
        f"*not reproduced*: in none; *not tested at these settings*: this build has no row for it. Accuracy tests "
        f"allow a loss of at most {TOLERANCE:g} percentage point against the dense reference.")
VERDICTS_FILE = "verdicts.md"
COLUMNS = ("Claim", "Test", "Verdict", "Numbers behind it", "Shown in")


def verdict(passed: pd.Series) -> str:
    """The rule applied to one claim's per-row test results."""
    if passed.empty:
        return NOT_TESTED
    return HOLDS if passed.all() else PARTLY if passed.any() else NOT_REPRODUCED


def _program(tables: dict[str, pd.DataFrame]) -> tuple[pd.Series, str]:
    solves = [t for t in (tables.get("01_formulation__solves"), tables.get("02_pruning__pruning_runs")) if t is not None]
    if not solves:
        return pd.Series(dtype=bool), "–"
    rows = pd.concat([t[["status", "selfcheck_error"]] for t in solves], ignore_index=True)
    passed = (rows["status"] == STATUS_OK) & (rows["selfcheck_error"] <= SELFCHECK_TOL)
    return passed, (f"{passed.sum()} of {len(rows)} programs optimal and self-checked; largest self-check error "
                    f"{format_value(rows['selfcheck_error'].max(), 'sci')}")


def _accuracy(means: pd.DataFrame, what: str) -> tuple[pd.Series, str]:
    if means.empty:
        return pd.Series(dtype=bool), "–"
    passed = means["drop"] <= TOLERANCE / 100
    worst = means.loc[means["drop"].idxmax()]
    return passed, (f"{what} within {TOLERANCE:g} point in {passed.sum()} of {len(means)}; worst "
                    f"{points(worst['drop'])} ({worst['label']})")


def _pruning(tables: dict[str, pd.DataFrame]) -> tuple[pd.Series, str]:
    runs = tables.get("02_pruning__pruning_runs")
    return _accuracy(pd.DataFrame() if runs is None else run_means(runs), "masked accuracy")


def _transfer(tables: dict[str, pd.DataFrame]) -> tuple[pd.Series, str]:
    runs = tables.get("04_generalization__transfer_runs")
    if runs is None:
        return pd.Series(dtype=bool), "–"
    pairs = transfer_means(runs[~runs["at_init"].astype(bool)])
    pairs["drop"] = pairs["reference"] - pairs["mip"]
    pairs["label"] = [f"{NAMES.get(m, m)}: {NAMES.get(a, a)} → {NAMES.get(b, b)}"
                      for m, a, b in zip(pairs["model"], pairs["source"], pairs["target"])]
    return _accuracy(pairs, "retrained MIP mask")


def _decoupled(tables: dict[str, pd.DataFrame]) -> tuple[pd.Series, str]:
    runs, blocks = tables.get("03_decoupled__decoupled_pruning"), tables.get("03_decoupled__blocks")
    if runs is None or blocks is None or not (runs["model"] == "vgg16").any():
        return pd.Series(dtype=bool), "no VGG-16 in this build"
    means = run_means(runs[runs["model"] == "vgg16"])
    vgg = blocks[blocks["run"].str.startswith("vgg16")]
    optimal = vgg["status"] == STATUS_OK
    passed, text = _accuracy(means, "masked accuracy")
    passed &= bool(optimal.all())
    return passed, (f"{optimal.sum()} of {len(vgg)} VGG-16 sub-programs optimal, slowest "
                    f"{format_value(vgg['wall_s'].max(), 'seconds')} s; {text}")


CLAIMS = (  # claim, its test, how it is computed, where the chapter shows it
    ("Neuron importance is the solution of one program", "every program of chapters 01–02 solves to optimality and "
     f"torch reproduces its logits to {SELFCHECK_TOL:g}", _program, "01_formulation", "§5; 02 §2"),
    ("Pruning needs no fine-tuning", "masked test accuracy, no fine-tuning, against the reference", _pruning,
     "02_pruning", "§2"),
    ("Masks generalise across datasets", "the MIP mask from A retrained on B against the dense reference on B",
     _transfer, "04_generalization", "§4"),
    ("Decoupled scoring scales to VGG-16", "every VGG-16 sub-program optimal and the masked accuracy against the "
     "reference", _decoupled, "03_decoupled", "§2, §4"),
)


def verdicts(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per claim (`COLUMNS`; "Shown in" holds the chapter's notebook stem and sections)."""
    rows = []
    for claim, test, compute, chapter, sections in CLAIMS:
        passed, numbers = compute(tables)
        rows.append(dict(zip(COLUMNS, (claim, test, verdict(passed), numbers, f"{chapter} {sections}"))))
    return pd.DataFrame(rows)


def verdict_markdown(table: pd.DataFrame, provenance: dict, link_prefix: str = "_build/executed/") -> str:
    """The verdict table as Markdown with links to the chapters, the profile and the rule under it."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for _, row in table.iterrows():
        chapter, sections = row["Shown in"].split(" ", 1)
        link = f"[{chapter.split('_', 1)[0]} {sections}]({link_prefix}{chapter}.ipynb)"
        lines.append(f"| {row['Claim']} | {row['Test']} | **{row['Verdict']}** | {row['Numbers behind it']} | {link} |")
    commit = (provenance.get("git_commit") or "unknown")[:10]
    lines += ["", f"Computed from the results of profile **{provenance['profile']}** (commit `{commit}`, built "
              f"{provenance['date'][:10]}). Verdict rule: {RULE}"]
    return "\n".join(lines) + "\n"


def findings(table: pd.DataFrame) -> list[str]:
    """One line per claim: its verdict and the numbers behind it (the results summary's findings)."""
    return [f"{row['Claim']}: **{row['Verdict']}** ({row['Numbers behind it']})." for _, row in table.iterrows()]


def write_verdicts(tables: dict[str, pd.DataFrame], provenance: dict, output_dir: str | Path) -> Path:
    """Write `verdict_markdown` of `verdicts(tables)` to ``<output_dir>/verdicts.md`` (the introduction includes it)."""
    path = Path(output_dir) / VERDICTS_FILE
    path.write_text(verdict_markdown(verdicts(tables), provenance))
    return path
