"""Sweep files → run configs → runs on Dask (or serially), each stored, failures recorded.

Job: expand a sweep file into full run configs, skip those already complete in the store,
run the rest on Dask distributed and record every run's result or error.

Sweep files are parsed and expanded by `machinery.sweepfile`. Each run is stored under
``store.key(kind, config, **versions())``, with the task's code (`Sweep.code`: the task's module
whole, and the modules it imports, see `experiments.fingerprint`): a stored run whose code has
changed since is stale and runs again.

Task contract: a task is a top-level function ``fn(config: dict) -> dict`` (or
`critneuron.experiments.store.RunOutput` to add artifacts and a log) importable on every worker. It runs in
a worker process, whose stdout/stderr go to the run's ``log.txt``; ``$CRITNEURON_RESULTS`` is
set to the sweep's store root while it runs, so ``Store()`` inside the task caches its stages
there. The worker writes the result itself, so killing the driver keeps finished runs, and it
holds the run's store lock meanwhile, so two sweeps started at once never run one key twice.
Dask's nanny starts workers with ``OMP_NUM_THREADS=1``, so torch uses one thread per worker.

Where it runs (``scheduler``):
    None (default): an embedded ``LocalCluster``, ``n_workers`` processes (default: the
        number of cores) with one thread each.
    "tcp://host:8786": a ``Client`` on an existing cluster: ``dask scheduler`` plus
        ``dask worker tcp://host:8786 --nthreads 1`` on each machine; or on SLURM/PBS with
        dask-jobqueue (``c = SLURMCluster(cores=1, processes=1, memory="8GB");
        c.scale(jobs=20)``, then pass ``c.scheduler_address``); or on Kubernetes with
        dask-kubernetes (``KubeCluster``). Workers need critneuron (and the task's module)
        installed and the results root at the same path on a shared filesystem.
    "serial": no Dask; runs one after another in this process (debugging, comparisons).

Tasks are imported by their path only when run, so this module never imports the experiment code.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import io
import os
import sys
import time
import traceback
import uuid
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from distributed import Client, as_completed
from tqdm import tqdm

from critneuron.errors import ConfigError, CritneuronError
from critneuron.experiments.cluster import dask_client
from critneuron.experiments.fingerprint import Code
from critneuron.experiments.store import RESULTS_ENV, RunOutput, Store, versions
from critneuron.machinery.sweepfile import Sweep, expand, load_sweep

DONE, SKIPPED, FAILED = "done", "skipped", "failed"

@dataclass
class SweepSummary:
    """Counts of one `run_sweep` call; ``failures`` holds (key, error text) pairs."""

    total: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    wall_s: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def add(self, key: str, status: str, error: str = "") -> None:
        """Count one finished run."""
        setattr(self, status, getattr(self, status) + 1)
        if status == FAILED:
            self.failures.append((key, error))

    def __str__(self) -> str:
        lines = [f"{self.total} runs: {self.done} done, {self.skipped} skipped, "
                 f"{self.failed} failed in {self.wall_s:.1f} s"]
        lines += [f"  failed {key}: {_last_line(error)}" for key, error in self.failures]
        return "\n".join(lines)


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "(no error text)"


def import_task(path: str) -> Callable[[dict], Any]:
    """The function named by ``"module:function"``; ConfigError if it cannot be imported."""
    module_name, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"task {path!r} cannot be imported: {err}") from err


@contextmanager
def _results_env(root: str) -> Iterator[None]:
    """Point ``Store()`` inside the task at the sweep's store root while it runs."""
    old = os.environ.get(RESULTS_ENV)
    os.environ[RESULTS_ENV] = root
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(RESULTS_ENV, None)
        else:
            os.environ[RESULTS_ENV] = old


def _call_task(task: str, config: dict, root: str, log: io.StringIO) -> RunOutput:
    with _results_env(root), redirect_stdout(log), redirect_stderr(log):
        output = import_task(task)(copy.deepcopy(config))
    return output if isinstance(output, RunOutput) else RunOutput(result=output)


def run_item(task: str, kind: str, config: dict, key: str, root: str, inputs: dict, code: Code) -> tuple[str, str]:
    """Run one sweep item (on a worker) and store its result (with its `code`) or failure.

    Returns (status, error text), status one of "done", "skipped", "failed". Never raises
    for a failing task: the traceback is recorded in the store instead.
    """
    store = Store(root)
    with store.lock(kind, key):  # another sweep may be running the same key
        if store.is_fresh(kind, key, code):
            return SKIPPED, ""
        return _run_and_store(store, task, kind, config, key, inputs, code)


def _run_and_store(store: Store, task: str, kind: str, config: dict, key: str, inputs: dict,
                   code: Code) -> tuple[str, str]:
    log, start = io.StringIO(), time.perf_counter()
    try:
        output = _call_task(task, config, str(store.root), log)
        header = f"task {task} on pid {os.getpid()}: {time.perf_counter() - start:.2f} s\n"
        output = dataclasses.replace(output, log=header + log.getvalue() + output.log)
        store.write(kind, key, config, output, inputs=inputs, code=code)
        return DONE, ""
    except Exception:
        error = traceback.format_exc()
        store.record_failure(kind, key, config, error, inputs=inputs, log=log.getvalue())
        return FAILED, error


