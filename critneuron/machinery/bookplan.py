"""The compute plan of a book profile: every chapter's stages (`machinery.plan`), built from the
profile's parameters by the same functions as the notebooks' runs (`machinery.chapters`), and
its text report (`critneuron book --profile NAME --plan`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from critneuron.catalog import model_record
from critneuron.config import RunConfig, ScoreConfig, choices, from_dict, paper_train_config
from critneuron.experiments.anatomy import anatomy_config
from critneuron.experiments.budget import METHODS, RANDOM_SEEDS, budget_config
from critneuron.experiments.decoupled import study_config
from critneuron.experiments.store import Store, versions
from critneuron.experiments.transfer import at_init_settings, at_init_source, transfer_plan
from critneuron.machinery import chapters, reuse
from critneuron.machinery.profiles import list_notebooks, load_profile, select_notebooks
from critneuron.machinery.plan import STATUSES, Planner, Stage, stage_status, split_sizes, totals
from critneuron.machinery.rates import Estimate, Rates
from critneuron.machinery.sweepfile import expand, parse_sweep


def _prune_rows(p: Planner, chapter: str, sweep: dict[str, Any]) -> list[dict]:
    """A chapter sweep's pruning rows (kind "prune"), each with its training and score; the configs."""
    parsed = parse_sweep(chapters.sweep_file(sweep))
    configs = expand(parsed)
    for config in configs:
        cfg = from_dict(RunConfig, config)
        metrics, fresh = p.train(chapter, cfg)
        p.score(chapter, cfg, metrics, fresh)
        key = p.store.key(parsed.kind, config, **versions())
        status = ("fresh" if p.store.is_fresh(parsed.kind, key, parsed.code) else
                  "stale" if p.store.is_complete(parsed.kind, key) else "missing")
        p.evaluation(chapter, cfg, "prune row", status, ("prune", key),
                     f" λ={cfg.score.lambda_:g} τ={cfg.prune.resolve(cfg.model.name, cfg.data.dataset)}"
                     f" B={cfg.score.batch_size} batch seed {cfg.score.seed}")
    return configs


def _formulation(p: Planner, chapter: str, params: dict) -> None:
    run, score_cfg = chapters.formulation_run(**params)
    metrics, fresh = p.train(chapter, run)
    weights = metrics["weights_hash"] if metrics else None
    found = p.index.matches("anatomy", anatomy_config(run, score_cfg, params["modes"]), weights=weights) if weights else []
    solves = [p.rates.solve_seconds(run.model.name, 1.0, "whole", mode, score_cfg.time_limit) for mode in params["modes"]]
    seconds = None if any(e.seconds is None for e in solves) else sum(e.seconds for e in solves)
    p.add(chapter, ("anatomy", chapter, weights or run.model.name), needs=weights, kind="anatomy",
          status=stage_status(found, fresh),
          what=f"{run.model.name} {run.data.dataset} seed {run.train.seed}: {', '.join(params['modes'])} solves",
          estimate=Estimate(seconds, " + ".join(dict.fromkeys(e.basis for e in solves))))


def _pruning(p: Planner, chapter: str, params: dict) -> None:
    configs = _prune_rows(p, chapter, chapters.pruning_sweep(**params))
    for config in configs:  # the vertex scores of the vertex/interior comparison (`whole.vertex_interior`)
        cfg = from_dict(RunConfig, config)
        metrics, fresh = p.train(chapter, cfg)
        p.score(chapter, dataclasses.replace(cfg, score=dataclasses.replace(cfg.score, final_point="vertex")),
                metrics, fresh, label=" vertex")
    evaluated = len(params["budget_taus"]) * (len(METHODS) + len(RANDOM_SEEDS) - 1)
    for cfg in chapters.budget_configs(configs, params["budget_runs"]):
        metrics, fresh = p.train(chapter, cfg)
        config = budget_config(cfg, params["budget_taus"])
        found = p.index.matches("budget", config, weights=metrics["weights_hash"]) if metrics else []
        status = ("fresh" if fresh and any(ok for _i, ok in found) else "stale" if found else "missing")
        test_images = split_sizes(cfg.data)["test"]
        estimate, _sizes = p.training_estimate(cfg.model, cfg.data, "end-to-end", 0, evaluated * test_images)
        p.add(chapter, ("budget", str(config)), kind="budget", what=f"{cfg.model.name} {cfg.data.dataset} seed "
              f"{cfg.train.seed}: {evaluated} masks × test set", status=status, estimate=estimate)


