"""Stage one end to end on tiny generated images with the embedded default backbone."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

import featcache.extract.pipeline as pipeline
from featcache.errors import UsageError
from featcache.extract import cli, plan
from featcache.extract.cache.hdf5 import FeatureCache
from featcache.extract.compute import worker
from featcache.extract.config import ExtractConfig

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(backbone="efficientnet_lite0", resolution=64, batch_size=4)


def _cfg(folder, data_dir, **kw):
    return ExtractConfig(dataset=str(folder), data_dir=data_dir, **{**FAST, **kw})


def test_extracts_every_split_with_provenance(image_folder, tmp_path):
    folder = image_folder(splits=["train", "test"], per_class=4)
    res = pipeline.run_extraction(_cfg(folder, tmp_path, layers=("pool", "block5")), progress=False)
    assert not res.cached and res.images == 24
    with FeatureCache(res.path) as cache:
        assert cache.splits == ["test", "train"]
        assert cache.layers("train") == ["block5", "pool"]
        assert cache.shape("train", "pool") == (12, 1280)
        assert cache.features("test", "pool").std() > 0
        m = cache.meta
        assert m["backbone"] == "efficientnet_lite0" and m["resolution"] == 64
        assert len(m["weights_sha256"]) == 64 and m["preprocess"]["mean"] == [0.5, 0.5, 0.5]
        assert m["class_names"] == ["cat", "dog", "eel"] and m["split_rule"] == "official"
        assert m["dataset_fingerprint"] and m["versions"]["torch"] and m["created"]
        assert cache.layer_attrs("train", "pool")["pool"] == "avg"


def test_same_command_twice_is_a_hit_without_a_model(image_folder, tmp_path, monkeypatch):
    cfg = _cfg(image_folder(per_class=4), tmp_path)
    first = pipeline.run_extraction(cfg, progress=False)
    for module in (worker, plan):
        monkeypatch.setattr(module, "load_backbone", lambda *a, **k: pytest.fail("model loaded"))
    second = pipeline.run_extraction(cfg, progress=False)
    assert second.cached and second.path == first.path


def test_new_layer_is_added_and_other_settings_get_their_own_file(image_folder, tmp_path):
    folder = image_folder(per_class=4)
    a = pipeline.run_extraction(_cfg(folder, tmp_path), progress=False)
    b = pipeline.run_extraction(_cfg(folder, tmp_path, layers=("pool", "block3")), progress=False)
    c = pipeline.run_extraction(_cfg(folder, tmp_path, pool="max"), progress=False)
    assert a.path == b.path != c.path
    with FeatureCache(b.path) as cache:
        assert cache.layers("train") == ["block3", "pool"]


def test_ten_views_are_stored_per_view(image_folder, tmp_path):
    res = pipeline.run_extraction(
        _cfg(image_folder(per_class=4), tmp_path, crops="test:10"), progress=False
    )
    with FeatureCache(res.path) as cache:
        assert cache.shape("test", "pool")[1:] == (10, 1280)
        assert cache.shape("train", "pool")[1:] == (1280,)
        assert cache.view_names("test")[4] == "centre"


def test_ten_views_do_not_depend_on_how_the_views_are_sliced(image_folder, tmp_path):
    folder = image_folder(per_class=4)
    feats = []
    for batch in (2, 7):
        cfg = _cfg(folder, tmp_path / str(batch), crops="10", batch_size=batch)
        with FeatureCache(pipeline.run_extraction(cfg, progress=False).path) as cache:
            feats.append(cache.features("test", "pool"))
    assert feats[0].shape[1:] == (10, 1280)
    np.testing.assert_allclose(feats[0], feats[1], atol=2e-3)


def test_unreadable_image_is_named_or_skipped(image_folder, tmp_path):
    folder = image_folder(per_class=4)
    (folder / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UsageError, match=r"broken\.jpg.*SKIP_BAD"):
        pipeline.run_extraction(_cfg(folder, tmp_path, test_fraction=0.5), progress=False)
    res = pipeline.run_extraction(
        _cfg(folder, tmp_path, test_fraction=0.5, skip_bad=True), progress=False
    )
    with FeatureCache(res.path) as cache:
        skipped = cache.skipped("train") + cache.skipped("test")
        assert skipped == ["dog/broken.jpg"]
        assert sum(len(cache.labels(s)) for s in cache.splits) == 12


def test_flatten_above_limit_is_refused(image_folder, tmp_path):
    with pytest.raises(UsageError, match=r"flattens to .* POOL=avg"):
        pipeline.run_extraction(
            _cfg(
                image_folder(per_class=4),
                tmp_path,
                layers=("stem",),
                pool="none",
                resolution=128,
                test_fraction=0.5,
            ),
            progress=False,
        )


def test_second_writer_is_refused(image_folder, tmp_path):
    cfg = _cfg(image_folder(per_class=4), tmp_path, test_fraction=0.5)
    path = plan.plan_extraction(cfg).path
    path.parent.mkdir(parents=True)
    with FileLock(str(path) + ".lock"), pytest.raises(Exception, match="another process"):
        pipeline.run_extraction(cfg, progress=False)
    assert not path.exists()


def _cli(args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "featcache.extract", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_kill_9_then_resume_equals_an_uninterrupted_run(image_folder, tmp_path):
    folder = image_folder(per_class=40, size=32)
    args = [
        "run",
        "--dataset",
        str(folder),
        "--res",
        "96",
        "--batch-size",
        "2",
        "--quiet",
    ]
    killed = tmp_path / "killed"
    proc = _cli([*args, "--data-dir", str(killed)])
    deadline = time.time() + 120
    while time.time() < deadline and not list(killed.glob("cache/*/*.parts/*/*.npz")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shards = list(killed.glob("cache/*/*.parts/*/*.npz"))
    assert shards, "no shard written before the kill"
    assert not list(killed.glob("cache/*/*.h5")), "killed run left a file that looks complete"
    resumed = _cli([*args, "--data-dir", str(killed)])
    assert resumed.wait() == 0, resumed.stderr.read()
    clean = _cli([*args, "--data-dir", str(tmp_path / "clean")])
    assert clean.wait() == 0, clean.stderr.read()
    (a,), (b,) = killed.glob("cache/*/*.h5"), (tmp_path / "clean").glob("cache/*/*.h5")
    assert a.name == b.name
    with FeatureCache(a) as ca, FeatureCache(b) as cb:
        for split in cb.splits:
            np.testing.assert_array_equal(ca.ids(split), cb.ids(split))
            np.testing.assert_array_equal(ca.features(split, "pool"), cb.features(split, "pool"))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--dataset", "nope"], "unknown dataset 'nope'; valid: digits, mnist"),
        (["run", "--backbone", "nope"], "'nope'"),
        (["run", "--layers", "nope"], "'nope'"),
        (["run", "--pool", "mean"], "unknown pool 'mean'; valid: avg, max, none"),
        (["run", "--crops", "3"], "crops '3' is not valid; valid: 1, 5, 10"),
        (["run", "--dtype", "int8"], "unknown dtype 'int8'; valid: float16, float32"),
        (["run", "--res", "abc"], "invalid int value: 'abc'"),
        (["run", "--dataset", "/no/such/dir"], "'/no/such/dir'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path):
    proc = _cli([*args, "--data-dir", str(tmp_path)])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_help_documents_every_option():
    proc = _cli(["run", "--help"])
    out, _ = proc.communicate(timeout=60)
    for option in [
        "--dataset",
        "--backbone",
        "--layers",
        "--pool",
        "--res",
        "--crops",
        "--dtype",
        "--batch-size",
        "--workers",
        "--engine",
        "--name",
        "--fingerprint",
        "--device",
        "--data-dir",
        "--skip-bad",
        "--force",
        "--test-fraction",
        "--seed",
        "--limit",
        "--quiet",
    ]:
        assert option in out


@pytest.mark.slow
def test_real_ucmerced_subset(shared_data, tmp_path):
    cfg = ExtractConfig(
        dataset=str(shared_data / "ucmerced-jpg"),
        data_dir=tmp_path,
        limit=42,
        resolution=128,
    )
    res = pipeline.run_extraction(cfg, progress=False)
    with FeatureCache(res.path) as cache:
        assert len(cache.class_names) == 21
        assert cache.shape("train", "pool") == (42, 1280)
        assert np.isfinite(cache.features("train", "pool")).all()


def test_full_disk_is_one_line_and_leaves_no_complete_file(image_folder, tmp_path, monkeypatch,
                                                           capsys):
    import errno

    from featcache.extract import cli
    from featcache.extract.cache.shards import ShardStore

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "shard.npz")

    monkeypatch.setattr(ShardStore, "write", full)
    folder = image_folder(per_class=4)
    # eager: what an optional runtime's import prints (the floors run's onnx) is not the point
    code = cli.main(["run", "--dataset", str(folder), "--data-dir", str(tmp_path), "--res", "64",
                     "--runtime", "eager", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "disk full" in err and err.count("\n") == 1
    assert not list(tmp_path.glob("cache/*/*.h5"))


def test_layers_lists_every_alias_with_its_shape():
    proc = _cli(["layers", "--backbone", "efficientnet_lite0", "--res", "64"])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "block5" in out and "(112, 4, 4)" in out and "pool" in out and "(1280,)" in out


def test_run_prints_only_the_cache_path_on_stdout(image_folder, tmp_path, capsys):
    folder = image_folder(splits=["train", "test"], per_class=2)
    argv = ["run", "--dataset", str(folder), "--data-dir", str(tmp_path), "--res", "32",
            "--quiet"]
    for summary in ("wrote 12 images", "cache hit"):
        assert cli.main(argv) == 0
        out, err = capsys.readouterr()
        assert Path(out.strip()).is_file() and out.count("\n") == 1
        assert summary in err
