"""The cache format: round trip, completeness, locking, resume and layer merging."""

import h5py
import numpy as np
import pytest

from extract.cache import (
    FORMAT_VERSION,
    CacheError,
    CacheKey,
    CacheWriter,
    FeatureCache,
    SplitPlan,
    find_caches,
    write_cache,
)


def _key(**kw):
    base = dict(
        dataset="toy",
        source="s",
        backbone="b",
        weights="w",
        resolution=32,
        views="v1",
        pool="avg",
        dtype="float16",
        split_rule="official",
    )
    return CacheKey(**{**base, **kw})


def _split(n, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "labels": np.arange(n) % 2,
        "ids": [f"i{j}" for j in range(n)],
        "features": {"pool": rng.normal(size=(n, d)).astype(np.float32)},
    }


def test_path_follows_configuration(tmp_path):
    assert _key().path(tmp_path) == _key().path(tmp_path)
    others = [
        _key(resolution=64),
        _key(views="v10"),
        _key(pool="max"),
        _key(source="t"),
        _key(dtype="float32"),
        _key(weights="x"),
        _key(split_rule="seed=1"),
    ]
    paths = {k.path(tmp_path) for k in others}
    assert len(paths) == len(others) and _key().path(tmp_path) not in paths


def test_round_trip_and_row_subsets(tmp_path):
    path = _key().path(tmp_path)
    train, test = _split(20), _split(6, seed=1)
    write_cache(
        path,
        meta={"class_names": ["a", "b"], "backbone": "b"},
        splits={"train": train, "test": test},
        dtype="float32",
    )
    with FeatureCache(path) as cache:
        assert cache.splits == ["test", "train"]
        assert cache.class_names == ["a", "b"] and cache.meta["backbone"] == "b"
        np.testing.assert_array_equal(cache.labels("train"), train["labels"])
        assert list(cache.ids("test")) == test["ids"]
        full = cache.features("train", "pool")
        assert full.dtype == np.float32
        np.testing.assert_array_equal(full, train["features"]["pool"])
        np.testing.assert_array_equal(cache.features("train", "pool", rows=[7, 3]), full[[7, 3]])
        assert cache.features("train", ["pool", "pool"]).shape == (20, 8)
        with pytest.raises(CacheError, match=r"layer 'nope'.*valid: \['pool'\]"):
            cache.features("train", "nope")
    assert find_caches(tmp_path, "toy") == [path]


def test_float16_is_default_storage(tmp_path):
    path = write_cache(
        tmp_path / "c.h5", meta={"class_names": ["a", "b"]}, splits={"train": _split(5)}
    )
    with h5py.File(path) as f:
        assert f["train/features/pool"].dtype == np.float16
        assert f["train/features/pool"].chunks is not None


def test_incomplete_and_foreign_files_are_refused(tmp_path):
    path = write_cache(
        tmp_path / "c.h5", meta={"class_names": ["a", "b"]}, splits={"train": _split(5)}
    )
    with h5py.File(path, "a") as f:
        f.attrs["complete"] = False
    with pytest.raises(CacheError, match="incomplete"):
        FeatureCache(path)
    with h5py.File(path, "a") as f:
        f.attrs["complete"] = True
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(CacheError, match="format"):
        FeatureCache(path)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(CacheError, match="not a readable HDF5"):
        FeatureCache(tmp_path / "junk.h5")


def test_second_writer_gets_a_clear_error(tmp_path):
    path = tmp_path / "c.h5"
    layers = {"pool": {"node": "x"}}
    with (
        CacheWriter(path, meta={}, layers=layers),
        pytest.raises(CacheError, match="another process"),CacheWriter(path, meta={}, layers=layers)
    ):
        pass


def test_shards_resume_and_finalize_only_when_whole(tmp_path):
    path = tmp_path / "c.h5"
    data = _split(10)
    layers = {"pool": {"node": "x"}}
    meta = {"class_names": ["a", "b"]}
    with CacheWriter(path, meta=meta, layers=layers) as w:
        w.write_shard(
            "train",
            0,
            labels=data["labels"][:4],
            ids=data["ids"][:4],
            features={"pool": data["features"]["pool"][:4]},
        )
        with pytest.raises(CacheError, match="cover 4 of 10"):
            w.finalize({"train": SplitPlan(10, ("full",))})
    assert not path.exists()
    with CacheWriter(path, meta=meta, layers=layers) as w:
        assert w.done_shards("train") == {0}
        w.write_shard(
            "train",
            4,
            labels=data["labels"][4:],
            ids=data["ids"][4:],
            features={"pool": data["features"]["pool"][4:]},
        )
        w.finalize({"train": SplitPlan(10, ("full",))})
    with FeatureCache(path) as cache:
        np.testing.assert_array_equal(cache.ids("train"), data["ids"])
    assert not (tmp_path / "c.h5.parts").exists()


def test_new_layers_are_merged_into_a_finished_file(tmp_path):
    path = write_cache(
        tmp_path / "c.h5", meta={"class_names": ["a", "b"]}, splits={"train": _split(5)}
    )
    extra = np.ones((5, 3), np.float32)
    with CacheWriter(path, meta={"class_names": ["a", "b"]}, layers={"block5": {"node": "n"}}) as w:
        w.write_shard(
            "train",
            0,
            labels=np.arange(5) % 2,
            ids=[f"i{j}" for j in range(5)],
            features={"block5": extra},
        )
        w.finalize({"train": SplitPlan(5, ("full",))})
    with FeatureCache(path) as cache:
        assert cache.layers("train") == ["block5", "pool"]
        np.testing.assert_array_equal(cache.features("train", "block5"), extra)


def test_changed_layer_set_discards_stale_shards(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, meta={}, layers={"a": {}}) as w:
        w.write_shard("train", 0, labels=[0], ids=["x"], features={"a": np.zeros((1, 2))})
    with CacheWriter(path, meta={}, layers={"b": {}}) as w:
        assert w.done_shards("train") == set()
