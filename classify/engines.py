"""Where stage two's independent fits run: threads in this process, or Ray tasks.

One operation, ``map_shared(work, shared, units)``: for every object of ``shared`` (a fold's
features, a cache's features) run ``work(object, unit)`` for every unit. Locally the objects
are built and dropped one at a time and the units run in threads that share out the torch
threads; on Ray each object goes to the object store once (``ray.put``) and every task
receives the reference, so features are never shipped per task.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import torch
from joblib import Parallel, delayed

from featcache.raysession import check_engine, ray_session
from featcache.threads import torch_threads

S = TypeVar("S")
U = TypeVar("U")
R = TypeVar("R")


class Engine(Protocol):
    """Runs ``work(shared_object, unit)`` for every shared object and unit."""

    name: str

    def map_shared(
        self, work: Callable[[S, U], R], shared: Iterable[S], units: Sequence[U]
    ) -> list[list[R]]: ...


class LocalEngine:
    """Threads in this process; one shared object alive at a time."""

    name = "local"

    def __init__(self, n_jobs: int = 2) -> None:
        self.n_jobs = max(1, n_jobs)

    def map_shared(
        self, work: Callable[[S, U], R], shared: Iterable[S], units: Sequence[U]
    ) -> list[list[R]]:
        results = []
        jobs = min(self.n_jobs, len(units))
        for obj in shared:
            if jobs == 1:
                results.append([work(obj, unit) for unit in units])
            else:
                with torch_threads(torch.get_num_threads() // jobs):
                    results.append(Parallel(n_jobs=jobs, backend="threading")(
                        delayed(work)(obj, unit) for unit in units
                    ))
            del obj  # let the next object replace this one, not join it
        return results


class RayEngine:
    """Ray tasks (one CPU each) on the session opened by ``engine_session``."""

    name = "ray"

    def __init__(self, ray: Any) -> None:
        self.ray = ray

    def map_shared(
        self, work: Callable[[S, U], R], shared: Iterable[S], units: Sequence[U]
    ) -> list[list[R]]:
        task = self.ray.remote(work)
        refs = [self.ray.put(obj) for obj in shared]
        pending = [[task.remote(ref, unit) for unit in units] for ref in refs]
        return [self.ray.get(row) for row in pending]


@contextlib.contextmanager
def engine_session(engine: str, n_jobs: int = 2) -> Iterator[Engine]:
    """The engine named ``engine`` (``local`` or ``ray``), ready for the duration of the block.

    Ray connects as ``featcache.raysession.ray_session`` does: an existing session, else
    ``$RAY_ADDRESS``, else a local one with ``n_jobs`` CPUs.
    """
    check_engine(engine)
    if engine == "local":
        yield LocalEngine(n_jobs)
        return
    with ray_session(n_jobs or os.cpu_count()) as ray:
        yield RayEngine(ray)
