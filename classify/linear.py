"""Fast full-batch linear heads in torch (float32, CPU): one-vs-rest L2 SVM and softmax.

Both minimise ``0.5 ||W||^2 + C * sum_i loss_i`` (scikit-learn's scaling; the intercept is not
penalised). Two classes use one weight vector, as LinearSVC and LogisticRegression do.

The solver (``solve``) fits a whole grid of C values in one pass: their weights are stacked into
one matrix, so each iteration reads the training matrix twice whatever the grid's length, and
each C keeps its own L-BFGS history, step and stopping test, so the result for every C is the
one a fit with that C alone reaches. Weights are parametrised as ``W = U P`` where
``P ~ (lambda I + a Cov)^(-1/2)`` comes from one eigendecomposition of the covariance of at
most ``PRECOND_ROWS`` evenly spaced rows, shared by the grid. That changes the path, not the
optimum, and cuts iterations about tenfold on correlated CNN features.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model._base import LinearClassifierMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from extract.runtimes import torch_threads

logger = logging.getLogger(__name__)

PRECOND_ROWS = 8192
STACK_FLOATS = 2**25  # most score entries (rows x stacked outputs) computed at once
SMALL_PROBLEM = 2**22  # rows x features x stacked outputs below which one thread is faster
HISTORY = 10
ARMIJO = 1e-4
MAX_BACKTRACKS = 20


class SquaredHinge:
    """One-vs-rest squared hinge; one output (+1 / -1) for two classes."""

    curvature = 1.0

    @staticmethod
    def target(codes: torch.Tensor, outputs: int) -> torch.Tensor:
        if outputs == 1:
            return (2.0 * codes - 1.0).view(-1, 1, 1)
        signs = torch.full((len(codes), 1, outputs), -1.0)
        signs[torch.arange(len(codes)), 0, codes] = 1.0
        return signs

    @staticmethod
    def __call__(scores: torch.Tensor, signs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-block summed loss (float64) and its gradient with respect to ``scores``."""
        slack = torch.relu(1.0 - signs * scores)
        value = slack.square().sum(dim=(0, 2), dtype=torch.float64)
        return value, slack.mul_(-2.0 * signs)


