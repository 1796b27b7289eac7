"""Stage two: fast classifier heads and an honest protocol on cached CNN features."""

from classify.experiment import FitConfig, run_experiment
from classify.heads import HEADS, HeadSpec, build_head
from classify.knn import CosineKNN
from classify.linear import LinearSVM, SoftmaxRegression
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
    "make_tsne",
    "run_experiment",
]
