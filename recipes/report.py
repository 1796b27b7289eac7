"""Write ``docs/results.md`` from the recipes' runs and ``recipes/papers.toml``.

A generic page writer: the sources' figures, protocols and the sections' texts are data in
``papers.toml``; our numbers come from ``<data>/runs/*/metrics.json`` (grouped by the
recipes' ``--tag``) and the recipes' wall times from ``<data>/recipes/*.json``. Every pick
is validation's; a source's figure inside the 95 % interval of our test top-1 is a tie.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from featcache.classify.runs import RUN_STAMP, by_validation, load_runs, pct, val_score  # noqa: E402
from featcache.classify.stats import mean_per_class, top1_interval  # noqa: E402
from featcache.paths import default_data_dir  # noqa: E402

DATA = Path(__file__).with_name("papers.toml")
Run = Mapping[str, Any]

FIELDS: dict[str, Callable[[Run], Any]] = {  # what a [[target]]'s `runs` may match on
    "tag": lambda r: r.get("tag"),
    "dataset": lambda r: r["dataset"],
    "head": lambda r: r["head"],
    "backbone": lambda r: r["backbone"],
    "n_train": lambda r: r["n_train"],
    "swept": lambda r: bool(r.get("grid")),
}


def matches(run: Run, match: Mapping[str, Any]) -> bool:
    """Every key of ``match`` holds: a value, one of a list, or a glob for ``dataset``."""
    for key, want in match.items():
        wanted = want if isinstance(want, list) else [want]
        value = FIELDS[key](run)
        if not any(fnmatch(value, w) if key == "dataset" else value == w for w in wanted):
            return False
    return True


def interval(run: Run) -> list[float]:
    """The run's 95 % interval of test top-1 (computed from its counts for older runs)."""
    if run.get("top1_ci"):
        return run["top1_ci"]
    repeats = run.get("per_repeat") or [run]
    n = [r.get("n_test", run["n_test"]) for r in repeats]
    return top1_interval([round(r["top1"] * k) for r, k in zip(repeats, n, strict=True)], n)[0]


def per_class(run: Run) -> float | None:
    if run.get("mean_per_class") is not None:
        return run["mean_per_class"]
    return mean_per_class(np.array(run["confusion"])) if run.get("confusion") else None


def verdict(run: Run, figure: float) -> str:
    """"tie" where ``figure`` (%) lies in the interval, else above or below with the gap."""
    low, high = interval(run)
    gap = 100 * run["top1"] - figure
    if round(100 * low, 9) <= figure <= round(100 * high, 9):
        return "tie"
    return f"{'above' if gap > 0 else 'below'} ({gap:+.2f})"


def test_text(run: Run) -> str:
    low, high = interval(run)
    spread = f" ± {100 * run['top1_std']:.2f}" if run.get("repeats", 1) > 1 else ""
    return f"{pct(run['top1'])}{spread} [{pct(low)}, {pct(high)}]"


def layers(run: Run) -> str:
    grid = run.get("cache", {}).get("pool") == "none"
    return "+".join(run["layers"]) + (" (grid)" if grid else "")


def views(run: Run) -> str:
    counts = run.get("cache", {}).get("views", {})
    train, test = counts.get("train", 1), counts.get("test", 1)
    return str(train) if train == test else f"{train} / {test}"


def setup(run: Run) -> str:
    several = "" if views(run) == "1" else f", {views(run)} views"
    return (f"{run['backbone'].removeprefix('efficientnet_')} "
            f"{run.get('cache', {}).get('resolution', '?')} px{several}, {layers(run)}, "
            f"{run['head']}")


COLUMNS: dict[str, Callable[[Run], str]] = {
    "setup": setup,
    "transform": lambda r: r["transform"],
    "chosen / fixed": lambda r: " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in sorted(r["params"].items()) if k != "hidden") or "—",
    "train": lambda r: f"{r['n_train']:,}",
    "val top-1": lambda r: pct(val_score(r)),
    "test top-1 [95 % CI]": test_text,
    "per-class": lambda r: pct(per_class(r)),
    "centre view": lambda r: pct(r.get("top1_centre")),
    "run s": lambda r: f"{r['seconds']:.0f}",
}


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def summary(data: Mapping[str, Any], runs: Sequence[Run]) -> list[str]:
    """Source vs ours: one row per picked run of every [[target]]."""
    sources = {s["id"]: s for s in data["source"]}
    rows = []
    for target in data["target"]:
        source = sources[target["source"]]
        figure = source["figures"].get(target.get("figure"))
        pool = [r for r in runs if matches(r, target["runs"])]
        ranked = [r for r in by_validation(pool) if val_score(r) is not None]
        picked = pool if target["pick"] == "each" else ranked[:1]
        among = (f"{len(ranked)} (best test {pct(max(r['top1'] for r in ranked))})"
                 if target["pick"] == "validation" and ranked else "fixed")
        shown = "—" if figure is None else f"{figure:.2f}"
        compare = figure is not None and target.get("compare", True)
        for run in picked:
            rows.append((target["experiment"], f"{shown} ({source['name']})", test_text(run),
                         verdict(run, figure) if compare else "not compared", pct(per_class(run)),
                         pct(val_score(run)), among, setup(run), f"`{run.get('tag')}`"))
        if not picked:
            rows.append((target["experiment"], f"{shown} ({source['name']})", "not run yet",
                         *"—" * 6))
    return table(("experiment", "source %", "ours: test top-1 % [95 % CI]", "vs source",
                  "per-class %", "val top-1 %", "validation chose among", "setup", "recipe"),
                 rows)


