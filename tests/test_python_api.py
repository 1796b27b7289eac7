"""The README's Python API example, run exactly as written, and load_features' contract."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from test_classify_synthetic import write_synthetic

from featcache.classify import find_cache, iter_features, load_features

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_example_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FEATCACHE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines()] == [
        "logistic regression", "linear SVM", "SGD, chunked"]
    X, y, groups = namespace["X"], namespace["y"], namespace["groups"]
    assert X.dtype == np.float32 and X.shape == (200, 1280) and len(y) == len(groups) == 200
    assert namespace["cache"].is_file() and (tmp_path / "data") in namespace["cache"].parents
    assert namespace["logreg"].score(namespace["X_test"], namespace["y_test"]) > 0.5


def test_load_features_flattens_views_and_keeps_their_image(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path, train_views=5, test_views=5, n_train=30,
                           layers=("pool", "block5"))
    X, y, groups = load_features(path, "train", layers=("pool", "block5"))
    assert X.dtype == np.float32 and X.shape == (150, 32)
    np.testing.assert_array_equal(groups, np.repeat(np.arange(30), 5))
    np.testing.assert_array_equal(y[::5], y[4::5])
    X_rows, y_rows, g_rows = load_features(path, "train", rows=[7, 3])
    np.testing.assert_array_equal(g_rows, [7] * 5 + [3] * 5)
    np.testing.assert_array_equal(y_rows, np.r_[y[35:40], y[15:20]])
    np.testing.assert_array_equal(X_rows[:5], X[35:40, :16])
    chunks = list(iter_features(path, "train", layers=("pool", "block5"), chunk_rows=8))
    assert [len(c[0]) for c in chunks] == [40, 40, 40, 30]
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), X)
    np.testing.assert_array_equal(np.concatenate([c[2] for c in chunks]), groups)


def test_a_dataset_name_finds_the_same_cache_as_make_classify(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path, dataset="flowers", backbone="lite")
    write_synthetic(tmp_path, dataset="flowers", backbone="vgg")
    assert find_cache("flowers", data_dir=tmp_path, backbone="lite") == path
    X, _, _ = load_features("flowers", "test", data_dir=tmp_path, backbone="lite")
    assert X.shape == (150, 16)
    with pytest.raises(ValueError, match="BACKBONE="):
        load_features("flowers", data_dir=tmp_path)
