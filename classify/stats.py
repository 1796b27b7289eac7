"""Accuracy with its uncertainty: the Wilson score interval, balanced accuracy, top confusions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

LEVEL = 0.95


def wilson(correct: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion ``correct / n`` (Newcombe 1998, method 3)."""
    if n <= 0:
        raise ValueError(f"an interval needs at least one trial, got n={n}")
    ci = stats.binomtest(int(correct), int(n)).proportion_ci(level, method="wilson")
    return float(ci.low), float(ci.high)


def student_t(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (at least two), clipped to [0, 1]."""
    values = np.asarray(values, dtype=np.float64)
    mean, sem = float(values.mean()), float(stats.sem(values))
    low, high = (mean, mean) if sem == 0 else stats.t.interval(level, len(values) - 1,
                                                                loc=mean, scale=sem)
    return max(0.0, float(low)), min(1.0, float(high))


def top1_interval(correct: Sequence[int], tested: Sequence[int]) -> tuple[list[float], str]:
    """95 % interval of test top-1 from each repeat's correct and tested counts, and its method.

    One repeat: the Wilson interval of its test count. Several: the wider of the Wilson
    interval of the pooled counts (test-sampling noise) and the Student-t interval of the
    repeats' scores (noise of the split and of training), so neither source is ignored.
    """
    pooled = wilson(int(sum(correct)), int(sum(tested)))
    if len(correct) == 1:
        return list(pooled), f"Wilson score, 95 %, {correct[0]:,} of {tested[0]:,} test images"
    spread = student_t([c / n for c, n in zip(correct, tested, strict=True)])
    low, high = min(pooled[0], spread[0]), max(pooled[1], spread[1])
    return [low, high], (
        f"95 %, the wider of Wilson on the {len(correct)} repeats' pooled {sum(tested):,} test "
        f"images and Student-t over the {len(correct)} repeats"
    )


def mean_per_class(confusion: np.ndarray) -> float:
    """Mean over classes present in the test rows of each class's top-1 (balanced accuracy)."""
    confusion = np.asarray(confusion)
    totals = confusion.sum(axis=1)
    present = totals > 0
    return float(np.mean(np.diag(confusion)[present] / totals[present]))


def top_confusions(
    confusion: np.ndarray, class_names: Sequence[str], k: int = 10
) -> list[dict[str, Any]]:
    """The ``k`` most frequent off-diagonal cells: true class, predicted class, count, rate."""
    confusion = np.asarray(confusion)
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    totals = confusion.sum(axis=1)
    out = []
    for flat in order:
        i, j = divmod(int(flat), confusion.shape[1])
        if off[i, j] == 0:
            break
        out.append({"true": class_names[i], "predicted": class_names[j], "true_index": i,
                    "predicted_index": j, "count": int(off[i, j]),
                    "rate": float(off[i, j] / totals[i])})
    return out
