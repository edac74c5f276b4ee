"""Where chunked work runs: in-process, on a local Dask cluster of processes, or on any
Dask cluster by scheduler address (e.g. one started by dask-jobqueue on Slurm)."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

from tqdm.auto import tqdm

from .errors import ClusterError

log = logging.getLogger(__name__)

# One BLAS/OpenMP/torch thread per worker process, so N workers on N cores do not
# oversubscribe; set before the worker imports numpy or torch.
_SINGLE_THREAD_ENV = {name: "1" for name in (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")}


@contextmanager
def dask_client(workers: int = 1, scheduler: str | None = None):
    """A ``distributed.Client`` for the run, or ``None`` to run in-process.

    Parameters
    ----------
    workers : int
        Worker processes of a local cluster; ``1`` runs in-process. [default: 1]
    scheduler : str, optional
        Address of a running Dask scheduler; overrides ``workers``.
    """
    if scheduler is None and workers <= 1:
        yield None
        return
    import dask
    from distributed import Client, LocalCluster

    # distributed sets its loggers to INFO when imported; keep them quiet unless debugging.
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("distributed").setLevel(logging.WARNING)

    if scheduler is not None:
        with _connect(scheduler) as client:
            log.info("using Dask scheduler %s", scheduler)
            yield client
        return
    with dask.config.set({"distributed.nanny.pre-spawn-environ": _SINGLE_THREAD_ENV}):
        # No dashboard; the scheduler's remaining HTTP routes take a free port, so two galcae
        # runs (or a notebook's cluster on 8787) do not collide.
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None, scheduler_kwargs={"dashboard_address": ":0"},
                          host="127.0.0.1") as cluster, \
                Client(cluster) as client:
            log.info("local Dask cluster of %d worker processes", workers)
            yield client


#: Seconds to wait for a scheduler given by address.
CONNECT_TIMEOUT = 10


def _connect(scheduler: str):
    """A client of the scheduler at ``scheduler``; one line if it cannot be reached (distributed
    logs each retry: silenced unless debugging)."""
    from distributed import Client

    quiet = not log.isEnabledFor(logging.DEBUG)
    loggers = [logging.getLogger(name) for name in ("distributed", "distributed.comm", "distributed.client")]
    levels = [lg.level for lg in loggers]
    if quiet:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
    try:
        return Client(scheduler, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClusterError(f"--scheduler {scheduler}: cannot connect ({first})") from None
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def map_chunks(func: Callable, args: Iterable[tuple], client=None, *, total: int | None = None,
               desc: str = "", unit_scale: Iterable[int] | None = None) -> Iterator[tuple[int, object]]:
    """Yield ``(index, func(*args[index]))`` as each call finishes, with a progress bar.

    In-process when ``client`` is None; otherwise each call is a Dask task. Results come
    in completion order; the index says which input each belongs to.
    """
    args = list(args)
    weights = list(unit_scale) if unit_scale is not None else [1] * len(args)
    bar = tqdm(total=total if total is not None else sum(weights), desc=desc, disable=None,
               leave=False)
    try:
        if client is None:
            for index, a in enumerate(args):
                yield index, func(*a)
                bar.update(weights[index])
            return
        from distributed import as_completed

        futures = {client.submit(func, *a, pure=False): i for i, a in enumerate(args)}
        for future in as_completed(futures):
            index = futures[future]
            yield index, future.result()
            bar.update(weights[index])
    finally:
        bar.close()


def map_ordered(func: Callable, args: Iterable[tuple], workers: int = 1, *, desc: str = "",
                unit_scale: Iterable[int] | None = None) -> list:
    """``[func(*a) for a in args]``, run on a local cluster of ``workers`` processes."""
    args = list(args)
    results = [None] * len(args)
    with dask_client(workers) as client:
        for index, result in map_chunks(func, args, client, desc=desc, unit_scale=unit_scale):
            results[index] = result
    return results


def cpu_count() -> int:
    """Cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
