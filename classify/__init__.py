"""Stage two: fast classifier heads and an honest protocol on cached CNN features.

From Python (see the README's "Python API")::

    from featcache.classify import load_features
    X, y, groups = load_features("digits", "train", layers="pool")
"""

from featcache.classify.experiment import FitConfig, run_experiment
from featcache.classify.heads.knn import CosineKNN
from featcache.classify.heads.linear import LinearSVM, SoftmaxRegression
from featcache.classify.heads.mlp import MLPHead
from featcache.classify.heads.registry import HEADS, HeadSpec, build_head
from featcache.classify.load import find_cache, iter_features, load_features, score_per_image
from featcache.classify.transforms import TRANSFORMS, PCAWhiten, Standardize
from featcache.classify.tsne import TsneConfig, make_tsne
from featcache.errors import UsageError

__all__ = [
    "HEADS",
    "TRANSFORMS",
    "CosineKNN",
    "FitConfig",
    "HeadSpec",
    "LinearSVM",
    "MLPHead",
    "PCAWhiten",
    "SoftmaxRegression",
    "Standardize",
    "TsneConfig",
    "UsageError",
    "build_head",
    "find_cache",
    "iter_features",
    "load_features",
    "make_tsne",
    "run_experiment",
    "score_per_image",
]
