"""Command-line options from config dataclasses: one `--option` per field, its help from the
field's metadata, its choices from the catalog or the field's `Literal` (so λ is defined once and
can be traced from `--lambda` to the objective)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Callable, Literal, Mapping, TypeVar

from critneuron.catalog import dataset_names, model_names
from critneuron.config import DataConfig, ModelConfig, choices

T = TypeVar("T")
_CATALOG_CHOICES: dict[tuple[type, str], Callable[[], tuple[str, ...]]] = {
    (DataConfig, "dataset"): dataset_names, (ModelConfig, "name"): model_names}


def field_choices(cls: type, name: str) -> tuple | None:
    """The allowed values of a config field: catalog names, a `Literal`'s values, or None (any)."""
    if (cls, name) in _CATALOG_CHOICES:
        return _CATALOG_CHOICES[cls, name]()
    if typing.get_origin(typing.get_type_hints(cls)[name]) is Literal:
        return choices(cls, name)
    return None


def _dest(cls: type, name: str) -> str:
    return f"{cls.__name__.lower()}_{name}"


def _value_type(hint: Any) -> Callable[[str], Any]:
    """The argparse `type` of a field annotation (Optional[X] -> X; other unions: a number or text)."""
    if typing.get_origin(hint) is Literal:
        return type(typing.get_args(hint)[0])
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if not args:
        return hint
    return args[0] if len(args) == 1 else _number_or_text


def _number_or_text(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def add_config_args(
    parser: argparse.ArgumentParser,
    cls: type,
    rename: Mapping[str, str] | None = None,
    default_note: Callable[[dataclasses.Field], str] | None = None,
) -> None:
    """Add one `--option` per field of the config dataclass `cls`, with the field's help text.

    Flags are the field names with '-' for '_' (a trailing '_' dropped) unless `rename` maps
    them. Every option defaults to None, meaning "not given"; `default_note(field)` (default:
    the field's default, if not None) says in the help what applies then.
    """
    group = parser.add_argument_group(f"{cls.__name__} options")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + (rename or {}).get(f.name, f.name.rstrip("_").replace("_", "-"))
        note = default_note(f) if default_note else f"default: {f.default}" * (f.default is not None)
        kwargs: dict[str, Any] = {"dest": _dest(cls, f.name), "default": None}
        kwargs["help"] = f.metadata.get("help", "") + f" ({note})" * bool(note)
        if hints[f.name] is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            allowed = field_choices(cls, f.name)
            metavar = None if allowed else flag[2:].upper().replace("-", "_")
            group.add_argument(flag, type=_value_type(hints[f.name]), choices=allowed, metavar=metavar, **kwargs)


def config_from_args(cls: type[T], args: argparse.Namespace, base: T | None = None) -> T:
    """The config `base` (default: `cls()`) with every option given on the command line applied."""
    given = {
        f.name: getattr(args, _dest(cls, f.name))
        for f in dataclasses.fields(cls)
        if getattr(args, _dest(cls, f.name), None) is not None
    }
    return dataclasses.replace(base if base is not None else cls(), **given)
