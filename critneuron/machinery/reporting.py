"""Tables and plots the chapters share, so notebooks stay thin: pruning-run tables from sweeps,
mean ± std tables, accuracy bars, long frames of scores, the summary columns of a pruning run
(`experiments.rows.table_row`), and the book's one table and figure style (`show`, `set_style`,
`glue_figure`)."""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import HTML, Markdown
from myst_nb import glue
from pandas.io.formats.style import Styler

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


def over_seeds(table: pd.DataFrame, by: str, columns: Sequence[str]) -> pd.DataFrame:
    """Per value of `by` (sorted): the mean of each of `columns` over its runs, and their standard
    deviation as `<column>_std` (0 for a single run); for curves with error bars."""
    stats = table.groupby(by)[list(columns)].agg(["mean", "std"])
    out = pd.DataFrame({c: stats[(c, "mean")] for c in columns})
    for c in columns:
        out[f"{c}_std"] = stats[(c, "std")].fillna(0)
    return out.reset_index()


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
    ax.legend(**{"loc": "upper left", "bbox_to_anchor": (1.01, 1), "fontsize": 8, **legend})
    return ax


def score_frame(labels: Sequence[str], rows: Sequence[dict], seed: int) -> pd.DataFrame:
    """Long frame (run, layer, score) of every neuron's score in the runs trained with `seed`;
    `labels[i]` names `rows[i]` (a `table_row` source row)."""
    return pd.DataFrame([
        {"run": label, "layer": layer, "score": s}
        for label, row in zip(labels, rows) if row["config"]["train"]["seed"] == seed
        for layer, values in row["scores"].items() for s in values
    ])


# The book's one table style: each known column's header (the paper's names, PAPER_SPEC §10.3,
# units in the header) and how its values are written (`FORMATS`).
COLUMNS: dict[str, tuple[str, str]] = {
    "dataset": ("Dataset", "name"), "model": ("Model", "name"), "width": ("Width", "number"),
    "training": ("Training", "text"), "run": ("Run", "text"), "mode": ("Mode", "text"),
    "tau": ("τ", "number"), "lambda": ("λ", "number"), "B": ("B", "count"), "seed": ("Seed", "count"),
    "epochs": ("Epochs", "count"), "seeds": ("Seeds", "count"), "layer": ("Layer", "text"),
    "ref_test_acc": ("Ref. test acc %", "fraction"), "pruned_test_acc": ("Masked test acc %", "fraction"),
    "pct_neurons_pruned": ("Neurons pruned %", "percent"), "pct_params_pruned": ("Pruning % (params)", "percent"),
    "finetuned_test_acc": ("Fine-tuned acc %", "fraction"), "solve_s": ("Solve time (s)", "seconds"),
    "random_test_acc": ("Random acc %", "fraction"), "critical_test_acc": ("Critical acc %", "fraction"),
    "test_accuracy": ("Test acc %", "fraction"), "test accuracy": ("Test acc %", "fraction"),
    "unstable_units": ("Unstable units", "count"), "unstable": ("Unstable units", "count"),
    "on": ("Stable on", "count"), "off": ("Stable off", "count"), "epsilon": ("ε", "number"),
    "neurons": ("Units", "count"), "pct_pruned": ("Pruned %", "percent"), "agreement": ("Agreement %", "fraction"),
    "jaccard": ("Jaccard index", "number"), "method": ("Method", "text"), "source": ("Source", "name"),
    "target": ("Target B", "name"), "variant": ("Mask", "text"), "at_init": ("At init", "text"),
    "block": ("Block", "text"), "layers": ("Layers", "text"), "program": ("Program", "text"),
    "params_compact": ("Parameters after compaction", "count"), "flops_compact": ("FLOPs after compaction", "count"),
    "units": ("Units", "count"), "pruned": ("Pruned", "count"), "kept": ("Kept", "count"),
    "variables": ("Variables", "count"), "binaries": ("Binaries", "count"), "constraints": ("Constraints", "count"),
    "nonzeros": ("Nonzeros", "count"), "build_s": ("Build time (s)", "seconds"), "wall_s": ("Wall time (s)", "seconds"),
    "wall_s_max": ("Slowest block (s)", "seconds"), "train_s": ("Training time (s)", "seconds"),
    "train_seconds": ("Training time (s)", "seconds"), "seconds": ("Time (s)", "seconds"),
    "kelley_rounds": ("Kelley rounds", "count"), "rounds": ("Kelley rounds", "count"),
    "objective": ("Objective", "number"), "gap": ("Gap", "sci"), "selfcheck_error": ("Self-check error", "sci"),
    "status": ("Solve status", "status"), "lr": ("Learning rate", "number"),
    "units_changing_side": ("Units changing side of τ", "count"),
    "max_abs_score_difference": ("Largest score difference", "number"),
    "objective_difference": ("Objective difference", "sci"), "interior_point": ("Final point", "text"),
    "final_point": ("Final point", "text"), "usable": ("Scores used", "text"),
    "selfcheck_flagged": ("Self-check flagged", "text"), "block_bounds": ("Block input box", "text"),
    "solve_s_vertex": ("Solve time, vertex (s)", "seconds"), "solve_s_interior": ("Solve time, interior (s)", "seconds"),
}
COLUMNS.update({method: (f"{method} acc %", "fraction") for method in (  # per pruning method or mask (02, 04)
    "mip", "random", "critical", "magnitude-l1", "magnitude-l2", "snip", "snip-authors", "activation", "reference")})
