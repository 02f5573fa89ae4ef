"""Tables and plots the chapters share, so notebooks stay thin: pruning-run tables from sweeps,
mean ± std tables, accuracy bars, long frames of scores, and the summary columns of a pruning run
(`experiments.rows.table_row`)."""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from critneuron.experiments.rows import table_row
from critneuron.experiments.store import Store
from critneuron.experiments.whole import prune_sweep
from critneuron.machinery.sweep import collect
from critneuron.machinery.sweepfile import parse_sweep

SUMMARY_COLUMNS = ("model", "width", "dataset", "training", "seed", "mode", "tau", "ref_test_acc",
                   "pruned_test_acc", "pct_neurons_pruned", "pct_params_pruned", "random_test_acc",
                   "critical_test_acc", "finetuned_test_acc", "unstable_units", "build_s", "solve_s",
                   "kelley_rounds", "status", "selfcheck_error", "source")
ACCURACY_COLUMNS = ("ref_test_acc", "pruned_test_acc", "random_test_acc", "critical_test_acc",
                    "finetuned_test_acc")


def sweep_rows(store: Store, base: dict[str, Any], grid: dict[str, list] | None = None,
               items: list[dict[str, Any]] | None = None) -> list[dict]:
    """The stored (or newly run) whole-network pruning runs of a sweep (`experiments.whole.prune_sweep`)."""
    return collect(parse_sweep(prune_sweep(base, grid, items)), store)


def run_table(rows: Sequence[dict]) -> pd.DataFrame:
    """One `table_row` per run (whole-network or decoupled)."""
    return pd.DataFrame([table_row(row) for row in rows])


def present(table: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The `columns` that `table` has, in order (e.g. fine-tuning columns only when fine-tuned)."""
    return [c for c in columns if c in table.columns]


def mean_std(table: pd.DataFrame, by: Sequence[str], columns: Sequence[str], digits: int = 2) -> pd.DataFrame:
    """'mean ± std' strings of `columns` per group of `by` (std 0 for a single run), indexed by `by`."""
    stats = table.groupby(list(by), sort=False)[list(columns)].agg(["mean", "std"])
    fmt = f"{{:.{digits}f}}".format
    return pd.DataFrame({c: stats[(c, "mean")].map(fmt) + " ± " + stats[(c, "std")].fillna(0).map(fmt)
                         for c in columns})


def accuracy_frame(table: pd.DataFrame, y: str = "run", columns: Sequence[str] = ACCURACY_COLUMNS) -> pd.DataFrame:
    """Long frame (`y`, network, test accuracy) of a run table's accuracy columns ('_test_acc' dropped)."""
    acc = table.melt(id_vars=[y], value_vars=present(table, columns), var_name="network",
                     value_name="test accuracy")
    acc["network"] = acc["network"].str.replace("_test_acc", "")
    return acc


def accuracy_bars(long: pd.DataFrame, y: str = "run", x: str = "test accuracy", hue: str = "network",
                  hue_order: Sequence[str] | None = None, **legend: Any) -> plt.Axes:
    """Horizontal bars of accuracies in [0, 1], one group per `y` and one bar per `hue` (mean and CI over seeds)."""
    ax = sns.barplot(data=long, y=y, x=x, hue=hue, hue_order=hue_order, orient="h")
    ax.set_xlim(0, 1)
    ax.legend(**{"loc": "lower left", "fontsize": 8, **legend})
    return ax


def score_frame(labels: Sequence[str], rows: Sequence[dict], seed: int) -> pd.DataFrame:
    """Long frame (run, layer, score) of every neuron's score in the runs trained with `seed`;
    `labels[i]` names `rows[i]` (a `table_row` source row)."""
    return pd.DataFrame([
        {"run": label, "layer": layer, "score": s}
        for label, row in zip(labels, rows) if row["config"]["train"]["seed"] == seed
        for layer, values in row["scores"].items() for s in values
    ])
