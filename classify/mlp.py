"""A small PyTorch MLP head on the CPU with a scikit-learn face.

Adam with L2 weight decay, dropout after every hidden layer, cosine learning-rate annealing
over ``max_epochs``, early stopping on a stratified validation split carved inside ``fit``
(best weights restored). Randomness comes from ``random_state`` through a ``torch.Generator``.
Training runs its matrix products in bfloat16 (weights and optimiser state stay float32) where
the CPU multiplies bfloat16 natively (AVX512-BF16, AMX): about three times faster there.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from numbers import Integral, Real
from typing import ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, InvalidParameterError, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from tqdm.auto import tqdm

from classify.splits import stratified_split
from extract.errors import UsageError

logger = logging.getLogger(__name__)

EVAL_BLOCK = 8192


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
    """Multi-layer perceptron classifier trained with Adam on the CPU."""

    _parameter_constraints: ClassVar[dict] = {
        "hidden": ["array-like"],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "patience": [Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "precision": [StrOptions({"auto", "float32", "bfloat16"})],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        hidden: tuple[int, ...] = (512,),
        *,
        dropout: float = 0.5,
        weight_decay: float = 1e-4,
        lr: float = 1e-3,
        batch_size: int = 256,
        max_epochs: int = 30,
        patience: int = 4,
        validation_fraction: float = 0.1,
        precision: str = "auto",
        random_state: int | None = None,
    ) -> None:
        self.hidden = hidden
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.precision = precision
        self.random_state = random_state

    def _validate_params(self) -> None:
        super()._validate_params()
        if not all(isinstance(h, Integral) and h >= 1 for h in self.hidden):
            raise InvalidParameterError(
                f"The 'hidden' parameter of {type(self).__name__} must be a sequence of "
                f"positive ints. Got {self.hidden!r} instead."
            )

    def fit(self, X: np.ndarray, y: np.ndarray) -> MLPHead:
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float32, order="C")
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        generator = torch.Generator().manual_seed(seed)
        try:
            rows, held = stratified_split(
                codes, self.validation_fraction, seed, what="early-stopping split"
            )
        except UsageError:
            rows, held = np.arange(len(codes)), np.zeros(0, dtype=np.int64)
            logger.info("too few samples to stop early: training %d epochs", self.max_epochs)
        features = torch.from_numpy(X)
        targets = torch.from_numpy(codes)
        rows = torch.from_numpy(rows)
        sizes = [X.shape[1], *map(int, self.hidden), len(self.classes_)]
        net = _Net(sizes, self.dropout, generator)
        optimizer = torch.optim.Adam(
            net.parameters(), lr=self.lr, weight_decay=self.weight_decay, fused=True
        )
        steps = math.ceil(len(rows) / self.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.max_epochs * steps)
        self.loss_curve_: list[float] = []
        self.validation_loss_: list[float] = []
        best, best_state, waited = math.inf, None, 0
        self.precision_ = _training_precision(self.precision)
        low = torch.autocast("cpu", torch.bfloat16, enabled=self.precision_ == "bfloat16")
        for _ in tqdm(range(self.max_epochs), desc="mlp epochs", leave=False, disable=None):
            net.train()
            order = rows[torch.randperm(len(rows), generator=generator)]
            total = 0.0
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
            if len(held) == 0:
                continue
            val_loss = self._loss(net, features[held], targets[held])
            self.validation_loss_.append(val_loss)
            if val_loss < best - 1e-4:
                best, best_state, waited = val_loss, copy.deepcopy(net.state_dict()), 0
            else:
                waited += 1
                if waited >= self.patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
        self.module_ = net
        self.n_iter_ = len(self.loss_curve_)
        return self

    @staticmethod
    def _loss(net: _Net, X: torch.Tensor, y: torch.Tensor) -> float:
        net.eval()
        with torch.no_grad():
            total = sum(
                torch.nn.functional.cross_entropy(
                    net(X[lo : lo + EVAL_BLOCK]), y[lo : lo + EVAL_BLOCK], reduction="sum"
                ).item()
                for lo in range(0, len(X), EVAL_BLOCK)
            )
        return total / len(X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        out = np.empty((len(X), len(self.classes_)), dtype=np.float32)
        with torch.no_grad():
            for lo in range(0, len(X), EVAL_BLOCK):
                logits = self.module_(torch.from_numpy(X[lo : lo + EVAL_BLOCK]))
                out[lo : lo + len(logits)] = torch.softmax(logits, dim=1).numpy()
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]
