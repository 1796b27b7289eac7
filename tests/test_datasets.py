"""Datasets: bundled digits, folder layouts, CSV manifests, fingerprints and clear errors."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featcache.errors import UsageError
from featcache.extract.data.datasets import DATASETS, open_dataset


def test_digits_is_offline_and_split_deterministically():
    a, b = open_dataset("digits"), open_dataset("digits")
    assert a.split_rule == "stratified test=0.2 seed=0"
    assert a.splits["train"].ids == b.splits["train"].ids
    assert len(a.splits["train"]) + len(a.splits["test"]) == 1797
    assert a.splits["train"].load(0).mode == "RGB"
    c = open_dataset("digits", seed=1)
    assert c.splits["train"].ids != a.splits["train"].ids


def test_folder_with_train_and_test_keeps_them(image_folder):
    ds = open_dataset(str(image_folder(splits=["train", "test"])))
    assert ds.split_rule == "official" and ds.class_names == ["cat", "dog", "eel"]
    assert len(ds.splits["train"]) == len(ds.splits["test"]) == 18
    assert ds.splits["test"].ids[0] == "test/cat/000.jpg"


def test_folder_without_splits_is_stratified(image_folder):
    ds = open_dataset(str(image_folder(per_class=10)), test_fraction=0.3, seed=3)
    assert ds.split_rule == "stratified test=0.3 seed=3"
    assert np.bincount(ds.splits["test"].labels).tolist() == [3, 3, 3]
    assert not set(ds.splits["train"].ids) & set(ds.splits["test"].ids)


def test_limit_is_a_stratified_subset(image_folder):
    ds = open_dataset(str(image_folder(per_class=10))).limited(6, seed=0)
    assert np.bincount(ds.splits["train"].labels).tolist() == [2, 2, 2]
    assert "limit=6" in ds.split_rule and ds.name == "imgs-limit6"


def test_bad_names_and_empty_folders(tmp_path):
    with pytest.raises(UsageError, match="unknown dataset 'nope'; valid: " + ", ".join(DATASETS)):
        open_dataset("nope")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(UsageError, match="no images"):
        open_dataset(str(tmp_path / "empty"))
    (tmp_path / "flat").mkdir()
    with pytest.raises(UsageError, match="no class folders"):
        open_dataset(str(tmp_path / "flat"))


def _bmp(path, seed=0, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def _tree(root, spec):
    """``{"train/cat": 3, ...}`` -> that many BMPs per folder."""
    for k, (folder, n) in enumerate(spec.items()):
        for i in range(n):
            _bmp(root / folder / f"{i:02d}.bmp", seed=100 * k + i)
    return root


def test_train_val_test_folders_are_those_splits(tmp_path):
    root = _tree(tmp_path / "d", {f"{s}/{c}": 2 for s in ("train", "val", "test")
                                  for c in ("a", "b")})
    ds = open_dataset(str(root))
    assert list(ds.splits) == ["train", "val", "test"] and ds.split_rule == "official"
    assert ds.class_names == ["a", "b"] and ds.splits["val"].ids[0] == "val/a/00.bmp"


def test_train_and_val_without_test_carve_test_from_train(tmp_path):
    root = _tree(tmp_path / "d", {"train/a": 5, "train/b": 5, "val/a": 2, "val/b": 2})
    ds = open_dataset(str(root), test_fraction=0.2)
    assert sorted(ds.splits) == ["test", "train", "val"]
    assert len(ds.splits["val"]) == 4 and len(ds.splits["test"]) == 2
    assert all(i.startswith("train/") for i in ds.splits["test"].ids)
    assert ds.split_rule.startswith("train and val given") and "test carved from train" in (
        ds.split_rule
    )


def test_a_class_missing_from_a_split_is_named(tmp_path, caplog):
    root = _tree(tmp_path / "d", {"train/a": 2, "train/b": 2, "test/a": 2, "test/c": 1})
    with pytest.raises(UsageError, match=r"class\(es\) c \(in test\) of .* no train images"):
        open_dataset(str(root))
    root = _tree(tmp_path / "e", {"train/a": 2, "train/b": 2, "test/a": 2})
    ds = open_dataset(str(root))
    assert ds.class_names == ["a", "b"] and ds.extra == {"missing_classes_test": "b"}
    assert "no test images of class(es) b" in caplog.text


def test_ambiguous_layouts_are_errors_naming_what_was_found(tmp_path):
    root = _tree(tmp_path / "mixed", {"train/a": 1, "cat": 1})
    with pytest.raises(UsageError, match=r"mixes split folders \(train\) with other .*\(cat\)"):
        open_dataset(str(root))
    root = _tree(tmp_path / "noval", {"val/a": 1, "test/a": 1})
    with pytest.raises(UsageError, match="has test/, val/ but no train/"):
        open_dataset(str(root))
    root = _tree(tmp_path / "loose", {"a": 2})
    _bmp(root / "stray.bmp")
    with pytest.raises(UsageError, match=r"lie directly in .*stray.bmp"):
        open_dataset(str(root))


def test_hidden_files_and_resource_forks_are_skipped(tmp_path):
    root = _tree(tmp_path / "d", {"a": 2, "b": 2, ".hidden": 2, "__MACOSX/a": 1})
    (root / "a" / "._00.bmp").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "a" / ".DS_Store").write_bytes(b"junk")
    _bmp(root / "b" / ".cache" / "x.bmp")
    ds = open_dataset(str(root), test_fraction=0.5)
    ids = ds.splits["train"].ids + ds.splits["test"].ids
    assert ds.class_names == ["a", "b"] and sorted(ids) == [
        "a/00.bmp", "a/01.bmp", "b/00.bmp", "b/01.bmp"
    ]


def test_images_in_subfolders_of_a_class_folder_belong_to_it(tmp_path):
    root = _tree(tmp_path / "d", {"train/a": 1, "train/a/deep/er": 2, "train/b": 1,
                                  "test/a": 1, "test/b": 1})
    ds = open_dataset(str(root))
    train = ds.splits["train"]
    assert train.ids == ["train/a/00.bmp", "train/a/deep/er/00.bmp", "train/a/deep/er/01.bmp",
                         "train/b/00.bmp"]
    assert train.labels.tolist() == [0, 0, 0, 1]
    assert all(Path(train.load(i)) == root / name for i, name in enumerate(train.ids))


def test_csv_manifest_is_a_dataset(tmp_path):
    for i in range(4):
        _bmp(tmp_path / "imgs" / f"{i}.bmp", seed=i)
    manifest = tmp_path / "lists" / "labels.csv"
    manifest.parent.mkdir()
    rows = [f"../imgs/{i}.bmp,{label},{split}" for i, (label, split) in
            enumerate([("10", "train"), ("2", "train"), ("10", "test"), ("2", "val")])]
    manifest.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    ds = open_dataset(str(manifest))
    assert ds.name == "labels" and ds.source == str(manifest.resolve())
    assert ds.class_names == ["2", "10"] and list(ds.splits) == ["train", "val", "test"]
    assert ds.splits["test"].ids == ["../imgs/2.bmp"] and ds.splits["test"].labels.tolist() == [1]
    assert Path(ds.splits["train"].load(0)) == manifest.parent / "../imgs/0.bmp"
    plain = tmp_path / "plain.csv"
    plain.write_text("path,label\n" + "".join(f"imgs/{i}.bmp,{'ab'[i % 2]}\n" for i in range(4)))
    assert open_dataset(str(plain), test_fraction=0.5).split_rule == "stratified test=0.5 seed=0"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("file,class\nimgs/0.bmp,a\n", "first row must be the header path,label"),
        ("path,label\nimgs/9.bmp,a\n", r"1 file\(s\) listed in .* do not exist.*imgs/9.bmp"),
        ("path,label,split\nimgs/0.bmp,a,valid\n", "line 2: unknown split 'valid'"),
        ("path,label\nimgs/0.bmp,a\nimgs/0.bmp,b\n", "lists 1 path.* twice: imgs/0.bmp"),
        ("path,label\nimgs/0.bmp\n", "line 2: expected 2 non-empty values"),
    ],
)
def test_bad_manifests_say_what_is_wrong(tmp_path, text, error):
    _bmp(tmp_path / "imgs" / "0.bmp")
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(UsageError, match=error):
        open_dataset(str(tmp_path / "m.csv"))


def _rewrite_same_size(path, seed):
    before = path.stat()
    _bmp(path, seed=seed)
    assert path.stat().st_size == before.st_size
    return before


@pytest.mark.parametrize("mode", ["stat", "content"])
def test_a_same_size_change_changes_the_fingerprint(tmp_path, mode):
    root = _tree(tmp_path / "d", {"a": 3, "b": 3})
    first = open_dataset(str(root), fingerprint=mode)
    assert first.fingerprint_mode == mode
    assert open_dataset(str(root), fingerprint=mode).fingerprint == first.fingerprint
    before = _rewrite_same_size(root / "a" / "01.bmp", seed=999)
    ns = before.st_mtime_ns + 1_000_000_000  # a later write: mtime moves on
    os.utime(root / "a" / "01.bmp", ns=(ns, ns))
    assert open_dataset(str(root), fingerprint=mode).fingerprint != first.fingerprint


def test_content_mode_sees_a_change_whose_mtime_lies(tmp_path):
    root = _tree(tmp_path / "d", {"a": 3, "b": 3})
    stat, content = (open_dataset(str(root), fingerprint=m).fingerprint
                     for m in ("stat", "content"))
    path = root / "b" / "00.bmp"
    before = _rewrite_same_size(path, seed=999)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert open_dataset(str(root), fingerprint="stat").fingerprint == stat
    assert open_dataset(str(root), fingerprint="content").fingerprint != content


def test_the_manifest_text_is_part_of_its_fingerprint(tmp_path):
    for i in range(4):
        _bmp(tmp_path / f"{i}.bmp", seed=i)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n0.bmp,a\n1.bmp,a\n2.bmp,b\n3.bmp,b\n")
    before = open_dataset(str(manifest), test_fraction=0.5).fingerprint
    manifest.write_text("path,label\n0.bmp,a\n1.bmp,b\n2.bmp,a\n3.bmp,b\n")
    assert open_dataset(str(manifest), test_fraction=0.5).fingerprint != before


def test_arrays_are_hashed_and_the_mode_is_checked():
    ds = open_dataset("digits", fingerprint="content")
    assert ds.fingerprint_mode == "arrays" and len(ds.fingerprint) == 64
    assert ds.limited(20, seed=0).fingerprint_mode == "arrays"
    with pytest.raises(UsageError, match="unknown fingerprint mode 'mtime'; valid: stat, content"):
        open_dataset("digits", fingerprint="mtime")
