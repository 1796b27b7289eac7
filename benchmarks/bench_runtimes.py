"""CPU runtimes for the default backbone: eager PyTorch, torch.compile, ONNX Runtime, OpenVINO.

    python benchmarks/bench_runtimes.py [--res 224] [--layers pool,block5] [--rounds 3]
                                        [--runtimes eager,compile,onnxruntime,openvino]

For each runtime: the time to build it (export, compile), the pure forward rate at batch
sizes 1-64 (runtimes and batch sizes interleaved within each round, best round kept, since
other processes may share the cores), and its features on real UC Merced images against
eager PyTorch in float32: largest absolute and relative difference, and whether the values
agree within float16 rounding (what the cache stores). Missing optional packages are skipped.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from featcache.extract.backbones.registry import (
    get_spec,
    load_backbone,
    make_feature_extractor,
    resolve_layers,
)
from featcache.extract.compute.runtimes import compile_forward, onnx_export
from featcache.extract.data.preprocess import normalize

ROOT = Path(__file__).resolve().parents[1]
Forward = Callable[[torch.Tensor], dict[str, np.ndarray]]


def _as_numpy(forward: Callable[[torch.Tensor], dict[str, torch.Tensor]]) -> Forward:
    def run(t: torch.Tensor) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            return {k: v.numpy() for k, v in forward(t).items()}

    return run


def build_eager(net: torch.nn.Module, x: torch.Tensor) -> Forward:
    """The tool's own eager runtime (channels-last; extract/compute/runtimes.py)."""
    return _as_numpy(compile_forward("eager", net, x, torch.device("cpu")).forward)


def build_compile(net: torch.nn.Module, x: torch.Tensor) -> Forward:
    compiled = torch.compile(net.to(memory_format=torch.channels_last), backend="inductor")
    return _as_numpy(lambda t: compiled(t.contiguous(memory_format=torch.channels_last)))


def build_onnxruntime(net: torch.nn.Module, x: torch.Tensor) -> Forward:
    import onnxruntime as ort

    data, names = onnx_export(net, x)  # the tool's own export (extract/compute/runtimes.py)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def run(t: torch.Tensor) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(None, {"x": t.contiguous().numpy()}), strict=True))

    return run


def build_openvino(net: torch.nn.Module, x: torch.Tensor) -> Forward:
    """The tool's own runtime (extract/compute/runtimes.py)."""
    return _as_numpy(compile_forward("openvino", net, x, torch.device("cpu")).forward)


BUILDERS: dict[str, Callable[[torch.nn.Module, torch.Tensor], Forward]] = {
    "eager": build_eager,
    "compile": build_compile,
    "onnxruntime": build_onnxruntime,
    "openvino": build_openvino,
}


def real_batch(res: int, n: int) -> torch.Tensor:
    """``n`` UC Merced images, preprocessed as the pipeline does (float, normalised)."""
    found = sorted((ROOT.parent / "shared/data/ucmerced-jpg").rglob("*.jpg"))
    pre = get_spec("efficientnet_lite0").preprocess(res)
    make = pre.views(1)
    x = torch.cat([make(p) for p in found[:: max(1, len(found) // n)]][:n])
    return normalize(x, pre.mean, pre.std)


def rate(forward: Forward, batch: int, res: int, seconds: float) -> float:
    x = torch.randn(batch, 3, res, res)
    forward(x)
    done, start = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - start < seconds:
        forward(x)
        done += batch
    return done / (time.perf_counter() - start)


def compare(ref: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> str:
    parts = []
    for k in ref:
        a, b = ref[k].astype(np.float64), out[k].astype(np.float64)
        diff = np.abs(a - b)
        rel = diff.max() / np.abs(a).max()
        f16 = np.mean(ref[k].astype(np.float16) != out[k].astype(np.float16))
        # float16 rounding at the layer's scale (what tests/test_runtimes.py asserts)
        ok = np.allclose(b, a, rtol=2**-10, atol=2**-11 * np.abs(a).max())
        parts.append(
            f"{k}: max abs {diff.max():.2e}, max abs / max |x| {rel:.2e}, "
            f"float16 values differing {f16:.2%}, within fp16 tolerance {ok}"
        )
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--layers", default="pool,block5")
    parser.add_argument("--batches", default="1,4,8,16,32,64")
    parser.add_argument("--runtimes", default=",".join(BUILDERS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="per rate measurement")
    parser.add_argument("--threads", type=int, default=None, help="[torch's default]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    model, spec = load_backbone(args.backbone)
    net = make_feature_extractor(model, spec, resolve_layers(spec, args.layers.split(",")))
    example = torch.randn(8, 3, args.res, args.res)
    print(
        f"{datetime.now():%Y-%m-%d %H:%M}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{args.backbone} @ {args.res}px, taps {args.layers}, load {os.getloadavg()[0]:.2f}"
    )
    runtimes: dict[str, Forward] = {}
    # each runtime gets its own copy: ONNX export restores training mode on the module it is
    # given, and a deep copy of an fx GraphModule comes back in training mode (batch-norm
    # would then use batch statistics), hence .eval() on every copy
    for name in args.runtimes.split(","):
        start = time.perf_counter()
        try:
            forward = BUILDERS[name](copy.deepcopy(net).eval(), example)
            forward(example)
        except ImportError as exc:
            print(f"{name}: skipped ({exc})")
            continue
        runtimes[name] = forward
        print(f"{name}: built and first pass in {time.perf_counter() - start:.1f} s", flush=True)
    x = real_batch(args.res, 64)
    ref_forward = build_eager(copy.deepcopy(net).eval(), x)
    ref = ref_forward(x)
    for name, forward in runtimes.items():
        out = {k: np.concatenate(v) for k, v in _by_key([forward(c) for c in x.split(8)]).items()}
        print(f"{name} vs eager (64 real images, batches of 8): {compare(ref, out)}")
    single = {
        k: np.concatenate(v) for k, v in _by_key([ref_forward(c) for c in x.split(1)]).items()
    }
    print(f"eager, batch 1 vs batch 64 (for scale): {compare(ref, single)}")
    best: dict[tuple[str, int], float] = {}
    for r in range(args.rounds):
        for b in batches:
            for name, forward in runtimes.items():
                best[name, b] = max(
                    best.get((name, b), 0.0), rate(forward, b, args.res, args.seconds)
                )
        print(f"round {r + 1} done, load {os.getloadavg()[0]:.2f}", flush=True)
    print("img/s (best of rounds): " + " ".join(f"{'b' + str(b):>7}" for b in batches))
    for name in runtimes:
        row = " ".join(f"{best[name, b]:7.1f}" for b in batches)
        top = max(batches, key=lambda b: best[name, b])
        print(f"{name:>22}: {row}   best b{top}")


def _by_key(outs: list[dict[str, np.ndarray]]) -> dict[str, list[np.ndarray]]:
    return {k: [o[k] for o in outs] for k in outs[0]}


if __name__ == "__main__":
    main()
