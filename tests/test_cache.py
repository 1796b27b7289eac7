"""The cache format: key, round trip, integrity, locking, shards and layer merging."""

import dataclasses

import h5py
import numpy as np
import pytest

from featcache.errors import UsageError
from featcache.extract.cache.hdf5 import (
    FORMAT_VERSION,
    Assembler,
    CacheError,
    CacheKey,
    FeatureCache,
    SplitPlan,
    assemble,
    find_caches,
    write_cache,
    writer_lock,
)
from featcache.extract.cache.shards import ShardSpec, ShardStore, finite_or_raise, shard_specs

KEY = CacheKey(dataset="toy", dataset_fingerprint="f" * 64, split_rule="official", backbone="b",
               weights_sha256="w" * 64, preprocess="{}", resolution=32, views="v1", pool="avg",
               dtype="float16")


def _split(n, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "labels": np.arange(n) % 2,
        "ids": [f"i{j}" for j in range(n)],
        "features": {"pool": rng.normal(size=(n, d)).astype(np.float32)},
    }


def _cache(path, **splits):
    return write_cache(path, meta={"class_names": ["a", "b"], "backbone": "b"},
                       splits=splits or {"train": _split(20), "test": _split(6, seed=1)},
                       dtype="float32")


def test_every_field_of_the_key_names_its_own_file(tmp_path):
    assert KEY.path(tmp_path) == KEY.path(tmp_path)
    changed = {
        "dataset_fingerprint": "e" * 64, "split_rule": "seed=1", "weights_sha256": "v" * 64,
        "preprocess": '{"crop_pct": 0.9}', "resolution": 64, "views": "v10", "pool": "max",
        "dtype": "float32", "skip_bad": True, "pipeline": 1,
    }
    paths = {dataclasses.replace(KEY, **{k: v}).path(tmp_path) for k, v in changed.items()}
    assert len(paths) == len(changed) and KEY.path(tmp_path) not in paths
    assert KEY.path(tmp_path).parent.name == "toy-ffffffff"


def test_round_trip_and_row_subsets_in_the_order_given(tmp_path):
    train, test = _split(20), _split(6, seed=1)
    path = _cache(tmp_path / "c.h5", train=train, test=test)
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
        cache.verify()
    assert find_caches(tmp_path) == []
    assert _cache(tmp_path / "cache" / "x" / "c.h5") in find_caches(tmp_path)


def test_float16_chunked_and_checksummed_by_default(tmp_path):
    path = write_cache(tmp_path / "c.h5", meta={"class_names": ["a", "b"]},
                       splits={"train": _split(5)})
    with h5py.File(path) as f:
        ds = f["train/features/pool"]
        assert ds.dtype == np.float16 and ds.chunks is not None and ds.fletcher32


def test_incomplete_and_foreign_files_are_refused(tmp_path):
    path = _cache(tmp_path / "c.h5")
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


def _flip_byte_in(path, dataset):
    with h5py.File(path) as f:
        info = f[dataset].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda f: f.__delitem__("test"), "split 'test'"),
        (lambda f: f.__delitem__("train/labels"), "labels"),
        (lambda f: f["train/features"].__delitem__("pool"), "layer 'pool'"),
        (lambda f: f["train"].attrs.__setitem__("ids_sha256", "0"), "ids or labels"),
    ],
)
def test_verify_names_what_is_missing_or_changed(tmp_path, damage, needle):
    path = _cache(tmp_path / "c.h5")
    with h5py.File(path, "a") as f:
        damage(f)
    with FeatureCache(path) as cache, pytest.raises(CacheError, match=needle):
        cache.verify()


def test_flipped_bytes_in_feature_data_fail_the_checksum(tmp_path):
    path = _cache(tmp_path / "c.h5")
    _flip_byte_in(path, "train/features/pool")
    with FeatureCache(path) as cache:
        cache.verify(data=False)
        with pytest.raises(CacheError, match="damaged"):
            cache.verify()


def test_second_writer_gets_a_clear_error(tmp_path):
    path = tmp_path / "c.h5"
    with writer_lock(path), pytest.raises(CacheError, match="another process"), writer_lock(path):
        pass


def _store(tmp_path, shard_rows=4, layers=("pool",)):
    manifest = {"shard_rows": shard_rows, "dtype": "float16", "layers": list(layers), "key": "k"}
    return ShardStore.open(tmp_path / "c.h5.parts", manifest)


