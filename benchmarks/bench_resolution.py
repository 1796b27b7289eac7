"""Accuracy and speed of the default backbone at several input resolutions.

    python benchmarks/bench_resolution.py [--data ../shared/data/cifar10-jpg] [--images 2000]
        [--res 96 128 160 224]

For each resolution: extraction throughput (img/s, end to end) on a stratified subset of
``--images`` per split, and the test accuracy of an L2 logistic regression on the ``pool``
features, its C picked on a stratified 10 % validation split of the training subset.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from featcache.extract.cache.hdf5 import FeatureCache
from featcache.extract.config import ExtractConfig
from featcache.extract.pipeline import run_extraction

ROOT = Path(__file__).resolve().parents[1]


def probe_accuracy(path: Path, seed: int = 0) -> tuple[float, float]:
    with FeatureCache(path) as cache:
        x, y = cache.features("train", "pool"), cache.labels("train")
        xt, yt = cache.features("test", "pool"), cache.labels("test")
    xa, xv, ya, yv = train_test_split(x, y, test_size=0.1, stratify=y, random_state=seed)
    scores = {}
    for c in (1e-3, 1e-2, 1e-1, 1.0):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        scores[c] = model.fit(xa, ya).score(xv, yv)
    best = max(scores, key=scores.get)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=best, max_iter=2000))
    return model.fit(x, y).score(xt, yt), best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/cifar10-jpg")
    parser.add_argument("--images", type=int, default=2000, help="per split")
    parser.add_argument("--res", type=int, nargs="+", default=[96, 128, 160, 224])
    parser.add_argument("--data-dir", type=Path, default=None, help="keep caches here")
    args = parser.parse_args()
    print(f"{'res':>4} {'img/s':>7} {'seconds':>8} {'test acc':>8}  C")
    with tempfile.TemporaryDirectory() as tmp:
        for res in args.res:
            cfg = ExtractConfig(
                dataset=str(args.data),
                resolution=res,
                limit=args.images,
                data_dir=args.data_dir or Path(tmp),
            )
            result = run_extraction(cfg, progress=False)
            acc, c = probe_accuracy(result.path)
            rate = result.images / result.seconds if result.images else float("nan")
            print(f"{res:>4} {rate:7.1f} {result.seconds:8.1f} {acc:8.4f}  {c:g}", flush=True)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
