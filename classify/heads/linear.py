"""Fast full-batch linear heads in torch (float32, CPU): one-vs-rest L2 SVM and softmax.

Both minimise ``0.5 ||W||^2 + C * sum_i loss_i`` (scikit-learn's scaling; the intercept is not
penalised). Two classes use one weight vector, as LinearSVC and LogisticRegression do.

The solver (``solve``) fits a whole grid of C values stacked: their weights form one matrix,
so each iteration reads the training matrix twice whatever the number of C values, and each C
keeps its own L-BFGS history, step and stopping test (max |gradient| below ``tol`` times its
value at zero), so the result for every C is the optimum a fit with that C alone reaches,
within ``tol``. It runs in two rounds: every other C from zero, then the rest from the mean of
their neighbours' solutions, which is close to their own. Weights are parametrised as
``W = U P`` where ``P ~ (lambda I + a Cov)^(-1/2)`` comes from one eigendecomposition of the
covariance of at most ``PRECOND_ROWS`` evenly spaced rows, shared by the grid, and the
intercept is scaled by ``a^(-1/2)`` to match. That changes the path, not the optimum, and cuts
iterations about tenfold on correlated CNN features.
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
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featcache.sklearn_compat import Interval, LinearClassifierMixin
from featcache.threads import torch_threads

logger = logging.getLogger(__name__)

PRECOND_ROWS = 8192
STACK_FLOATS = 2**25  # most score entries (rows x stacked outputs) computed at once
SMALL_PROBLEM = 2**22  # rows x features x stacked outputs below which one thread is faster
HISTORY = 10
ARMIJO = 1e-4
MAX_BACKTRACKS = 20


def _plus_minus(codes: torch.Tensor) -> torch.Tensor:
    """Two classes' codes 0 / 1 as the single output's targets -1 / +1, shaped (1, 1, rows)."""
    return (2.0 * codes - 1.0).view(1, 1, -1)


class SquaredHinge:
    """One-vs-rest squared hinge; one output (+1 / -1) for two classes."""

    curvature = 1.0

    @staticmethod
    def target(codes: torch.Tensor, outputs: int) -> torch.Tensor:
        if outputs == 1:
            return _plus_minus(codes)
        signs = torch.full((1, outputs, len(codes)), -1.0)
        signs[0, codes, torch.arange(len(codes))] = 1.0
        return signs

    @staticmethod
    def __call__(scores: torch.Tensor, signs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-block summed loss (float64) and its gradient with respect to ``scores``
        (blocks, outputs, rows)."""
        slack = torch.relu(1.0 - signs * scores)
        value = slack.square().sum(dim=(1, 2), dtype=torch.float64)
        return value, slack.mul_(-2.0 * signs)


