"""Content-addressed run folders with atomic writes, skip-if-complete and CSV export.

One folder per run key, ``<root>/<kind>/<key>/``: ``config.json``, ``meta.json`` (kind, key,
inputs, time), ``log.txt``, ``artifacts/<name>`` and, written last, ``result.json`` (a folder is
complete exactly when it exists).
The key covers what the run computes (config and inputs); the code that computed it is recorded in
``meta.json`` (``code``: entries, fingerprint, git commit; `experiments.fingerprint`). A complete
run whose code has changed since is **stale**: `Store.cached` recomputes it and `Store.write`
replaces it, deleting the stale run only once the new one is in place. Everything is written into
a temp folder ``<root>/<kind>/.tmp-<key>-<random>``, then moved into place with one ``os.rename``,
so a crash or SIGKILL never leaves a folder that reads as complete, and two workers writing one
key leave one intact result. A failed run is recorded as ``failed.json``; a rerun retries it.
`Store.cached` holds a per-key file lock while computing, so concurrent workers that need the
same stage (e.g. one trained net for a whole λ sweep) compute it once.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import os
import platform
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from critneuron.config import config_hash
from critneuron.errors import CritneuronError, IrreproducibleError
from critneuron.experiments.fingerprint import Code, is_current
from critneuron.experiments import runfiles

if TYPE_CHECKING:
    import pandas

RESULTS_ENV = "CRITNEURON_RESULTS"
RESULT, FAILED, CONFIG, META, LOG, ARTIFACTS = (
    "result.json", "failed.json", "config.json", "meta.json", "log.txt", "artifacts",
)
_VERSIONED = ("critneuron", "torch", "pyomo", "highspy")


class RunNotFoundError(CritneuronError, LookupError):
    """No complete run is stored under this kind and key."""


@dataclass(frozen=True)
class RunOutput:
    """What a computation may return to be stored: a JSON-able result, artifacts and a log.

    Artifact names choose the format by extension: ``.json`` (JSON-able value), ``.npz``
    (mapping of arrays), ``.npy`` (array), ``.csv`` (pandas DataFrame or text); any other
    name takes ``bytes`` or ``str``.
    """

    result: dict
    artifacts: Mapping[str, Any] = field(default_factory=dict)
    log: str = ""


def versions(names: tuple[str, ...] = _VERSIONED) -> dict:
    """Versions of Python and of the packages `names` (default: those that determine a result;
    None if missing)."""
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``, else `platform.processor`) and its logical CPU
    count: hosts here share one host name, so a run's meta also records what it ran on."""
    try:
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        model = ""
    return f"{model or platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)"


def _check_name(name: str, what: str) -> None:
    if not name or name.startswith(".") or "/" in name or os.sep in name:
        raise ValueError(f"{what} {name!r} must be a plain name (no '/', not starting with '.')")


def _meta(kind: str, key: str, inputs: Mapping | None, code: Code | None) -> dict:
    return {
        "kind": kind,
        "key": key,
        "inputs": dict(inputs or {}),
        "code": code.record() if code is not None else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "pid": os.getpid(),
    }


