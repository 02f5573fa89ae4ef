"""One MIP per block of a `nets.heads.Decoupled` network: the sub-problems, their batches and
input boxes, parallel solving, and the combined scores.

Block k + head k's MIP scores Conv_k (plus the head's layers, whose scores are dropped); the
tail's MIP scores every scored layer in it. The sub-MIPs are independent and are solved in
parallel on any `concurrent.futures` executor (a Dask cluster's, see `experiments.cluster`). Each
input box is, under `ScoreConfig.block_bounds` "network" (the authors' rule), the whole network's
interval bounds at the block's input, or under "local" the block's own input ± ε (cut at 0).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Executor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import psutil

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from critneuron.config import BlockBounds, ScoreConfig, choices
from critneuron.errors import ConfigError, CritneuronError, SolveError
from critneuron.mip.bounds import module_bounds
from critneuron.mip.scores import Scores, score
from critneuron.nets.batches import mip_batch
from critneuron.nets.data import TensorData
from critneuron.nets.heads import Decoupled
from critneuron.nets.models import scored_layer_names


@dataclass
class BlockProblem:
    """One sub-MIP: the sub-model, its batch (inputs = the prefix's outputs), the input box (the
    network's interval bounds there, or under block_bounds "local" the inputs ± ε cut at 0; None:
    the images ± ε) and the layers kept."""

    name: str
    sub_model: nn.Sequential
    x: np.ndarray
    y: np.ndarray
    batch_indices: list[int]
    input_box: tuple[np.ndarray, np.ndarray] | None
    kept: list[str]
    block_bounds: BlockBounds = "network"


def block_batches(net: Decoupled, data: TensorData, batch_size: int, seed: int,
                  correct_only: bool = True) -> list[tuple]:
    """Per sub-model, the balanced MIP batch (x, y, indices) its own classifier gets right:
    head k's network for block k, the whole network for the tail (see `nets.batches.mip_batch`)."""
    classifiers = [net.classifier(k) for k in range(len(net.heads))] + [net.model]
    return [mip_batch(c, data, batch_size, seed=seed, correct_only=correct_only) for c in classifiers]


def block_problems(net: Decoupled, batches: list[tuple], epsilon: float,
                   block_bounds: BlockBounds = "network") -> list[BlockProblem]:
    """The sub-MIPs of every block on its batch (`block_batches`, or one batch repeated).

    `block_bounds` (`ScoreConfig.block_bounds`): "network" boxes each block's input by the whole
    network's interval bounds there (the authors' rule); "local" by the block's own input ± ε,
    cut at 0 (a block's input is the previous block's ReLU output), so its bounds are propagated
    through the block only. Block 1 (the images ± ε) is the same under both."""
    if block_bounds not in choices(ScoreConfig, "block_bounds"):
        raise ConfigError(f"block_bounds must be one of {choices(ScoreConfig, 'block_bounds')}, got {block_bounds!r}")
    model = net.eval().model.cpu()
    net.heads.cpu()
    ends = {block[-1] for block in net.blocks[:-1]}  # a block ends with its ReLU; the next one starts there
    outputs = module_bounds(model, torch.cat([b[0] for b in batches]).double().numpy(), epsilon, keep=ends)
    problems, offset = [], 0
    for k, (x, y, indices) in enumerate(batches):
        rows = slice(offset, offset + len(x))
        offset += len(x)
        if k == 0:
            inputs, box = x.double().numpy(), None
        else:
            value, lower, upper = outputs[net.blocks[k - 1][-1]]
            inputs = value[rows]
            if block_bounds == "local":  # the block's input is a ReLU output: nothing lies below 0
                lower, upper = np.maximum(value - epsilon, 0.0), value + epsilon
            box = (lower[rows], upper[rows])
        problems.append(BlockProblem(net.names()[k], net.sub_model(k), inputs, y.numpy(),
                                     [int(i) for i in indices], box, net.kept_layers(k), block_bounds))
    return problems


