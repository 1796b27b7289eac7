"""The shared file helpers: atomic writes, file sha256, name parts, OSError messages."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import pytest

from featcache.errors import EnvironmentFault, describe_os_error, environment_fault
from featcache.files import atomic_write, publish, sha256_file, slug


class Boom(Exception):
    pass


def _half_then_raise(fh) -> None:
    fh.write(b"half of the new")
    raise Boom


def test_a_writer_that_raises_leaves_the_old_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "table.json"
    atomic_write(target, lambda fh: fh.write(b"old, whole"))
    with pytest.raises(Boom):
        atomic_write(target, _half_then_raise)
    assert target.read_bytes() == b"old, whole"
    assert [p.name for p in tmp_path.iterdir()] == ["table.json"]


def test_a_writer_that_raises_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(Boom):
        atomic_write(tmp_path / "new.bin", _half_then_raise)
    assert list(tmp_path.iterdir()) == []


def test_publish_replaces_the_target(tmp_path: Path) -> None:
    (tmp_path / "a.tmp").write_bytes(b"new")
    (tmp_path / "a").write_bytes(b"old")
    publish(tmp_path / "a.tmp", tmp_path / "a")
    assert [p.name for p in tmp_path.iterdir()] == ["a"] and (tmp_path / "a").read_bytes() == b"new"


def test_sha256_file_is_hashlibs_over_blocks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # more than one 1 MiB block
    (tmp_path / "w").write_bytes(data)
    assert sha256_file(tmp_path / "w") == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(("text", "expected"), [
    ("efficientnet_lite0", "efficientnet_lite0"),
    ("ucmerced-jpg", "ucmerced-jpg"),
    ("block5+pool", "block5_pool"),  # the cache rule; run folders used to keep "+"
    ("a  b/c", "a__b_c"),
    ("tf_efficientnet.in1k", "tf_efficientnet.in1k"),
    ("café", "café"),
    ("..", "x"),
])
def test_slug_keeps_the_rule_that_names_cache_files(text: str, expected: str) -> None:
    assert slug(text) == expected


def test_a_full_disk_is_one_message_with_the_fix() -> None:
    exc = OSError(errno.ENOSPC, "No space left on device", "/data/x.h5")
    assert describe_os_error(exc) == (
        "cannot write /data/x.h5: disk full: No space left on device (ENOSPC); free space and "
        "re-run the same command")
    denied = OSError(errno.EROFS, "Read-only file system")
    fault = environment_fault(denied, "/runs", "nothing kept")
    assert isinstance(fault, EnvironmentFault) and str(fault).startswith("cannot write /runs:")
    assert str(fault).endswith("; nothing kept") and "EROFS" in str(fault)
