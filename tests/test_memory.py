"""Work sized from the one memory budget gives the answers of the unchunked computation."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn

from featcache.classify.heads.knn import CosineKNN
from featcache.memory import chunk_rows


def test_chunk_rows_follows_the_budget() -> None:
    with sklearn.config_context(working_memory=1):
        assert chunk_rows(1024) == 1024
        assert chunk_rows(2**30) == 1
    with pytest.raises(ValueError, match="row_bytes"):
        chunk_rows(0)


@pytest.mark.parametrize("k", [1, 7])
def test_knn_over_training_chunks_equals_one_block(k: int) -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000, 16)).astype(np.float32)
    y = rng.integers(0, 5, 3000)
    queries = rng.standard_normal((700, 16)).astype(np.float32)
    whole = CosineKNN(n_neighbors=k).fit(X, y).predict_proba(queries)
    # 700 queries x 4 bytes a similarity: a 0.05 MiB budget gives chunks of 18 training rows
    with sklearn.config_context(working_memory=0.05):
        assert chunk_rows(4 * 700) < 20
        chunked = CosineKNN(n_neighbors=k).fit(X, y).predict_proba(queries)
    np.testing.assert_array_equal(whole, chunked)
