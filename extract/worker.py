"""One process's share of stage one: the model loaded once, shards computed one at a time.

:meth:`ShardWorker.compute` is the one code path for features: the local engine calls it in
a loop, each Ray actor calls it for the shards it is given. It is idempotent (a shard is
written whole, atomically, under a name fixed by its rows), so a retry after a crash can
only write the same shard again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .backbones import load_backbone, make_feature_extractor
from .cache import slug
from .config import FLATTEN_LIMIT
from .errors import UsageError
from .plan import ExtractPlan
from .preprocess import Normalize
from .probe import Probe, choose_batch_size
from .runtimes import (
    EXPORT_VERSION,
    compile_forward,
    glue_threads,
    resolve_runtime,
    torch_threads,
)
from .shards import ShardSpec, ShardStore

log = logging.getLogger(__name__)
PREFETCH_BATCHES = 4


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "device 'cuda' requested but no CUDA device is available; valid: cpu, auto"
        )
    return torch.device(name)


def export_file(plan: ExtractPlan, taps: dict[str, str]) -> Path:
    """Where a runtime keeps its export of ``taps`` (``<data dir>/exports``), named by a
    sha256 of everything the exported graph depends on: backbone, the weights' sha256, the
    taps, resolution, normalisation, the pipeline's and the export's versions and the
    packages' (torch, torchvision, timm, featcache...)."""
    what = {
        "backbone": plan.key.backbone,
        "weights": plan.key.weights_sha256,
        "taps": taps,
        "resolution": plan.key.resolution,
        "mean": list(plan.preprocess.mean),
        "std": list(plan.preprocess.std),
        "pipeline": plan.key.pipeline,
        "export": EXPORT_VERSION,
        "versions": plan.meta["versions"],
    }
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
    name = f"{slug(plan.key.backbone)}-r{plan.key.resolution}-{digest[:16]}.onnx"
    return plan.cfg.data_dir / "exports" / name


def default_decoders(device: torch.device) -> int:
    """Decoding threads: most cores beside a GPU; one beside the CPU's own forward pass."""
    cores = os.cpu_count() or 1
    return min(8, max(1, cores - 1)) if device.type == "cuda" else 1


