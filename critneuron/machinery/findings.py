"""The findings that open each chapter, computed from the chapter's results (never typed by hand),
their numbers written as the tables below them write them (`reporting.format_value`)."""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from critneuron.machinery.reporting import NAMES, STATUS_OK, format_value

TOLERANCE = 1.0  # percentage points of test accuracy a pruned or transferred mask may lose
CHANCE = 0.1  # test accuracy of a guess: every network here has 10 outputs (`catalog.architectures`)
RUN_KEYS = ["model", "width", "dataset", "training"]


def pct(value: float) -> str:
    """A fraction as the tables print it, with its unit ('97.1 %')."""
    return f"{format_value(value, 'fraction')} %"


def points(drop: float) -> str:
    """An accuracy lost (a positive `drop` of two fractions) or gained, in percentage points ('1.3 points lost')."""
    return f"{abs(100 * drop):.1f} points {'lost' if drop >= 0 else 'gained'}"


def spelled(run: str) -> str:
    """A 'model / dataset' run label with the paper's spelling ('LeNet-5 / MNIST')."""
    return " / ".join(NAMES.get(part, part) for part in run.split(" / "))


def pairs_text(pairs: Sequence[Sequence[str]]) -> str:
    """Transfer pairs (model, A, B) as the captions name them ('FC-3: MNIST → Fashion-MNIST')."""
    return ", ".join(f"{NAMES.get(m, m)}: {NAMES.get(a, a)} → {NAMES.get(b, b)}" for m, a, b in pairs)


def run_means(table: pd.DataFrame, keys: Sequence[str] = RUN_KEYS) -> pd.DataFrame:
    """Mean of every numeric column per run (the keys present), over seeds; `drop` = ref − masked accuracy."""
    keys = [k for k in keys if k in table.columns]
    means = table.groupby(keys, sort=False).mean(numeric_only=True).reset_index()
    means["drop"] = means["ref_test_acc"] - means["pruned_test_acc"]
    means["label"] = means.apply(run_label, axis=1)
    return means


def run_label(row: pd.Series) -> str:
    """'LeNet-5 / MNIST', 'VGG-16 ×0.0625 / CIFAR-10 (decoupled)': a run as the findings name it."""
    width = f" ×{row['width']:g}" if row.get("width", 1) != 1 else ""
    training = " (decoupled)" if row.get("training") == "decoupled" else ""
    return f"{NAMES.get(row['model'], row['model'])}{width} / {NAMES.get(row['dataset'], row['dataset'])}{training}"


def _range(values: pd.Series, kind: str) -> str:
    low, high = format_value(values.min(), kind), format_value(values.max(), kind)
    return low if low == high else f"{low}–{high}"


def formulation(stable: pd.DataFrame, sizes: pd.DataFrame, solves: pd.DataFrame, epsilon: float,
                test_accuracy: float, score_difference: float | None) -> list[str]:
    """Chapter 01: stability at the paper's ε, program size, solves and the self-check."""
    at_eps = stable[stable["epsilon"] == epsilon]
    units = int(at_eps[["off", "on", "unstable"]].to_numpy().sum())
    unstable, binaries = at_eps["unstable"].sum(), sizes["binaries"].max()
    lines = [f"The network classifies {pct(test_accuracy)} of the test set. At ε = {epsilon:g}, "
             f"{format_value(unstable, 'count')} of its {format_value(units, 'count')} unit-image pairs "
             f"{'is' if unstable == 1 else 'are'} unstable, so the program has "
             f"{format_value(sizes['variables'].max(), 'count')} variables and {format_value(binaries, 'count')} "
             f"binar{'y' if binaries == 1 else 'ies'}."]
    for _, row in solves.iterrows():
        lines.append(f"{row['mode'].capitalize()} mode: {row['status']} after {row['kelley_rounds']} Kelley rounds in "
                     f"{format_value(row['solve_s'], 'seconds')} s; torch reproduces its logits to "
                     f"{format_value(row['selfcheck_error'], 'sci')}.")
    if score_difference is not None:
        lines.append(f"The two modes' scores differ by at most {score_difference:.3g}.")
    return lines