class CrossEntropy:
    """Multinomial cross-entropy; the binomial (logistic) loss for two classes."""

    curvature = 0.25

    @staticmethod
    def target(codes: torch.Tensor, outputs: int) -> torch.Tensor:
        if outputs == 1:
            return _plus_minus(codes)
        return codes.view(1, 1, -1)

    @staticmethod
    def __call__(scores: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-block summed loss (float64) and its gradient with respect to ``scores``
        (blocks, outputs, rows): softmax over the outputs, a stride of one row apart, which
        is several times faster than over a last axis of ten."""
        if scores.shape[1] == 1:
            margin = -target * scores
            value = torch.nn.functional.softplus(margin).sum(dim=(1, 2), dtype=torch.float64)
            return value, torch.sigmoid(margin).mul_(-target)
        log_p = torch.log_softmax(scores, dim=1)
        index = target.expand(scores.shape[0], 1, -1)
        value = -log_p.gather(1, index).sum(dim=(1, 2), dtype=torch.float64)
        grad = log_p.exp_()
        grad.scatter_add_(1, index, torch.full(index.shape, -1.0))
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


@dataclass(frozen=True)
class _Spectrum:
    """The column means of ``X`` and the eigendecomposition of the covariance of at most
    ``PRECOND_ROWS`` evenly spaced rows; ``complete`` where the axes span every feature."""

    mean: torch.Tensor
    axes: torch.Tensor
    variances: torch.Tensor
    complete: bool

    @classmethod
    def of(cls, X: torch.Tensor) -> _Spectrum:
        mean = X.mean(dim=0)
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
        return cls(mean, axes.float(), variances.clamp_min(0.0), d <= m)


class _Preconditioner:
    """``U -> U P_g`` with ``P_g = Q (D_g - c_g) Q^T + c_g I`` for each grid point ``g``; the
    (unpenalised) intercept is scaled by ``a^(-1/2)``, as a constant feature of 1 would be."""

    def __init__(self, spectrum: _Spectrum, lams: torch.Tensor, curvature: float) -> None:
        self.axes = spectrum.axes
        lams = lams.double()[:, None]
        if spectrum.complete:
            self.fill = torch.zeros(len(lams))
        else:
            self.fill = ((lams[:, 0] + curvature * spectrum.variances.min()) ** -0.5).float()
        self.scale = ((lams + curvature * spectrum.variances) ** -0.5
                      - self.fill[:, None]).float()
        self.intercept = curvature**-0.5

    def __call__(self, U: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """``U`` (blocks, outputs, d) mapped block by block."""
        return self._map(U, self.scale[blocks], self.fill[blocks])

    def inverse(self, W: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """``W`` (blocks, outputs, d) mapped by ``P_g^-1`` block by block."""
        fill = self.fill[blocks]
        inverse_fill = torch.where(fill > 0, 1.0 / fill, torch.zeros_like(fill))
        return self._map(W, 1.0 / (self.scale[blocks] + fill[:, None]) - inverse_fill[:, None],
                         inverse_fill)

    def _map(self, U: torch.Tensor, scale: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        rotated = (U @ self.axes) * scale[:, None, :]
        return torch.baddbmm(U * fill[:, None, None], rotated, self.axes.T.expand(len(U), -1, -1))


class _Objective:
    """Value and gradient of every stacked block's objective with one read of ``X`` per pass."""

    def __init__(self, X: torch.Tensor, target: torch.Tensor, outputs: int, Cs: Sequence[float],
                 loss: SquaredHinge | CrossEntropy, spectrum: _Spectrum) -> None:
        self.X, self.target, self.outputs, self.loss = X, target, outputs, loss
        self.n, self.d = X.shape
        self.lams = 1.0 / (torch.tensor(Cs, dtype=torch.float64) * self.n)
        self.mean = spectrum.mean
        self.precond = _Preconditioner(spectrum, self.lams, loss.curvature)
        self.size = outputs * self.d + outputs

    def weights(self, x: torch.Tensor, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Coefficients (b, outputs, d) and intercepts (b, outputs) in the input's coordinates."""
        U = x[:, : -self.outputs].view(len(x), self.outputs, self.d)
        W = self.precond(U, blocks)
        return W, x[:, -self.outputs :] * self.precond.intercept - W @ self.mean

    def point(self, coef: torch.Tensor, intercept: torch.Tensor,
              blocks: torch.Tensor) -> torch.Tensor:
        """The ``x`` whose ``weights`` are ``coef`` (b, outputs, d) and ``intercept``."""
        x = torch.empty(len(coef), self.size)
        x[:, : -self.outputs] = self.precond.inverse(coef, blocks).reshape(len(coef), -1)
        x[:, -self.outputs :] = (intercept + coef @ self.mean) / self.precond.intercept
        return x

    def __call__(self, x: torch.Tensor, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Objective values (float64) and gradients of the blocks ``blocks`` at ``x``."""
        b, k = len(x), self.outputs
        W, intercept = self.weights(x, blocks)
        scores = torch.addmm(intercept.reshape(b * k, 1), W.reshape(b * k, self.d), self.X.T)
        value, grad_scores = self.loss(scores.view(b, k, self.n), self.target)
        del scores
        grad_scores /= self.n
        grad_b = grad_scores.sum(dim=2)
        grad_W = (grad_scores.view(b * k, self.n) @ self.X).view(b, k, self.d)
        del grad_scores
        lams = self.lams[blocks]
        grad_W -= grad_b[:, :, None] * self.mean
        grad_W += lams.float()[:, None, None] * W
        grad = torch.empty(b, self.size)
        grad[:, : -k] = self.precond(grad_W, blocks).reshape(b, -1)
        grad[:, -k:] = grad_b * self.precond.intercept
        value = value / self.n + 0.5 * lams * W.square().sum(dim=(1, 2), dtype=torch.float64)
        return value, grad


def _lbfgs(objective: _Objective, x0: torch.Tensor, tol: float, max_iter: int) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Minimise every block at once, each with its own history, step and stopping test.

    Each block starts at its row of ``x0`` where the objective is lower there than at zero,
    else at zero; the stopping test compares with max |g| at zero either way. Returns the
    solutions, iterations, relative gradients (max |g| over its value at zero) and why each
    block stopped: ``tolerance``, ``max_iter`` or ``no progress`` (no step along the search
    direction lowered the objective, e.g. at the limit of float32 precision).
    """
    blocks = len(x0)
    every = torch.arange(blocks)
    x = torch.zeros_like(x0)
    f, g = objective(x, every)
    start = g.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    if x0.any():
        f0, g0 = objective(x0, every)
        lower = f0 < f
        x[lower], f[lower], g[lower] = x0[lower], f0[lower], g0[lower]
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


def _stacked(X: torch.Tensor, target: torch.Tensor, outputs: int, Cs: Sequence[float],
             starts: Sequence[tuple[np.ndarray, np.ndarray]] | None, spectrum: _Spectrum,
             loss: SquaredHinge | CrossEntropy, tol: float, max_iter: int) -> list[Solution]:
    """Every C in ``Cs`` solved from ``starts`` (default zero), as many at once as fit in
    ``STACK_FLOATS``."""
    group = max(1, STACK_FLOATS // (len(X) * outputs))
    solutions: list[Solution] = []
    for lo in range(0, len(Cs), group):
        chunk = list(Cs[lo : lo + group])
        objective = _Objective(X, target, outputs, chunk, loss, spectrum)
        every = torch.arange(len(chunk))
        x0 = torch.zeros(len(chunk), objective.size)
        if starts is not None:
            coefs, intercepts = zip(*starts[lo : lo + group], strict=True)
            x0 = objective.point(torch.from_numpy(np.stack(coefs)),
                                 torch.from_numpy(np.stack(intercepts)), every)
        x, n_iter, relative, stop = _lbfgs(objective, x0, tol, max_iter)
        W, intercept = objective.weights(x, every)
        for i in range(len(chunk)):
            solutions.append(Solution(W[i].numpy(), intercept[i].numpy(), int(n_iter[i]),
                                      stop[i] == "tolerance", float(relative[i]), stop[i]))
    return solutions


def _between(solutions: Sequence[Solution]) -> tuple[np.ndarray, np.ndarray]:
    """The mean of the neighbours' weights: a start for the C between them."""
    return (np.mean([s.coef for s in solutions], axis=0),
            np.mean([s.intercept for s in solutions], axis=0))


def solve(
    X: np.ndarray,
    codes: np.ndarray,
    n_classes: int,
    Cs: Sequence[float],
    *,
    loss: SquaredHinge | CrossEntropy,
    tol: float,
    max_iter: int,
    init: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
) -> list[Solution]:
    """Minimise ``0.5 ||W||^2 + C sum loss(X W^T + b)`` for every C in ``Cs``, stacked.

    ``init``: a (coef, intercept) per C to start from, where its objective is lower than at
    zero. Without it, every other C in rising order (the first, third, ...) starts at zero,
    then the others start from the mean of their two neighbours' solutions (the largest,
    where the grid's length is even, from its one neighbour's).
    """
    outputs = 1 if n_classes == 2 else n_classes
    # threads only slow down products this small (and stall where the cores are busy)
    threads = 1 if X.size * outputs * len(Cs) < SMALL_PROBLEM else torch.get_num_threads()
    with torch_threads(threads):
        X_t = torch.from_numpy(X)
        spectrum = _Spectrum.of(X_t)
        target = loss.target(torch.from_numpy(codes), outputs)

        def stacked(indices: Sequence[int], starts: Sequence[tuple] | None) -> list[Solution]:
            return _stacked(X_t, target, outputs, [Cs[i] for i in indices], starts, spectrum,
                            loss, tol, max_iter)

        if init is not None:
            return stacked(range(len(Cs)), init)
        order = sorted(range(len(Cs)), key=lambda i: Cs[i])
        first = list(range(0, max(1, len(order) - 1), 2))
        solved = dict(zip(first, stacked([order[p] for p in first], None), strict=True))
        rest = [p for p in range(len(order)) if p not in solved]
        starts = [_between([solved[q] for q in (max(q for q in first if q < p), p + 1)
                            if q in solved]) for p in rest]
        solved.update(zip(rest, stacked([order[p] for p in rest], starts), strict=True))
    return [solved[order.index(i)] for i in range(len(Cs))]


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

    def _solve(self, X: np.ndarray, codes: np.ndarray, Cs: Sequence[float],
               init: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> list[Solution]:
        return solve(X, codes, len(self.classes_), [float(c) for c in Cs], loss=self._loss,
                     tol=float(self.tol), max_iter=int(self.max_iter), init=init)

    def fit(self, X: np.ndarray, y: np.ndarray, coef_init: np.ndarray | None = None,
            intercept_init: np.ndarray | None = None) -> _FullBatchLinear:
        """Fit on float32 features (other dtypes are converted once); returns ``self``.

        ``coef_init`` and ``intercept_init`` (shaped as ``coef_`` and ``intercept_``, as in
        ``SGDClassifier.fit``) start the solver there instead of at zero, where the objective
        is lower there; the stopping test is the same (gradient relative to its value at zero),
        so the fit ends at the same optimum, within ``tol``, in fewer iterations.
        """
        X, codes = self._prepare(X, y)
        init = None
        if coef_init is not None or intercept_init is not None:
            init = [self._initial(X.shape[1], coef_init, intercept_init)]
        self._adopt(self._solve(X, codes, [self.C], init)[0])
        return self

    def _initial(self, d: int, coef: np.ndarray | None,
                 intercept: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        outputs = 1 if len(self.classes_) == 2 else len(self.classes_)
        coef = np.zeros((outputs, d), np.float32) if coef is None else np.asarray(coef, np.float32)
        intercept = (np.zeros(outputs, np.float32) if intercept is None
                     else np.asarray(intercept, np.float32))
        if coef.shape != (outputs, d) or intercept.shape != (outputs,):
            raise ValueError(f"coef_init {coef.shape} and intercept_init {intercept.shape} must "
                             f"be shaped ({outputs}, {d}) and ({outputs},)")
        return coef, intercept

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