class Store:
    """Run folders under one root (default: ``$CRITNEURON_RESULTS``, else ``./results``).

    Example:
        >>> store = Store("results")
        >>> result = store.cached("prune", cfg, lambda: prune_task(cfg), code=Code(("critneuron.experiment",)),
        ...                       **versions())
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root if root is not None else os.environ.get(RESULTS_ENV, "results"))

    def key(self, kind: str, config: Any, **inputs: Any) -> str:
        """Hash of everything that determines a run: kind, full config and the inputs.

        Pass as inputs whatever else decides the result (weights hash, dataset, batch
        indices, ``**versions()``). Dataclass and dict configs with equal fields share a key.
        """
        _check_name(kind, "kind")
        return config_hash(runfiles.plain(config), kind=kind, inputs=runfiles.plain(inputs))

    def path(self, kind: str, key: str) -> Path:
        """The folder of one run (it may not exist)."""
        _check_name(kind, "kind")
        _check_name(key, "key")
        return self.root / kind / key

    def is_complete(self, kind: str, key: str) -> bool:
        """Whether the run's ``result.json`` exists (it is written last, atomically)."""
        return (self.path(kind, key) / RESULT).is_file()

    def is_fresh(self, kind: str, key: str, code: Code) -> bool:
        """Whether the run is complete and was computed by today's `code` (same fingerprint)."""
        return self.is_complete(kind, key) and self._fingerprint(self.path(kind, key)) == code.fingerprint()

    def read(self, kind: str, key: str) -> dict:
        """Config, result, meta and artifact names of a complete run."""
        folder = self.path(kind, key)
        if not self.is_complete(kind, key):
            raise RunNotFoundError(f"no complete {kind!r} run {key!r} under {self.root}")
        found = (folder / ARTIFACTS).iterdir() if (folder / ARTIFACTS).is_dir() else ()  # git keeps no empty folder
        artifacts = sorted(p.name for p in found)
        return {
            "kind": kind,
            "key": key,
            "path": str(folder),
            "config": json.loads((folder / CONFIG).read_text()),
            "result": json.loads((folder / RESULT).read_text()),
            "meta": json.loads((folder / META).read_text()),
            "artifacts": artifacts,
        }

    def load_artifact(self, kind: str, key: str, name: str) -> Any:
        """One artifact of a complete run, decoded by its extension (see `RunOutput`)."""
        _check_name(name, "artifact")
        self.read(kind, key)
        return runfiles.decode_artifact(self.path(kind, key) / ARTIFACTS / name)

    def write(self, kind: str, key: str, config: Any, output: RunOutput | dict,
              inputs: Mapping | None = None, code: Code | None = None, replace: bool = False) -> bool:
        """Store a complete run computed by `code` atomically, replacing a failed run and a
        complete one of other (or unrecorded) code; False if another writer completed it with the
        same code first. Without `code` (not recorded: the run reads as stale) it replaces no
        complete run. `replace`: replace whatever is stored (a result that may not be reused)."""
        output = output if isinstance(output, RunOutput) else RunOutput(result=output)
        if not isinstance(output.result, Mapping):
            raise TypeError(f"a result must be a dict, got {type(output.result).__name__}")
        if replace and self.path(kind, key).exists():
            trash = self.path(kind, key).parent / f".trash-{key}-{uuid.uuid4().hex}"
            os.rename(self.path(kind, key), trash)
            try:
                return self.write(kind, key, config, output, inputs, code)
            finally:
                shutil.rmtree(trash, ignore_errors=True)
        tmp = self._temp(kind, key)
        try:
            self._fill(tmp, kind, key, config, inputs, output.log, code)
            (tmp / ARTIFACTS).mkdir()
            for name, value in output.artifacts.items():
                _check_name(name, "artifact")
                runfiles.write_bytes(tmp / ARTIFACTS / name, runfiles.encode_artifact(name, value))
            runfiles.dump_json(tmp / RESULT, output.result)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self._publish(tmp, self.path(kind, key), code.fingerprint() if code is not None else None)

    def record_failure(self, kind: str, key: str, config: Any, error_text: str,
                       inputs: Mapping | None = None, log: str = "") -> bool:
        """Record a failed run (``failed.json``); never replaces a complete run, stale or not."""
        tmp = self._temp(kind, key)
        try:
            self._fill(tmp, kind, key, config, inputs, log, None)
            runfiles.dump_json(tmp / FAILED, {"error": error_text, "host": socket.gethostname()})
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self._publish(tmp, self.path(kind, key), None)

    def cached(self, kind: str, config: Any, compute_fn: Callable[[], RunOutput | dict], *, code: Code,
               needs: tuple[str, ...] = (), reuse_if: Callable[[dict], bool] | None = None,
               **inputs: Any) -> dict:
        """The stored result of this run if complete and computed by today's `code`; else
        ``compute_fn()``, stored (replacing a stale run), returned.

        `needs`: artifacts the caller reads. A fresh run without them (a shipped store keeps no
        checkpoints) is computed again: if the new result agrees on every ``*_hash`` field, only
        the artifacts are added, else IrreproducibleError (`_restore`). `reuse_if(run)` (a `read`
        record): False for a stored run that may not be reused here, which is computed again and
        replaced (e.g. a solve stopped by its time limit on another machine).

        Concurrent callers of one key compute it once (see `lock`). The result is always read
        back from disk, so fresh and cached calls return the same.
        """
        key = self.key(kind, config, **inputs)

        def usable() -> bool:
            return self.is_fresh(kind, key, code) and (reuse_if is None or reuse_if(self.read(kind, key)))

        if not usable() or self._lacks(kind, key, needs):
            with self.lock(kind, key):
                if not usable():  # not finished by another process meanwhile
                    self.write(kind, key, config, compute_fn(), inputs=inputs, code=code,
                               replace=self.is_fresh(kind, key, code))
                elif self._lacks(kind, key, needs):
                    self._restore(kind, key, compute_fn(), needs)
        return self.read(kind, key)["result"]

    def _lacks(self, kind: str, key: str, needs: tuple[str, ...]) -> bool:
        return any(not (self.path(kind, key) / ARTIFACTS / name).is_file() for name in needs)

    def _restore(self, kind: str, key: str, output: RunOutput | dict, needs: tuple[str, ...]) -> None:
        """Add the `needs` artifacts of a recomputed run to its stored copy; IrreproducibleError
        when a ``*_hash`` field of the result differs: replacing the copy would orphan every result
        keyed on the stored hash, so it is kept and the caller told how to recompute it all."""
        output = output if isinstance(output, RunOutput) else RunOutput(result=output)
        folder = self.path(kind, key)
        stored = json.loads((folder / RESULT).read_text())
        for name in (n for n in stored if n.endswith("_hash") and stored[n] != output.result.get(n)):
            raise IrreproducibleError(
                f"the stored {kind} run {key} under {self.root} lacks {list(needs)}, and computing it again "
                f"here gave another {name} ({output.result.get(name)}, stored {stored[name]}; a training on "
                "another CPU differs in float summation order). The stored run and the results on it are kept; "
                f"to recompute them all on this machine, delete {folder} first")
        (folder / ARTIFACTS).mkdir(exist_ok=True)
        for name in needs:
            runfiles.replace_file(folder / ARTIFACTS / name, runfiles.encode_artifact(name, output.artifacts[name]))

    @contextmanager
    def lock(self, kind: str, key: str) -> Iterator[None]:
        """Hold an exclusive lock on one run across processes while computing it.

        A POSIX ``flock`` on ``<root>/.locks/<kind>.<key>``: the kernel releases it when the
        holder dies, so a killed worker never blocks the others.
        """
        folder = self.root / ".locks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{kind}.{self.path(kind, key).name}", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def find(self, key_prefix: str, kind: str | None = None) -> dict:
        """The `ls` record of the one run whose key starts with ``key_prefix``."""
        found = [r for r in self.ls(kind) if r["key"].startswith(key_prefix)]
        if len(found) != 1:
            what = "no run" if not found else f"{len(found)} runs"
            raise RunNotFoundError(f"{what} under {self.root} with a key starting {key_prefix!r}")
        return found[0]

    def ls(self, kind: str | None = None) -> list[dict]:
        """Records (kind, key, status, path, error, code) of every run folder, sorted. Files beside
        the kinds' run folders (e.g. the shipped profile's executed chapters in ``book/``) are not runs.

        ``code`` of a complete run: "fresh" if its recorded code entries still have the recorded
        fingerprint, else "stale" (also when no code was recorded); None for other runs.
        """
        kinds = [kind] if kind is not None else self._kinds()
        records = []
        for name in kinds:
            folder = self.root / name
            if folder.is_dir():
                keys = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
                records.extend(self.record(name, key) for key in keys)
        return records

    def to_frame(self, kind: str | None = None) -> pandas.DataFrame:
        """One row per complete run: kind, key, dotted config fields, scalar result fields.

        A result field whose name equals a config column is prefixed ``result.``.
        """
        import pandas  # heavy; only tables need it, not the workers that write runs

        rows = []
        for record in self.ls(kind):
            if record["status"] == "complete":
                run = self.read(record["kind"], record["key"])
                row = {"kind": run["kind"], "key": run["key"], **runfiles.flatten(run["config"])}
                for name, value in runfiles.flatten(run["result"]).items():
                    row[f"result.{name}" if name in row else name] = value
                rows.append(row)
        return pandas.DataFrame(rows)

    def export_csv(self, kind: str | None, path: str | os.PathLike) -> int:
        """Write `to_frame(kind)` as CSV; returns the number of rows."""
        frame = self.to_frame(kind)
        frame.to_csv(path, index=False)
        return len(frame)

    def remove_stale_temp(self, max_age_s: float = 3600.0) -> int:
        """Delete temp folders older than ``max_age_s`` (left by killed writers); count them."""
        cutoff = time.time() - max_age_s
        removed = 0
        for path in (p for name in self._kinds() for p in (self.root / name).iterdir()):
            try:
                stale = path.name.startswith((".tmp-", ".trash-")) and path.stat().st_mtime < cutoff
            except FileNotFoundError:  # published or removed meanwhile
                continue
            if stale:
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        return removed

    def _kinds(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def record(self, kind: str, key: str) -> dict:
        """The `ls` record of one run: kind, key, status (complete, failed, incomplete), path, code."""
        folder = self.root / kind / key
        record = {"kind": kind, "key": key, "status": "incomplete", "path": str(folder), "code": None}
        if (folder / RESULT).is_file():
            record["status"] = "complete"
            record["code"] = "fresh" if is_current(self._code(folder)) else "stale"
        elif (folder / FAILED).is_file():
            record["status"] = "failed"
            record["error"] = json.loads((folder / FAILED).read_text())["error"]
        return record

    def _temp(self, kind: str, key: str) -> Path:
        parent = self.path(kind, key).parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".tmp-{key}-{uuid.uuid4().hex}"
        tmp.mkdir()
        return tmp

    def _fill(self, tmp: Path, kind: str, key: str, config: Any, inputs: Mapping | None, log: str,
              code: Code | None) -> None:
        runfiles.dump_json(tmp / CONFIG, config)
        runfiles.dump_json(tmp / META, _meta(kind, key, inputs, code))
        runfiles.write_bytes(tmp / LOG, log.encode())

    @staticmethod
    def _code(folder: Path) -> dict | None:
        """The code record of a run folder's meta.json (None if absent)."""
        try:
            return json.loads((folder / META).read_text()).get("code")
        except FileNotFoundError:
            return None

    def _fingerprint(self, folder: Path) -> str | None:
        return (self._code(folder) or {}).get("fingerprint")

    def _keeps(self, folder: Path, fingerprint: str | None) -> bool:
        """Whether ``folder`` holds a complete run that a write of code `fingerprint` keeps: any
        complete run for a failure (None), one of the same fingerprint for a result."""
        if not (folder / RESULT).is_file():
            return False
        return fingerprint is None or self._fingerprint(folder) == fingerprint

    def _publish(self, tmp: Path, final: Path, fingerprint: str | None) -> bool:
        """Rename ``tmp`` to ``final``; keep an existing run that `_keeps` says stays, replace
        any other (failed, or complete but computed by other code). A replaced run is deleted only
        once ``tmp`` is in place, so a crash in between leaves both on disk."""
        retired: list[Path] = []
        try:
            for _ in range(10):
                try:
                    os.rename(tmp, final)
                    return True
                except OSError as err:
                    if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                if self._keeps(final, fingerprint):
                    shutil.rmtree(tmp, ignore_errors=True)
                    return False
                retired.extend(self._retire(final, fingerprint))
            raise OSError(f"could not publish {final}: other writers keep replacing it")
        finally:
            for trash in retired:
                shutil.rmtree(trash, ignore_errors=True)

    def _retire(self, final: Path, fingerprint: str | None) -> list[Path]:
        """Move a run folder that a write replaces aside; the folder it now lies in (if moved)."""
        trash = final.parent / f".trash-{final.name}-{uuid.uuid4().hex}"
        try:
            os.rename(final, trash)
        except FileNotFoundError:
            return []
        if self._keeps(trash, fingerprint):  # completed by another writer since we looked: restore it
            try:
                os.rename(trash, final)
                return []
            except OSError:
                pass
        return [trash]
