"""Dataset registry: bundled digits, ImageFolder layouts, and clear errors."""

import numpy as np
import pytest

from extract.datasets import DATASETS, open_dataset
from extract.errors import UsageError


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
