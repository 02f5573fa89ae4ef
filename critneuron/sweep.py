"""Sweep files → run configs → runs on Dask (or serially), each stored, failures recorded.

Job: expand a sweep file into full run configs, skip those already complete in the store,
run the rest on Dask distributed and record every run's result or error.

Sweep file (YAML)::

    task: critneuron.experiment:prune_task   # "module:function", fn(config: dict) -> dict
    kind: prune                              # store folder <results>/<kind>/<key>/
    description: λ sweep of Figure 2, quick settings
    base: {data: {dataset: mnist}, model: {name: lenet5}, train: {epochs: 2}}
    grid: {score.lambda_: [1, 2, 3]}         # dotted keys into RunConfig; cartesian product
    list: [{model.name: fc3}, {model.name: lenet5}]   # optional overrides, each × the grid

Runs are ``base`` + one ``list`` item + one grid point, in file order (list outer, last grid
key fastest), resolved to the full `RunConfig` (defaults filled in, ints of float fields made
floats, duplicates dropped). Each is stored under ``store.key(kind, config, **versions())``, with
the task's code (`Sweep.code`: the task's module whole, and the modules it imports, see
`critneuron.fingerprint`): a stored run whose code has changed since is stale and runs again.

Task contract: a task is a top-level function ``fn(config: dict) -> dict`` (or
`critneuron.store.RunOutput` to add artifacts and a log) importable on every worker. It runs in
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

May import (critneuron): config, store, fingerprint. Tasks are imported by their path only when run, so
this module never imports the experiment code.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import io
import itertools
import os
import re
import sys
import time
import traceback
import typing
import uuid
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import yaml
from dask.system import CPU_COUNT
from distributed import Client, LocalCluster, as_completed
from tqdm import tqdm

from critneuron.config import ConfigError, CritneuronError, RunConfig, canonical_json, from_dict, to_dict
from critneuron.fingerprint import Code
from critneuron.store import RESULTS_ENV, RunOutput, Store, versions

SWEEP_KEYS = ("task", "kind", "description", "base", "grid", "list")
DONE, SKIPPED, FAILED = "done", "skipped", "failed"
_TASK_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file: task path, store kind, base config, grid and override list."""

    task: str
    kind: str
    base: Mapping[str, Any]
    grid: Mapping[str, list] = field(default_factory=dict)
    items: tuple[Mapping[str, Any], ...] = ()
    description: str = ""

    @property
    def code(self) -> Code:
        """The code of the sweep's runs: the task's module, whole (its results hold everything the
        task computes, so any stage it runs counts)."""
        return Code((self.task.partition(":")[0],))


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


def _field_hint(cls: type, name: str, dotted: str) -> Any:
    """The type of field ``name`` of config class ``cls``; ConfigError if there is none."""
    hints = typing.get_type_hints(cls)
    if name not in hints:
        raise ConfigError(f"bad key {dotted!r}: {cls.__name__} has no field {name!r}; known: {sorted(hints)}")
    return hints[name]


def check_dotted(dotted: str) -> None:
    """Raise ConfigError unless ``dotted`` names a RunConfig field, e.g. ``score.lambda_``."""
    cls: Any = RunConfig
    *sections, last = dotted.split(".")
    for name in sections:
        cls = _field_hint(cls, name, dotted)
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"bad key {dotted!r}: {name!r} is a value, not a section")
    _field_hint(cls, last, dotted)


def _set_dotted(nested: dict, dotted: str, value: Any) -> None:
    """Set ``a.b`` in a nested dict; a mapping value is merged into an existing mapping."""
    *parents, last = dotted.split(".")
    for name in parents:
        nested = nested.setdefault(name, {})
    if isinstance(value, Mapping) and isinstance(nested.get(last), Mapping):
        for key, item in value.items():
            _set_dotted(nested[last], key, item)
    else:
        nested[last] = copy.deepcopy(value)


def _wants_float(hint: Any) -> bool:
    options = typing.get_args(hint) or (hint,)
    return float in options and int not in options


def _floats(cfg: Any) -> Any:
    """The config with ints in float fields made floats (so 5 and 5.0 give one key)."""
    changes = {}
    for name, hint in typing.get_type_hints(type(cfg)).items():
        value = getattr(cfg, name)
        if dataclasses.is_dataclass(hint):
            changes[name] = _floats(value)
        elif _wants_float(hint) and isinstance(value, int) and not isinstance(value, bool):
            changes[name] = float(value)
    return dataclasses.replace(cfg, **changes)