STATUS_OK = "optimal"
NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "fc3": "FC-3", "fc4": "FC-4",
         "lenet5": "LeNet-5", "vgg16": "VGG-16"}  # the paper's spelling of datasets and models


def _seconds(v: float) -> str:
    return f"{v:.1f}" if abs(v) < 10 else f"{v:,.0f}"


def _number(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.1e}" if 0 < abs(v) < 1e-3 else f"{v:.3g}"


FORMATS = {
    "fraction": lambda v: f"{100 * v:.1f}", "percent": lambda v: f"{v:.1f}", "count": lambda v: f"{v:,.0f}",
    "seconds": _seconds, "number": _number, "sci": lambda v: f"{v:.1e}",
}


def format_value(value: Any, kind: str) -> str:
    """One value as the book writes it: `kind` is a `FORMATS` key, or name (a dataset or model in the
    paper's spelling, `NAMES`), or text and status (as is); missing: '–'.

    Example:
        >>> format_value(0.97134, "fraction"), format_value(12345, "count")
        ('97.1', '12,345')
    """
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if kind == "name":
        return NAMES.get(str(value), str(value))
    if kind not in FORMATS or isinstance(value, str):
        return str(value)
    return FORMATS[kind](float(value))


def column_kind(name: str, values: pd.Series) -> str:
    """The format of a column: from `COLUMNS`, else 'number' when numeric, else 'text'."""
    if name in COLUMNS:
        return COLUMNS[name][1]
    return "number" if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values) else "text"


def _cell(values: pd.Series, kind: str) -> str:
    """A group's cell: the value of one run, or 'mean ± std' of several (the first non-optimal status)."""
    if kind == "status":
        return next((s for s in values if s != STATUS_OK), STATUS_OK)
    if len(values) == 1 or kind in ("text", "name"):
        return format_value(values.iloc[0], kind)
    return f"{format_value(values.mean(), kind)} ± {format_value(values.std(), kind)}"


def paper_table(table: pd.DataFrame, columns: Sequence[str], by: Sequence[str] = ()) -> pd.DataFrame:
    """`columns` of `table` as the book prints them: formatted strings under the paper's headers.

    With `by`, one row per group (its runs: seeds), each value 'mean ± std' when the group has
    more than one run. The status column is left out when every solve is optimal.
    """
    columns = [c for c in present(table, columns) if c not in by]
    if "status" in columns and (table["status"] == STATUS_OK).all():
        columns.remove("status")
    kinds = {c: column_kind(c, table[c]) for c in [*by, *columns]}
    if by:
        groups = table.groupby(list(by), sort=False, dropna=False)
        rows = [{**dict(zip(by, key if isinstance(key, tuple) else (key,))),
                 **{c: _cell(group[c], kinds[c]) for c in columns}} for key, group in groups]
        out = pd.DataFrame(rows)
        for c in by:
            out[c] = out[c].map(lambda v, k=kinds[c]: format_value(v, k))
    else:
        out = pd.DataFrame({c: table[c].map(lambda v, k=kinds[c]: _cell(pd.Series([v]), k)) for c in columns})
    return out[[*by, *columns]].rename(columns={c: COLUMNS[c][0] for c in out.columns if c in COLUMNS})


def styled(table: pd.DataFrame, wrap: bool = False) -> Styler:
    """A `paper_table` as HTML: no index, non-optimal solve statuses highlighted (the book's CSS
    scrolls a wide table inside its own box); `wrap` for tables of sentences (left-aligned, wrapped)."""
    status = COLUMNS["status"][0]
    style = Styler(table, cell_ids=False).hide(axis="index").set_table_attributes(
        f'class="critneuron-table{" wrap" if wrap else ""}"')
    if status in table.columns:
        style = style.map(lambda s: "" if s == STATUS_OK else "background-color: #fde2e1; font-weight: bold",
                          subset=[status])
    return style


def show(table: pd.DataFrame, columns: Sequence[str] | None = None, by: Sequence[str] = ()) -> Styler:
    """The book's table of `table`: `paper_table` (every column when `columns` is None), `styled`.

    Example:
        >>> show(runs, ["ref_test_acc", "pruned_test_acc"], by=["model", "dataset"])  # doctest: +SKIP
    """
    return styled(paper_table(table, list(table.columns) if columns is None else columns, by))


def folded(table: pd.DataFrame, title: str, columns: Sequence[str] | None = None,
           max_rows: int | None = None) -> HTML:
    """`show(table, columns)` folded under one line naming it and its row count (a long table that
    backs a figure or a summary table); with `max_rows`, only its first `max_rows` rows."""
    rows = f"{len(table):,} rows"
    if max_rows is not None and len(table) > max_rows:
        rows += f", the first {max_rows:,} shown"
        table = table.head(max_rows)
    return HTML(f"<details class=\"critneuron-folded\"><summary><strong>{title}</strong> ({rows})"
                f"</summary>{show(table, columns).to_html()}</details>")


def set_style() -> None:
    """The book's one figure style (seaborn theme, sizes); every chapter calls it once."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind", font_scale=0.9)
    plt.rcParams.update({"figure.dpi": 110, "savefig.bbox": "tight"})


def glue_figure(name: str, figure: plt.Figure | Any, runs: str) -> None:
    """Hand a figure (or a seaborn grid, or axes) to the book as `name`, with ``<name>_runs``, the runs
    and profile it shows, for its caption; then close it. The chapter shows it with a numbered
    ``{glue:figure}`` and its caption, never as a bare cell output."""
    figure = getattr(figure, "figure", figure)
    glue(name, figure, display=False)
    glue(f"{name}_runs", Markdown(runs), display=False)
    plt.close(figure)
