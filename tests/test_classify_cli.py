"""``python -m featcache.classify``: help, bad input (one line, exit 2), no CUDA, plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from test_classify_synthetic import write_synthetic

from featcache.classify.cli import main
from featcache.classify.heads.registry import HEADS

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_synthetic(root, dataset="digits")
    write_synthetic(root, dataset="ucmerced-jpg", split_rule="stratified test=0.2 seed=0")
    write_synthetic(root, dataset="cifar10")
    write_synthetic(root, dataset="cifar100")
    return root


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", [[], ["fit"], ["results"], ["tsne"]])
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run([*command, "--help"], capsys)
    assert code == 0 and "usage:" in out
    if command == ["fit"]:
        assert all(name in out for name in HEADS)


def test_fit_prints_accuracy_and_run_folder(data_dir: Path, capsys) -> None:
    code, out, _ = _run(["fit", "--data-dir", str(data_dir), "--model", "svm", "--C", "0.1"],
                        capsys)
    assert code == 0
    low = 150 / (150 + 1.959964**2)  # Wilson's lower bound for 150 of 150
    assert f"test top-1 100.00% [95% CI {100 * low:.2f}-100.00]" in out and "run: " in out
    assert Path(out.split("run: ")[1].strip()).is_dir()


def test_fixed_epochs_reach_the_mlp(data_dir: Path, capsys) -> None:
    code, out, _ = _run(["fit", "--data-dir", str(data_dir), "--model", "mlp", "--epochs", "2",
                         "--weight-decay", "1e-4", "--hidden", "8"], capsys)
    assert code == 0
    saved = json.loads((Path(out.split("run: ")[1].strip()) / "metrics.json").read_text())
    assert saved["params"]["epochs"] == 2 and saved["selection"] == "fixed"
    assert saved["per_repeat"][0]["iterations"] == 2


BAD = [
    (["--model", "forest"], "forest"),
    (["--transform", "zca"], "zca"),
    (["--layer", "block9"], "block9"),
    (["--layer", "pool,pool"], "pool,pool"),
    (["--dataset", "imagenet"], "make extract DATASET=imagenet"),
    (["--dataset", "cifar"], "cifar10, cifar100"),
    (["--cache", "/nonexistent/x.h5"], "/nonexistent/x.h5"),
    (["--C", "-1"], "-1"),
    (["--C", "nan"], "nan"),
    (["--C", "0.1", "--model", "mlp"], "takes no C"),
    (["--hidden", "64,0", "--model", "mlp"], "64,0"),
    (["--hidden", "64,x", "--model", "mlp"], "64,x"),
    (["--dropout", "1.5", "--model", "mlp"], "1.5"),
    (["--weight-decay", "-0.1", "--model", "mlp"], "-0.1"),
    (["--neighbors", "0", "--model", "knn"], "0"),
    (["--epochs", "0", "--model", "mlp"], "'epochs'"),
    (["--epochs", "3"], "takes no epochs"),
    (["--engine", "spark"], "spark"),
    (["--train-size", "100000"], "TRAIN_SIZE=100000"),
    (["--train-size", "0"], "TRAIN_SIZE=0"),
    (["--train-size", "2"], "TRAIN_SIZE=2"),
    (["--shots", "500"], "SHOTS=500"),
    (["--shots", "1"], "validation split"),
    (["--shots", "5", "--train-size", "30"], "not both"),
    (["--dim", "8"], "DIM=8"),
    (["--transform", "pca", "--dim", "500"], "DIM=500"),
    (["--resplit", "1.5", "--dataset", "ucmerced"], "RESPLIT=1.5"),
    (["--resplit", "0.2"], "official"),
    (["--val-size", "0"], "VAL_SIZE=0"),
    (["--repeats", "0"], "REPEATS=0"),
    (["--jobs", "0"], "JOBS=0"),
    (["--seed", "x"], "'x'"),
]


@pytest.mark.parametrize(("args", "needle"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_status_2(args, needle, data_dir: Path, capsys) -> None:
    code, _, err = _run(["fit", "--data-dir", str(data_dir), *args], capsys)
    assert code == 2
    assert err.count("\n") == 1 and needle in err, err
    assert "Traceback" not in err


def test_missing_layer_suggests_the_extract_command(data_dir: Path, capsys) -> None:
    _, _, err = _run(["fit", "--data-dir", str(data_dir), "--layer", "pool,block5"], capsys)
    assert "make extract DATASET=digits LAYERS=pool,block5" in err and "hold: pool" in err


def test_no_cache_yet_names_the_extract_command(tmp_path: Path, capsys) -> None:
    code, _, err = _run(["fit", "--data-dir", str(tmp_path)], capsys)
    assert code == 2 and "make extract DATASET=digits" in err


def test_corrupt_and_incomplete_caches(tmp_path: Path, capsys) -> None:
    path = write_synthetic(tmp_path / "a")
    with h5py.File(path, "r+") as f:
        f.attrs["complete"] = False
    code, _, err = _run(["fit", "--data-dir", str(tmp_path / "a"), "--cache", str(path)], capsys)
    assert code == 2 and "incomplete" in err and err.count("\n") == 1
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file" * 100)
    code, _, err = _run(["fit", "--data-dir", str(tmp_path), "--cache", str(junk)], capsys)
    assert code == 2 and "junk.h5" in err and err.count("\n") == 1
    path = write_synthetic(tmp_path / "b")
    with h5py.File(path, "r+") as f:
        del f["test/features/pool"]
        f["test/features/pool"] = f["train/features/pool"][:10]
        f.attrs["rebuild"] = "python -m featcache.extract run --dataset digits"
    code, _, err = _run(["fit", "--data-dir", str(tmp_path / "b"), "--C", "1"], capsys)
    assert code == 2 and "corrupt" in err and err.count("\n") == 1
    assert "rebuild it with: python -m featcache.extract run --dataset digits" in err


def test_fewer_than_two_classes(tmp_path: Path, capsys) -> None:
    write_synthetic(tmp_path, classes=1)
    code, _, err = _run(["fit", "--data-dir", str(tmp_path), "--C", "1"], capsys)
    assert code == 2 and "fewer than two classes" in err


def test_results_and_tsne(data_dir: Path, capsys) -> None:
    _run(["fit", "--data-dir", str(data_dir), "--dataset", "cifar10", "--model", "knn"], capsys)
    code, out, _ = _run(["results", "--data-dir", str(data_dir), "--dataset", "cifar10"], capsys)
    assert code == 0 and out.splitlines()[0].startswith("== cifar10 (data ")
    assert "knn" in out.splitlines()[2]
    assert [line for line in out.splitlines() if line.startswith("==")] == out.splitlines()[:1]
    code, out, _ = _run(["results", "--data-dir", str(data_dir), "--dataset", "mnist"], capsys)
    assert code == 0 and "no runs" in out
    code, out, _ = _run(["tsne", "--data-dir", str(data_dir), "--dataset", "cifar10",
                         "--points", "60"], capsys)
    png = Path(out.strip())
    assert code == 0 and png.is_file() and png.read_bytes()[:4] == b"\x89PNG"


def test_cuda_is_never_initialised(data_dir: Path) -> None:
    script = (
        "import sys, torch\n"
        "from featcache.classify.cli import main\n"
        "d = sys.argv[1]\n"
        "for model in ('svm', 'logreg', 'mlp', 'knn'):\n"
        "    assert main(['fit', '--data-dir', d, '--model', model]) == 0\n"
        "assert main(['tsne', '--data-dir', d, '--points', '60']) == 0\n"
        "assert not torch.cuda.is_initialized(), 'CUDA was initialised'\n"
        "print('cuda untouched')\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(data_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cuda untouched" in done.stdout


def test_python_dash_m_entry_point(data_dir: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "featcache.classify", "fit", "--data-dir",
                           str(data_dir),
                           "--model", "nope"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "nope" in done.stderr


@pytest.mark.slow
def test_real_ucmerced_cache(tmp_path: Path, capsys) -> None:
    folder = SHARED_DATA / "ucmerced-jpg"
    if not SHARED_DATA.is_dir() or not folder.is_dir():
        pytest.skip(f"real data absent: {folder}")
    done = subprocess.run(
        [sys.executable, "-m", "featcache.extract", "run", "--dataset", str(folder), "--data-dir",
         str(tmp_path), "--limit", "210", "--res", "128", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    code, out, _ = _run(["fit", "--data-dir", str(tmp_path), "--dataset", str(folder),
                         "--model", "svm", "--resplit", "0.2"], capsys)
    assert code == 0
    top1 = float(out.split("test top-1 ")[1].split("%")[0])
    assert top1 > 80.0


def test_tag_names_the_run_and_filters_results(data_dir: Path, capsys) -> None:
    code, out, _ = _run(["fit", "--data-dir", str(data_dir), "--dataset", "cifar100",
                         "--model", "svm", "--C", "1", "--tag", "recipe-x"], capsys)
    run_dir = Path(out.split("run: ")[1].strip())
    assert code == 0 and "-recipe-x-cifar100-" in run_dir.name
    assert json.loads((run_dir / "metrics.json").read_text())["tag"] == "recipe-x"
    code, out, _ = _run(["results", "--data-dir", str(data_dir), "--tag", "recipe-x"], capsys)
    titles = [line.split()[1] for line in out.splitlines() if line.startswith("==")]
    assert code == 0 and titles == ["cifar100"] and run_dir.name in out
