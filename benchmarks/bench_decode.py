"""Decoding vs forward on the CPU: per-image costs, and which arrangement keeps the cores busy.

    python benchmarks/bench_decode.py [--data ../shared/data/ucmerced-jpg] [--res 224]
                                      [--images 1000] [--batch 8] [--rounds 2]
                                      [--size 500x375]

``--size WxH`` re-encodes the chosen images at that size first (JPEG quality 90), e.g.
ImageNet-sized photographs for docs/scale.md; ``--rounds 0`` stops after part 1.

Part 1 times, one image at a time on one thread, the pipeline's steps: decode (open and
convert to RGB), resize to the view (``MakeViews``), and the forward pass per image at
``--batch``. Part 2 runs decode + forward (no HDF5) over ``--images`` files in several
arrangements, interleaved within each round: decoding in the main thread, in DataLoader
worker processes (1, 2), or in a pool of threads (PIL releases the GIL while it decodes
and resizes), with torch using 1 or 2 intra-op threads.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from featcache.extract.backbones.registry import (
    get_spec,
    load_backbone,
    make_feature_extractor,
    resolve_layers,
)
from featcache.extract.compute.runtimes import RUNTIMES, compile_forward
from featcache.extract.data.images import decode
from featcache.extract.data.preprocess import MakeViews, normalize

ROOT = Path(__file__).resolve().parents[1]


class _Items(Dataset):
    """Rows -> (row, uint8 views); picklable for DataLoader worker processes."""

    def __init__(self, paths: list[Path], make: MakeViews) -> None:
        self.paths, self.make = paths, make

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> tuple[int, torch.Tensor]:
        return row, self.make(self.paths[row])


def _collate(items: list[tuple[int, torch.Tensor]]) -> tuple[list[int], torch.Tensor]:
    return [r for r, _ in items], torch.stack([x for _, x in items])


def forward_fn(res: int, runtime: str, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 batch -> pooled float16 features, as the pipeline computes them."""
    torch.set_num_threads(threads)
    model, spec = load_backbone("efficientnet_lite0")
    pre = spec.preprocess(res)
    net = make_feature_extractor(model, spec, resolve_layers(spec, ["pool"]))
    example = torch.zeros(1, 3, res, res)
    net = compile_forward(runtime, net, example, torch.device("cpu")).forward

    @torch.inference_mode()
    def forward(x: torch.Tensor) -> torch.Tensor:
        return net(normalize(x, pre.mean, pre.std))["pool"].to(torch.float16)

    return forward