def pruning(runs: pd.DataFrame, budget: pd.DataFrame, flips: pd.DataFrame) -> list[str]:
    """Chapter 02: accuracy after pruning at τ, baselines, the budget curves, vertex vs interior."""
    means = run_means(runs)
    close = means["drop"] <= TOLERANCE / 100
    worst = means.loc[means["drop"].idxmax()]
    lines = [f"Without fine-tuning, the MIP masks remove {_range(means['pct_neurons_pruned'], 'percent')} % of the "
             f"neurons ({_range(means['pct_params_pruned'], 'percent')} % of the parameters); the masked accuracy is within "
             f"{TOLERANCE:g} point of the reference in {close.sum()} of {len(means)} runs (worst: "
             f"{points(worst['drop'])}, {worst['label']}).",
             f"At the same per-layer counts, random masks reach {pct(means['random_test_acc'].mean())} and critical ones "
             f"{pct(means['critical_test_acc'].mean())} on average, against {pct(means['pruned_test_acc'].mean())} for "
             "the MIP."]
    for run, curve in budget.groupby("run", sort=False):
        row = curve.loc[(curve["pct_neurons_pruned"] - 50).abs().idxmin()]
        others = row.drop(["run", "tau", "pct_neurons_pruned", "mip"]).astype(float)
        lines.append(f"Budget sweep of {spelled(run)}: at τ = {row['tau']:g} ({format_value(row['pct_neurons_pruned'], 'percent')} "
                     f"% of neurons pruned) the MIP mask keeps {pct(row['mip'])}; the best baseline there, "
                     f"{others.idxmax()}, {pct(others.max())}.")
    changed = flips[flips["units_changing_side"] > 0]
    lines.append(f"Vertex and interior scores give the same mask in {len(flips) - len(changed)} of {len(flips)} runs"
                 + ("." if changed.empty else f"; the most units changing side: "
                    f"{format_value(changed['units_changing_side'].max(), 'count')}."))
    return lines


def decoupled(runs: pd.DataFrame, blocks: pd.DataFrame, agreement: pd.DataFrame | None,
              times: pd.DataFrame | None) -> list[str]:
    """Chapter 03: each decoupled run's pruning, the sub-programs' statuses and times, agreement with the
    whole-network program."""
    lines = [f"{row['label']}: {format_value(row['pct_neurons_pruned'], 'percent')} % of neurons pruned, masked "
             f"accuracy {pct(row['pruned_test_acc'])} against {pct(row['ref_test_acc'])} for the reference."
             for _, row in run_means(runs).iterrows()]
    optimal = blocks["status"] == STATUS_OK
    slowest = blocks.loc[blocks["wall_s"].idxmax()]
    other = sorted(set(blocks.loc[~optimal, "status"]))
    lines.append(f"{optimal.sum()} of {len(blocks)} sub-programs solved to optimality"
                 + (f" (the others: {', '.join(other)})" if other else "") + f"; the slowest, {slowest['block']} of "
                 f"{slowest['run']}, took {format_value(slowest['wall_s'], 'seconds')} s.")
    if agreement is not None and times is not None:
        seconds = dict(zip(times["method"], times["seconds"]))
        lines.append(f"On the same network and batch, the decoupled and whole-network masks agree on "
                     f"{_range(agreement['agreement'], 'fraction')} % of each layer's units; the whole-network program "
                     f"took {format_value(seconds['whole'], 'seconds')} s, the decoupled ones "
                     f"{format_value(seconds['decoupled'], 'seconds')} s.")
    return lines


