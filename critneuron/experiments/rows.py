"""One flat table row for every pruning run, whole-network (`whole.prune_run`) or block by block
(`decoupled.decoupled_run`): the paper's table columns plus the solves' statistics."""

from __future__ import annotations

from typing import Any

SOLVE_COLUMNS = ("status", "final_point", "usable", "rounds", "unstable_units", "build_s", "solve_s", "wall_s",
                 "selfcheck_error", "selfcheck_flagged")


def solves(row: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per MIP a run solved (`SOLVE_COLUMNS`): its blocks (a failed one with None where
    nothing is known), or its one whole-network MIP (always used; flagged above `selfcheck_tol`)."""
    if "blocks" in row:
        return [{k: block.get(k) for k in SOLVE_COLUMNS} for block in row["blocks"]]
    seconds = row["seconds"]
    return [{"status": row["solver"]["status"], "final_point": row["solver"].get("final_point"), "usable": True,
             "rounds": row["solver"]["rounds"],
             "unstable_units": row["unstable_units"], "build_s": seconds["build"], "solve_s": seconds["solve"],
             "wall_s": seconds["bounds"] + seconds["build"] + seconds["solve"],
             "selfcheck_error": row["selfcheck_error"],
             "selfcheck_flagged": row["selfcheck_error"] > row["config"]["score"]["selfcheck_tol"]}]


def _known(mips: list[dict[str, Any]], column: str) -> list:
    return [m[column] for m in mips if m[column] is not None]


def table_row(row: dict[str, Any]) -> dict[str, Any]:
    """Flat summary of a run: configuration, accuracies (reference, pruned, random and critical at the
    same per-layer counts, fine-tuned when done), pruned shares and sizes, and the solves' totals
    (times summed over the MIPs with a solve, the largest round count and self-check error, `status` the
    first non-optimal one, how many MIPs are flagged by the self-check and how many are not used)."""
    cfg, stats, mips = row["config"], row["stats"], solves(row)
    statuses = [m["status"] for m in mips]
    out = {
        "model": cfg["model"]["name"], "width": cfg["model"]["width"], "dataset": cfg["data"]["dataset"],
        "training": row.get("training", "end-to-end"), "mode": cfg["score"]["mode"],
        "block_bounds": cfg["score"].get("block_bounds") if "blocks" in row else None,
        "lambda": cfg["score"]["lambda_"], "tau": row["threshold"], "B": cfg["score"]["batch_size"],
        "epochs": cfg["train"]["epochs"], "seed": cfg["train"]["seed"],
        "ref_test_acc": row["reference"]["test"]["accuracy"], "pruned_test_acc": row["pruned"]["test"]["accuracy"],
        "random_test_acc": row["random"]["test"]["accuracy"], "critical_test_acc": row["critical"]["test"]["accuracy"],
        "random_rule": cfg["prune"].get("random_rule", "uniform"),
        "ref_train_acc": row["reference"]["train"]["accuracy"], "pruned_train_acc": row["pruned"]["train"]["accuracy"],
        "pct_neurons_pruned": stats["pct_neurons_pruned"], "pct_params_pruned": stats["pct_params_pruned"],
        "params_compact": stats["params_compact"], "flops_compact": stats["flops_compact"],
        "blocks": len(mips), "status": next((s for s in statuses if s != "optimal"), "optimal"),
        "all_optimal": all(s == "optimal" for s in statuses),
        "unstable_units": sum(_known(mips, "unstable_units")),
        "build_s": sum(_known(mips, "build_s")), "solve_s": sum(_known(mips, "solve_s")),
        "wall_s_max": max(_known(mips, "wall_s"), default=None), "kelley_rounds": max(_known(mips, "rounds"), default=None),
        "selfcheck_error": max(_known(mips, "selfcheck_error"), default=None),
        "selfcheck_flagged": sum(bool(m["selfcheck_flagged"]) for m in mips),
        "unused_mips": sum(not m["usable"] for m in mips), "train_s": row.get("train_seconds"),
        "source": row["source"],
    }
    if "finetuned" in row:
        out["finetuned_test_acc"] = row["finetuned"]["test"]["accuracy"]
    return out
