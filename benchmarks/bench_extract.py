"""Stage one against the machine's limit and against the loop a user would write instead.

    python benchmarks/bench_extract.py [--cases ucmerced,cifar] [--rounds 3]

For each case (UC Merced, 2,100 JPEGs at 224 px; the 10,000 CIFAR-10 test JPEGs at 112 px)
it prints, measured in one run:

- end to end: ``run_extraction`` with default settings (no BATCH: the probe chooses), files
  to a finished HDF5 cache, the ``pool`` layer; round 1 in a fresh data directory (so it
  includes the batch probe and the runtime's export, as a first run on a machine does),
  later rounds in a fresh data directory holding what the first left for later runs (the
  probe's choice, ``probe.json``, and the export, ``exports/``), but no features;
- the best pure forward: the same extractor, compiled by the same runtime, on ready float
  tensors (no decoding, no writing) at batch sizes 1-64, fastest pass of a second's worth
  (a pass is one batch per stream of the runtime, run at once: OpenVINO's two here),
  measured right after each end-to-end run, since this machine's speed drifts by several
  per cent within minutes: each round's ratio compares figures taken seconds apart;
- the naive loop: open, resize, forward one image, append, save (the reference
  ``efficientnet-lite-pytorch`` model, eager, batch 1), timed from listing the files to
  the saved array, like the tool (imports excluded from both);
- the ratios, against the targets of issue 14: each round's, and the median of the rounds
  after the first (the first includes the probe and the export, as on a new machine).

End to end and the naive loop alternate within each round, since other processes may share
the cores; the load average is printed with each figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featcache.extract.backbones.efficientnet_lite import lite_weights_file
from featcache.extract.backbones.registry import (
    load_backbone,
    make_feature_extractor,
    resolve_layers,
)
from featcache.extract.compute.probe import pass_rate
from featcache.extract.compute.runtimes import compile_forward, resolve_runtime
from featcache.extract.config import ExtractConfig
from featcache.extract.pipeline import run_extraction

DATA = Path(__file__).resolve().parents[2] / "shared/data"
# name -> (folder, resolution, target of end to end / best forward)
CASES = {
    "ucmerced": (DATA / "ucmerced-jpg", 224, 0.85),
    "cifar": (DATA / "cifar10-jpg/test", 112, 0.75),
}
NAIVE_TARGET = 1.5
MACHINE_CACHES = ("probe.json", "exports")  # kept from one run to the next in a data dir
BATCHES = (1, 2, 4, 8, 16, 32, 64)


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def end_to_end(folder: Path, res: int, data_dir: Path, runtime: str) -> tuple[float, float, str]:
    """(img/s, seconds, runtime and batch) of a default extraction of ``folder`` at ``res`` px."""
    cfg = ExtractConfig(dataset=str(folder), data_dir=data_dir, resolution=res, runtime=runtime)
    result = run_extraction(cfg, progress=False)
    return result.images / result.seconds, result.seconds, result.worker or ""


def best_forward(res: int, runtime: str, seconds: float = 1.0) -> dict[int, float]:
    """img/s of the extractor, compiled by ``runtime``, on ready tensors per batch size."""
    model, spec = load_backbone("efficientnet_lite0")
    net = make_feature_extractor(model, spec, resolve_layers(spec, ["pool"]))
    cpu = torch.device("cpu")
    runtime = resolve_runtime(runtime, cpu)
    compiled = compile_forward(runtime, net, torch.zeros(1, 3, res, res), cpu)

    def forward(x: torch.Tensor) -> object:
        with torch.inference_mode():  # per thread
            return compiled.forward(x)

    def batch(b: int) -> torch.Tensor:  # channels last, as the pipeline's batches
        return torch.randn(b, 3, res, res).contiguous(memory_format=torch.channels_last)

    return {b: pass_rate(forward, batch(b), compiled.streams, cpu, seconds) for b in BATCHES}


def naive_loop(folder: Path, res: int, out: Path) -> tuple[float, float]:
    """(img/s, seconds) of the one-image-at-a-time script, files to a saved array."""
    from efficientnet_lite_pytorch import EfficientNet

    start = time.perf_counter()
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(lite_weights_file("lite0"), map_location="cpu"))
    model.eval()
    feats = []
    with torch.no_grad():
        for path in paths:
            img = Image.open(path).convert("RGB").resize((res, res), Image.Resampling.BICUBIC)
            x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
            x = ((x - 0.5) / 0.5).unsqueeze(0)
            feats.append(model.extract_features(x).mean((2, 3))[0].numpy())
    np.save(out, np.stack(feats).astype(np.float16))
    seconds = time.perf_counter() - start
    return len(paths) / seconds, seconds


def run_case(name: str, rounds: int, runtimes: list[str]) -> None:
    folder, res, target = CASES[name]
    if not folder.is_dir():
        print(f"{name}: skipped, {folder} not found")
        return
    print(f"\n== {name}: {folder} @ {res}px, layer pool", flush=True)
    ratios: dict[str, list[float]] = {r: [] for r in runtimes}  # end to end / best forward
    e2e: dict[str, list[float]] = {r: [] for r in runtimes}
    naive = []
    with tempfile.TemporaryDirectory() as tmp:
        kept = Path(tmp) / "machine"  # what a data directory keeps for the next run
        kept.mkdir()
        for r in range(rounds):
            for runtime in runtimes:
                data_dir = Path(tmp) / f"round{r}-{runtime}"
                shutil.copytree(kept, data_dir)
                rate, seconds, chosen = end_to_end(folder, res, data_dir, runtime)
                for name in MACHINE_CACHES:
                    if (data_dir / name).is_dir():
                        shutil.copytree(data_dir / name, kept / name, dirs_exist_ok=True)
                    elif (data_dir / name).is_file():
                        shutil.copy(data_dir / name, kept)
                probe = "first run: probe, export" if r == 0 else "probe and export cached"
                print(
                    f"round {r + 1}, end to end, runtime {runtime} ({probe}): {rate:7.1f} img/s "
                    f"({seconds:.1f} s, {chosen}; {load()})",
                    flush=True,
                )
                shutil.rmtree(data_dir)
                rates = best_forward(res, runtime)
                top = max(rates, key=rates.get)
                print(
                    f"round {r + 1}, pure forward, runtime {runtime}, img/s: "
                    + ", ".join(f"b{b} {v:.0f}" for b, v in rates.items())
                    + f"; best b{top}; end to end / best forward = {rate / rates[top]:.2f} "
                    f"({load()})",
                    flush=True,
                )
                e2e[runtime].append(rate)
                ratios[runtime].append(rate / rates[top])
            rate, seconds = naive_loop(folder, res, Path(tmp) / "naive.npy")
            print(f"round {r + 1}, naive loop: {rate:7.1f} img/s ({seconds:.1f} s; {load()})",
                  flush=True)
            naive.append(rate)
    for runtime in runtimes:
        later = slice(1, None) if rounds > 1 else slice(None)
        print(
            f"ratios, runtime {runtime}, rounds with probe and export cached: end to end / best "
            f"forward = {' '.join(f'{v:.2f}' for v in ratios[runtime][later])}, median "
            f"{statistics.median(ratios[runtime][later]):.2f} (target >= {target}; first run "
            f"{ratios[runtime][0]:.2f}); end to end / naive loop = "
            f"{statistics.median(e2e[runtime][later]) / statistics.median(naive):.2f} "
            f"(medians; target >= {NAIVE_TARGET})",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: ucmerced,cifar")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--runtimes", default="auto", help="comma-separated end-to-end runtimes [auto: the default]"
    )
    args = parser.parse_args()
    print(
        f"{datetime.now():%Y-%m-%d %H:%M}, {platform.machine()} ({_cpu()}), "
        f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{load()}"
    )
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    for name in args.cases.split(","):
        run_case(name, args.rounds, args.runtimes.split(","))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of this process: {rss:.0f} MiB")


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
