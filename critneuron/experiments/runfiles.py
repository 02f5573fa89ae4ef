"""The files of a stored run: plain JSON data, artifacts encoded by their name's extension, and
bytes written through to disk (fsync) before a run folder is moved into place."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from critneuron.config import to_dict


def plain(value: Any) -> Any:
    """JSON-able plain data: dataclasses as dicts, numpy arrays and scalars as lists/numbers."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = to_dict(value)

    def default(obj: Any) -> Any:
        if isinstance(obj, (np.ndarray, np.generic)):
            return obj.tolist()
        raise TypeError(f"{type(obj).__name__} is not JSON-able: {obj!r:.80}")

    return json.loads(json.dumps(value, default=default))


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` and force it to disk."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def replace_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: a temp file beside it, forced to disk, then renamed."""
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex}")
    write_bytes(tmp, data)
    os.rename(tmp, path)


def encode_artifact(name: str, value: Any) -> bytes:
    """Serialise one artifact by the extension of its name."""
    suffix = Path(name).suffix
    if suffix == ".json":
        return json.dumps(plain(value), indent=1, sort_keys=True).encode()
    if suffix in (".npz", ".npy"):
        buf = io.BytesIO()
        np.savez_compressed(buf, **value) if suffix == ".npz" else np.save(buf, value)
        return buf.getvalue()
    if suffix == ".csv" and hasattr(value, "to_csv"):
        return value.to_csv(index=False).encode()
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    raise TypeError(f"artifact {name!r}: expected bytes or str, got {type(value).__name__}")


def decode_artifact(path: Path) -> Any:
    """Read one artifact back: JSON value, dict of arrays, array, or bytes."""
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".npz":
        with np.load(path) as npz:
            return {name: npz[name] for name in npz.files}
    if path.suffix == ".npy":
        return np.load(path)
    return path.read_bytes()


def flatten(data: Mapping, prefix: str = "") -> dict:
    """Dotted names of the scalar leaves of nested mappings (lists are left out)."""
    flat = {}
    for name, value in data.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[dotted] = value
    return flat


def dump_json(path: Path, value: Any) -> None:
    """`value` as indented, sorted JSON at `path` (forced to disk)."""
    write_bytes(path, json.dumps(plain(value), indent=1, sort_keys=True).encode())
