"""PNG figures with matplotlib's Agg canvas (no global backend switch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from featcache.classify.stats import top_confusions

LABELLED = 25  # above this many classes, names go in a list of confusions, not on the axes
TOP_CONFUSIONS = 25


def plot_confusion(
    confusion: np.ndarray, class_names: Sequence[str], path: Path, title: str
) -> Path:
    """Row-normalised confusion matrix, readable on a screen at any class count.

    Up to ``LABELLED`` classes: names on both axes and a rate in every cell. Above: the
    matrix alone (class indices on the axes) beside the most frequent confusions by name.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    labelled = n <= LABELLED
    fig = Figure(figsize=(4 + 0.35 * n, 4 + 0.35 * n) if labelled else (13, 7.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1) if labelled else fig.add_axes((0.05, 0.08, 0.5, 0.84))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if labelled:
        ax.set_xticks(range(n), class_names, rotation=90)
        ax.set_yticks(range(n), class_names)
        for i, j in zip(*np.nonzero(rates >= 0.005), strict=True):
            ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if rates[i, j] > 0.5 else "black")
    else:
        ax.set_xlabel("predicted (class index)")
        ax.set_ylabel("true (class index)")
        lines = [f"{c['count']:>5}  {c['rate']:6.1%}  {c['true']} ({c['true_index']}) -> "
                 f"{c['predicted']} ({c['predicted_index']})"
                 for c in top_confusions(confusion, class_names, k=TOP_CONFUSIONS)]
        fig.text(0.6, 0.92, "most frequent confusions\n count  of true  true (index) -> "
                 "predicted (index)\n\n"
                 + ("\n".join(lines) or "(none)"), va="top", family="monospace", fontsize=9)
    if labelled:
        fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    return path


def plot_map(points: np.ndarray, labels: np.ndarray, class_names: Sequence[str], path: Path,
             title: str) -> Path:
    """2-D scatter coloured by class, with a legend."""
    fig = Figure(figsize=(9, 8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = _colours(len(class_names))
    for code in np.unique(labels):
        mask = labels == code
        ax.scatter(points[mask, 0], points[mask, 1], s=6, color=colours[code],
                   label=class_names[code])
    ax.legend(markerscale=3, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5),
              ncol=1 if len(class_names) <= 30 else 2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    return path


def _colours(n: int) -> np.ndarray:
    name = "tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"
    cmap = colormaps[name]
    return cmap(np.linspace(0, 1, n)) if name == "turbo" else cmap(np.arange(n) % cmap.N)
