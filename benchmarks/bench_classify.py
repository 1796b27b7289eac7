"""Stage-two benchmark: load time, one fit per head, full sweeps, and scikit-learn's LinearSVC.

    python benchmarks/bench_classify.py [CACHE] [--data-dir DIR] [--skip-sklearn]
    python benchmarks/bench_classify.py --synthetic /tmp/bench   # 50,000 x 1,280 float16, made up
    python benchmarks/bench_classify.py MNIST_CACHE --layer block5 --fits "" --sweeps svm

Without CACHE it takes the newest cifar10 / cifar10-jpg cache of efficientnet_lite0 under
``--data-dir``. Everything runs on the CPU; the numbers go to stdout as a table, with the
load average before and after (other work on the machine slows every row).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from featcache.classify.experiment import FitConfig, run_experiment
from featcache.classify.features import Part, open_cache, read
from featcache.classify.heads.registry import build_head
from featcache.classify.protocol import evaluate, refit
from featcache.classify.transforms import Standardize
from featcache.extract.cache.hdf5 import FeatureCache, find_caches, write_cache

FIXED = {"svm": {"C": 0.1}, "logreg": {"C": 0.1}, "mlp": {"weight_decay": 1e-4},
         "knn": {"n_neighbors": 10}}


def synthetic_cache(folder: Path, *, n_train: int = 50_000, n_test: int = 10_000,
                    dim: int = 1280, classes: int = 10, seed: int = 0) -> Path:
    """Correlated non-negative float16 features with class structure (about 86 % linear top-1)."""
    rng = np.random.default_rng(seed)
    rank = 256
    mixing = rng.standard_normal((rank, dim)).astype(np.float32)
    mixing *= (np.arange(1, rank + 1) ** -0.6).astype(np.float32)[:, None]
    means = rng.standard_normal((classes, rank)).astype(np.float32) * 0.2
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, classes, n)
        X = np.empty((n, dim), dtype=np.float16)
        for lo in range(0, n, 5000):
            z = rng.standard_normal((min(5000, n - lo), rank)).astype(np.float32)
            block = (z + means[y[lo : lo + len(z)]]) @ mixing
            block += 0.3 * rng.standard_normal(block.shape).astype(np.float32)
            X[lo : lo + len(z)] = np.maximum(block + 0.5, 0)
        splits[split] = {"labels": y, "ids": [f"{split}/{i}" for i in range(n)],
                         "features": {"pool": X}}
    meta = {"dataset": "cifar10-synthetic", "backbone": "synthetic", "weights": "none",
            "resolution": 224, "pool": "avg", "split_rule": "official",
            "class_names": [f"class{i}" for i in range(classes)]}
    return write_cache(folder / "cache" / "cifar10-synthetic" / "synthetic.h5", meta=meta,
                       splits=splits)


def newest_cifar_cache(data_dir: Path, layer: str) -> Path:
    for dataset in ("cifar10", "cifar10-jpg"):
        for path in find_caches(data_dir, dataset):
            with FeatureCache(path) as cache:
                if cache.meta.get("backbone") == "efficientnet_lite0" and layer in cache.layers():
                    return path
    raise SystemExit(f"no cifar10 efficientnet_lite0 cache under {data_dir}/cache; "
                     "run: make extract DATASET=cifar10 (or pass a CACHE path or --synthetic)")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _names(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def _convergence(head: object) -> str:
    if not hasattr(head, "converged_"):
        return f"epochs {head.n_iter_}" if hasattr(head, "n_iter_") else ""
    state = "converged" if head.converged_ else f"NOT converged ({head.stop_})"
    return f"{head.n_iter_} iterations, {state}, relative gradient {head.relative_gradient_:.1e}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", nargs="?", type=Path)
    default_data = Path(__file__).resolve().parents[1] / "data"
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("DATA_DIR", default_data)))
    parser.add_argument("--synthetic", type=Path, metavar="DIR",
                        help="write a made-up 50,000 x 1,280 float16 cache in DIR and use it")
    parser.add_argument("--layer", default="pool", help="layer to read (default: %(default)s)")
    parser.add_argument("--fits", type=_names, default=list(FIXED),
                        help="heads to fit once at a fixed value (default: all; '' for none)")
    parser.add_argument("--sweeps", type=_names, default=["svm", "logreg"],
                        help="heads to run the full protocol for (default: svm,logreg)")
    parser.add_argument("--skip-sklearn", action="store_true",
                        help="leave out LinearSVC (it takes minutes)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rss_imports = peak_rss_mib()
    load_before = os.getloadavg()
    if args.synthetic:
        start = time.perf_counter()
        path = synthetic_cache(args.synthetic)
        print(f"wrote synthetic cache {path} in {time.perf_counter() - start:.1f} s")
    else:
        path = args.cache or newest_cifar_cache(args.data_dir, args.layer)
    layers = [args.layer]
    rows = []

    with open_cache(path, layers) as cache:
        parts = {s: [Part(s, np.arange(len(cache.labels(s))))] for s in ("train", "test")}
        start = time.perf_counter()
        train, test = read(cache, parts["train"], layers), read(cache, parts["test"], layers)
        load = time.perf_counter() - start
        n_classes = len(cache.class_names)
        print(f"cache {path} [{args.layer}]: train {train.X.shape}, test {test.X.shape}, "
              f"{cache.meta.get('backbone')}")
        rows.append(("load train+test (float16 -> float32)", load, None, ""))
        del train, test
        for head_name in args.fits:
            params = FIXED[head_name]
            head, _ = build_head(head_name, params, seed=0)
            train = read(cache, parts["train"], layers)
            start = time.perf_counter()
            model = refit(head, Standardize(), params, train, copy=False)
            fit = time.perf_counter() - start
            del train
            metrics = evaluate(model, read(cache, parts["test"], layers), n_classes)
            rows.append((f"fit {head_name} {params}", fit, metrics["top1"],
                         f"predict {metrics['predict_seconds']:.2f} s; "
                         f"{_convergence(model[-1])}"))
            del model
    rss_ours = peak_rss_mib()

    for head_name in args.sweeps:
        with tempfile.TemporaryDirectory() as tmp:
            _, m = run_experiment(FitConfig(data_dir=Path(tmp), cache=path, model=head_name,
                                            layers=tuple(layers)))
        run = m["per_repeat"][0]
        rows.append((f"full sweep {head_name} ({len(m['grid'])} values, {run['selection']}) "
                     "+ refit + test", m["seconds"], m["top1"],
                     f"load {m['load_seconds']:.1f} s, select {m['select_seconds']:.1f} s, "
                     f"refit {m['fit_seconds']:.1f} s ({run['iterations']} iterations, "
                     f"{run['stopped']}), chose {m['params']}, "
                     f"{len(run['sweep_not_converged'])} sweep fits not converged"))
    rss_ours = max(rss_ours, peak_rss_mib())

    if not args.skip_sklearn:
        from sklearn.svm import LinearSVC

        with open_cache(path, layers) as cache:
            train = read(cache, [Part("train", np.arange(len(cache.labels("train"))))], layers)
            test = read(cache, [Part("test", np.arange(len(cache.labels("test"))))], layers)
        scaler = Standardize().fit(train.flat)
        X, y = scaler.transform(train.flat, copy=False), train.y
        start = time.perf_counter()
        svc = LinearSVC(C=0.1).fit(X, y)
        fit = time.perf_counter() - start
        top1 = float(np.mean(svc.predict(scaler.transform(test.flat)) == test.y))
        rows.append(("sklearn LinearSVC(C=0.1), same standardised features", fit, top1,
                     f"liblinear, {svc.n_iter_} iterations"))

    width = max(len(r[0]) for r in rows)
    print(f"\n{'step'.ljust(width)}  {'seconds':>8}  {'top-1':>7}  notes")
    for name, seconds, top1, note in rows:
        acc = "" if top1 is None else f"{100 * top1:.2f}"
        print(f"{name.ljust(width)}  {seconds:8.2f}  {acc:>7}  {note}")
    print(f"\npeak RSS: {rss_imports:.0f} MiB after imports (torch, scikit-learn); "
          f"{rss_ours:.0f} MiB for our heads and sweeps; "
          f"{peak_rss_mib():.0f} MiB at the end (includes LinearSVC's float64 copy)")
    print("load average (1, 5, 15 min): before {:.1f} {:.1f} {:.1f}; after {:.1f} {:.1f} {:.1f} "
          "on {} cores".format(*load_before, *os.getloadavg(), os.cpu_count()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
