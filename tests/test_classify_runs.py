"""Run folders (complete or absent, re-used with SKIP_EXISTING) and the results table."""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from PIL import Image
from test_classify_synthetic import write_synthetic

from featcache.classify import runs as runs_module
from featcache.classify.cli import main
from featcache.classify.experiment import FitConfig, run_experiment
from featcache.classify.runs import by_validation, format_results, load_runs
from featcache.classify.stats import top_confusions
from featcache.errors import EnvironmentFault
from featcache.extract.cache.hdf5 import FeatureCache

ROOT = Path(__file__).resolve().parents[1]


def _fit(tmp: Path, **kw) -> dict:
    return run_experiment(FitConfig(data_dir=tmp, **kw))[1]


def _folders(data_dir: Path) -> list[str]:
    runs = data_dir / "runs"
    return sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []


def test_run_folder_contents_and_saved_model(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path)
    run_dir, _ = run_experiment(FitConfig(data_dir=tmp_path, model="svm", command="make x"))
    assert {p.name for p in run_dir.iterdir()} == {"metrics.json", "model.joblib",
                                                    "confusion.png"}
    saved = json.loads((run_dir / "metrics.json").read_text())
    for key in ("top1", "top5", "per_class", "confusion", "params", "grid", "val_scores",
                "fit_seconds", "predict_seconds", "select_seconds", "cache", "command",
                "top1_ci", "top1_ci_method", "mean_per_class", "val_top1", "selection",
                "config_hash", "top_confusions", "edge_of_grid"):
        assert key in saved
    assert saved["command"] == "make x"
    assert saved["cache"]["path"] == str(path.resolve())
    with FeatureCache(path) as cache:
        assert saved["cache"]["fingerprint"] == cache.fingerprint
        assert saved["cache"]["dataset_fingerprint"] == cache.meta["dataset_fingerprint"]
        X, y = cache.features("test", "pool"), cache.labels("test")
    assert saved["per_class"] == {"class0": 1.0, "class1": 1.0, "class2": 1.0}
    model = joblib.load(run_dir / "model.joblib")
    assert np.mean(model.predict(X) == y) == saved["top1"]
    assert saved["val_top1"] == max(saved["val_scores"])
    assert saved["selection"] == "5-fold CV"  # 30 held-out images would be too few
    low, high = saved["top1_ci"]
    assert low < saved["top1"] <= high <= 1.0
    assert (run_dir / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_runs_never_overwrite_each_other(tmp_path: Path) -> None:
    write_synthetic(tmp_path)
    first = run_experiment(FitConfig(data_dir=tmp_path, params={"C": 1.0}))[0]
    second = run_experiment(FitConfig(data_dir=tmp_path, params={"C": 1.0}))[0]
    assert first != second and (first / "metrics.json").is_file()
    assert _folders(tmp_path) == sorted([first.name, second.name])


def test_skip_existing_reuses_the_same_configuration_only(tmp_path: Path, capsys) -> None:
    write_synthetic(tmp_path)
    argv = ["fit", "--data-dir", str(tmp_path), "--C", "1", "--skip-existing"]
    assert main(argv) == 0
    first = capsys.readouterr().out.split("run: ")[1].strip()
    assert main([*argv, "--jobs", "1", "--tag", "x"]) == 0  # neither changes the result
    out = capsys.readouterr().out
    assert "re-used run (same configuration): " + first in out
    assert main([*argv, "--seed", "1"]) == 0
    assert "re-used" not in capsys.readouterr().out
    assert len(_folders(tmp_path)) == 2
    hashes = {r["config_hash"] for r in load_runs(tmp_path)}
    assert len(hashes) == 2
    assert main(argv[:-1]) == 0  # without the flag a run is always fitted again
    assert len(_folders(tmp_path)) == 3


def _metrics(run_id: str, dataset: str, val: float | None, test: float, fp: str) -> dict:
    return {"dataset": dataset, "backbone": "b", "layers": ["pool"], "head": "svm",
            "params": {"C": 0.1}, "val_top1": val, "top1": test, "top1_std": 0.0, "repeats": 1,
            "top1_ci": [test - 0.01, test + 0.01], "mean_per_class": test, "n_train": 10,
            "seconds": 1.0, "selection": "fixed" if val is None else "validation split (3)",
            "cache": {"dataset_fingerprint": fp, "dataset_source": f"/data/{dataset}"},
            "_id": run_id}


def _write(data_dir: Path, *runs: dict) -> None:
    for m in runs:
        folder = data_dir / "runs" / m.pop("_id")
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(m))