class ShardWorker:
    """Computes shards of ``plan`` into ``store`` with its model loaded once."""

    def __init__(self, plan: ExtractPlan, store: ShardStore, *, device: str = "auto",
                 batch_size: int | None = None, decoders: int | None = None) -> None:
        self.plan, self.store = plan, store
        self.device = resolve_device(device)
        taps = {name: plan.taps[name] for name in store.layers}
        pre = plan.preprocess

        def build() -> torch.nn.Module:
            model, spec = load_backbone(plan.key.backbone)
            return torch.nn.Sequential(
                Normalize(pre.mean, pre.std), make_feature_extractor(model, spec, taps)
            ).to(self.device)

        self.runtime = resolve_runtime(plan.cfg.runtime, self.device)
        size = plan.key.resolution
        example = torch.zeros(1, 3, size, size, dtype=torch.uint8, device=self.device)
        compiled = compile_forward(self.runtime, build, example, self.device,
                                   export_file(plan, taps))
        self.extractor, self.streams = compiled.forward, compiled.streams
        self.makers = {name: plan.preprocess.views(n) for name, n in plan.views.items()}
        given = batch_size or plan.cfg.batch_size
        self.probe = Probe(given) if given else self._probe(taps)
        self.batch_size = self.probe.batch_size
        self.decoders = decoders or default_decoders(self.device)
        self.pool = ThreadPoolExecutor(self.decoders, thread_name_prefix="decode")
        # a runtime with several streams gets a thread each, and a batch queued behind them
        self.forwarders = ThreadPoolExecutor(self.streams, thread_name_prefix="forward") \
            if self.streams > 1 else None

    def describe(self) -> tuple[str, str]:
        """(runtime, what the summary line says: runtime, batch and the probe's rates)."""
        return self.runtime, f"{self.runtime}, {self.probe.describe()}"

    def _probe(self, taps: dict[str, str]) -> Probe:
        """No batch size given: the fastest on this machine and configuration (cached)."""
        config = {
            "backbone": self.plan.key.backbone,
            "taps": sorted(set(taps.values())),
            "resolution": self.plan.key.resolution,
            "device": self.device.type,
            "runtime": self.runtime,
            "pool": self.plan.cfg.pool,
        }
        with torch_threads(glue_threads(self.runtime)):
            return choose_batch_size(self._features, resolution=self.plan.key.resolution,
                                     device=self.device, config=config, streams=self.streams,
                                     cache_file=self.plan.cfg.data_dir / "probe.json")

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)
        if self.forwarders is not None:
            self.forwarders.shutdown(cancel_futures=True)

    def compute(self, spec: ShardSpec, on_rows: Callable[[int], object] = lambda n: None) -> int:
        """Decode, forward, pool and store items ``[start, end)`` of ``spec.split``."""
        with torch_threads(glue_threads(self.runtime)):
            return self._compute(spec, on_rows)

    def _compute(self, spec: ShardSpec, on_rows: Callable[[int], object]) -> int:
        split = self.plan.dataset.splits[spec.split]
        rows, skipped, blocks = [], [], []
        running: deque[tuple[int, Future]] = deque()  # forward passes in flight, in row order

        def finish_oldest() -> None:
            count, future = running.popleft()
            blocks.append(future.result())
            on_rows(count)

        for batch_rows, views, errors in self._batches(spec):
            skipped += self._check_errors(split.ids, errors)
            on_rows(len(errors))
            if views is not None:
                running.append((len(batch_rows), self._submit(views)))
                rows += batch_rows
            while len(running) > self.streams:
                finish_oldest()
        while running:
            finish_oldest()
        features = {
            name: np.concatenate([b[name] for b in blocks]) for name in self.store.layers
        } if blocks else {}
        self.store.write(spec, rows=rows, ids=[split.ids[i] for i in rows],
                         labels=split.labels[rows], features=features, skipped=skipped)
        return len(rows)

    def _batches(self, spec: ShardSpec) -> Iterator[tuple[list[int], torch.Tensor | None, list]]:
        """(rows, uint8 views [B, V, 3, S, S], errors) batches, decoded ahead in threads.

        A batch is one task: a task per image cost 0.12 ms of hand-over an image, more than
        decoding a 32 px CIFAR JPEG and resizing it to 112 px (0.2 ms).
        """
        load, make = self.plan.dataset.splits[spec.split].load, self.makers[spec.split]
        starts = iter(range(spec.start, spec.end, self.batch_size))
        window: deque[Future] = deque()

        def submit() -> None:
            lo = next(starts, None)
            if lo is not None:
                rows = range(lo, min(lo + self.batch_size, spec.end))
                window.append(self.pool.submit(_decode_batch, load, make, rows))

        for _ in range(max(PREFETCH_BATCHES, 2 * self.decoders)):
            submit()
        while window:
            future = window.popleft()
            submit()
            rows, views, errors = future.result()
            # stacked here: a torch op on a decoding thread would start a second OpenMP team
            # beside eager PyTorch's, and the two teams' spinning threads fight for the cores
            yield rows, (torch.stack(views) if views else None), errors

    def _check_errors(self, ids: list[str], errors: list[tuple[int, str]]) -> list[int]:
        for row, err in errors:
            if not self.plan.cfg.skip_bad:
                raise UsageError(
                    f"cannot read image {ids[row]!r} ({err}); fix or remove it, "
                    "or pass SKIP_BAD=1 (--skip-bad) to skip and record it"
                )
            log.warning("skipping unreadable image %s (%s)", ids[row], err)
        return [row for row, _ in errors]

    def _submit(self, views: torch.Tensor) -> Future:
        """The batch's features as a future: computed here, or on a forward thread."""
        if self.forwarders is not None:
            return self.forwarders.submit(self._forward, views)
        done: Future = Future()
        done.set_result(self._forward(views))
        return done

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """uint8 [images, views, 3, H, W] -> each tap's features, ``batch_size`` views a pass.

        Ten views make a batch ten times larger; on a CPU a pass over 320 views ran at a
        third of the per-view speed of 32 (activations outgrow the caches), so the views go
        through the model in slices of the batch size.
        """
        b, v = x.shape[:2]
        parts = [self._features(chunk) for chunk in x.flatten(0, 1).split(self.batch_size)]
        return {
            k: torch.cat([p[k] for p in parts]).view(b, v, -1).squeeze(1).numpy()
            for k in parts[0]
        }

    @torch.inference_mode()  # per thread: the probe calls this from threads of its own
    def _features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        out = self.extractor(x)
        return {k: self._reduce(k, t.float()).cpu() for k, t in out.items()}

    def _reduce(self, name: str, t: torch.Tensor) -> torch.Tensor:
        pool = self.plan.cfg.pool
        if t.ndim == 4 and pool != "none":
            return t.mean((2, 3)) if pool == "avg" else t.amax((2, 3))
        if t.ndim == 3 and pool != "none":
            return t.mean(1) if pool == "avg" else t.amax(1)
        flat = t.flatten(1)
        if flat.shape[1] > FLATTEN_LIMIT and not self.plan.cfg.force:
            raise UsageError(
                f"layer {name!r} flattens to {flat.shape[1]:,} values per image "
                f"(limit {FLATTEN_LIMIT:,}); use POOL=avg or max, or FORCE=1 (--force)"
            )
        return flat


def _decode_batch(load: Callable, make: Callable, rows: range) -> tuple[
        list[int], list[torch.Tensor], list[tuple[int, str]]]:
    """(rows decoded, their views, (row, error text) of the rest); never raises."""
    good, views, errors = [], [], []
    for row in rows:
        try:
            views.append(make(load(row)))
            good.append(row)
        except Exception as exc:
            errors.append((row, f"{type(exc).__name__}: {exc}"))
    return good, views, errors