def transfer_means(runs: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy on B per pair (model, source, target, at_init) and variant, means over seeds."""
    keys = ["model", "source", "target", "at_init"]
    return runs.groupby([*keys, "variant"], sort=False)["test_accuracy"].mean().unstack("variant").reset_index()


def generalization(runs: pd.DataFrame) -> list[str]:
    """Chapter 04: the transferred MIP masks against the dense reference and the other masks."""
    pairs = transfer_means(runs[~runs["at_init"].astype(bool)])
    gap = pairs["reference"] - pairs["mip"]
    lines = [f"Trained on the target dataset, the MIP mask is within {TOLERANCE:g} point of the dense reference in "
             f"{(gap <= TOLERANCE / 100).sum()} of {len(pairs)} pairs (worst: {points(gap.max())}); it beats "
             f"the random mask of the same counts in {(pairs['mip'] > pairs['random']).sum()} and our SNIP mask in "
             f"{(pairs['mip'] > pairs['snip']).sum()} of {len(pairs)}."]
    lines += [_shortfall(pair, runs) for _, pair in pairs[gap > TOLERANCE / 100].iterrows()]
    at_init = transfer_means(runs[runs["at_init"].astype(bool)])
    if not at_init.empty:
        lines.append(f"Pruning at initialisation: the MIP mask reaches {_range(at_init['mip'], 'fraction')} % on the "
                     f"targets, SNIP-authors {_range(at_init['snip-authors'], 'fraction')} %.")
    return lines


MASK_NAMES = {"mip": "the MIP mask", "random": "the random mask", "snip": "our SNIP mask",
              "snip-authors": "the authors' SNIP mask"}


def _shortfall(pair: pd.Series, runs: pd.DataFrame) -> str:
    """One transfer pair whose MIP mask loses more than the tolerance, every mask's accuracy named."""
    rows = runs[(runs["model"] == pair["model"]) & (runs["source"] == pair["source"])
                & (runs["target"] == pair["target"]) & (runs["variant"] == "mip")]
    reached = f"retrains to chance ({pct(pair['mip'])})" if pair["mip"] <= CHANCE + TOLERANCE / 100 \
        else f"reaches {pct(pair['mip'])}"
    lr = f" at lr {rows['lr'].iloc[0]:g}" if "lr" in rows and rows["lr"].notna().any() else ""
    others = ", ".join(f"{MASK_NAMES[variant]} {pct(pair[variant])}" for variant in ("random", "snip", "snip-authors")
                       if variant in pair)
    return (f"{pairs_text([(pair['model'], pair['source'], pair['target'])])}: the MIP mask {reached}{lr}, "
            f"against {pct(pair['reference'])} for the dense reference; masks of the same counts: {others}.")


def lr_control(rows: pd.DataFrame) -> list[str]:
    """Chapter 04's control of the transfer's learning rate: each mask's accuracy at each rate."""
    if rows.empty:  # skipped: no columns either
        return []
    lines = []
    for (model, source, target, seed), pair in rows.groupby(["model", "source", "target", "seed"], sort=False):
        masks = [f"{MASK_NAMES.get(variant, variant)} " + ", ".join(
            f"{pct(r.test_accuracy)} at lr {r.lr:g}" for r in group.sort_values("lr", ascending=False).itertuples())
            for variant, group in pair.groupby("variant", sort=False)]
        lines.append(f"Learning-rate control, {pairs_text([(model, source, target)])}, seed {seed}: "
                     + "; ".join(masks) + ".")
    return lines


def sensitivity(by_lambda: pd.DataFrame, by_tau: pd.DataFrame, by_batch: pd.DataFrame) -> list[str]:
    """Chapter 05: what λ, τ and the MIP batch change."""
    lines = []
    for name, table, column in (("λ", by_lambda, "lambda"), ("τ", by_tau, "tau")):
        lines.append(f"Over {name} from {table[column].min():g} to {table[column].max():g}, the MIP prunes "
                     f"{_range(table['pct_neurons_pruned'], 'percent')} % of neurons and the masked accuracy is "
                     f"{_range(table['pruned_test_acc'], 'fraction')} % (reference {pct(table['ref_test_acc'].iloc[0])}).")
    for size, draws in by_batch.groupby("B"):
        lines.append(f"B = {size}, {len(draws)} batch draws: {format_value(draws['pct_neurons_pruned'].mean(), 'percent')} "
                     f"± {format_value(draws['pct_neurons_pruned'].std(), 'percent')} % of neurons pruned, masked accuracy "
                     f"{_range(draws['pruned_test_acc'], 'fraction')} %.")
    return lines