def _decoupled(p: Planner, chapter: str, params: dict) -> None:
    configs = chapters.decoupled_configs(**params)
    for cfg, training in configs:
        metrics, fresh = p.train(chapter, cfg, training)
        if training == "end-to-end":
            head_cfg = paper_train_config(cfg.model.name, cfg.data.dataset, cfg.train.epochs, cfg.train.seed)
            p.heads(chapter, cfg, head_cfg, metrics, fresh)
        blocks_fresh = p.blocks(chapter, cfg, metrics, fresh)
        weights = metrics["weights_hash"] if metrics else None
        found = p.index.matches("decoupled", study_config(cfg, training), weights=weights) if weights else []
        p.evaluation(chapter, cfg, "evaluate", stage_status(found, fresh and blocks_fresh),
                     ("evaluate", chapter, str(cfg), training), f" {training}", needs=weights)
    cfg = chapters.compared_config(configs, params["compare"])
    metrics, fresh = p.train(chapter, cfg, "decoupled")
    inputs, status = p.score(chapter, cfg, metrics, fresh, label=" (whole MIP of the decoupled net)")
    p.blocks(chapter, cfg, metrics, fresh and status == "fresh",
             batch_indices=inputs["batch_indices"] if inputs else None)
    full = chapters.full_width_config(**params)
    by_rule = [(chapters.compared_config(configs, params["compare_bounds"]), choices(ScoreConfig, "block_bounds"))]
    by_rule += [] if full is None else [(full, chapters.full_width_rules(params["full_width"]))]
    for cfg, rules in by_rule:  # scored under each of its block_bounds rules
        metrics, fresh = p.train(chapter, cfg, "decoupled")
        for rule in rules:
            p.blocks(chapter, dataclasses.replace(cfg, score=dataclasses.replace(cfg.score, block_bounds=rule)),
                     metrics, fresh)


def _transfer(p: Planner, chapter: str, params: dict) -> None:
    base = chapters.transfer_base(**params)
    for source, target in chapters.transfer_sources(base, **params):
        fresh = p.source(chapter, source)
        plan = transfer_plan(source, [target], params["epochs"])[target]
        p.retrain(chapter, source, dataclasses.replace(source.data, dataset=target), plan["retrain"], fresh)
        p.train(chapter, plan["reference"], model_record(source.model.name).training)
    for source, target in chapters.lr_control_sources(base, **params):
        control = params["lr_control"]
        retrain = transfer_plan(source, [target], params["epochs"])[target]["retrain"]
        p.retrain(chapter, source, dataclasses.replace(source.data, dataset=target),
                  dataclasses.replace(retrain, lr=control["lr"]), p.source(chapter, source),
                  masks=len(control["masks"]), control="lr")
    if params["at_init"] is None:
        return
    settings = at_init_settings(**params["at_init"])
    for seed in settings["seeds"]:
        source = at_init_source(base, seed, settings)
        metrics, fresh = p.train(chapter, source)
        _inputs, status = p.score(chapter, source, metrics, fresh, label=" at init")
        for target, plan in transfer_plan(source, settings["targets"], settings["epochs"], at_init=True).items():
            p.retrain(chapter, source, dataclasses.replace(source.data, dataset=target), plan["retrain"],
                      fresh and status == "fresh")
            p.train(chapter, plan["reference"])


