"""Sweep files: parse and validate a sweep (YAML or a mapping) and expand it into full run configs.

Sweep file (YAML)::

    task: critneuron.experiments.whole:prune_task   # "module:function", fn(config: dict) -> dict
    kind: prune                              # store folder <results>/<kind>/<key>/
    description: λ sweep of Figure 2, quick settings
    base: {data: {dataset: mnist}, model: {name: lenet5}, train: {epochs: 2}}
    grid: {score.lambda_: [1, 2, 3]}         # dotted keys into RunConfig; cartesian product
    list: [{model.name: fc3}, {model.name: lenet5}]   # optional overrides, each × the grid

Runs are ``base`` + one ``list`` item + one grid point, in file order (list outer, last grid
key fastest), resolved to the full `RunConfig` (defaults filled in, ints of float fields made
floats, duplicates dropped). Each is stored under ``store.key(kind, config, **versions())``.

"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from critneuron.config import RunConfig, canonical_json, from_dict, to_dict
from critneuron.errors import ConfigError
from critneuron.experiments.fingerprint import Code


SWEEP_KEYS = ("task", "kind", "description", "base", "grid", "list")
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
        """The code of the sweep's runs: the task function and, by definition, everything it calls
        (its results hold everything the task computes, training and scoring included), but not
        the rest of its module."""
        return Code((self.task,))


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
