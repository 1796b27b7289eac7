"""The 95 % interval of test top-1 on known cases, balanced accuracy, top confusions."""

from __future__ import annotations

import numpy as np
import pytest

from featcache.classify.stats import (
    mean_per_class,
    student_t,
    top1_interval,
    top_confusions,
    wilson,
)

# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Statistics in
# Medicine 17:857-872, Table I, method 3 (Wilson score, no continuity correction).
NEWCOMBE = [
    ((81, 263), (0.2553, 0.3662)),
    ((15, 148), (0.0624, 0.1605)),
    ((0, 20), (0.0, 0.1611)),
    ((1, 29), (0.0061, 0.1718)),
]


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE,
                         ids=[f"{k}/{n}" for (k, n), _ in NEWCOMBE])
def test_wilson_matches_newcombes_table(counts, expected) -> None:
    assert wilson(*counts) == pytest.approx(expected, abs=5e-5)


def test_wilson_is_symmetric_and_stays_in_zero_one() -> None:
    low, high = wilson(30, 100)
    assert wilson(70, 100) == pytest.approx((1 - high, 1 - low))
    assert wilson(100, 100)[1] == 1.0 and wilson(0, 100)[0] == 0.0
    with pytest.raises(ValueError, match="n=0"):
        wilson(0, 0)


def test_student_t_of_a_known_sample() -> None:
    # half-width t(0.975, 3) * sd / sqrt(4); t(0.975, 3) = 3.182446 (any t table)
    low, high = student_t([0.4, 0.5, 0.6, 0.5])
    sd = np.std([0.4, 0.5, 0.6, 0.5], ddof=1)
    assert (high - low) / 2 == pytest.approx(3.182446 * sd / 2, rel=1e-6)


def test_one_repeat_is_wilson_and_several_take_the_wider_interval() -> None:
    interval, method = top1_interval([81], [263])
    assert interval == pytest.approx(wilson(81, 263)) and method.startswith("Wilson")
    steady, _ = top1_interval([80, 80, 80], [100, 100, 100])
    assert steady == pytest.approx(wilson(240, 300))  # no spread: test sampling decides
    shaky, method = top1_interval([70, 90, 80], [100, 100, 100])
    assert shaky == pytest.approx(student_t([0.7, 0.9, 0.8]))  # spread decides
    assert "Student-t over the 3 repeats" in method


def test_mean_per_class_weights_every_class_alike() -> None:
    confusion = np.array([[90, 10], [5, 5]])
    assert mean_per_class(confusion) == pytest.approx((0.9 + 0.5) / 2)
    assert mean_per_class(np.array([[3, 0, 0], [0, 0, 0], [1, 0, 1]])) == pytest.approx(0.75)


def test_top_confusions_are_named_and_ordered() -> None:
    confusion = np.array([[5, 3, 0], [0, 6, 1], [4, 0, 2]])
    found = top_confusions(confusion, ["a", "b", "c"], k=2)
    assert [(c["true"], c["predicted"], c["count"]) for c in found] == [("c", "a", 4),
                                                                        ("a", "b", 3)]
    assert found[0]["rate"] == pytest.approx(4 / 6)
    assert top_confusions(np.eye(3, dtype=int), ["a", "b", "c"]) == []


def test_student_t_of_identical_repeats_is_that_value() -> None:
    assert student_t([0.5, 0.5, 0.5]) == (0.5, 0.5)
