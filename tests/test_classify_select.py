"""DATASET= in stage two means the cache stage one wrote for it: by metadata, never the newest."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import h5py
import pytest
from conftest import write_image_folder
from test_classify_synthetic import write_synthetic

from featcache.classify.cli import main
from featcache.classify.select import CacheQuery, resolve_cache
from featcache.errors import CacheError, UsageError
from featcache.extract.data.datasets import open_dataset

ROOT = Path(__file__).resolve().parents[1]


def _folder_cache(data_dir: Path, folder: Path, **kw) -> Path:
    """A cache that says it was extracted from ``folder`` (or a CSV manifest) as it is now."""
    dataset = open_dataset(str(folder), data_dir)
    return write_synthetic(data_dir, dataset=dataset.name, source=dataset.source,
                           fingerprint=dataset.fingerprint, **kw)


def _error(data_dir: Path, query: CacheQuery) -> str:
    with pytest.raises((UsageError, CacheError)) as info:
        resolve_cache(data_dir, query)
    return str(info.value)


def test_several_caches_are_an_error_naming_what_tells_them_apart(tmp_path: Path) -> None:
    lite = write_synthetic(tmp_path, backbone="lite", resolution=224)
    vgg = write_synthetic(tmp_path, backbone="vgg", resolution=224)
    os.utime(lite, (1, 1))  # an older file is never passed over for a newer one, or chosen
    message = _error(tmp_path, CacheQuery("digits"))
    assert "matches 2 caches" in message and "BACKBONE=" in message and "RES=" not in message
    assert f"BACKBONE=lite (CACHE={lite})" in message and f"BACKBONE=vgg (CACHE={vgg})" in message
    assert resolve_cache(tmp_path, CacheQuery("digits", backbone="lite")) == lite
    assert resolve_cache(tmp_path, CacheQuery("digits", backbone="vgg")) == vgg


def test_no_match_names_the_extract_command_with_the_options_given(tmp_path: Path) -> None:
    write_synthetic(tmp_path, resolution=224)
    message = _error(tmp_path, CacheQuery("digits", resolution=64, layers=("pool",)))
    assert "RES=224" in message and "make extract DATASET=digits RES=64 LAYERS=pool" in message
    message = _error(tmp_path, CacheQuery("mnist", backbone="vgg16"))
    assert "caches exist for: digits" in message
    assert message.endswith("make extract DATASET=mnist BACKBONE=vgg16")
    message = _error(tmp_path, CacheQuery("digits", layers=("pool", "block5")))
    assert "make extract DATASET=digits LAYERS=pool,block5" in message


def test_crops_and_layers_narrow_the_match(tmp_path: Path) -> None:
    one = write_synthetic(tmp_path, test_views=1)
    ten = write_synthetic(tmp_path, test_views=10, layers=("pool", "block5"))
    assert resolve_cache(tmp_path, CacheQuery("digits", crops="test:10")) == ten
    assert resolve_cache(tmp_path, CacheQuery("digits", crops="1")) == one
    assert resolve_cache(tmp_path, CacheQuery("digits", layers=("block5",))) == ten
    assert "CROPS=1" in _error(tmp_path, CacheQuery("digits", crops="10"))
    assert "crops 'x'" in _error(tmp_path, CacheQuery("digits", crops="x"))


def test_a_limited_extraction_is_found_by_the_dataset_name(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path, dataset="digits-limit60")
    with pytest.raises(UsageError):
        resolve_cache(tmp_path, CacheQuery("digits"))  # no dataset_limit: another name
    with h5py.File(path, "r+") as f:
        f.attrs["dataset_limit"] = "60"
    assert resolve_cache(tmp_path, CacheQuery("digits")) == path
    assert resolve_cache(tmp_path, CacheQuery("digits-limit60")) == path


def test_a_folder_is_found_by_path_or_base_name_and_never_confused(tmp_path: Path) -> None:
    a = write_image_folder(tmp_path / "dtd" / "images", classes=("a", "b"))
    b = write_image_folder(tmp_path / "other" / "images", classes=("x", "y", "z"))
    data = tmp_path / "data"
    cache_a, cache_b = _folder_cache(data, a), _folder_cache(data, b, seed=7)
    assert resolve_cache(data, CacheQuery(str(a))) == cache_a
    assert resolve_cache(data, CacheQuery(str(b))) == cache_b
    message = _error(data, CacheQuery("images"))
    assert "matches 2 caches" in message
    assert f"DATASET={a.resolve()}" in message and f"DATASET={b.resolve()}" in message


def test_a_folder_changed_since_extraction_is_refused(tmp_path: Path, capsys) -> None:
    folder = write_image_folder(tmp_path / "my images")
    data = tmp_path / "data"
    _folder_cache(data, folder)
    (folder / "cat" / "000.jpg").write_bytes((folder / "dog" / "001.jpg").read_bytes())
    code = main(["fit", "--data-dir", str(data), "--dataset", str(folder), "--C", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "has changed since" in err
    assert f"make extract {shlex.quote(f'DATASET={folder}')} LAYERS=pool" in err


def test_unreadable_caches_are_named_not_chosen(tmp_path: Path) -> None:
    write_synthetic(tmp_path)
    junk = tmp_path / "cache" / "mnist-00000000" / "x.h5"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"not hdf5")
    message = _error(tmp_path, CacheQuery("mnist"))
    assert "skipped 1 unreadable" in message and str(junk) in message


def test_the_makefile_passes_only_the_cache_options_given() -> None:
    def dry(*assignments: str) -> str:
        done = subprocess.run(["make", "-n", "--no-print-directory", "classify", *assignments],
                              cwd=ROOT, capture_output=True, text=True)
        return next(line for line in done.stdout.splitlines() if "classify fit" in line)

    plain = shlex.split(dry("DATASET=digits"))
    assert "--backbone" not in plain and "--pool" not in plain and "--skip-existing" not in plain
    given = " ".join(shlex.split(dry("DATASET=my digits", "BACKBONE=vgg16", "RES=64",
                                     "CROPS=test:10", "POOL=max", "DTYPE=float32",
                                     "SKIP_EXISTING=1")))
    for option in ("--dataset my digits", "--backbone vgg16", "--res 64", "--crops test:10",
                   "--pool max", "--dtype float32", "--skip-existing"):
        assert option in given


@pytest.mark.slow
def test_classify_a_folder_after_extracting_it(tmp_path: Path, capsys) -> None:
    """`make extract DATASET=<dir>` then `make classify DATASET=<dir>` (or its base name)."""
    from featcache.extract import extract

    folder = write_image_folder(tmp_path / "scans", per_class=10, size=24)
    data = tmp_path / "data"
    cache = extract(str(folder), resolution=32, data_dir=data)
    for dataset in (str(folder), "scans"):
        assert main(["fit", "--data-dir", str(data), "--dataset", dataset, "--C", "1"]) == 0
        out = capsys.readouterr().out
        assert "test top-1" in out
    runs = sorted((data / "runs").iterdir())
    assert {json.loads((r / "metrics.json").read_text())["cache"]["path"] for r in runs} == {
        str(cache.resolve())}


def test_two_extractions_of_one_folder_are_told_apart_by_their_names(tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "images")
    data = tmp_path / "data"
    whole = _folder_cache(data, folder)
    named = write_synthetic(data, dataset="pets", source=str(folder.resolve()),
                            fingerprint=open_dataset(str(folder), data).fingerprint)
    message = _error(data, CacheQuery(str(folder)))
    assert "DATASET=images (data" in message and "DATASET=pets (data" in message
    assert resolve_cache(data, CacheQuery("pets")) == named
    assert resolve_cache(data, CacheQuery("images")) == whole


def test_a_csv_manifest_is_found_by_its_path(tmp_path: Path, monkeypatch) -> None:
    folder = write_image_folder(tmp_path / "imgs")
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,label\n" + "".join(
        f"{p},{p.parent.name}\n" for p in sorted(folder.rglob("*.jpg"))))
    data = tmp_path / "data"
    cache = _folder_cache(data, manifest)
    monkeypatch.chdir(tmp_path)
    assert resolve_cache(data, CacheQuery("labels.csv")) == cache
    assert resolve_cache(data, CacheQuery("labels")) == cache