def test_results_sort_by_validation_group_by_dataset_and_show_test_beside(tmp_path) -> None:
    _write(tmp_path,
           _metrics("1-fixed", "images", None, 0.99, "aaaa1111"),
           _metrics("2-lowval", "images", 0.80, 0.95, "aaaa1111"),
           _metrics("3-highval", "images", 0.90, 0.70, "aaaa1111"),
           _metrics("4-other", "images", 0.99, 0.50, "bbbb2222"),
           _metrics("5-digits", "digits", 0.85, 0.85, "cccc3333"))
    runs = load_runs(tmp_path)
    assert [r["run_id"] for r in by_validation(runs)] == [
        "4-other", "3-highval", "5-digits", "2-lowval", "1-fixed"]
    text = format_results(runs)
    blocks = text.split("\n\n")
    titles = [b.splitlines()[0] for b in blocks[:-1]]
    assert titles == ["== digits (data cccc3333, /data/digits)",
                      "== images (data aaaa1111, /data/images)",
                      "== images (data bbbb2222, /data/images)"]
    header, *rows = blocks[1].splitlines()[1:]
    assert [r.split()[-1] for r in rows] == ["3-highval", "2-lowval", "1-fixed"]
    columns = re.split(r"\s{2,}", header)
    assert "val top1" in columns and "test top1 [95% CI]" in columns
    assert "90.00" in rows[0] and "70.00 [69.00, 71.00]" in rows[0]
    assert [r["run_id"] for r in load_runs(tmp_path, "digits")] == ["5-digits"]


def test_a_full_disk_leaves_no_run_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    write_synthetic(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("featcache.classify.experiment.joblib.dump", full)
    code = main(["fit", "--data-dir", str(tmp_path), "--C", "1"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "No space left on device" in err
    assert _folders(tmp_path) == []


def test_a_file_size_limit_leaves_no_run_folder(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes writes past the limit fail with EFBIG (Python ignores SIGXFSZ)."""
    write_synthetic(tmp_path)
    script = (
        "import resource, sys\n"
        "from featcache.classify.cli import main\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "sys.exit(main(['fit', '--data-dir', sys.argv[1], '--C', '1']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]  # the lines before it are INFO logging
    assert last.startswith("python -m featcache.classify fit: error: cannot write")
    assert "EFBIG" in last
    assert "Traceback" not in done.stderr
    assert _folders(tmp_path) == []


def test_a_read_only_data_dir_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    write_synthetic(tmp_path)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(runs_module.tempfile, "mkdtemp", read_only)
    code = main(["fit", "--data-dir", str(tmp_path), "--C", "1"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "Read-only file system" in err


def test_a_crash_while_writing_leaves_no_run_folder(tmp_path: Path, monkeypatch) -> None:
    write_synthetic(tmp_path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("featcache.classify.experiment.plot_confusion", crash)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, params={"C": 1.0})
    assert _folders(tmp_path) == []


def test_an_environment_fault_is_exit_status_1() -> None:
    assert EnvironmentFault("x").exit_status == 1


@pytest.mark.parametrize(("args", "needle"), [
    (["--model", "knn", "--neighbors", "1000"], "NEIGHBORS=1000 exceeds the 60 training"),
    (["--transform", "pca", "--dim", "70", "--C", "1"], "DIM=70 exceeds the limit 60"),
    (["--transform", "pca", "--dim", "55"], "DIM=55 exceeds the limit 54"),
])
def test_sizes_beyond_the_training_rows_are_one_line(tmp_path, capsys, args, needle) -> None:
    write_synthetic(tmp_path, n_train=60, dim=100)
    code = main(["fit", "--data-dir", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and needle in err, err


def test_many_classes_make_a_screen_sized_confusion_with_named_confusions(tmp_path) -> None:
    names = [f"species_{i:03d}" for i in range(102)]
    write_synthetic(tmp_path, classes=102, n_train=1020, n_test=510, spread=2.5, dim=32,
                    class_names=names)
    run_dir, m = run_experiment(FitConfig(data_dir=tmp_path, params={"C": 1.0}))
    with Image.open(run_dir / "confusion.png") as im:
        assert max(im.size) <= 1400
    worst = m["top_confusions"][0]
    assert worst["true"] in names and worst["predicted"] in names
    assert m["top_confusions"] == top_confusions(np.array(m["confusion"]), names)
