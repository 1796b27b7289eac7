"""The recipes run both stages end to end, and the results page is built from their runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import write_image_folder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

import report  # noqa: E402

from featcache.classify.stats import wilson  # noqa: E402


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
    summary = rows(page, "Source vs ours")
    source_head = next(r for r in summary if r["experiment"].startswith("UC Merced, the source"))
    picked = next(r for r in runs if r["head"] == "mlp-ucmerced")
    assert source_head["ours: test top-1 % [95 % CI]"] == report.test_text(picked)
    assert source_head["source %"] == "86.61 (Iorga & Neagoe)"
    assert (docs / "img" / "ucmerced-confusion.png").is_file()
    walls = {r["recipe"]: r for r in rows(page, "Wall time of each recipe")}
    assert walls["`make reproduce-durr`"]["minutes"] == "not finished"
    assert walls["`make reproduce-iorga`"]["minutes"] == f"{timing['seconds'] / 60:.1f}"


def rows(page: str, heading: str) -> list[dict[str, str]]:
    """The first markdown table under ``## heading`` (or ``### heading``), as dicts."""
    after = re.split(rf"^#+ {re.escape(heading)}$", page, maxsplit=1, flags=re.M)[1]
    table = re.search(r"^(\|.*\n)+", after, flags=re.M).group(0)
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in table.splitlines()]
    header, _, *body = cells
    return [dict(zip(header, row, strict=True)) for row in body]


def _metrics(run_id: str, tag: str, val: float | None, test: float, *, n_test: int = 420,
             **extra) -> dict:
    correct = round(test * n_test)
    return {
        "run_id": run_id, "tag": tag, "dataset": "ucmerced-jpg", "backbone": "efficientnet_lite0",
        "layers": ["pool"], "head": "svm", "transform": "standardize", "params": {"C": 0.1},
        "grid": [] if val is None else [{"C": 0.1}, {"C": 1.0}], "n_train": 1680,
        "n_test": n_test, "top1": correct / n_test, "top1_std": 0.0, "top1_centre": None,
        "repeats": 1, "seconds": 60.0, "cache": {"resolution": 224, "pool": "avg"},
        "command": f"fit {run_id}", "confusion": [[correct, n_test - correct], [0, 0]],
        "per_repeat": [{"top1": correct / n_test, "n_test": n_test,
                        "val_scores": [] if val is None else [val - 0.1, val]}], **extra,
    }


def _write_runs(data_dir: Path, *runs: dict) -> None:
    for metrics in runs:
        run = data_dir / "runs" / metrics.pop("run_id")
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps(metrics))


def _page(tmp_path: Path, data: dict | None = None) -> str:
    data = data or report.tomllib.loads(report.DATA.read_text())
    return report.render(tmp_path, tmp_path / "docs", data)


def test_the_page_picks_by_validation_never_by_test(tmp_path: Path) -> None:
    _write_runs(tmp_path, _metrics("20260101-000001-a", "iorga", val=0.95, test=0.90),
                _metrics("20260101-000002-b", "iorga", val=0.90, test=0.99, head="logreg"),
                _metrics("20260101-000003-c", "iorga", val=None, test=1.00, head="mlp-alexnet"),
                _metrics("20260101-000004-d", "other", val=0.99, test=0.50))
    page = _page(tmp_path)
    row = next(r for r in rows(page, "Source vs ours")
               if r["experiment"] == "UC Merced, head and tap chosen on validation, 5 splits")
    assert row["val top-1 %"] == "95.00"
    assert row["ours: test top-1 % [95 % CI]"].startswith("90.00")
    assert row["validation chose among"] == "2 (best test 99.05)"
    assert row["vs source"] == f"above ({90.0 - 86.61:+.2f})"
    table = rows(page, "ucmerced-jpg")
    assert [r["val top-1"] for r in table] == ["95.00", "90.00", "-"]  # fixed runs last
    assert "fit 20260101-000004-d" not in page


def test_a_figure_inside_the_interval_is_a_tie(tmp_path: Path) -> None:
    low, high = wilson(9951, 10000)
    assert low < 0.9954 < high
    run = _metrics("20260101-000001-a", "hertel", val=0.996, test=0.9951, n_test=10000,
                   dataset="mnist")
    assert report.verdict(run, 99.54) == "tie"
    assert report.verdict(run, 100 * high + 0.01) == f"below ({99.51 - 100 * high - 0.01:+.2f})"
    assert report.verdict(run, 100 * low - 0.01).startswith("above")
    _write_runs(tmp_path, run)
    row = next(r for r in rows(_page(tmp_path), "Source vs ours")
               if r["experiment"].startswith("MNIST, linear or MLP"))
    assert row["vs source"] == "tie"
    assert row["ours: test top-1 % [95 % CI]"] == f"99.51 [{100 * low:.2f}, {100 * high:.2f}]"


def test_every_source_figure_and_section_comes_from_the_data_file(tmp_path: Path) -> None:
    data = report.tomllib.loads(report.DATA.read_text())
    data["source"][0]["figures"]["CIFAR-10"] = 12.34
    data["section"] = data["section"][:2]
    page = _page(tmp_path, data)
    summary = rows(page, "Source vs ours")
    assert len(summary) == len(data["target"])  # one row per target, even before any run
    durr = [r for r in summary if r["source %"].endswith("(Dürr)")]
    assert durr and all(r["source %"] == "12.34 (Dürr)" for r in durr)
    headings = re.findall(r"^## (.+)$", page, flags=re.M)
    assert headings == ["Source vs ours", "Wall time of each recipe",
                        *(s["title"] for s in data["section"])]


def test_wall_times_count_runs_fitted_after_the_recipe(tmp_path: Path) -> None:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "iorga.json").write_text(json.dumps({
        "recipe": "iorga", "started": "2026-01-01T00:00:00Z", "seconds": 600,
        "machine": "2 CPU cores"}))
    late = datetime(2026, 1, 2, tzinfo=timezone.utc).astimezone().strftime(report.RUN_STAMP)
    _write_runs(tmp_path, _metrics(f"{late}-x", "iorga", val=0.9, test=0.9, seconds=120.0))
    walls = {r["recipe"]: r for r in rows(_page(tmp_path), "Wall time of each recipe")}
    assert walls["`make reproduce-iorga`"]["minutes"] == "10.0"
    assert walls["`make reproduce-iorga`"]["runs fitted after it ended, minutes"] == "2.0"
    assert "Total: 0.20 h." in _page(tmp_path)


def test_older_runs_get_their_interval_from_their_counts() -> None:
    run = _metrics("a", "iorga", val=0.9, test=0.8, n_test=200)
    assert report.interval(run) == pytest.approx(wilson(160, 200))
    assert report.per_class(run) == pytest.approx(0.8)


def test_layers_label_marks_whole_conv_maps() -> None:
    pooled = {"layers": ["block6", "pool"], "cache": {"pool": "avg"}}
    grid = {"layers": ["block5"], "cache": {"pool": "none"}}
    assert report.layers(pooled) == "block6+pool"
    assert report.layers(grid) == "block5 (grid)"
