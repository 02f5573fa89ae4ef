"""Chapter 01's look inside one scoring program: ReLU stability of the input boxes, the score's
shift of the first scored layer, each mode's program sizes and its solve. Stored (kind "anatomy",
keyed by the run, the score settings and the network's weights' hash), so the chapter replays
from the store without the network, whose checkpoint a shipped store does not keep."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from critneuron.config import RunConfig, ScoreConfig, to_dict
from critneuron.experiments.fingerprint import Code
from critneuron.experiments.runs import (
    TRAIN_CODE, network_inputs, run_config, score_inputs, trained_metrics, trained_model,
)
from critneuron.experiments.store import Store
from critneuron.mip.bounds import forward, interval_bounds, shift_scale, stability_counts
from critneuron.mip.formulation import build_formulation
from critneuron.mip.scores import score
from critneuron.mip.solve import solver_version
from critneuron.mip.spec import AffineSpec, network_spec

EPSILONS = (1e-5, 1e-3, 1e-2, 3e-2)  # box half-widths of the stability table
ANATOMY_CODE = Code(("critneuron.experiments.anatomy:_anatomy",), after=(TRAIN_CODE,))


def program_anatomy(run: RunConfig, score_cfg: ScoreConfig, modes: Sequence[str], store: Store) -> dict[str, Any]:
    """For `run`'s trained network on its MIP batch under `score_cfg`: `test_accuracy`;
    `stability`, rows (layer, off, on, unstable, epsilon) per ε of `EPSILONS`; `shift`, the first
    scored layer's name and, on image 0, its three most active units' pre-activations and shift
    scales Ũ; `sizes`, each mode's variables, binaries, constraints and nonzeros; `solves`, each
    mode's solve (`summary` row, Kelley `history`, the `scores` of all units in layer order);
    `batch_indices`."""
    metrics = trained_metrics(run, store)
    config = anatomy_config(run, score_cfg, modes)
    inputs = {**network_inputs(run, metrics["weights_hash"]), "solver": solver_version(score_cfg)}
    study = store.cached("anatomy", config, lambda: _anatomy(run, score_cfg, modes, store), code=ANATOMY_CODE, **inputs)
    return {**study, "test_accuracy": metrics["test_accuracy"]}


def anatomy_config(run: RunConfig, score_cfg: ScoreConfig, modes: Sequence[str]) -> dict[str, Any]:
    """The stored config of `program_anatomy` (also what `machinery.plan` looks up)."""
    return {"run": run_config(run),
            "score": to_dict(score_cfg), "modes": list(modes), "epsilons": list(EPSILONS)}


def _anatomy(run: RunConfig, score_cfg: ScoreConfig, modes: Sequence[str], store: Store) -> dict[str, Any]:
    net, _metrics = trained_model(run, store)
    x, y, inputs = score_inputs(net, run.data, score_cfg)
    spec, x64 = network_spec(net, tuple(x.shape[1:])), x.double().numpy()
    stability = [{**row, "epsilon": eps} for eps in EPSILONS for row in stability_counts(spec, interval_bounds(spec, x64, eps))]
    bounds = interval_bounds(spec, x64, score_cfg.epsilon)
    first = next(i for i, layer in enumerate(spec.layers) if isinstance(layer, AffineSpec) and layer.scored)
    pre, u_tilde = forward(spec, x64[:1])[first][0], shift_scale(spec, bounds, first)[0]
    top = np.argsort(pre)[-3:]
    shift = {"layer": spec.layers[first].name, "units": top.tolist(), "pre": pre[top].tolist(),
             "u_tilde": u_tilde[top].tolist()}
    sizes, solves = {}, {}
    for mode in modes:
        cfg = dataclasses.replace(score_cfg, mode=mode)
        sizes[mode] = build_formulation(spec, bounds, x64, y.numpy(), cfg).sizes()
        result = score(net, x, y, cfg, inputs["batch_indices"])
        solver, seconds = result.provenance["solver"], result.provenance["seconds"]
        summary = {"objective": solver["objective"], "status": solver["status"], "gap": solver["gap"],
                   "kelley_rounds": solver["rounds"], "binaries": solver["n_binaries"], "build_s": seconds["build"],
                   "solve_s": seconds["solve"], "selfcheck_error": result.provenance["selfcheck_error"]}
        solves[mode] = {"summary": summary, "history": solver["history"],
                        "scores": np.concatenate(list(result.layers.values())).tolist()}
    return {"batch_indices": inputs["batch_indices"], "stability": stability, "shift": shift, "sizes": sizes,
            "solves": solves}
