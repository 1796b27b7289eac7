"""A cache you can trust: every case of issue 12, as a careful or hostile user would try it.

Identity (a changed input is never a hit), resume that cannot be broken, damage that is
found and rebuilt, and faults that end in one line with the right exit status.
"""

import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from featcache.errors import UsageError
from featcache.extract import pipeline, plan
from featcache.extract.cache.hdf5 import FeatureCache
from featcache.extract.compute import worker
from featcache.extract.config import ExtractConfig

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(backbone="efficientnet_lite0", resolution=32, batch_size=4, test_fraction=0.5)


def _bmp_folder(root: Path, per_class: int = 4, flip: bool = False) -> Path:
    """Generated BMPs (a BMP's byte size depends only on its shape)."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
            arr[..., label] = 255
            Image.fromarray(arr[:, ::-1] if flip else arr).save(root / name / f"{i}.bmp")
    return root


def _run(folder: Path, data_dir: Path, **kw) -> pipeline.ExtractResult:
    cfg = ExtractConfig(dataset=str(folder), data_dir=data_dir, **{**FAST, **kw})
    return pipeline.run_extraction(cfg, progress=False)


def _cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "featcache.extract", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _features(path: Path) -> dict[str, tuple]:
    with FeatureCache(path) as cache:
        return {s: (cache.ids(s), cache.labels(s), cache.features(s, "pool"))
                for s in cache.splits}


# 1. Identity


def test_an_image_changed_in_place_with_the_same_size_is_never_a_hit(tmp_path):
    folder = _bmp_folder(tmp_path / "imgs")
    first = _run(folder, tmp_path / "data")
    target = folder / "cat" / "0.bmp"
    size, mtime = target.stat().st_size, target.stat().st_mtime_ns
    Image.open(target).rotate(180).save(target)
    os.utime(target, ns=(mtime + 10**9, mtime + 10**9))
    assert target.stat().st_size == size
    second = _run(folder, tmp_path / "data")
    assert not second.cached and second.path != first.path


def test_content_mode_sees_a_change_whose_mtime_was_restored(tmp_path):
    folder = _bmp_folder(tmp_path / "imgs")
    first = _run(folder, tmp_path / "data", fingerprint="content")
    target = folder / "dog" / "1.bmp"
    stat = target.stat()
    Image.open(target).rotate(90).save(target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = _run(folder, tmp_path / "data", fingerprint="content")
    assert not second.cached and second.path != first.path


def test_another_folder_with_the_same_names_sizes_and_mtimes_is_not_a_hit(tmp_path):
    a = _bmp_folder(tmp_path / "a" / "imgs")
    b = _bmp_folder(tmp_path / "b" / "imgs", flip=True)
    for src in a.rglob("*.bmp"):
        stat = src.stat()
        os.utime(b / src.relative_to(a), ns=(stat.st_atime_ns, stat.st_mtime_ns))
    first, second = _run(a, tmp_path / "data"), _run(b, tmp_path / "data")
    assert not second.cached and first.path != second.path
    fa, fb = _features(first.path), _features(second.path)
    assert not np.allclose(fa["train"][2], fb["train"][2])


def test_weights_and_skip_bad_enter_the_key(tmp_path, monkeypatch):
    folder = _bmp_folder(tmp_path / "imgs")
    (folder / "dog" / "broken.bmp").write_bytes(b"not an image")
    skipped = _run(folder, tmp_path / "data", skip_bad=True)
    with pytest.raises(UsageError, match=r"broken\.bmp.*SKIP_BAD"):
        _run(folder, tmp_path / "data")
    monkeypatch.setattr(plan, "weights_sha256", lambda spec: "0" * 64)
    other = _run(folder, tmp_path / "data", skip_bad=True)
    assert not other.cached and other.path != skipped.path


# 2. Resume that cannot be broken


def _kill_after_shards(args: list[str], data_dir: Path, count: int) -> None:
    proc = _cli([*args, "--data-dir", str(data_dir)])
    deadline = time.time() + 180
    while time.time() < deadline and len(list(data_dir.glob("cache/*/*.parts/*/*.npz"))) < count:
        if proc.poll() is not None:
            pytest.fail(f"run ended before the kill: {proc.stderr.read()}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(data_dir.glob("cache/*/*.h5")), "a killed run left a file that looks complete"


@pytest.mark.slow
def test_kill_9_at_two_batch_sizes_then_resume_equals_an_uninterrupted_run(image_folder,
                                                                           tmp_path):
    folder = image_folder(per_class=16, size=24)
    base = ["run", "--dataset", str(folder), "--res", "64", "--shard-rows", "6",
            "--test-fraction", "0.5", "--quiet"]
    killed = tmp_path / "killed"
    _kill_after_shards([*base, "--batch-size", "8"], killed, 1)
    _kill_after_shards([*base, "--batch-size", "4"], killed, 3)
    resumed = _cli([*base, "--batch-size", "8", "--data-dir", str(killed)])
    assert resumed.wait() == 0, resumed.stderr.read()
    clean = _cli([*base, "--batch-size", "8", "--data-dir", str(tmp_path / "clean")])
    assert clean.wait() == 0, clean.stderr.read()
    (a,), (b,) = killed.glob("cache/*/*.h5"), (tmp_path / "clean").glob("cache/*/*.h5")
    assert a.name == b.name
    fa, fb = _features(a), _features(b)
    for split in fb:
        np.testing.assert_array_equal(fa[split][0], fb[split][0])
        np.testing.assert_array_equal(fa[split][1], fb[split][1])
        np.testing.assert_allclose(fa[split][2], fb[split][2], rtol=2e-3, atol=2e-3)


def test_shard_size_is_the_manifests_not_the_batch_size(image_folder, tmp_path, monkeypatch):
    folder = image_folder(per_class=8)
    sizes = []
    real_write = worker.ShardStore.write

    def spy(self, spec, **kw):
        sizes.append(spec.end - spec.start)
        if len(sizes) == 2:
            raise KeyboardInterrupt
        return real_write(self, spec, **kw)

    monkeypatch.setattr(worker.ShardStore, "write", spy)
    with pytest.raises(KeyboardInterrupt):
        _run(folder, tmp_path, shard_rows=5, batch_size=2)
    monkeypatch.setattr(worker.ShardStore, "write", lambda self, spec, **kw: (
        sizes.append(spec.end - spec.start), real_write(self, spec, **kw))[1])
    _run(folder, tmp_path, shard_rows=7, batch_size=3)
    assert sizes[:2] == [5, 5] and set(sizes[2:]) <= {5, 2}


# 4. Damage is found, moved aside and rebuilt


def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def _flip_feature_byte(path: Path) -> None:
    with h5py.File(path) as f:
        info = f["train/features/pool"].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        value = fh.read(1)[0]
        fh.seek(-1, 1)
        fh.write(bytes([value ^ 0xFF]))


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: h5py.File(p, "a").__delitem__("test"),
        lambda p: h5py.File(p, "a").__delitem__("train/labels"),
        _flip_feature_byte,
        _truncate,
    ],
    ids=["split-deleted", "labels-deleted", "flipped-bytes", "truncated"],
)
def test_a_damaged_cache_is_never_a_hit(image_folder, tmp_path, damage):
    folder = image_folder(per_class=4)
    first = _run(folder, tmp_path)
    clean = _features(first.path)
    damage(first.path)
    second = _run(folder, tmp_path)
    assert not second.cached and second.path == first.path
    assert len(list(first.path.parent.glob("*.damaged-*"))) == 1
    rebuilt = _features(second.path)
    for split, (ids, _, feats) in clean.items():
        np.testing.assert_array_equal(rebuilt[split][0], ids)
        np.testing.assert_array_equal(rebuilt[split][2], feats)


def test_overflow_in_float16_is_refused_naming_the_layer(image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(worker.ShardWorker, "_forward",
                        lambda self, x: {"pool": np.full((len(x), 4), 1e6, np.float32)})
    with pytest.raises(UsageError, match=r"layer 'pool'.*DTYPE=float32"):
        _run(image_folder(per_class=4), tmp_path)
    assert not list(tmp_path.glob("cache/*/*.h5"))


# 5. Faults end in one line and the right exit status


def _last_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    return lines[-1]


@pytest.mark.slow
def test_disk_full_during_assembly_is_one_line_then_the_same_command_resumes(image_folder,
                                                                             tmp_path):
    folder = image_folder(per_class=10)
    args = ["run", "--dataset", str(folder), "--res", "64", "--layers", "block5", "--pool",
            "none", "--shard-rows", "5", "--quiet"]
    clean = _cli([*args, "--data-dir", str(tmp_path / "clean")])
    assert clean.wait() == 0, clean.stderr.read()
    (whole,) = (tmp_path / "clean").glob("cache/*/*.h5")
    limit = whole.stat().st_size // 2
    args += ["--data-dir", str(tmp_path / "full")]
    tmp_path = tmp_path / "full"

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = _cli(args, preexec_fn=small_files)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "disk full" in _last_line(err) and "re-run" in _last_line(err)
    assert not list(tmp_path.glob("cache/*/*.h5")) and not list(tmp_path.glob("cache/*/*.tmp"))
    shards = list(tmp_path.glob("cache/*/*.parts/*/*.npz"))
    assert shards and max(p.stat().st_size for p in shards) < limit
    again = _cli(args)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "wrote 0 images" in err
    (path,) = tmp_path.glob("cache/*/*.h5")
    with FeatureCache(path) as cache:
        cache.verify()


def test_a_read_only_data_dir_is_one_line_and_exit_1(image_folder, tmp_path):
    target = Path("/sys/featcache-test")
    try:
        target.mkdir()
        target.rmdir()
        pytest.skip("/sys is writable here; no read-only file system to try")
    except OSError:
        pass
    proc = _cli(["run", "--dataset", str(image_folder(per_class=4)), "--res", "32",
                 "--data-dir", str(target), "--quiet"])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "writable data folder" in _last_line(err)


@pytest.mark.slow
def test_sigterm_is_one_line_exit_143_and_resumable(image_folder, tmp_path):
    folder = image_folder(per_class=30)
    args = ["run", "--dataset", str(folder), "--res", "64", "--shard-rows", "4",
            "--batch-size", "2", "--quiet", "--data-dir", str(tmp_path)]
    proc = _cli(args)
    deadline = time.time() + 180
    while time.time() < deadline and not list(tmp_path.glob("cache/*/*.parts/*/*.npz")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert "terminated" in _last_line(err) and "resume" in _last_line(err)
    assert list(tmp_path.glob("cache/*/*.parts/*/*.npz"))


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--limit", "1"], "limit 1 cannot keep every one of the 3 classes"),
        (["--limit", "4", "--seed", "-1"], "seed -1 is out of range"),
        (["--res", "10000"], "resolution 10000 is out of range"),
        (["--workers", "2"], "workers 2 applies to ENGINE=ray only"),
        (["--shard-rows", "0"], "shard rows 0 is out of range"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(image_folder, tmp_path, extra, needle):
    proc = _cli(["run", "--dataset", str(image_folder(per_class=4)), "--data-dir",
                 str(tmp_path), "--quiet", *extra])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert needle in _last_line(err) and err.count("\n") == 1


def test_make_keeps_a_path_with_spaces_one_argument(tmp_path):
    folder = tmp_path / "my images" / "it's here"
    out = subprocess.run(["make", "-n", "--no-print-directory", "extract", f"DATASET={folder}"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    (line,) = [ln for ln in out.stdout.splitlines() if "-m featcache.extract run" in ln]
    words = shlex.split(line)
    assert words[words.index("--dataset") + 1] == str(folder)