def solve_block(problem: BlockProblem, cfg: ScoreConfig) -> Scores:
    """Score one sub-MIP; the result keeps only the network's own layers, and its provenance
    names the block, the head layers that were scored and dropped, the wall time and the peak
    resident memory of the process while it solved."""
    if problem.block_bounds != cfg.block_bounds:  # the stored config must name the box the program had
        raise ConfigError(f"{problem.name} was built with block_bounds {problem.block_bounds!r}, "
                          f"the config says {cfg.block_bounds!r}")
    start = time.perf_counter()
    with peak_memory() as peak:
        try:
            full = score(problem.sub_model, problem.x, problem.y, cfg, problem.batch_indices, problem.input_box)
        except SolveError as err:
            err.details.update(wall_s=time.perf_counter() - start, peak_rss_gb=peak["gb"])
            raise
    prov = {**full.provenance, "block": problem.name, "kept_layers": problem.kept,
            "dropped_layers": [n for n in full.layers if n not in problem.kept],
            "wall_seconds": time.perf_counter() - start, "peak_rss_gb": peak["gb"]}
    return Scores({n: full.layers[n] for n in problem.kept}, "mip", prov)


@contextmanager
def peak_memory(every: float = 0.1) -> Iterator[dict[str, float]]:
    """Sample this process's resident memory in a thread while the block runs; the peak (GB) is
    in the yielded dict's "gb" afterwards."""
    process, peak, stop = psutil.Process(), {"gb": 0.0}, threading.Event()

    def sample() -> None:
        while True:
            peak["gb"] = max(peak["gb"], process.memory_info().rss / 2**30)
            if stop.wait(every):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def _solve_block_dict(problem: BlockProblem, cfg: ScoreConfig) -> dict:
    torch.set_num_threads(1)  # workers share the cores
    return solve_block(problem, cfg).to_dict()


def solve_blocks(problems: list[BlockProblem], cfg: ScoreConfig, executor: Executor | None = None,
                 progress: bool = False, done: Callable[[BlockProblem, Scores], None] | None = None) -> list[Scores]:
    """Solve the sub-MIPs, here one after another, or on `executor` (e.g. a Dask client's
    `get_executor()`, see `experiments.cluster`) all at once; results in block order.

    `done(problem, scores)` is called as each one finishes (e.g. to store it), so a failure in
    one block loses none of the others; failures are raised together at the end as `SolveError`,
    whose `details["failed"]` has one `failure_row` per failed block.
    """
    results: dict[int, Scores] = {}
    errors: dict[str, str] = {}
    failed: dict[int, dict] = {}
    bar = tqdm(total=len(problems), desc="sub-MIPs", unit="block", disable=not progress)

    def finish(i: int, outcome: Callable[[], Scores]) -> None:
        try:
            results[i] = outcome()
        except CritneuronError as err:
            errors[problems[i].name] = str(err)
            failed[i] = failure_row(problems[i], str(err), getattr(err, "details", {}))
        except Exception as err:  # a worker that died (memory?) or was lost: the other blocks go on
            errors[problems[i].name] = f"its worker failed ({type(err).__name__}: {err}); out of memory? try fewer workers"
            failed[i] = failure_row(problems[i], errors[problems[i].name], {})
        else:
            report = results[i].provenance["solver"]
            bar.set_postfix_str(f"{problems[i].name}: {report['status']} in {results[i].provenance['wall_seconds']:.1f} s")
            if done is not None:
                done(problems[i], results[i])
        if progress and problems[i].name in errors:  # said now too: a long run may be cut off before the end
            tqdm.write(f"{problems[i].name} failed: {errors[problems[i].name]}")
        bar.update(1)

    if executor is None:
        for i, problem in enumerate(problems):
            finish(i, lambda p=problem: solve_block(p, cfg))
    else:
        futures = {executor.submit(_solve_block_dict, p, cfg): i for i, p in enumerate(problems)}
        for future in as_completed(futures):
            finish(futures[future], lambda f=future: Scores.from_dict(f.result()))
    bar.close()
    if errors:
        raise SolveError("sub-MIPs failed: " + "; ".join(f"{name}: {msg}" for name, msg in errors.items()),
                         {"failed": [failed[i] for i in sorted(failed)]})
    return [results[i] for i in range(len(problems))]


