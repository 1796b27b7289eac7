"""PNG figures with matplotlib's Agg canvas (no global backend switch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_confusion(
    confusion: np.ndarray, class_names: Sequence[str], path: Path, title: str
) -> Path:
    """Row-normalised confusion matrix with class names on both axes."""
    confusion = np.asarray(confusion, dtype=np.float64)
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    size = min(4 + 0.35 * n, 30)
    fig = Figure(figsize=(size, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=max(4, 10 - n // 15))
    ax.set_yticks(range(n), class_names, fontsize=max(4, 10 - n // 15))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if rates[i, j] >= 0.005:
                    ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
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
    fig.savefig(path, dpi=120)
    return path


def _colours(n: int) -> np.ndarray:
    name = "tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"
    cmap = colormaps[name]
    return cmap(np.linspace(0, 1, n)) if name == "turbo" else cmap(np.arange(n) % cmap.N)