def _sensitivity(p: Planner, chapter: str, params: dict) -> None:
    sweeps = chapters.sensitivity_sweeps(**params)
    for sweep in sweeps.values():
        _prune_rows(p, chapter, sweep)
    for cfg in chapters.sequential_configs(sweeps, params.get("sequential_seeds")):
        metrics, fresh = p.train(chapter, cfg)
        _inputs, status = p.score(chapter, cfg, metrics, fresh)
        p.per_class(chapter, cfg, metrics, fresh and status == "fresh")


CHAPTERS: dict[str, Callable[[Planner, str, dict], None]] = {
    "01_formulation": _formulation, "02_pruning": _pruning, "03_decoupled": _decoupled,
    "04_generalization": _transfer, "05_sensitivity": _sensitivity,
}


def book_plan(profile: str | Path, notebooks_dir: Path = Path("notebooks"), rates: Rates | None = None,
              store: Store | None = None, only: list[str] | None = None) -> list[Stage]:
    """Every stage of the profile's chapters (`only`: names as `critneuron book --only` takes
    them), against `store` (default: each chapter's `results_dir`, relative to `notebooks_dir` as
    the notebooks run)."""
    loaded = load_profile(profile, notebooks_dir)
    only = [nb.stem for nb in select_notebooks(list_notebooks(notebooks_dir), only)] if only else None
    rates = rates if rates is not None else Rates.load(Path(notebooks_dir).parent / "benchmarks" / "rates.json")
    planners: dict[str, Planner] = {}
    stages: list[Stage] = []
    for stem, params in loaded.parameters.items():
        if stem not in CHAPTERS or (only and stem not in only):
            continue
        root = store.root if store is not None else Path(notebooks_dir) / params["results_dir"]
        planner = planners.setdefault(str(root), Planner(Store(root), rates))
        CHAPTERS[stem](planner, stem, params)
    for planner in planners.values():
        stages += planner.stages
    if loaded.reuse is not None:  # a chapter whose executed copy is current runs nothing per build
        notebooks = {nb.stem: nb for nb in list_notebooks(notebooks_dir)}
        kept = {stem for stem, params in loaded.parameters.items() if stem in CHAPTERS and reuse.why_not_reusable(
            loaded.reuse, notebooks[stem], params, Path(notebooks_dir) / params["results_dir"]) is None}
        stages = [dataclasses.replace(s, status="reused") if s.status == "every build" and s.chapter in kept else s
                  for s in stages]
    return sorted(stages, key=lambda s: s.chapter)


def _hours(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 3600:.2f} h"


def format_plan(stages: list[Stage]) -> str:
    """Per chapter: a line of counts and CPU-hours to compute (and to compute it from nothing),
    then its stages that are not fresh; last the book's totals."""
    lines = []
    by_chapter = totals(stages)
    for chapter, total in by_chapter.items():
        lines.append(f"{chapter}: " + ", ".join(f"{total[k]} {k}" for k in STATUSES)
                     + f"; to compute: {_hours(total['seconds'])} CPU"
                     + (f" + {total['no_rate']} stage(s) with no rate" if total["no_rate"] else "")
                     + f" (from nothing: {_hours(total['whole_seconds'])})")
        for s in stages:
            if s.chapter == chapter and s.status != "fresh":
                cost = f"in {s.first}" if s.first else f"{_hours(s.counted)} ({s.estimate.basis})"
                size = f" {s.epochs} ep × {s.images} img" if s.epochs is not None and s.images else ""
                lines.append(f"  {s.status:<11} {s.kind:<11} {s.what}{size}  {cost}")
    seconds = sum(t["seconds"] for t in by_chapter.values())
    unknown = sum(t["no_rate"] for t in by_chapter.values())
    whole = sum(t["whole_seconds"] for t in by_chapter.values())
    lines.append(f"total to compute: {_hours(seconds)} CPU (one core per stage)"
                 + (f" + {unknown} stage(s) with no rate" if unknown else "") + f"; from nothing: {_hours(whole)}")
    return "\n".join(lines)
