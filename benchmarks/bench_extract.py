"""Stage-one throughput: pure forward on synthetic tensors vs files -> finished HDF5.

    python benchmarks/bench_extract.py [--data ../shared/data/cifar10-jpg] [--images 2000]
                                       [--crops 10]

Prints the model's forward throughput on synthetic tensors of the extraction's shape, the
end-to-end throughput of a real extraction (decode, resize, forward, pool, write, finalize)
on a stratified subset of real CIFAR-10 images, their ratio, and peak RSS. With
``--crops 10`` every image gives ten views and the rates count views.
"""

from __future__ import annotations

import argparse
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch

from extract.backbones import load_backbone, make_feature_extractor, resolve_layers
from extract.config import ExtractConfig
from extract.pipeline import run_extraction

ROOT = Path(__file__).resolve().parents[1]


def forward_rate(backbone: str, res: int, batch: int, seconds: float, device: str) -> float:
    model, spec = load_backbone(backbone)
    net = make_feature_extractor(model, spec, resolve_layers(spec, ["pool"]))
    net = net.to(device, memory_format=torch.channels_last)
    x = torch.randn(batch, 3, res, res, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device, enabled=device == "cuda"):
        net(x)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            net(x)
            done += batch
        if device == "cuda":
            torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/cifar10-jpg")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--res", type=int, default=None)
    parser.add_argument("--images", type=int, default=1000, help="per split (train and test)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--crops", type=int, default=1, choices=(1, 10), help="views per image")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = ExtractConfig(
            dataset=str(args.data),
            backbone=args.backbone,
            data_dir=Path(tmp),
            resolution=args.res,
            batch_size=args.batch_size,
            limit=args.images,
            crops=str(args.crops),
            device=args.device,
        )
        result = run_extraction(cfg, progress=False)
        e2e = result.images * args.crops / result.seconds
        size = result.path.stat().st_size
    from extract.backbones import get_spec

    res = args.res or get_spec(args.backbone).input_size
    pure = forward_rate(
        args.backbone, res, args.batch_size, min(30.0, result.seconds / 2), args.device
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, device {args.device}, torch {torch.__version__}"
    )
    print(
        f"backbone {args.backbone} @ {res}px, batch {args.batch_size}, "
        f"{result.images} real images x {args.crops} views from {args.data}"
    )
    unit = "img/s" if args.crops == 1 else "views/s"
    print(f"pure forward (synthetic): {pure:8.1f} {unit}")
    print(
        f"end to end (files->HDF5): {e2e:8.1f} {unit}  ({result.seconds:.1f} s, "
        f"cache {size / 1e6:.1f} MB)"
    )
    print(f"ratio: {e2e / pure:.3f}")
    print(f"peak RSS: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