def failure_row(problem: BlockProblem, error: str, details: dict) -> dict:
    """The per-block row (as in `combine`) of a block that has no solution: status "failed", no
    final point, not usable, the error, and what is known of the solve (solver status, rounds,
    sizes, the failing run's HiGHS iterations, time, peak memory)."""
    dropped = [name for name in scored_layer_names(problem.sub_model) if name not in problem.kept]
    return {"block": problem.name, "layers": problem.kept, "dropped": dropped, "status": "failed", "error": error,
            "final_point": "none", "usable": False, "selfcheck_error": None, "selfcheck_flagged": None,
            "block_bounds": problem.block_bounds,
            "gap": None, "objective": None, "solver_status": details.get("solver_status"),
            "rounds": details.get("rounds"), "iterations": details.get("iterations"), "variables": details.get("variables"),
            "constraints": details.get("constraints"), "nonzeros": details.get("nonzeros"),
            "binaries": details.get("binaries"), "unstable_units": details.get("unstable_units"),
            "bounds_s": details.get("bounds_s"), "build_s": details.get("build_s"), "solve_s": details.get("solve_s"),
            "wall_s": details.get("wall_s"), "peak_rss_gb": details.get("peak_rss_gb"),
            "batch_indices": problem.batch_indices}


USABLE_STATUSES = ("optimal", "stalled")


def usable(status: str, mode: str, selfcheck_passed: bool) -> bool:
    """Whether pruning uses a block's scores: its Kelley loop ended at the program's optimum
    (`USABLE_STATUSES`: "optimal", or "stalled": the log-sum-exp gap as small as the LP resolves)
    and, in exact mode, the self-check passed (there a larger error means the encoding or the
    solver is off). In relaxed mode the self-check error measures the relaxation, so a block above
    `ScoreConfig.selfcheck_tol` stays usable and is flagged (`selfcheck_flagged`). A block stopped
    by the time or round limit (its point is an earlier round's) or failed is not used."""
    return status in USABLE_STATUSES and (mode == "relaxed" or selfcheck_passed)


def block_row(scores: Scores) -> dict:
    """A solved block's row in `combine`: status, final point, whether its scores are usable,
    self-check error and flag, the bounds rule, sizes, HiGHS iterations, times and memory."""
    prov = scores.provenance
    solver, cfg = prov["solver"], prov["config"]
    return {"block": prov["block"], "layers": prov["kept_layers"], "dropped": prov["dropped_layers"],
            "status": solver["status"], "final_point": solver.get("final_point", "vertex"),
            "usable": usable(solver["status"], cfg["mode"], prov["selfcheck_passed"]),
            "selfcheck_error": prov["selfcheck_error"], "selfcheck_flagged": not prov["selfcheck_passed"],
            "block_bounds": cfg.get("block_bounds", "network"),
            "gap": solver["gap"], "rounds": solver["rounds"], "iterations": _iterations(solver.get("history", [])),
            "objective": solver["objective"], "variables": solver["n_variables"],
            "constraints": solver["n_constraints"], "nonzeros": solver.get("n_nonzeros"),
            "binaries": solver["n_binaries"],
            "bounds_s": prov["seconds"]["bounds"], "build_s": prov["seconds"]["build"],
            "solve_s": prov["seconds"]["solve"], "wall_s": prov["wall_seconds"],
            "peak_rss_gb": prov.get("peak_rss_gb"), "unstable_units": prov["unstable_units"],
            "batch_indices": prov["batch_indices"], "input_box": prov["input_box"]}


def _iterations(history: list[dict]) -> dict[str, int]:
    """HiGHS iterations by algorithm, summed over a solve's runs."""
    total: dict[str, int] = {}
    for run in history:
        for algorithm, count in (run.get("iterations") or {}).items():
            total[algorithm] = total.get(algorithm, 0) + count
    return total


def combine(block_scores: list[Scores | dict], training: str) -> Scores:
    """One `Scores` for the whole network from the usable blocks' kept scores (`usable`); the
    provenance has one row per block (`block_row`: status, final point, usable, self-check error
    and flag, times, unstable units) and how the network was trained. A block given as a
    `failure_row`, or one whose scores are not usable, keeps its row and adds no scores (pruning
    leaves its layers whole)."""
    layers, rows = {}, []
    for s in block_scores:
        row = s if isinstance(s, dict) else block_row(s)
        rows.append(row)
        if row["usable"]:
            layers.update(s.layers)
    solved = [s for s in block_scores if not isinstance(s, dict)]
    provenance = {"training": training, "blocks": rows, "config": solved[0].provenance["config"] if solved else None}
    return Scores(layers, "mip-decoupled", provenance)
