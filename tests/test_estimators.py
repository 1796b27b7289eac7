"""scikit-learn's estimator checks on every head and transform of the package, with its
defaults; the private scikit-learn names behind one import that fails clearly when they move."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import sys
import types
from pathlib import Path

import pytest
import sklearn
from sklearn.base import BaseEstimator
from sklearn.utils.estimator_checks import check_estimator

import featcache.classify
import featcache.sklearn_compat
from featcache.classify.heads.knn import CosineKNN
from featcache.classify.heads.linear import LinearSVM, SoftmaxRegression
from featcache.classify.heads.mlp import MLPHead
from featcache.classify.transforms import PCAWhiten, Standardize

ESTIMATORS = (LinearSVM, SoftmaxRegression, MLPHead, CosineKNN, Standardize, PCAWhiten)
# checks that skip themselves here, and why; no check is an expected failure
SKIPPED_BECAUSE = {
    "check_array_api_input": "array API inputs are not claimed: the heads compute in "
    "numpy/torch float32",
    "check_classifier_data_not_an_array": "pandas is not installed; the project does not need it",
}


def _public_estimators() -> set[type]:
    """Every public BaseEstimator subclass defined in ``featcache.classify``."""
    found = set()
    for info in pkgutil.walk_packages(featcache.classify.__path__, "featcache.classify."):
        if info.name.endswith(".__main__"):  # runs the command line when imported
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseEstimator)
                    and obj.__module__ == module.__name__ and not name.startswith("_")):
                found.add(obj)
    return found


def test_the_list_holds_every_estimator_of_the_package() -> None:
    assert _public_estimators() == set(ESTIMATORS)


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_passes_scikit_learns_estimator_checks_with_its_defaults(cls: type) -> None:
    results = check_estimator(cls(), on_fail=None)
    failed = [f"{r['check_name']}: {r['exception']!r}" for r in results
              if r["status"] not in {"passed", "skipped"}]
    assert not failed
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert skipped <= set(SKIPPED_BECAUSE), skipped - set(SKIPPED_BECAUSE)
    assert len(results) - len(skipped) >= 45


def test_the_private_scikit_learn_names_import() -> None:
    for name in featcache.sklearn_compat.__all__:
        assert getattr(featcache.sklearn_compat, name) is not None, name


def test_a_moved_private_name_fails_naming_it_and_the_version(monkeypatch) -> None:
    moved = types.ModuleType("sklearn.utils._param_validation")  # Interval gone
    monkeypatch.setitem(sys.modules, "sklearn.utils._param_validation", moved)
    path = Path(featcache.sklearn_compat.__file__)
    spec = importlib.util.spec_from_file_location("_compat_copy", path)
    with pytest.raises(ImportError) as err:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    message = str(err.value)
    assert "Interval" in message and f"scikit-learn {sklearn.__version__}" in message
    assert "featcache/sklearn_compat.py" in message