def per_image(paths: list[Path], make: MakeViews, forwards, batch: int, res: int) -> dict:
    """ms per image of each step, one thread, median over ``paths``."""
    decoded, resized, whole = [], [], []
    for path in paths:
        t0 = time.perf_counter()
        img = decode(path)
        img.load()
        t1 = time.perf_counter()
        make(img)
        t2 = time.perf_counter()
        make(path)
        decoded.append(t1 - t0)
        resized.append(t2 - t1)
        whole.append(time.perf_counter() - t2)
    x = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8)
    out = {"decode (full size)": np.median(decoded) * 1e3,
           "resize+tensor": np.median(resized) * 1e3,
           "the pipeline's view (draft decode where it applies)": np.median(whole) * 1e3}
    for threads, forward in forwards.items():
        torch.set_num_threads(threads)
        forward(x)
        t = time.perf_counter()
        for _ in range(max(2, 64 // batch)):
            forward(x)
        passes = max(2, 64 // batch)
        out[f"forward ({threads} thread{'s' * (threads > 1)})"] = (
            (time.perf_counter() - t) / (passes * batch) * 1e3
        )
    return out


def loader_batches(items: _Items, batch: int, workers: int) -> Iterator:
    return iter(
        DataLoader(
            items,
            batch_size=batch,
            num_workers=workers,
            collate_fn=_collate,
            prefetch_factor=4 if workers else None,
        )
    )


def thread_batches(items: _Items, batch: int, threads: int) -> Iterator:
    """Batches decoded by a thread pool, in order, at most a few batches ahead."""
    with ThreadPoolExecutor(threads) as pool:
        starts = range(0, len(items), batch)
        pending = []
        for s in starts:
            pending.append(pool.map(items.__getitem__, range(s, min(s + batch, len(items)))))
            if len(pending) > 4:
                yield _collate(list(pending.pop(0)))
        for p in pending:
            yield _collate(list(p))


def run(arrangement: tuple[str, int, int], items: _Items, batch: int, forwards) -> float:
    kind, n, threads = arrangement
    torch.set_num_threads(threads)
    forward = forwards[threads]
    start = time.perf_counter()
    batches = (
        loader_batches(items, batch, n) if kind == "workers" else thread_batches(items, batch, n)
    )
    images = 0
    for _rows, x in batches:
        forward(x.flatten(0, 1))
        images += len(x)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/ucmerced-jpg")
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runtime", default="eager", choices=RUNTIMES)
    parser.add_argument("--size", default=None, help="re-encode the images at WxH first")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cores = os.cpu_count()
    found = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    paths = found[:: max(1, len(found) // args.images)][: args.images]
    if args.size:
        paths = _reencoded(paths, tuple(int(v) for v in args.size.split("x")))
    make = get_spec("efficientnet_lite0").preprocess(args.res).views(1)
    forwards = {t: forward_fn(args.res, args.runtime, t) for t in (1, cores)}
    print(
        f"{datetime.now():%Y-%m-%d %H:%M}, {platform.machine()}, {cores} cores, "
        f"torch {torch.__version__}, {args.data.name} @ {args.res}px, batch {args.batch}, "
        f"runtime {args.runtime}, {len(paths)} images"
        + (f" re-encoded at {args.size}" if args.size else "")
        + f", load {os.getloadavg()[0]:.2f}"
    )
    costs = per_image(paths[:200], make, forwards, args.batch, args.res)
    print("ms per image: " + ", ".join(f"{k} {v:.2f}" for k, v in costs.items()), flush=True)
    if args.rounds:
        arrangements(paths, make, forwards, args.batch, args.rounds)


def arrangements(paths: list[Path], make: MakeViews, forwards, batch: int, rounds: int) -> None:
    """Part 2: decode + forward over ``paths`` in each arrangement, interleaved per round."""
    cores = os.cpu_count()
    items = _Items(paths, make)
    cases = [("workers", 0, cores), ("workers", 1, cores), ("workers", 2, cores)]
    cases += [("workers", 1, 1), ("threads", 1, cores), ("threads", 2, cores)]
    cases += [("threads", 1, 1)]
    rates: dict[tuple, list[float]] = {a: [] for a in cases}
    for r in range(rounds):
        for a in cases:
            rates[a].append(run(a, items, batch, forwards))
        print(f"round {r + 1}, load {os.getloadavg()[0]:.2f}", flush=True)
    print("decode + forward, img/s per round:")
    for (kind, n, threads), rs in rates.items():
        where = (
            "main thread"
            if n == 0
            else f"{n} {'worker process' if kind == 'workers' else 'thread'}"
        )
        print(
            f"  decoding in {where:>18}, torch {threads} threads: "
            + " ".join(f"{r:6.1f}" for r in rs)
        )


def _reencoded(paths: list[Path], size: tuple[int, int]) -> list[Path]:
    """Copies of ``paths`` resized to ``size`` and saved as JPEG (quality 90) in a temp dir."""
    folder = Path(tempfile.mkdtemp(prefix="bench-decode-"))
    out = []
    for i, path in enumerate(paths):
        target = folder / f"{i:05d}.jpg"
        Image.open(path).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(
            target, quality=90)
        out.append(target)
    return out


if __name__ == "__main__":
    main()
