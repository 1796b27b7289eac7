"""Run folders under ``<data>/runs``: complete or absent; the results table, best on validation.

A run is written into a hidden temporary folder and renamed into place only when every file
is there, so a crash, a full disk or a read-only folder leaves no half run behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from featcache.errors import environment_fault
from featcache.files import fsync_dir, fsync_file, slug

METRICS = "metrics.json"
RUN_STAMP = "%Y%m%d-%H%M%S"  # local time; a run folder's name starts with it
STALE_SECONDS = 3600  # a temporary folder lives for the seconds its files take to write

Run = Mapping[str, Any]


def write_run(data_dir: Path, parts: Sequence[str], fill: Callable[[Path], None]) -> Path:
    """``fill(folder)`` a temporary folder, then rename it to ``<data>/runs/<time>-<parts>-<id>``.

    On any error the temporary folder is removed; an ``OSError`` becomes EnvironmentFault.
    """
    root = Path(data_dir) / "runs"
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale(root)
        tmp = Path(tempfile.mkdtemp(prefix=".", suffix=".tmp", dir=root))
    except OSError as exc:
        raise environment_fault(exc, root, "nothing was kept") from None
    try:
        fill(tmp)
        for path in sorted(tmp.rglob("*")):
            (fsync_file if path.is_file() else fsync_dir)(path)
        fsync_dir(tmp)
        name = "-".join([datetime.now().strftime(RUN_STAMP), *(slug(p) for p in parts)])
        final = root / f"{name}-{secrets.token_hex(3)}"
        os.rename(tmp, final)  # fails rather than replace a (never empty) finished run
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise environment_fault(exc, root, "nothing was kept") from None
        raise
    fsync_dir(root)  # the rename survives a crash of the machine
    return final


def _remove_stale(root: Path) -> None:
    for tmp in root.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if time.time() - tmp.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def load_runs(
    data_dir: Path, dataset: str | None = None, tag: str | None = None
) -> list[dict[str, Any]]:
    """Metrics of every finished run (``run_id`` = its folder), oldest first; filters: dataset
    (its name, or the path it was extracted from) and tag."""
    runs = []
    for path in sorted((Path(data_dir) / "runs").glob(f"[!.]*/{METRICS}")):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(metrics, dict) or not isinstance(metrics.get("top1"), (int, float)):
            logging.getLogger(__name__).warning("skipped run %s: its %s has no test top1",
                                                path.parent.name, METRICS)
            continue
        metrics["run_id"] = path.parent.name
        if dataset is not None and not _is_dataset(metrics, dataset):
            continue
        if tag is None or metrics.get("tag") == tag:
            runs.append(metrics)
    return runs


def _is_dataset(run: Run, dataset: str) -> bool:
    path = Path(dataset).expanduser()
    source = str(path.resolve()) if path.exists() else None
    return run.get("dataset") == dataset or (
        source is not None and run.get("cache", {}).get("dataset_source") == source)


def find_run(data_dir: Path, config_hash: str) -> dict[str, Any] | None:
    """The newest finished run whose configuration hash is ``config_hash``."""
    same = [r for r in load_runs(data_dir) if r.get("config_hash") == config_hash]
    return same[-1] if same else None


def val_score(run: Run) -> float | None:
    """Validation top-1 of the chosen hyperparameters, mean over repeats (None: nothing swept)."""
    if "val_top1" in run:
        return run["val_top1"]
    best = [max(r["val_scores"]) for r in run.get("per_repeat", []) if r.get("val_scores")]
    return float(np.mean(best)) if best else None


def by_validation(runs: Iterable[Run]) -> list[Run]:
    """Best validation score first; runs without one (nothing swept) after them, oldest first.

    Test scores never order anything here.
    """
    runs = list(runs)
    scored = sorted((r for r in runs if val_score(r) is not None), key=lambda r: -val_score(r))
    return scored + [r for r in runs if val_score(r) is None]


def dataset_key(run: Run) -> tuple[str, str]:
    """A dataset's identity: its name and its fingerprint."""
    cache = run.get("cache", {})
    return str(run.get("dataset", "?")), str(cache.get("dataset_fingerprint", ""))[:8]


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def top1_text(run: Run) -> str:
    """Test top-1 with its 95 % interval (and the spread over repeats where there are several)."""
    text = pct(run["top1"])
    if run.get("repeats", 1) > 1:
        text += f"±{100 * run['top1_std']:.2f}"
    ci = run.get("top1_ci")
    return text + (f" [{pct(ci[0])}, {pct(ci[1])}]" if ci else "")


def params_text(params: Mapping[str, Any]) -> str:
    def show(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}"
        if isinstance(value, (list, tuple)):
            return ",".join(map(str, value))
        return str(value)

    return " ".join(f"{k}={show(v)}" for k, v in sorted(params.items())) or "-"


COLUMNS: dict[str, Callable[[Run], str]] = {
    "backbone": lambda m: str(m.get("backbone", "?")),
    "layer": lambda m: "+".join(m.get("layers", [])),
    "head": lambda m: str(m.get("head", "?")),
    "params": lambda m: params_text(m.get("params", {})),
    "selection": lambda m: str(m.get("selection", "-")),
    "val top1": lambda m: pct(val_score(m)),
    "test top1 [95% CI]": top1_text,
    "per-class": lambda m: pct(m.get("mean_per_class")),
    "train": lambda m: str(m.get("n_train", "?")),
    "time": lambda m: f"{m.get('seconds', 0.0):.1f}s",
    "run": lambda m: str(m.get("run_id", "?")),
}


def format_results(runs: Sequence[Run]) -> str:
    """One table per dataset (name + fingerprint), best validation score first."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault(dataset_key(run), []).append(run)
    blocks = []
    for (name, fingerprint), members in sorted(groups.items()):
        source = members[0].get("cache", {}).get("dataset_source", "")
        title = f"== {name}" + (f" (data {fingerprint}, {source})" if fingerprint else "")
        rows = [list(COLUMNS)] + [[f(m) for f in COLUMNS.values()] for m in by_validation(members)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                 for r in rows]
        blocks.append("\n".join([title, *lines]))
    return "\n\n".join(blocks) + (
        "\n\nSorted by validation top-1 (runs with fixed hyperparameters have none and follow, "
        "oldest first); test top-1 is shown, never used to rank. 95% CI: Wilson on the test "
        "count; with repeats (mean±sd), the wider of Wilson on the pooled counts and "
        "Student-t over the repeats."
    )
