"""Ray, the optional engine of both stages: one check of the engine name, one way to connect."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import ModuleType

from featcache.errors import EnvironmentFault, Terminated, UsageError
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
    ours = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **local)
    except ConnectionError as exc:
        raise EnvironmentFault(f"cannot reach the Ray cluster at RAY_ADDRESS={address}: {exc}"
                               ) from None
    except SystemExit:  # SIGTERM while ray.init's own handlers were in place
        with contextlib.suppress(Exception):
            ray.shutdown()
        raise Terminated from None
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, ours)  # ray.init's own exits 15, saying nothing
    try:
        yield ray
    finally:
        ray.shutdown()