def _finished(run: Run) -> datetime:
    """When a run was written: its folder name starts with the local time."""
    stamp = run["run_id"][: len(datetime.now().strftime(RUN_STAMP))]
    return datetime.strptime(stamp, RUN_STAMP).astimezone()


def wall_times(data: Mapping[str, Any], data_dir: Path, runs: Sequence[Run]) -> list[str]:
    rows, total = [], 0.0
    for name in data["recipes"]:
        path = data_dir / "recipes" / f"{name}.json"
        if not path.is_file():
            rows.append((f"`make reproduce-{name}`", "not finished", "—", "—", "—"))
            continue
        t = json.loads(path.read_text())
        end = datetime.fromisoformat(t["started"].replace("Z", "+00:00")) + timedelta(
            seconds=t["seconds"])
        late = sum(r["seconds"] for r in runs if r.get("tag") == name and _finished(r) > end)
        total += t["seconds"] + late
        rows.append((f"`make reproduce-{name}`", f"{t['seconds'] / 60:.1f}",
                     f"{late / 60:.1f}", t["machine"], t["started"]))
    header = ("recipe", "minutes", "runs fitted after it ended, minutes", "machine", "started")
    return [*table(header, rows), f"Total: {total / 3600:.2f} h.", ""]


def section(spec: Mapping[str, Any], data: Mapping[str, Any], data_dir: Path, docs: Path,
            runs: Sequence[Run]) -> list[str]:
    """A recipe's heading, source and protocol, a table per dataset, commands and images."""
    sources = {s["id"]: s for s in data["source"]}
    lines = [f"## {spec['title']}", ""]
    if "source" in spec:
        source = sources[spec["source"]]
        figures = ", ".join(f"{k} **{v:.2f} %**" for k, v in source["figures"].items())
        lines.append(f"Source ({source['name']}): {source['ran']}: {figures}.")
    lines += [("Ours: " if "source" in spec else "") + " ".join(spec["ours"].split()), ""]
    mine = [r for r in runs if r.get("tag") == spec["recipe"]]
    for dataset in sorted({r["dataset"] for r in mine}):
        group = by_validation(r for r in mine if r["dataset"] == dataset)
        lines += [f"### {dataset}", "", *table(list(COLUMNS), ([f(r) for f in COLUMNS.values()]
                                                             for r in group))]
    if mine:
        lines += ["<details><summary>commands</summary>", "", "```",
                  *(r["command"] for r in mine), "```", "", "</details>", ""]
    for image in spec.get("images", []):
        lines += [_image(image, data_dir, docs, runs), ""]
    return lines


def _image(image: Mapping[str, Any], data_dir: Path, docs: Path, runs: Sequence[Run]) -> str:
    if "confusion_of" in image:
        ranked = [r for r in by_validation(r for r in runs if matches(r, image["confusion_of"]))
                  if val_score(r) is not None]
        if not ranked:
            return f"*({image['alt']}: no run to pick yet)*"
        source = data_dir / "runs" / ranked[0]["run_id"] / "confusion.png"
        caption = f"{image['alt']}: validation's pick, {setup(ranked[0])}."
    else:
        source, caption = data_dir / image["file"], image["alt"]
    if not source.is_file():
        return f"*({image['alt']}: not produced yet; run the recipe)*"
    (docs / "img").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, docs / "img" / image["name"])
    return f"![{caption}](img/{image['name']})"


def render(data_dir: Path, docs: Path, data: Mapping[str, Any]) -> str:
    runs = [r for r in load_runs(data_dir) if r.get("tag") in data["recipes"]]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# {data['title']}", "",
             f"Generated by `make results-page` (recipes/report.py from recipes/papers.toml) "
             f"on {stamp} from the runs' `metrics.json`; do not edit by hand. "
             + " ".join(data["intro"].split()), "",
             "## Source vs ours", "", *summary(data, runs),
             "## Wall time of each recipe", "", *wall_times(data, data_dir, runs)]
    for spec in data["section"]:
        lines += section(spec, data, data_dir, docs, runs)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--papers", type=Path, default=DATA)
    args = parser.parse_args(argv)
    text = render(args.data_dir, args.docs, tomllib.loads(args.papers.read_text()))
    out = args.docs / "results.md"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