@dataclass(frozen=True)
class SweepPlan:
    """What one `run_sweep` call must run ((config, key) pairs) and how many it skips."""

    task: str
    kind: str
    root: str
    inputs: dict
    code: Code
    todo: list[tuple[dict, str]]
    skipped: int


def plan_sweep(sweep: Sweep, store: Store) -> SweepPlan:
    """Keys of every run of the sweep; complete runs of today's code are skipped."""
    inputs, code = versions(), sweep.code
    keyed = [(config, store.key(sweep.kind, config, **inputs)) for config in expand(sweep)]
    todo = [(config, key) for config, key in keyed if not store.is_fresh(sweep.kind, key, code)]
    root = str(store.root.resolve())
    return SweepPlan(sweep.task, sweep.kind, root, inputs, code, todo, len(keyed) - len(todo))


def sweep_results(sweep: Sweep, store: Store) -> list[dict]:
    """Results of the sweep's complete runs of today's code, in the sweep's order (failed,
    missing or stale ones left out)."""
    inputs, code = versions(), sweep.code
    keys = [store.key(sweep.kind, config, **inputs) for config in expand(sweep)]
    return [store.read(sweep.kind, key)["result"] for key in keys if store.is_fresh(sweep.kind, key, code)]


def collect(sweep: Sweep, store: Store, scheduler: str | None = "serial", progress: bool = False) -> list[dict]:
    """Run what the store lacks of `sweep` (serially by default), then return every run's result
    in sweep order. Raises CritneuronError naming the failed runs (tracebacks are in the store)."""
    summary = run_sweep(sweep, store, scheduler=scheduler, progress=progress)
    if summary.failed:
        raise CritneuronError(f"{summary}\n(see `critneuron results ls --kind {sweep.kind}`)")
    return sweep_results(sweep, store)


def _tick(bar: tqdm, summary: SweepSummary, key: str, status: str, error: str) -> None:
    summary.add(key, status, error)
    bar.update()
    bar.set_postfix(failed=summary.failed)


def _run_serial(plan: SweepPlan, summary: SweepSummary, bar: tqdm) -> None:
    for config, key in plan.todo:
        _tick(bar, summary, key, *run_item(plan.task, plan.kind, config, key, plan.root, plan.inputs, plan.code))


def _run_dask(plan: SweepPlan, client: Client, summary: SweepSummary, bar: tqdm) -> None:
    futures = {
        client.submit(run_item, plan.task, plan.kind, config, key, plan.root, plan.inputs, plan.code,
                      key=f"{plan.kind}-{key}-{uuid.uuid4().hex[:8]}"): (config, key)
        for config, key in plan.todo
    }
    for future in as_completed(futures):
        config, key = futures.pop(future)
        try:
            status, error = future.result()
        except Exception:  # the worker died, or the item could not reach it
            status, error = FAILED, traceback.format_exc()
            Store(plan.root).record_failure(plan.kind, key, config, error, inputs=plan.inputs)
        _tick(bar, summary, key, status, error)


def run_sweep(sweep: Sweep, store: Store, scheduler: str | None = None,
              n_workers: int | None = None, progress: bool = True) -> SweepSummary:
    """Run every incomplete run of ``sweep``; see the module docstring for ``scheduler``.

    Example:
        >>> summary = run_sweep(load_sweep("sweeps/lambda.yaml"), Store("results"))
        >>> print(summary)   # 24 runs: 24 done, 0 skipped, 0 failed in ...
    """
    if n_workers is not None and scheduler is not None:
        raise ConfigError("n_workers sizes the embedded LocalCluster only; size other clusters where they start")
    start = time.perf_counter()
    import_task(sweep.task)  # fail fast on a wrong task path
    store.remove_stale_temp()
    plan = plan_sweep(sweep, store)
    summary = SweepSummary(total=len(plan.todo) + plan.skipped, skipped=plan.skipped)
    with tqdm(total=len(plan.todo), unit="run", desc=sweep.kind, disable=not progress) as bar:
        if scheduler == "serial":
            _run_serial(plan, summary, bar)
        elif plan.todo:
            with dask_client(scheduler, n_workers) as client:
                _run_dask(plan, client, summary, bar)
    summary.wall_s = time.perf_counter() - start
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``critneuron sweep`` (shared with ``python -m critneuron.machinery.sweep``)."""
    parser.add_argument("file", help="sweep YAML file (see sweeps/)")
    parser.add_argument("--scheduler", default=None,
                        help="tcp://host:8786 for an existing Dask cluster, or 'serial' (default: local cluster)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes of the local cluster (default: number of cores)")
    parser.add_argument("--results", default=None, help="results root (default: $CRITNEURON_RESULTS, else results)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_from_args(args: argparse.Namespace) -> int:
    """Run the sweep the parsed options describe; print the summary; 1 if any run failed."""
    summary = run_sweep(load_sweep(args.file), Store(args.results), scheduler=args.scheduler,
                        n_workers=args.workers, progress=not args.no_progress)
    print(summary)
    return 1 if summary.failed else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m critneuron.machinery.sweep FILE [--scheduler ...] [--workers N] [--results DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m critneuron.machinery.sweep", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        return run_from_args(parser.parse_args(argv))
    except CritneuronError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Call the imported module, not __main__, so workers unpickle run_item by its import path.
    from critneuron.machinery.sweep import main as _main

    sys.exit(_main())
