"""A small PyTorch MLP head on the CPU with a scikit-learn face.

Adam with L2 weight decay, dropout after every hidden layer, and a cosine learning-rate schedule
over ``max_epochs`` of which ``fit`` trains ``epochs`` (all by default) on every row it is given:
no hold-out inside ``fit``. The protocol chooses ``epochs`` on its validation split like any
other hyperparameter: ``fit_path`` trains once and hands out the model after each epoch.
Randomness comes from ``random_state`` through a ``torch.Generator``.
Training runs its matrix products in bfloat16 (weights and optimiser state stay float32) where
the CPU multiplies bfloat16 natively (AVX512-BF16, AMX): about three times faster there.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator, Sequence
from numbers import Integral, Real
from typing import ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from tqdm.auto import tqdm

from featcache.sklearn_compat import Interval, InvalidParameterError, StrOptions
from featcache.threads import torch_threads

logger = logging.getLogger(__name__)

EVAL_BLOCK = 8192
SMALL_PRODUCT = 2**22  # rows x features x hidden units below which one thread is faster


class _Net(torch.nn.Module):
    """Linear-ReLU-dropout blocks and a linear output; dropout masks come from a generator."""

    def __init__(self, sizes: list[int], dropout: float, generator: torch.Generator) -> None:
        super().__init__()
        self.dropout = dropout
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(a, b, device="meta") for a, b in itertools.pairwise(sizes)
        ).to_empty(device="cpu")
        with torch.no_grad():
            for layer in self.layers:
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
            if self.training and self.dropout > 0:
                keep = torch.empty_like(x).bernoulli_(1.0 - self.dropout, generator=generator)
                x = x * keep / (1.0 - self.dropout)
        return self.layers[-1](x)


def _training_precision(precision: str) -> str:
    """``auto``: bfloat16 where the CPU multiplies it natively, else float32."""
    if precision != "auto":
        return precision
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return "bfloat16" if native else "float32"


class MLPHead(ClassifierMixin, BaseEstimator):
    """Multi-layer perceptron classifier trained with Adam on the CPU.

    ``epochs`` (default: ``max_epochs``) epochs of a cosine schedule ``max_epochs`` long.
    """

    _parameter_constraints: ClassVar[dict] = {
        "hidden": ["array-like"],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "epochs": [Interval(Integral, 1, None, closed="left"), None],
        "precision": [StrOptions({"auto", "float32", "bfloat16"})],
        "random_state": ["random_state"],
    }
    path_param: ClassVar[str] = "epochs"

    def __init__(
        self,
        hidden: tuple[int, ...] = (512,),
        *,
        dropout: float = 0.5,
        weight_decay: float = 1e-4,
        lr: float = 1e-3,
        batch_size: int = 256,
        max_epochs: int = 30,
        epochs: int | None = None,
        precision: str = "auto",
        random_state: int | None = None,
    ) -> None:
        self.hidden = hidden
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.epochs = epochs
        self.precision = precision
        self.random_state = random_state

    def _validate_params(self) -> None:
        super()._validate_params()
        if not all(isinstance(h, Integral) and h >= 1 for h in self.hidden):
            raise InvalidParameterError(
                f"The 'hidden' parameter of {type(self).__name__} must be a sequence of "
                f"positive ints. Got {self.hidden!r} instead."
            )
        if self.epochs is not None and self.epochs > self.max_epochs:
            raise InvalidParameterError(
                f"The 'epochs' parameter of {type(self).__name__} must be at most "
                f"max_epochs={self.max_epochs}. Got {self.epochs!r} instead."
            )

    def fit(self, X: np.ndarray, y: np.ndarray) -> MLPHead:
        """Train ``epochs`` epochs on all of ``X``; returns ``self``."""
        self._validate_params()
        for _ in self._train(X, y, self.epochs or self.max_epochs):
            pass
        return self

    def fit_path(
        self, X: np.ndarray, y: np.ndarray, values: Sequence[int]
    ) -> Iterator[tuple[dict[str, int], MLPHead]]:
        """Train ``max(values)`` epochs once; after each epoch in ``values`` yield
        ``({"epochs": e}, self)``, ready to predict until the next one is asked for."""
        self._validate_params()
        wanted = set(values)
        if max(wanted) > self.max_epochs:
            raise InvalidParameterError(
                f"epochs {max(wanted)} exceed max_epochs={self.max_epochs} of "
                f"{type(self).__name__}"
            )
        for epoch in self._train(X, y, max(wanted)):
            if epoch in wanted:
                self.epochs = epoch
                yield {"epochs": epoch}, self

    def _train(self, X: np.ndarray, y: np.ndarray, epochs: int) -> Iterator[int]:
        """Train ``epochs`` epochs; after each, leave a usable model and yield its number."""
        X, y = validate_data(self, X, y, dtype=np.float32, order="C")
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        generator = torch.Generator().manual_seed(seed)
        features = torch.from_numpy(X)
        targets = torch.from_numpy(codes)
        sizes = [X.shape[1], *map(int, self.hidden), len(self.classes_)]
        net = _Net(sizes, self.dropout, generator)
        optimizer = torch.optim.Adam(
            net.parameters(), lr=self.lr, weight_decay=self.weight_decay, fused=True
        )
        steps = math.ceil(len(X) / self.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.max_epochs * steps)
        self.loss_curve_: list[float] = []
        self.precision_ = _training_precision(self.precision)
        self.module_ = net
        low = torch.autocast("cpu", torch.bfloat16, enabled=self.precision_ == "bfloat16")
        threads = self._threads(min(self.batch_size, len(X)))
        for epoch in tqdm(range(1, epochs + 1), desc="mlp epochs", leave=False, disable=None):
            net.train()
            order = torch.randperm(len(X), generator=generator)
            total = 0.0
            with torch_threads(threads):
                for lo in range(0, len(order), self.batch_size):
                    batch = order[lo : lo + self.batch_size]
                    with low:
                        logits = net(features[batch], generator)
                    loss = torch.nn.functional.cross_entropy(logits.float(), targets[batch])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    total += loss.item() * len(batch)
            self.loss_curve_.append(total / len(order))
            net.eval()
            self.n_iter_ = epoch
            yield epoch

    def _threads(self, rows: int) -> int:
        """One torch thread where the products are too small to share out."""
        work = rows * self.n_features_in_ * max(map(int, self.hidden))
        return 1 if work < SMALL_PRODUCT else torch.get_num_threads()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        out = np.empty((len(X), len(self.classes_)), dtype=np.float32)
        with torch.no_grad(), torch_threads(self._threads(min(len(X), EVAL_BLOCK))):
            for lo in range(0, len(X), EVAL_BLOCK):
                logits = self.module_(torch.from_numpy(X[lo : lo + EVAL_BLOCK]))
                out[lo : lo + len(logits)] = torch.softmax(logits, dim=1).numpy()
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]
