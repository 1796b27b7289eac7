"""Stage two: fast classifier heads and an honest protocol on cached CNN features.

From Python (see the README's "Python API")::

    from classify import load_features
    X, y, groups = load_features("digits", "train", layers="pool")
"""

from classify.experiment import FitConfig, run_experiment
from classify.heads import HEADS, HeadSpec, build_head
from classify.knn import CosineKNN
from classify.linear import LinearSVM, SoftmaxRegression
from classify.load import find_cache, iter_features, load_features
from classify.mlp import MLPHead
from classify.transforms import TRANSFORMS, PCAWhiten, Standardize
from classify.tsne import TsneConfig, make_tsne
from extract.errors import UsageError

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
]