def _write(store, spec, data, skip=()):
    rows = [r for r in range(spec.start, spec.end) if r not in skip]
    store.write(spec, rows=rows, ids=[data["ids"][r] for r in rows],
                labels=data["labels"][rows], skipped=list(skip),
                features={"pool": data["features"]["pool"][rows]})


def test_a_shard_is_trusted_only_if_it_is_what_its_position_says(tmp_path):
    data = _split(8)
    store = _store(tmp_path)
    first, second = shard_specs("train", 8, 4)
    _write(store, first, data, skip={2})
    assert store.read(first, data["ids"], data["labels"]).rows.tolist() == [0, 1, 3]
    shifted = ShardSpec("train", 4, 8)
    store.write(shifted, rows=[3, 4, 5, 6], ids=data["ids"][3:7], labels=data["labels"][3:7],
                features={"pool": data["features"]["pool"][3:7]})
    assert store.read(second, data["ids"], data["labels"]) is None
    assert not store.path(second).exists()
    _write(store, second, data)
    renamed = [f"x{j}" for j in range(8)]
    assert store.read(second, renamed, data["labels"]) is None


def test_a_store_started_for_another_extraction_is_discarded(tmp_path):
    data = _split(8)
    store = _store(tmp_path)
    _write(store, shard_specs("train", 8, 4)[0], data)
    assert _store(tmp_path).done(shard_specs("train", 8, 4)[0])
    assert not _store(tmp_path, shard_rows=8).done(shard_specs("train", 8, 8)[0])


def test_assembly_needs_every_shard_then_removes_them(tmp_path):
    data = _split(10)
    store = _store(tmp_path)
    specs = tuple(shard_specs("train", 10, 4))
    plans = {"train": SplitPlan(data["ids"], data["labels"], ("full",), specs)}
    path = tmp_path / "c.h5"
    _write(store, specs[0], data)
    with pytest.raises(CacheError, match=r"2 shards .* missing"):
        assemble(path, store, plans, {"pool": {"node": "x"}}, {"class_names": ["a", "b"]})
    assert not path.exists()
    for spec in specs[1:]:
        _write(store, spec, data)
    assemble(path, store, plans, {"pool": {"node": "x"}}, {"class_names": ["a", "b"]})
    with FeatureCache(path) as cache:
        np.testing.assert_array_equal(cache.ids("train"), data["ids"])
        cache.verify()
    assert not store.folder.exists()


def test_an_assembler_started_ahead_writes_the_file_and_one_never_used_is_stopped(tmp_path):
    data = _split(6)
    store = _store(tmp_path)
    specs = tuple(shard_specs("train", 6, 4))
    for spec in specs:
        _write(store, spec, data)
    plans = {"train": SplitPlan(data["ids"], data["labels"], ("full",), specs)}
    with Assembler() as ahead:
        assemble(tmp_path / "c.h5", store, plans, {"pool": {"node": "x"}},
                 {"class_names": ["a", "b"]}, ahead)
    assert ahead._child.returncode == 0
    with FeatureCache(tmp_path / "c.h5") as cache:
        np.testing.assert_array_equal(cache.ids("train"), data["ids"])
    with Assembler() as idle:
        pass
    assert idle._child.returncode is not None  # killed, not left waiting


def test_new_layers_are_merged_into_a_finished_file(tmp_path):
    data = _split(5)
    path = _cache(tmp_path / "c.h5", train=data)
    store = _store(tmp_path, shard_rows=5, layers=("block5",))
    spec = shard_specs("train", 5, 5)[0]
    extra = np.ones((5, 3), np.float32)
    store.write(spec, rows=range(5), ids=data["ids"], labels=data["labels"],
                features={"block5": extra})
    plans = {"train": SplitPlan(data["ids"], data["labels"], ("full",), (spec,))}
    assemble(path, store, plans, {"block5": {"node": "n"}}, {"class_names": ["a", "b"]})
    with FeatureCache(path) as cache:
        assert cache.layers("train") == ["block5", "pool"]
        np.testing.assert_array_equal(cache.features("train", "block5"), extra)
        cache.verify()


def test_values_beyond_float16_are_refused_naming_the_layer():
    with pytest.raises(UsageError, match=r"layer 'block3'.*DTYPE=float32"):
        finite_or_raise("block3", np.array([1.0, 7e5]), np.dtype("float16"))
    with pytest.raises(UsageError, match="NaN or inf in layer 'x'"):
        finite_or_raise("x", np.array([np.nan]), np.dtype("float32"))
    assert finite_or_raise("x", np.array([7e5]), np.dtype("float32")).dtype == np.float32
