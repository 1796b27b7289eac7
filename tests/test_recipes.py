"""The recipes run both stages end to end, and the results page is built from their runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_image_folder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

import report  # noqa: E402


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.sh")), ids=lambda p: p.name)
def test_recipe_is_valid_bash(recipe: Path) -> None:
    assert subprocess.run(["bash", "-n", str(recipe)]).returncode == 0


@pytest.mark.slow
def test_iorga_recipe_then_results_page(tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "ucmerced", classes=("beach", "forest", "river"),
                                per_class=20, size=32)
    data = tmp_path / "data"
    env = {**os.environ, "PY": sys.executable, "DATA_DIR": str(data), "UCMERCED": str(folder)}
    done = subprocess.run(["bash", str(ROOT / "recipes" / "iorga.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "iorga: done in" in done.stdout
    runs = report.load_runs(data, tag="iorga")
    assert sorted(r["head"] for r in runs) == ["logreg", "logreg", "mlp", "mlp", "mlp-ucmerced",
                                                "svm"]
    assert all(r["repeats"] == 5 and r["n_test"] == 6 for r in runs)
    timing = json.loads((data / "recipes" / "iorga.json").read_text())
    assert timing["seconds"] >= 0 and "CPU cores" in timing["machine"]

    docs = tmp_path / "docs"
    docs.mkdir()
    assert report.main(["--data-dir", str(data), "--docs", str(docs)]) == 0
    page = (docs / "results.md").read_text()
    source_head = next(r for r in runs if r["head"] == "mlp-ucmerced")
    assert report.top1(source_head) in page
    assert "ucmerced-confusion.png" in page and (docs / "img" / "ucmerced-confusion.png").is_file()
    assert "`make reproduce-durr` has not finished yet" in page


def _metrics(run_id: str, tag: str, val: float | None, test: float, **extra) -> dict:
    return {
        "run_id": run_id, "tag": tag, "dataset": "ucmerced-jpg", "backbone": "efficientnet_lite0",
        "layers": ["pool"], "head": "svm", "transform": "standardize", "params": {"C": 0.1},
        "grid": [], "n_train": 1680, "top1": test, "top1_std": 0.01, "top1_centre": None,
        "repeats": 5, "seconds": 1.0, "cache": {"resolution": 224}, "command": f"fit {run_id}",
        "per_repeat": [{"val_scores": [] if val is None else [val - 0.1, val]}] * 5, **extra,
    }


MNIST = {"dataset": "mnist", "n_test": 10000, "n_val": 6000, "repeats": 1}


def _write_runs(data_dir: Path, *runs: dict) -> None:
    for metrics in runs:
        run = data_dir / "runs" / metrics["run_id"]
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps(metrics))


def test_page_picks_by_validation_never_by_test(tmp_path: Path) -> None:
    _write_runs(tmp_path, _metrics("a", "iorga", val=0.95, test=0.90),
                _metrics("b", "iorga", val=0.90, test=0.99, head="logreg"),
                _metrics("c", "iorga", val=None, test=1.00, head="mlp-alexnet"),
                _metrics("d", "other", val=0.99, test=0.50))
    runs = report.load_runs(tmp_path, tag="iorga")
    assert {r["run_id"] for r in runs} == {"a", "b", "c"}
    assert report.chosen(runs)["run_id"] == "a"
    assert report.val_score(next(r for r in runs if r["run_id"] == "c")) is None
    page = report.render(tmp_path, tmp_path / "docs")
    assert "| 90.00 ± 1.00 (efficientnet_lite0 224 px, pool, svm) | no (-7.00) | `iorga` |" in page
    assert "fit a\nfit b\nfit c" in page and "fit d" not in page


def test_mnist_pick_is_validations_and_names_a_better_test_score_apart(tmp_path: Path) -> None:
    _write_runs(tmp_path, _metrics("a", "hertel", val=0.996, test=0.9951, **MNIST),
                _metrics("b", "hertel", val=0.995, test=0.9960, **MNIST,
                         backbone="efficientnet_lite2"))
    page = report.render(tmp_path, tmp_path / "docs")
    assert "Validation's MNIST pick: efficientnet_lite0 pool at 224 px, svm, 99.51 % test" in page
    assert "| 99.51 (efficientnet_lite0 224 px, pool, svm) | no (-0.03) | `hertel` |" in page
    assert "Its validation lead over the runner-up" in page
    assert ("The best test score of the MNIST runs, 99.60 % (efficientnet_lite2 pool at 224 "
            "px, svm, validation 99.50 %), is not the pick") in page


def test_a_run_on_several_views_says_how_many_beside_its_one_view_twin(tmp_path: Path) -> None:
    crops = {"resolution": 112, "views": {"train": 5, "test": 5}}
    _write_runs(tmp_path, _metrics("a", "hertel", val=0.996, test=0.9951, **MNIST),
                _metrics("b", "hertel", val=0.997, test=0.9958, **MNIST, cache=crops),
                _metrics("c", "hertel", val=0.995, test=0.9940, **MNIST,
                         cache={"resolution": 112, "views": {"train": 1, "test": 1}}))
    page = report.render(tmp_path, tmp_path / "docs")
    assert "Validation's MNIST pick: efficientnet_lite0 pool at 112 px, 5 views, svm" in page
    assert "| 99.58 (efficientnet_lite0 112 px, 5 views, pool, svm) | yes |" in page
    assert "Its validation lead over the runner-up (efficientnet_lite0 pool at 224 px, svm, " \
           "99.51 % test) is 6 images." in page
    assert "| mnist | lite0 | 112 | 5 | pool | svm |" in page
    assert "| lite0 | 112 | pool | svm | 99.50 → 99.70 | 99.40 → 99.58 | — |" in page


def test_layers_label_marks_whole_conv_maps() -> None:
    pooled = {"layers": ["block6", "pool"], "cache": {"pool": "avg"}}
    grid = {"layers": ["block5"], "cache": {"pool": "none"}}
    assert report.layers(pooled) == "block6+pool"
    assert report.layers(grid) == "block5 (grid)"


def test_a_score_equal_to_the_target_meets_it_despite_float_rounding() -> None:
    assert report._met({"top1": 0.9954}, 99.54) == "yes"  # 100 * 0.9954 == 99.53999...
    assert report._met({"top1": 0.9953}, 99.54) == "no (-0.01)"