class CrossEntropy:
    """Multinomial cross-entropy; the binomial (logistic) loss for two classes."""

    curvature = 0.25

    @staticmethod
    def target(codes: torch.Tensor, outputs: int) -> torch.Tensor:
        if outputs == 1:
            return (2.0 * codes - 1.0).view(-1, 1, 1)
        return codes.view(-1, 1, 1)

    @staticmethod
    def __call__(scores: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-block summed loss (float64) and its gradient with respect to ``scores``."""
        if scores.shape[2] == 1:
            margin = -target * scores
            value = torch.nn.functional.softplus(margin).sum(dim=(0, 2), dtype=torch.float64)
            return value, torch.sigmoid(margin).mul_(-target)
        log_p = torch.log_softmax(scores, dim=2)
        index = target.expand(-1, scores.shape[1], 1)
        value = -log_p.gather(2, index).sum(dim=(0, 2), dtype=torch.float64)
        grad = log_p.exp_()
        grad.scatter_add_(2, index, torch.full(index.shape, -1.0))
        return value, grad


@dataclass(frozen=True)
class Solution:
    """The fit at one C: weights, and how the solver stopped."""

    coef: np.ndarray
    intercept: np.ndarray
    n_iter: int
    converged: bool
    relative_gradient: float
    stop: str


class _Preconditioner:
    """``U -> U P_g`` with ``P_g = Q (D_g - c_g) Q^T + c_g I`` for each grid point ``g``."""

    def __init__(self, X: torch.Tensor, mean: torch.Tensor, lams: torch.Tensor, curvature: float):
        rows = torch.linspace(0, len(X) - 1, min(len(X), PRECOND_ROWS)).long()
        sample = X[rows] - mean
        m, d = sample.shape
        if d <= m:
            variances, axes = torch.linalg.eigh((sample.T @ sample).double() / m)
        else:
            variances, vectors = torch.linalg.eigh((sample @ sample.T).double() / m)
            keep = variances > 1e-6 * variances.max()
            variances, vectors = variances[keep], vectors[:, keep]
            axes = sample.double().T @ vectors / torch.sqrt(variances * m)
        variances = variances.clamp_min(0.0)
        self.axes = axes.float()
        lams = lams.double()[:, None]
        if d > m:
            self.fill = ((lams[:, 0] + curvature * variances.min()) ** -0.5).float()
        else:
            self.fill = torch.zeros(len(lams))
        self.scale = ((lams + curvature * variances) ** -0.5 - self.fill[:, None]).float()

    def __call__(self, U: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """``U`` (blocks, outputs, d) mapped block by block."""
        rotated = (U @ self.axes) * self.scale[blocks, None, :]
        return torch.baddbmm(
            U * self.fill[blocks, None, None], rotated, self.axes.T.expand(len(U), -1, -1)
        )


class _Objective:
    """Value and gradient of every stacked block's objective with one read of ``X`` per pass."""

    def __init__(self, X: np.ndarray, codes: np.ndarray, outputs: int, Cs: Sequence[float],
                 loss: SquaredHinge | CrossEntropy) -> None:
        self.X = torch.from_numpy(X)
        self.n, self.d = self.X.shape
        self.outputs = outputs
        self.loss = loss
        self.target = loss.target(torch.from_numpy(codes), outputs)
        self.lams = 1.0 / (torch.tensor(Cs, dtype=torch.float64) * self.n)
        self.mean = self.X.mean(dim=0)
        self.precond = _Preconditioner(self.X, self.mean, self.lams, loss.curvature)
        self.size = outputs * self.d + outputs

    def weights(self, x: torch.Tensor, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Coefficients (b, outputs, d) and intercepts (b, outputs) in the input's coordinates."""
        U = x[:, : -self.outputs].view(len(x), self.outputs, self.d)
        W = self.precond(U, blocks)
        return W, x[:, -self.outputs :] - W @ self.mean

    def __call__(self, x: torch.Tensor, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Objective values (float64) and gradients of the blocks ``blocks`` at ``x``."""
        b, k = len(x), self.outputs
        W, intercept = self.weights(x, blocks)
        scores = torch.addmm(intercept.reshape(1, b * k), self.X, W.reshape(b * k, self.d).T)
        value, grad_scores = self.loss(scores.view(self.n, b, k), self.target)
        del scores
        grad_scores /= self.n
        grad_b = grad_scores.sum(dim=0)
        grad_W = (grad_scores.view(self.n, b * k).T @ self.X).view(b, k, self.d)
        del grad_scores
        lams = self.lams[blocks]
        grad_W -= grad_b[:, :, None] * self.mean
        grad_W += lams.float()[:, None, None] * W
        grad = torch.empty(b, self.size)
        grad[:, : -k] = self.precond(grad_W, blocks).reshape(b, -1)
        grad[:, -k:] = grad_b
        value = value / self.n + 0.5 * lams * W.square().sum(dim=(1, 2), dtype=torch.float64)
        return value, grad


def _lbfgs(objective: _Objective, blocks: int, tol: float, max_iter: int) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Minimise every block at once, each with its own history, step and stopping test.

    Returns the solutions, iterations, relative gradients (max |g| over its starting value)
    and why each block stopped: ``tolerance``, ``max_iter`` or ``no progress`` (no step along
    the search direction lowered the objective, e.g. at the limit of float32 precision).
    """
    every = torch.arange(blocks)
    x = torch.zeros(blocks, objective.size)
    f, g = objective(x, every)
    start = g.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    n_iter = torch.zeros(blocks, dtype=torch.long)
    stop = ["max_iter"] * blocks
    S = torch.zeros(HISTORY, blocks, objective.size)
    Y = torch.zeros(HISTORY, blocks, objective.size)
    rho = torch.zeros(HISTORY, blocks)
    gamma = torch.ones(blocks)
    active = every[g.abs().amax(dim=1) > tol * start]
    for b in set(range(blocks)) - set(active.tolist()):
        stop[b] = "tolerance"
    for it in range(max_iter):
        if len(active) == 0:
            break
        slots = [(it - 1 - j) % HISTORY for j in range(min(it, HISTORY))]
        q = -g[active]
        alphas = []
        for k in slots:
            alpha = rho[k, active] * (S[k, active] * q).sum(dim=1)
            q -= alpha[:, None] * Y[k, active]
            alphas.append(alpha)
        direction = gamma[active, None] * q
        for k, alpha in zip(reversed(slots), reversed(alphas), strict=True):
            beta = rho[k, active] * (Y[k, active] * direction).sum(dim=1)
            direction += S[k, active] * (alpha - beta)[:, None]
        slope = (g[active] * direction).sum(dim=1)
        uphill = slope >= 0
        direction[uphill] = -g[active][uphill]
        slope[uphill] = -g[active][uphill].square().sum(dim=1)

        step = torch.ones(len(active))
        found = torch.zeros(len(active), dtype=torch.bool)
        f_new, g_new = f[active].clone(), g[active].clone()
        trying = torch.arange(len(active))
        for _ in range(MAX_BACKTRACKS):
            trial = x[active[trying]] + step[trying, None] * direction[trying]
            value, grad = objective(trial, active[trying])
            base = f[active[trying]]
            ok = value <= base + ARMIJO * step[trying].double() * slope[trying].double()
            f_new[trying[ok]], g_new[trying[ok]] = value[ok], grad[ok]
            found[trying[ok]] = True
            # minimum of the quadratic through f(0), f'(0) and f(step), kept within [0.1, 0.5]
            tried = step[trying]
            rise = (value - base - tried.double() * slope[trying].double()).float()
            guess = -slope[trying] * tried.square() / (2 * rise.clamp_min(1e-30))
            shorter = torch.minimum(torch.maximum(guess, 0.1 * tried), 0.5 * tried)
            step[trying[~ok]] = shorter[~ok]
            trying = trying[~ok]
            if len(trying) == 0:
                break
        moved = active[found]
        s = step[found, None] * direction[found]
        y = g_new[found] - g[moved]
        sy = (s * y).sum(dim=1)
        slot = it % HISTORY
        S[slot, active], Y[slot, active], rho[slot, active] = 0.0, 0.0, 0.0
        curved = sy > 1e-10 * s.norm(dim=1) * y.norm(dim=1)
        S[slot, moved], Y[slot, moved] = s, y
        rho[slot, moved] = torch.where(curved, 1.0 / sy, torch.zeros_like(sy))
        gamma[moved] = torch.where(curved, sy / y.square().sum(dim=1), gamma[moved])
        x[moved] += s
        f[moved], g[moved] = f_new[found], g_new[found]
        n_iter[moved] += 1
        for b in active[~found].tolist():
            stop[b] = "no progress"
        done = g[moved].abs().amax(dim=1) <= tol * start[moved]
        for b in moved[done].tolist():
            stop[b] = "tolerance"
        active = moved[~done]
    return x, n_iter, g.abs().amax(dim=1) / start, stop


def solve(
    X: np.ndarray,
    codes: np.ndarray,
    n_classes: int,
    Cs: Sequence[float],
    *,
    loss: SquaredHinge | CrossEntropy,
    tol: float,
    max_iter: int,
) -> list[Solution]:
    """Minimise ``0.5 ||W||^2 + C sum loss(X W^T + b)`` for every C in ``Cs`` in one pass."""
    outputs = 1 if n_classes == 2 else n_classes
    per_block = len(X) * outputs
    group = max(1, STACK_FLOATS // per_block)
    # threads only slow down products this small (and stall where the cores are busy)
    threads = 1 if X.size * outputs * len(Cs) < SMALL_PROBLEM else torch.get_num_threads()
    solutions: list[Solution] = []
    for lo in range(0, len(Cs), group):
        chunk = list(Cs[lo : lo + group])
        with torch_threads(threads):
            objective = _Objective(X, codes, outputs, chunk, loss)
            x, n_iter, relative, stop = _lbfgs(objective, len(chunk), tol, max_iter)
            W, intercept = objective.weights(x, torch.arange(len(chunk)))
        for i in range(len(chunk)):
            solutions.append(Solution(W[i].numpy(), intercept[i].numpy(), int(n_iter[i]),
                                      stop[i] == "tolerance", float(relative[i]), stop[i]))
    return solutions


class _FullBatchLinear(LinearClassifierMixin, BaseEstimator):
    """Shared fit for the torch linear heads; subclasses name the loss.

    Besides ``coef_``, ``intercept_`` and ``n_iter_``, a fit records ``converged_``,
    ``relative_gradient_`` (the final max |gradient| over its starting value; the fit stops
    below ``tol``) and ``stop_`` (``tolerance``, ``max_iter`` or ``no progress``). Stopping
    before ``tol`` warns with a ``ConvergenceWarning``.
    """

    _parameter_constraints: ClassVar[dict] = {
        "C": [Interval(Real, 0, None, closed="neither")],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
    }
    _loss: ClassVar[SquaredHinge | CrossEntropy]
    path_param: ClassVar[str] = "C"

    def __init__(self, C: float = 1.0, *, tol: float = 1e-3, max_iter: int = 500) -> None:
        self.C = C
        self.tol = tol
        self.max_iter = max_iter

    def _prepare(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float32, order="C")
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes; got 1 class "
                f"({self.classes_[0]!r})"
            )
        return X, codes

    def _adopt(self, solution: Solution) -> None:
        self.coef_, self.intercept_ = solution.coef, solution.intercept
        self.n_iter_ = solution.n_iter
        self.converged_ = solution.converged
        self.relative_gradient_ = solution.relative_gradient
        self.stop_ = solution.stop
        logger.debug("%s C=%g: %d iterations, %s", type(self).__name__, self.C, self.n_iter_,
                     self.stop_)
        if not self.converged_:
            warnings.warn(
                f"{type(self).__name__}(C={self.C:g}) stopped ({self.stop_}) after "
                f"{self.n_iter_} iterations at relative gradient {self.relative_gradient_:.2g}, "
                f"above tol={self.tol:g}",
                ConvergenceWarning,
                stacklevel=3,
            )

    def _solve(self, X: np.ndarray, codes: np.ndarray, Cs: Sequence[float]) -> list[Solution]:
        return solve(X, codes, len(self.classes_), [float(c) for c in Cs], loss=self._loss,
                     tol=float(self.tol), max_iter=int(self.max_iter))

    def fit(self, X: np.ndarray, y: np.ndarray) -> _FullBatchLinear:
        """Fit on float32 features (other dtypes are converted once); returns ``self``."""
        X, codes = self._prepare(X, y)
        self._adopt(self._solve(X, codes, [self.C])[0])
        return self

    def fit_path(
        self, X: np.ndarray, y: np.ndarray, values: Sequence[float]
    ) -> Iterator[tuple[dict[str, float], _FullBatchLinear]]:
        """A fitted copy for every C in ``values``, all solved in one stacked pass."""
        X, codes = self._prepare(X, y)
        for C, solution in zip(values, self._solve(X, codes, values), strict=True):
            model = clone(self).set_params(C=C)
            model.classes_, model.n_features_in_ = self.classes_, self.n_features_in_
            model._adopt(solution)
            yield {"C": C}, model

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Class scores ``X coef_^T + intercept_``: (n_samples,) for two classes, else
        (n_samples, n_classes); float32."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        scores = X @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores


class LinearSVM(_FullBatchLinear):
    """One-vs-rest linear SVM, squared hinge loss, L2 penalty (LinearSVC's primal problem).

    Unlike liblinear, the intercept is not penalised. ``coef_`` is (1, n_features) for two
    classes, else (n_classes, n_features). No ``predict_proba``: use ``decision_function``.
    """

    _loss = SquaredHinge()


class SoftmaxRegression(_FullBatchLinear):
    """Multinomial logistic regression, L2 penalty (LogisticRegression's lbfgs problem)."""

    _loss = CrossEntropy()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Softmax of the class scores (the logistic function of the score for two classes)."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            scores = np.stack([-scores, scores], axis=1) / 2
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        return scores

    def predict_log_proba(self, X: np.ndarray) -> np.ndarray:
        return np.log(self.predict_proba(X))
