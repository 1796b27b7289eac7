"""Run directories under ``<data>/runs``: unique names, atomic metrics, the results table."""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

METRICS = "metrics.json"
RUN_STAMP = "%Y%m%d-%H%M%S"  # local time; a run folder's name starts with it


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("._") or "x"


def new_run_dir(data_dir: Path, parts: Sequence[str]) -> Path:
    """Create ``<data>/runs/<timestamp>-<parts>-<random>``; never reuses an existing folder."""
    root = Path(data_dir) / "runs"
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime(RUN_STAMP)
    name = "-".join([stamp, *(slug(p) for p in parts)])
    while True:
        path = root / f"{name}-{secrets.token_hex(2)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON through a temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def load_runs(
    data_dir: Path, dataset: str | None = None, tag: str | None = None
) -> list[dict[str, Any]]:
    """Metrics of every finished run, best top-1 first; filters: dataset prefix, exact tag."""
    runs = []
    for path in sorted((Path(data_dir) / "runs").glob(f"*/{METRICS}")):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if dataset is not None and not str(metrics.get("dataset", "")).startswith(dataset):
            continue
        if tag is None or metrics.get("tag") == tag:
            runs.append(metrics)
    return sorted(runs, key=lambda m: -(m.get("top1") or 0.0))


def _params(params: Mapping[str, Any]) -> str:
    def show(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}"
        if isinstance(value, (list, tuple)):
            return ",".join(map(str, value))
        return str(value)

    return " ".join(f"{k}={show(v)}" for k, v in sorted(params.items())) or "-"


def format_results(runs: Sequence[Mapping[str, Any]]) -> str:
    """One row a run: dataset, backbone, layer, head, hyperparameters, train size, top-1, time."""
    header = ("dataset", "backbone", "layer", "head", "params", "train", "top1", "top5", "time",
              "run")
    rows = [header]
    for m in runs:
        top1 = f"{100 * m['top1']:.2f}"
        if m.get("repeats", 1) > 1:
            top1 += f"±{100 * m['top1_std']:.2f}"
        top5 = m.get("top5")
        rows.append((
            str(m.get("dataset", "?")),
            str(m.get("backbone", "?")),
            "+".join(m.get("layers", [])),
            str(m.get("head", "?")),
            _params(m.get("params", {})),
            str(m.get("n_train", "?")),
            top1,
            "-" if top5 is None else f"{100 * top5:.2f}",
            f"{m.get('seconds', 0.0):.1f}s",
            str(m.get("run_id", "?")),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)
