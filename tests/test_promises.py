"""Issue 27: what the tool promises, it does; each case driven as the user drove it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from featcache.classify import cli as classify_cli
from featcache.extract import cli as extract_cli

FAST = ["--backbone", "efficientnet_lite0", "--res", "64", "--batch-size", "8"]


def _extract(folder: Path, data_dir: Path, capsys, *extra: str) -> tuple[int, str, str]:
    code = extract_cli.main(["run", "--dataset", str(folder), "--data-dir", str(data_dir),
                             *FAST, *extra])
    out, err = capsys.readouterr()
    return code, out.strip(), err


def test_a_given_val_split_chooses_and_is_refitted_on(image_folder, tmp_path, capsys) -> None:
    """Case 1: train/ val/ test/ folders: selection on val, refit on train + val."""
    folder = image_folder(splits=["train", "val", "test"], per_class=6)
    code, cache, _ = _extract(folder, tmp_path, capsys)
    assert code == 0
    code = classify_cli.main(["fit", "--cache", cache, "--data-dir", str(tmp_path),
                              "--model", "logreg"])
    out, _ = capsys.readouterr()
    assert code == 0
    metrics = json.loads((Path(out.split("run: ")[1].strip()) / "metrics.json").read_text())
    assert metrics["selection"] == "given val"
    assert metrics["n_val"] == 18 and metrics["n_train"] == 36 and metrics["n_test"] == 18


def test_a_cache_hit_checks_the_key_inside_the_file(image_folder, tmp_path, caplog) -> None:
    """Case 2: the 96 px cache replaced by a link to the 64 px one, or by another dataset's
    cache, is moved aside and rebuilt, not returned as a hit."""
    from featcache import extract, load_features

    folder = image_folder(per_class=4)
    other = image_folder("other", classes=("x", "y"), per_class=5)
    opts = dict(backbone="efficientnet_lite0", batch_size=8, data_dir=tmp_path / "d")
    small = extract(str(folder), resolution=64, **opts)
    wanted = extract(str(folder), resolution=96, **opts)
    foreign = extract(str(other), resolution=96, **opts)
    rows = len(load_features(wanted, "train")[1])
    for impostor in (small, foreign):
        wanted.unlink()
        if impostor == small:
            wanted.symlink_to(small)
        else:
            wanted.write_bytes(foreign.read_bytes())
        caplog.clear()
        assert extract(str(folder), resolution=96, **opts) == wanted
        assert "it is not the requested cache" in caplog.text
        assert not wanted.is_symlink() and len(load_features(wanted, "train")[1]) == rows
    assert small.is_file() and foreign.is_file()


def test_the_same_image_twice_is_refused_or_skipped(image_folder, tmp_path, capsys,
                                                     caplog) -> None:
    """Case 3: ``ln -s . <dataset>/loopy`` is skipped with a warning; a CSV naming one file
    twice (``img//cat/x`` and ``img/cat/./x``), or a class linked to another, is an error
    naming both spellings."""
    folder = image_folder(per_class=5)
    (folder / "loopy").symlink_to(".")
    code, cache, _ = _extract(folder, tmp_path / "d", capsys)
    assert code == 0 and caplog.text.count("a loop") == 1
    from featcache.extract.cache.hdf5 import FeatureCache

    with FeatureCache(cache) as opened:
        assert opened.class_names == ["cat", "dog", "eel"]
    (folder / "loopy").unlink()
    (folder / "puma").symlink_to(folder / "cat")
    code, out, err = _extract(folder, tmp_path / "d", capsys)
    assert code == 2 and out == "" and "'cat/000.jpg' and 'puma/000.jpg'" in err
    manifest = tmp_path / "list.csv"
    manifest.write_text(f"path,label\n{folder}//cat/000.jpg,cat\n{folder}/cat/./000.jpg,cat\n"
                        f"{folder}/dog/000.jpg,dog\n")
    code, out, err = _extract(manifest, tmp_path / "d", capsys)
    assert code == 2 and "twice under two names" in err and "/./000.jpg" in err
    assert len(err.strip().splitlines()) == 1


def test_float_and_wide_images_decode_by_value_range(tmp_path) -> None:
    """Case 4: a 32-bit float TIFF with values 0..1 decodes as its picture, not black;
    modes that cannot be mapped are refused by name."""
    import numpy as np
    from PIL import Image

    from featcache.extract.data.images import decode

    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(ramp, mode="F").save(tmp_path / "f.tif")
    grey = np.asarray(decode(tmp_path / "f.tif"))[..., 0]
    assert grey.min() == 0 and grey.max() == 255
    np.testing.assert_array_equal(grey, np.rint(ramp * 255).astype(np.uint8))
    Image.fromarray(ramp * 200, mode="F").save(tmp_path / "levels.tif")
    assert np.asarray(decode(tmp_path / "levels.tif")).max() == 200
    for bad, needle in ((Image.fromarray(ramp * 1e6, mode="F"), "mode F with values"),
                        (Image.fromarray((ramp * 1e6).astype(np.int32), mode="I"),
                         "beyond 16 bits"),
                        (Image.new("LAB", (4, 4)), "mode LAB")):
        with pytest.raises(ValueError, match=needle):
            decode(bad)


@pytest.mark.parametrize("model", ["logreg", "mlp"])
def test_ctrl_c_and_sigterm_end_classify_fit_in_one_line(tmp_path, model) -> None:
    """Case 5: SIGINT and SIGTERM to a real ``classify fit``: 130 and 143, one line, no
    traceback or abort."""
    from test_classify_synthetic import write_synthetic

    cache = write_synthetic(tmp_path, n_train=20000, n_test=500, classes=10, dim=512,
                            spread=3.0)
    for sig, status, word in ((signal.SIGINT, 130, "interrupted"),
                              (signal.SIGTERM, 143, "terminated")):
        child = subprocess.Popen(
            [sys.executable, "-m", "featcache.classify", "fit", "--cache", str(cache),
             "--data-dir", str(tmp_path), "--model", model],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in child.stderr:  # the training rows are read: the fit has begun
            if line.startswith("read 20000"):
                break
        child.send_signal(sig)
        out, err = child.communicate(timeout=120)
        assert child.returncode == status, err
        assert err.strip().splitlines() == [
            f"python -m featcache.classify fit: {word}; nothing was written; re-run the same "
            "command"]
        assert out == "" and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("gone", ["test", "train/labels"])
def test_fit_on_a_cache_missing_a_group_is_one_line(tmp_path, capsys, gone) -> None:
    """Case 6: ``classify fit`` on a cache whose ``test`` group or ``train/labels`` was
    deleted: one line naming what is gone, status 2."""
    import h5py
    from test_classify_synthetic import write_synthetic

    cache = write_synthetic(tmp_path)
    with h5py.File(cache, "a") as f:
        del f[gone]
    code = classify_cli.main(["fit", "--data-dir", str(tmp_path), "--model", "svm"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is damaged" in err
    assert ("'test' split is gone" if gone == "test" else "'train' has no labels") in err


def test_results_skips_a_run_without_top1(tmp_path, capsys, caplog) -> None:
    """Case 6: ``classify results`` with one run whose metrics.json lacks ``top1``: the
    table of the others, and the bad run named."""
    from test_classify_synthetic import write_synthetic

    write_synthetic(tmp_path)
    assert classify_cli.main(["fit", "--data-dir", str(tmp_path), "--model", "svm",
                              "--C", "0.1"]) == 0
    assert classify_cli.main(["fit", "--data-dir", str(tmp_path), "--model", "logreg",
                              "--C", "0.1"]) == 0
    capsys.readouterr()
    bad = sorted((tmp_path / "runs").glob("*logreg*/metrics.json"))[0]
    metrics = json.loads(bad.read_text())
    del metrics["top1"]
    bad.write_text(json.dumps(metrics))
    assert classify_cli.main(["results", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "svm" in out and "logreg" not in out
    assert f"skipped run {bad.parent.name}" in caplog.text


def test_odd_names_and_numbers_are_one_line(image_folder, tmp_path, capsys) -> None:
    """Case 7: a file name that is not UTF-8 (with and without --skip-bad), class folders
    ``1`` and ``²``, ``--seed -1`` with a sweep, a 300-character ``--cache``."""
    folder = image_folder(classes=("1", "²"), per_class=5)
    code, cache, _ = _extract(folder, tmp_path / "d", capsys)
    assert code == 0
    from featcache.extract.cache.hdf5 import FeatureCache

    with FeatureCache(cache) as opened:
        assert opened.class_names == ["1", "²"]
    os.rename(folder / "1" / "000.jpg", os.fsdecode(bytes(folder / "1") + b"/caf\xe9.jpg"))
    for extra in ((), ("--skip-bad",)):
        code, out, err = _extract(folder, tmp_path / "d", capsys, *extra)
        assert code == 2 and out == "" and err.count("\n") == 1
        assert "not valid UTF-8 (first: b'1/caf\\xe9.jpg')" in err
    fit = ["fit", "--cache", cache, "--data-dir", str(tmp_path / "d"), "--model", "svm"]
    assert classify_cli.main([*fit, "--seed", "-1"]) == 2
    assert "SEED=-1 is out of range" in capsys.readouterr().err
    long = ["fit", "--cache", str(tmp_path / ("x" * 300 + ".h5")), "--model", "svm"]
    assert classify_cli.main(long) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a name of 303 characters" in err


def test_what_cannot_fit_in_memory_is_refused(image_folder, tmp_path, capsys,
                                              monkeypatch) -> None:
    """Case 8: ``--res 512 --batch-size 4096`` is refused before any model loads, naming
    BATCH; a 100,000 x 1 PNG is refused before its resize allocates anything (one line,
    status 2), and ``--skip-bad`` skips it."""
    from PIL import Image

    from featcache.extract import pipeline
    from featcache.extract.compute import worker

    folder = image_folder(per_class=5)
    with monkeypatch.context() as patch:  # (the plan may load it once, to hash its weights)
        patch.setattr(worker, "load_backbone", lambda *a, **k: pytest.fail("model loaded"))
        patch.setattr(pipeline, "available_memory", lambda: 16 * 2**30)
        code = extract_cli.main(["run", "--dataset", str(folder), "--data-dir", str(tmp_path),
                                 "--backbone", "efficientnet_lite0", "--res", "512",
                                 "--batch-size", "4096"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "BATCH=4096 (--batch-size) at RES=512 needs at least" in err and "lower BATCH" in err
    Image.new("L", (100_000, 1)).save(folder / "cat" / "wide.png")
    code, out, err = _extract(folder, tmp_path, capsys)
    assert code == 2 and out == "" and "'cat/wide.png'" in err
    assert "a 100000 x 1 image resizes to" in err and "crop it" in err
    code, out, _ = _extract(folder, tmp_path, capsys, "--skip-bad")
    assert code == 0 and out.endswith(".h5")


def test_broken_links_are_bad_images_and_a_denied_cache_stops(image_folder, tmp_path,
                                                                capsys) -> None:
    """Case 9: a dangling link and a link loop in a class folder: one line and status 2 (not
    a fault of the machine); ``--skip-bad`` skips them."""
    folder = image_folder(per_class=5)
    (folder / "cat" / "gone.jpg").symlink_to(folder / "nowhere.jpg")
    (folder / "dog" / "loop.jpg").symlink_to(folder / "dog" / "loop.jpg")
    code, out, err = _extract(folder, tmp_path, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "2 link(s) under" in err and "cat/gone.jpg" in err and "SKIP_BAD=1" in err
    code, out, _ = _extract(folder, tmp_path, capsys, "--skip-bad")
    assert code == 0 and out.endswith(".h5")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads a chmod 000 file: permission cannot be denied here")
def test_an_unreadable_cache_is_permission_denied_not_damaged(image_folder, tmp_path,
                                                              capsys) -> None:
    """Case 9: a cache made unreadable by ``chmod 000``: permission denied, status 1, the file
    left where it is."""
    folder = image_folder(per_class=5)
    code, cache, _ = _extract(folder, tmp_path, capsys)
    os.chmod(cache, 0)
    try:
        code, out, err = _extract(folder, tmp_path, capsys)
        assert code == 1 and out == "" and "permission denied reading" in err
        assert Path(cache).exists()
        assert not list(Path(cache).parent.glob("*.damaged-*"))
    finally:
        os.chmod(cache, 0o644)


def test_the_python_api_normalises_and_names_its_arguments(image_folder, tmp_path) -> None:
    """Case 11: a string is one layer, paths may be ``str`` or ``Path``, ``crops`` may be an
    int; the rest is checked with messages naming the argument."""
    from featcache import FeatcacheError, extract, iter_features, load_features

    folder = image_folder(per_class=5)
    cache = extract(folder, layers="pool", data_dir=str(tmp_path / "d"), crops=1,
                    backbone="efficientnet_lite0", resolution=64, batch_size=8)
    assert cache == extract(str(folder), layers=["pool"], data_dir=tmp_path / "d", crops="1",
                            backbone="efficientnet_lite0", resolution=64, batch_size=8)
    X, _, groups = load_features(str(cache), "train", layers="pool", rows=[0, 2])
    assert X.shape == (2, 1280) and groups.tolist() == [0, 2]
    bad = [
        (lambda: load_features(cache, "val"), "has no 'val' split; has test, train"),
        (lambda: load_features(cache, layers=[]), "layers=[]: give a layer name"),
        (lambda: load_features(tmp_path / "gone.h5"), "no cache file at"),
        (lambda: load_features(cache, rows=[-1]), "rows= holds -1: split 'train' has rows 0"),
        (lambda: list(iter_features(cache, chunk_rows=0)), "chunk_rows=0 must be a positive"),
        (lambda: list(iter_features(cache, chunk_rows=-5)), "chunk_rows=-5 must be a positive"),
        (lambda: extract(folder, layer="pool"), "unknown option 'layer'; valid: name,"),
    ]
    for call, needle in bad:
        with pytest.raises(FeatcacheError, match=needle.replace("(", r"\(").replace("[", r"\[")):
            call()
    assert not (tmp_path / "gone.h5").exists()


def test_the_api_scores_per_image_as_make_classify_does(tmp_path, capsys) -> None:
    """Case 12: with ten views per test image, ``score_per_image`` on ``load_features``
    output is the number ``classify fit`` reports; ``model.score`` is per view."""
    import joblib
    from test_classify_synthetic import write_synthetic

    from featcache import load_features, score_per_image

    cache = write_synthetic(tmp_path, test_views=10, train_views=10, spread=4.0, dim=8)
    assert classify_cli.main(["fit", "--cache", str(cache), "--data-dir", str(tmp_path),
                              "--model", "svm", "--C", "0.01"]) == 0
    run = Path(capsys.readouterr().out.split("run: ")[1].strip())
    metrics = json.loads((run / "metrics.json").read_text())
    model = joblib.load(run / "model.joblib")
    X, y, groups = load_features(cache, "test")
    assert len(X) == 10 * metrics["n_test"]
    assert score_per_image(model, X, y, groups) == metrics["top1"]
    assert model.score(X, y) != metrics["top1"]  # per view: another number


def test_advice_commands_work_when_pasted(image_folder, tmp_path, capsys) -> None:
    """Case 13: a folder extracted with ``--test-fraction 0.5 --name s3 --res 64`` is found
    by ``classify fit --dataset <folder>``; the command that a missing layer's message gives
    (``classify fit`` and ``load_features``) adds the layer to that very cache when pasted."""
    import shlex

    from featcache import FeatcacheError, load_features

    folder = image_folder(per_class=3)
    data = tmp_path / "d"
    code, cache, _ = _extract(folder, data, capsys, "--test-fraction", "0.5", "--name", "s3")
    assert code == 0
    fit = ["fit", "--data-dir", str(data), "--model", "svm", "--C", "0.1"]
    assert classify_cli.main([*fit, "--dataset", str(folder)]) == 0
    capsys.readouterr()
    assert classify_cli.main([*fit, "--dataset", "s3", "--layer", "block5"]) == 2
    advice = capsys.readouterr().err.split("add them with: ")[1].strip()
    with pytest.raises(FeatcacheError) as raised:
        load_features(cache, layers="block5")
    assert str(raised.value).split("extract it with: ")[1] == advice
    words = shlex.split(advice)
    assert words[0] == "python"
    pasted = subprocess.run([sys.executable, *words[1:]], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert pasted.returncode == 0, pasted.stderr
    assert pasted.stdout.strip() == cache
    assert classify_cli.main([*fit, "--dataset", "s3", "--layer", "block5"]) == 0
    assert load_features(cache, layers="block5")[0].shape[1] > 0


def test_stdout_is_the_cache_path_alone(image_folder, tmp_path, capfd, monkeypatch) -> None:
    """Case 10: what Ray prints to stdout during a run (``(raylet) A worker died...``, from
    Python or from C++ at the file descriptor) goes to stderr; stdout is the path alone."""
    folder = image_folder(per_class=5)
    argv = ["run", "--dataset", str(folder), "--data-dir", str(tmp_path), *FAST, "--quiet"]
    assert extract_cli.main(argv) == 0
    cache = capfd.readouterr().out.strip()
    real = extract_cli.run_extraction

    def noisy(*args, **kwargs):
        print("(raylet) A worker died or was killed while executing a task")
        os.write(1, b"(raylet) from C++\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(extract_cli, "run_extraction", noisy)
    assert extract_cli.main(argv) == 0
    out, err = capfd.readouterr()
    assert out == cache + "\n"
    assert "A worker died" in err and "from C++" in err


@pytest.mark.slow
@pytest.mark.parametrize("when", ["starting Ray", "computing"])
def test_sigterm_to_a_ray_driver_is_one_line(image_folder, tmp_path, when) -> None:
    """Case 5: SIGTERM to ``extract run --engine ray``, while Ray starts (its own handler is
    in place) or while it computes: status 143 and featcache's line, nothing on stdout."""
    pytest.importorskip("ray", reason="ray is not installed (pip install 'featcache[ray]')")
    folder = image_folder(per_class=5)
    child = subprocess.Popen(
        [sys.executable, "-m", "featcache.extract", "run", "--dataset", str(folder),
         "--data-dir", str(tmp_path), *FAST, "--engine", "ray", "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = "imgs:" if when == "starting Ray" else "Started a local Ray instance"
    for line in child.stderr:
        if marker in line:
            break
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=180)
    assert child.returncode == 143, err
    assert out == "" and err.strip().splitlines()[-1] == (
        "extract: terminated; finished shards are kept; re-run the same command to resume")
