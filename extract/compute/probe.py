"""Batch-size probe: time the actual forward pass at a few batch sizes and keep the fastest.

Like ``cudnn.benchmark``: a few seconds on the real model, resolution and device, then the
choice is cached per machine and configuration in a small JSON file under the data
directory, so later runs start at once. On a CPU the best batch is small (the activations
of a large batch outgrow the caches: on the 2-core development machine 8 at 224 px, 16 at
112 px); on a GPU the probe climbs until the rate stops paying or memory runs out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from featcache.files import atomic_write

log = logging.getLogger(__name__)

PROBE_VERSION = 2  # 2: a pass runs one batch per stream at once
CPU_MAX_BATCH = 64
GPU_MAX_BATCH = 1024
# the largest batch within 3 % of the fastest is chosen: the probe times the forward step
# only, and each batch also costs a fixed share outside it (stacking, handing over to the
# runtime), which favours the larger of two batches the probe cannot tell apart
PAYS = 0.97
DECLINE = 0.9  # two sizes in a row below 90 % of the best so far end the climb
MIN_PASS_SECONDS = 0.2  # timed passes per size: at least two, and at least this long
OTHERS_LIMIT = 0.5  # cores' worth of other processes' CPU time above which a probe isn't kept


@dataclass(frozen=True)
class Probe:
    """The batch, where it came from ("given", "probed", "cached", ...), and the rates measured."""

    batch_size: int
    source: str = "given"
    rates: Mapping[int, float] = field(default_factory=dict)  # img/s per batch size tried
    seconds: float = 0.0

    @property
    def cached(self) -> bool:
        return self.source == "cached"

    def describe(self) -> str:
        if not self.rates:
            return f"batch {self.batch_size} ({self.source})"
        rates = ", ".join(f"b{b} {r:.0f}" for b, r in self.rates.items())
        return f"batch {self.batch_size} ({self.source} in {self.seconds:.1f} s: {rates} img/s)"


def machine() -> dict[str, object]:
    """What makes timings of one machine differ from another's."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpus,
        "torch": torch.__version__,
    }


def probe_key(config: Mapping[str, object]) -> str:
    """sha256 of the machine and the configuration (backbone, taps, resolution, views, device)."""
    text = json.dumps({"probe": PROBE_VERSION, **machine(), **config}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def choose_batch_size(
    forward: Callable[[torch.Tensor], object],
    *,
    resolution: int,
    device: torch.device,
    config: Mapping[str, object],
    cache_file: Path | None,
    streams: int = 1,
    budget_s: float = 10.0,
) -> Probe:
    """The cached choice for this machine and ``config``, else a fresh probe (then cached).

    A probe during which other processes used more than half a core (measured over the
    probe itself, from ``/proc/stat`` less this process's own CPU time) is used for this run
    only, not cached: its timings say little about the machine.

    ``forward`` takes a uint8 batch [B, 3, resolution, resolution] on the CPU, as the data
    loader gives it, and does everything the pipeline does with it (copy to the device,
    normalise, extract, pool); ``streams`` calls of it run at once, as in the pipeline;
    ``config`` names what else changes its speed.
    """
    cached = cached_probe(config, cache_file)
    if cached is not None:
        return cached
    before = _cpu_seconds()
    probe = run_probe(forward, resolution=resolution, device=device, streams=streams,
                      budget_s=budget_s)
    busy = _others_cores(before)
    if busy > OTHERS_LIMIT:
        log.info("probe: other processes held %.1f cores; choice not cached", busy)
        return replace(probe, source="probed under load, not cached")
    if cache_file is not None:
        table = _read(cache_file)
        table[probe_key(config)] = {
            "batch_size": probe.batch_size,
            "rates": {str(b): round(r, 1) for b, r in probe.rates.items()},
            "seconds": round(probe.seconds, 2),
            "machine": machine(),
            "config": dict(config),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        _write(cache_file, table)
    return probe


def cached_probe(config: Mapping[str, object], cache_file: Path | None) -> Probe | None:
    """The choice cached for this machine and ``config``, or None."""
    entry = _read(cache_file).get(probe_key(config))
    return Probe(int(entry["batch_size"]), "cached") if entry else None


def run_probe(
    forward: Callable[[torch.Tensor], object],
    *,
    resolution: int,
    device: torch.device,
    streams: int = 1,
    budget_s: float = 10.0,
) -> Probe:
    """Time batch sizes 1, 2, 4, ... until the rate declines, memory runs out or time is up."""
    start = time.perf_counter()
    on_gpu = device.type == "cuda"
    rates: dict[int, float] = {}
    batch, below = 1, 0
    while batch <= (GPU_MAX_BATCH if on_gpu else CPU_MAX_BATCH):
        try:
            rates[batch] = _rate(forward, batch, resolution, device, streams)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            log.info("probe: batch %d does not fit in GPU memory", batch)
            break
        best = max(rates.values())
        below = below + 1 if rates[batch] < DECLINE * best else 0
        if below == 2 or time.perf_counter() - start > budget_s:
            break
        batch *= 2
    best = max(rates.values())
    chosen = max(b for b, r in rates.items() if r >= PAYS * best)
    return Probe(chosen, "probed", rates, time.perf_counter() - start)


def _rate(forward: Callable[[torch.Tensor], object], batch: int, res: int, device: torch.device,
          streams: int) -> float:
    """img/s of ``forward`` on a random uint8 batch, channels last as the pipeline's batches
    are (see :func:`pass_rate`)."""
    x = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8)
    x = x.contiguous(memory_format=torch.channels_last)
    return pass_rate(forward, x, streams, device)


def pass_rate(forward: Callable[[torch.Tensor], object], x: torch.Tensor, streams: int,
              device: torch.device, min_seconds: float = MIN_PASS_SECONDS) -> float:
    """img/s of the fastest timed pass after one warm-up pass (which builds kernels); a pass
    is ``streams`` calls on ``x`` at once, one per thread, where the runtime has several
    streams, and one call on this thread otherwise (eager PyTorch's threads belong to it)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with ThreadPoolExecutor(streams) as threads:

        def one_pass() -> None:
            if streams == 1:
                forward(x)
            else:
                list(threads.map(forward, [x] * streams))
            sync()

        one_pass()
        fastest, passes, began = float("inf"), 0, time.perf_counter()
        while passes < 2 or time.perf_counter() - began < min_seconds:
            t = time.perf_counter()
            one_pass()
            fastest = min(fastest, time.perf_counter() - t)
            passes += 1
    return streams * len(x) / fastest


def _cpu_seconds() -> tuple[float, float, float] | None:
    """(wall clock, CPU seconds of every process, of this one), or None without /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    own = os.times()
    return time.perf_counter(), busy, own.user + own.system


def _others_cores(before: tuple[float, float, float] | None) -> float:
    """Cores' worth of CPU time other processes used since ``before`` (0 where unknown)."""
    after = _cpu_seconds()
    if before is None or after is None or after[0] <= before[0]:
        return 0.0
    others = (after[1] - before[1]) - (after[2] - before[2])
    return max(0.0, others / (after[0] - before[0]))


def _read(path: Path | None) -> dict[str, dict]:
    if path is None or not path.is_file():
        return {}
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("ignoring unreadable probe cache %s", path)
        return {}
    return table if isinstance(table, dict) else {}


def _write(path: Path, table: dict[str, dict]) -> None:
    """Atomic replace: a reader sees the old table or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: fh.write(json.dumps(table, indent=1).encode()))
