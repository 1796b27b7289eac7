"""Ray, the optional engine of both stages: one check of the engine name, one way to connect."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import ModuleType

from featcache.errors import EnvironmentFault, UsageError
from featcache.options import ENGINES

INSTALL_HINT = "pip install 'featcache[ray]'"


def check_engine(engine: str) -> None:
    """Refuse an unknown engine, or ``ray`` where Ray is not installed."""
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    if engine == "ray":
        ray_module()


def ray_module() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise UsageError(f"ENGINE=ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


@contextlib.contextmanager
def ray_session(workers: int | None = None) -> Iterator[ModuleType]:
    """Ray, connected: an existing session as it is; else ``$RAY_ADDRESS`` (``auto``: the
    running cluster); else a local one with ``workers`` CPUs (all cores by default), shut
    down on exit."""
    ray = ray_module()
    if ray.is_initialized():
        yield ray
        return
    address = os.environ.get("RAY_ADDRESS") or None
    local = {} if address else {"num_cpus": workers or os.cpu_count() or 1}
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **local)
    except ConnectionError as exc:
        raise EnvironmentFault(f"cannot reach the Ray cluster at RAY_ADDRESS={address}: {exc}"
                               ) from None
    try:
        yield ray
    finally:
        ray.shutdown()
