"""One process's share of stage one: the model loaded once, shards computed in turn.

:meth:`ShardWorker.compute_all` is the one code path for features: the local engine hands
it every missing shard, each Ray actor calls it (as :meth:`~ShardWorker.compute`) for the
shards it is given. It is idempotent (a shard is written whole, atomically, under a name
fixed by its rows), so a retry after a crash can only write the same shard again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from featcache.errors import UsageError
from featcache.extract.backbones.registry import load_backbone, make_feature_extractor
from featcache.extract.cache.shards import ShardSpec, ShardStore
from featcache.extract.compute.probe import Probe, cached_probe, choose_batch_size
from featcache.extract.compute.runtimes import (
    EXPORT_VERSION,
    glue_threads,
    resolve_runtime,
    usable_runtime,
)
from featcache.extract.data.preprocess import MakeViews, Normalize
from featcache.extract.plan import ExtractPlan
from featcache.files import slug
from featcache.options import FLATTEN_LIMIT
from featcache.threads import torch_threads

log = logging.getLogger(__name__)
PREFETCH_BATCHES = 4
PREFETCH_BYTES = 64 * 2**20  # of decoded pixels at most, ahead of the forward pass


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


@dataclass
class _Part:
    """One shard being computed: what its finished batches gave so far."""

    spec: ShardSpec
    rows: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    blocks: list[dict[str, np.ndarray]] = field(default_factory=list)


class ShardWorker:
    """Computes shards of ``plan`` into ``store`` with its model loaded once.

    Where the batch size is known before the model (given, or the probe's cached choice),
    the model compiles on a thread of its own while the first batches decode: with a kept
    export that is ~0.1 s of one core, which the other core spends decoding.
    """

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
        # torch's thread count is read here: the compile thread would see the glue's one
        compile_ = partial(usable_runtime(self.runtime, self.device).compile, build, example,
                           export_file(plan, taps), torch.get_num_threads())
        self.makers = {name: plan.preprocess.views(n) for name, n in plan.views.items()}
        self.decoders = decoders or default_decoders(self.device)
        self.pool = ThreadPoolExecutor(self.decoders, thread_name_prefix="decode")
        self.forwarders: ThreadPoolExecutor | None = None
        self._compiler = ThreadPoolExecutor(1, thread_name_prefix="compile")
        given = batch_size or plan.cfg.batch_size
        config = {
            "backbone": plan.key.backbone,
            "taps": sorted(set(taps.values())),
            "resolution": size,
            "device": self.device.type,
            "runtime": self.runtime,
            "pool": plan.cfg.pool,
        }
        self._compiled: Future | None = self._compiler.submit(compile_)
        with torch_threads(glue_threads(self.runtime)):  # the probe's key names the threads
            known = Probe(given) if given else cached_probe(config, self._probe_file)
            if known is None:
                self._ready()
                known = choose_batch_size(self._features, resolution=size, device=self.device,
                                          config=config, streams=self.streams,
                                          cache_file=self._probe_file)
        self.probe = known
        self.batch_size = known.batch_size

    @property
    def _probe_file(self) -> Path:
        return self.plan.cfg.data_dir / "probe.json"

    def _ready(self) -> None:
        """Waits for the model; then its forward pass and streams are set."""
        if self._compiled is None:
            return
        compiled = self._compiled.result()
        self._compiler.shutdown()
        self.extractor, self.streams = compiled.forward, compiled.streams
        # a runtime with several streams gets a thread each, and a batch queued behind them
        self.forwarders = ThreadPoolExecutor(self.streams, thread_name_prefix="forward") \
            if self.streams > 1 else None
        self._compiled = None

    def describe(self) -> tuple[str, str]:
        """(runtime, what the summary line says: runtime, batch and the probe's rates)."""
        return self.runtime, f"{self.runtime}, {self.probe.describe()}"

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)
        self._compiler.shutdown()
        if self.forwarders is not None:
            self.forwarders.shutdown(cancel_futures=True)

    def compute(self, spec: ShardSpec, on_rows: Callable[[int], object] = lambda n: None) -> int:
        """Decode, forward, pool and store items ``[start, end)`` of ``spec.split``."""
        return self.compute_all([spec], on_rows)

    def compute_all(self, specs: Sequence[ShardSpec],
                    on_rows: Callable[[int], object] = lambda n: None) -> int:
        """:meth:`compute` for each shard, with no pause between them: decoding and forward
        passes run on across shard boundaries, each shard written as its last batch ends."""
        with torch_threads(glue_threads(self.runtime)):
            return self._compute(specs, on_rows)

    def _compute(self, specs: Sequence[ShardSpec], on_rows: Callable[[int], object]) -> int:
        batches = self._batches(specs)
        first = next(batches, None)  # decoding has begun: the model may still be compiling
        self._ready()
        running: deque[tuple[_Part, int, Future | None, bool]] = deque()  # in row order
        done = 0

        def finish_oldest() -> None:
            nonlocal done
            part, count, future, last = running.popleft()
            if future is not None:
                part.blocks.append(future.result())
            on_rows(count)
            if last:
                done += self._write(part)

        for part, rows, views, errors, last in chain([first], batches) if first else ():
            part.skipped += self._check_errors(self.plan.dataset.splits[part.spec.split].ids,
                                               errors)
            on_rows(len(errors))
            part.rows += rows
            future = self._submit(views) if views is not None else None
            running.append((part, len(rows), future, last))
            while len(running) > self.streams:
                finish_oldest()
        while running:
            finish_oldest()
        return done

    def _write(self, part: _Part) -> int:
        split = self.plan.dataset.splits[part.spec.split]
        features = {
            name: np.concatenate([b[name] for b in part.blocks]) for name in self.store.layers
        } if part.blocks else {}
        self.store.write(part.spec, rows=part.rows, ids=[split.ids[i] for i in part.rows],
                         labels=split.labels[part.rows], features=features,
                         skipped=part.skipped)
        return len(part.rows)

    def _batches(self, specs: Sequence[ShardSpec]) -> Iterator[
            tuple[_Part, list[int], torch.Tensor | None, list, bool]]:
        """(shard, rows, uint8 views [B, V, 3, S, S] channels last, errors, whether it is the
        shard's last batch), decoded ahead in threads, each image straight into its batch.

        A batch is one task: a task per image cost 0.12 ms of hand-over an image, more than
        decoding a 32 px CIFAR JPEG and resizing it to 112 px (0.2 ms). Up to
        ``PREFETCH_BYTES`` of pixels are decoded ahead, enough to cover a model compiling.
        """
        def tasks() -> Iterator[tuple[_Part, bool, Callable, MakeViews, range]]:
            for spec in specs:
                part, load = _Part(spec), self.plan.dataset.splits[spec.split].load
                for lo in range(spec.start, spec.end, self.batch_size):
                    hi = min(lo + self.batch_size, spec.end)
                    yield part, hi == spec.end, load, self.makers[spec.split], range(lo, hi)

        todo, window = tasks(), deque()

        def submit() -> None:
            task = next(todo, None)
            if task is not None:
                window.append((*task[:2], self.pool.submit(_decode_batch, *task[2:])))

        most = max(make.shape[0] for make in self.makers.values())
        size = self.plan.key.resolution
        ahead = PREFETCH_BYTES // (self.batch_size * most * size * size * 3)
        for _ in range(max(PREFETCH_BATCHES, 2 * self.decoders, ahead)):
            submit()
        while window:
            part, last, future = window.popleft()
            submit()
            rows, views, errors = future.result()
            yield part, rows, views, errors, last

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


def _decode_batch(load: Callable, make: MakeViews, rows: range) -> tuple[
        list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """(rows decoded, their views [B, V, 3, S, S], (row, error text) of the rest); never
    raises. Each image is written into the batch where it lands: no stacking copy after."""
    batch = np.empty((len(rows), *make.shape), np.uint8)
    good, errors = [], []
    for row in rows:
        try:
            make.into(load(row), batch[len(good)])
            good.append(row)
        except Exception as exc:
            errors.append((row, f"{type(exc).__name__}: {exc}"))
    # no torch op that computes here: one on a decoding thread would start a second OpenMP
    # team beside eager PyTorch's, and the two teams' spinning threads fight for the cores
    views = torch.from_numpy(batch[:len(good)]).permute(0, 1, 4, 2, 3) if good else None
    return good, views, errors
