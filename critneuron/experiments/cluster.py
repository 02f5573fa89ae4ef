"""Dask clients for parallel work (sweeps, decoupled sub-MIPs): an embedded `LocalCluster`, or an
existing scheduler such as ``tcp://host:8786`` (a cluster started with ``dask scheduler`` and
``dask worker``, dask-jobqueue or dask-kubernetes; workers need critneuron installed and the
results root at the same path)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from dask.system import CPU_COUNT
from distributed import Client, LocalCluster


@contextmanager
def dask_client(scheduler: str | None = None, n_workers: int | None = None) -> Iterator[Client]:
    """A client on `scheduler`, or (None) on an embedded LocalCluster of `n_workers` processes
    (default: the number of cores) with one thread each and no per-worker memory limit (a worker
    holds one problem at a time; the machine's memory is the limit)."""
    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    with LocalCluster(n_workers=n_workers or CPU_COUNT, threads_per_worker=1, processes=True,
                      memory_limit=0, dashboard_address=None) as cluster, Client(cluster) as client:
        yield client
