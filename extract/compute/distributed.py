"""Ray, the engine for work past one machine: an optional dependency, one way to connect."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

from featcache.errors import EnvironmentFault, FeatcacheError, Terminated, UsageError

log = logging.getLogger(__name__)
ENGINES = ("local", "ray")
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


MAX_ATTEMPTS = 3


class _ShardActor:
    """A Ray actor: one model, shards on request (``compute`` is ShardWorker.compute)."""

    def __init__(self, plan: Any, store: Any, device: str, threads: int) -> None:
        import torch

        from featcache.extract.compute.worker import ShardWorker

        torch.set_num_threads(threads)
        self.worker = ShardWorker(plan, store, device=device)

    def compute(self, spec: Any) -> tuple[int, int, tuple[str, str]]:
        """(rows written, rows covered, the worker's runtime and batch description)."""
        done = self.worker.compute(spec)
        return done, spec.end - spec.start, self.worker.describe()


def _actor_options(ray: ModuleType, device: str, workers: int) -> tuple[dict, int, str]:
    """Resources per actor: one GPU each where the cluster has GPUs (and the device allows),
    else an equal share of the CPUs."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if device != "cpu" and gpus:
        return {"num_gpus": 1, "num_cpus": 1}, 1, "cuda"
    cpus = max(1, int(resources.get("CPU", 1)) // workers)
    return {"num_cpus": cpus}, cpus, "cpu"


def run_shards(plan: Any, store: Any, shards: Sequence[Any],
               on_rows: Callable[[int], object]) -> tuple[int, tuple[str, str] | None]:
    """Compute ``shards`` on Ray actors, each loading the model once and taking shards until
    none remain. A worker that dies costs its shard only: the shard goes back in the queue
    (up to ``MAX_ATTEMPTS`` times) and a fresh actor replaces the dead one."""
    if not shards:
        return 0, None
    with ray_session(plan.cfg.workers) as ray:
        resources = ray.cluster_resources()
        workers = plan.cfg.workers or max(1, int(resources.get("GPU", 0))) or 1
        options, threads, device = _actor_options(ray, plan.cfg.device, workers)
        actor_class = ray.remote(_ShardActor).options(**options)
        refs = ray.put(plan), ray.put(store)

        def spawn() -> Any:
            return actor_class.remote(*refs, device, threads)

        idle = [spawn() for _ in range(min(workers, len(shards)))]
        queue, running, attempts, images = deque(shards), {}, Counter(), 0
        about = None
        while queue or running:
            while queue and idle:
                actor, spec = idle.pop(), queue.popleft()
                running[actor.compute.remote(spec)] = (actor, spec)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            actor, spec = running.pop(ref)
            try:
                done, covered, about = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                attempts[spec] += 1
                if attempts[spec] >= MAX_ATTEMPTS:
                    raise EnvironmentFault(
                        f"shard {spec.split} {spec.start}..{spec.end - 1} failed "
                        f"{attempts[spec]} times (last: the worker died: {exc}); re-run to resume"
                    ) from None
                log.warning("a worker died on shard %s %d..%d; retrying it", spec.split,
                            spec.start, spec.end - 1)
                queue.appendleft(spec)
                idle.append(spawn())
                continue
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, FeatcacheError):
                    raise exc.cause from None
                raise
            images += done
            on_rows(covered)
            idle.append(actor)
        return images, about