def resolve(overrides: Mapping[str, Any]) -> dict:
    """A full run config (plain dict) from a nested partial config; ConfigError if invalid."""
    return to_dict(_floats(from_dict(RunConfig, overrides)))


def _check_mapping(value: Any, what: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping, got {type(value).__name__}")
    for dotted in value:
        check_dotted(str(dotted))
    return value


def _check_grid(grid: Any) -> dict:
    if not isinstance(grid, Mapping) or not grid:
        raise ConfigError(f"grid must be a non-empty mapping of dotted key → list of values, got {grid!r}")
    _check_mapping(grid, "grid")
    for dotted, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid[{dotted!r}] must be a non-empty list, got {values!r}")
    return dict(grid)


def _check_items(items: Any) -> tuple:
    if not isinstance(items, list) or not items:
        raise ConfigError(f"list must be a non-empty list of overrides, got {items!r}")
    return tuple(_check_mapping(item, f"list item {i}") for i, item in enumerate(items))


def _check_head(raw: Any) -> None:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a sweep file must hold a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"unknown sweep key(s) {unknown}; known: {list(SWEEP_KEYS)}")
    missing = [name for name in ("task", "kind") if name not in raw]
    if missing:
        raise ConfigError(f"missing sweep key(s) {missing}")
    if not isinstance(raw["task"], str) or not _TASK_PATH.match(raw["task"]):
        raise ConfigError(f"task must be 'module:function', got {raw['task']!r}")
    if not isinstance(raw["kind"], str) or not re.fullmatch(r"[\w-]+", raw["kind"]):
        raise ConfigError(f"kind must be a plain name (letters, digits, _ or -), got {raw['kind']!r}")
    if "grid" not in raw and "list" not in raw:
        raise ConfigError("a sweep needs 'grid' or 'list' (or both)")


def parse_sweep(raw: Any) -> Sweep:
    """A validated `Sweep` from parsed YAML; every expanded config is checked too."""
    _check_head(raw)
    sweep = Sweep(
        task=raw["task"],
        kind=raw["kind"],
        base=_check_mapping(raw.get("base") or {}, "base"),
        grid=_check_grid(raw["grid"]) if "grid" in raw else {},
        items=_check_items(raw["list"]) if "list" in raw else (),
        description=str(raw.get("description", "")),
    )
    expand(sweep)
    return sweep


def load_sweep(path: str | os.PathLike) -> Sweep:
    """Read and validate a sweep file; ConfigError names the file and the problem."""
    try:
        return parse_sweep(yaml.safe_load(Path(path).read_text()))
    except (ConfigError, yaml.YAMLError, OSError) as err:
        raise ConfigError(f"{path}: {err}") from err


def _grid_points(grid: Mapping[str, list]) -> list[dict]:
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def expand(sweep: Sweep) -> list[dict]:
    """Full run configs of a sweep, deterministic order, duplicates dropped."""
    configs, seen = [], set()
    for item in sweep.items or ({},):
        for point in _grid_points(sweep.grid):
            nested: dict = {}
            for dotted, value in [*sweep.base.items(), *item.items(), *point.items()]:
                _set_dotted(nested, dotted, value)
            try:
                config = resolve(nested)
            except ConfigError as err:
                raise ConfigError(f"run {dict(item) | point}: {err}") from err
            if canonical_json(config) not in seen:
                seen.add(canonical_json(config))
                configs.append(config)
    return configs


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


@contextmanager
def _client(scheduler: str | None, n_workers: int | None) -> Iterator[Client]:
    """A client on an embedded LocalCluster (scheduler None) or on ``scheduler``."""
    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    n_workers = n_workers or CPU_COUNT
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


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
            with _client(scheduler, n_workers) as client:
                _run_dask(plan, client, summary, bar)
    summary.wall_s = time.perf_counter() - start
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``critneuron sweep`` (shared with ``python -m critneuron.sweep``)."""
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
    """``python -m critneuron.sweep FILE [--scheduler ...] [--workers N] [--results DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m critneuron.sweep", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        return run_from_args(parser.parse_args(argv))
    except CritneuronError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Call the imported module, not __main__, so workers unpickle run_item by its import path.
    from critneuron.sweep import main as _main

    sys.exit(_main())
