"""Toy sweep tasks for tests/test_sweep.py, importable by Dask worker processes.

Environment knobs (inherited by workers started after they are set):
``SWEEP_SLEEP`` seconds to sleep per run, ``SWEEP_MARKERS`` a folder that gets one file per
execution (named by λ), so tests can count how often each run really ran.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from critneuron.experiments.store import RunOutput


def square(config: dict) -> dict:
    """λ² of the config's score.lambda_, plus the pid of the process that ran it."""
    lam = config["score"]["lambda_"]
    if os.environ.get("SWEEP_MARKERS"):
        (Path(os.environ["SWEEP_MARKERS"]) / f"{lam:g}-{uuid.uuid4().hex}").touch()
    time.sleep(float(os.environ.get("SWEEP_SLEEP", "0")))
    return {"value": lam**2, "pid": os.getpid()}


def fail_on_three(config: dict) -> dict:
    """Like `square`, but refuses λ = 3."""
    if config["score"]["lambda_"] == 3:
        raise ValueError("lambda 3 is refused")
    return square(config)


def with_artifacts(config: dict) -> RunOutput:
    """Prints a line (captured into log.txt) and returns an artifact."""
    print("hello from the task")
    return RunOutput(result=square(config), artifacts={"lam.json": config["score"]["lambda_"]}, log="done\n")
