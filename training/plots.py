"""PNG plots for a run folder, task-agnostic helpers.

Figures are built on an explicit Agg canvas instead of pyplot, so plotting never depends on (or changes) a
process-wide backend and works without a display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def save_figure(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_curves(
    path: Path, history: Sequence[dict[str, Any]], keys: Sequence[str], *, ylabel: str, title: str | None = None
) -> Path | None:
    """One line per key of the per-epoch history; keys missing from every row are skipped."""
    present = [key for key in keys if any(isinstance(row.get(key), (int, float)) for row in history)]
    if not present:
        return None
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for key in present:
        points = [(row["epoch"], row[key]) for row in history if isinstance(row.get(key), (int, float))]
        epochs, values = zip(*points, strict=True)
        ax.plot(epochs, values, marker="o", markersize=3, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title or ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_confusion_matrix(
    path: Path, matrix: np.ndarray, labels: Sequence[str], *, title: str = "confusion matrix"
) -> Path:
    """Rows are true classes, columns predictions; cells are row-normalized, annotated with raw counts."""
    counts = np.asarray(matrix, dtype=np.int64)
    row_sums = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, row_sums, out=np.zeros(counts.shape, dtype=np.float64), where=row_sums > 0)
    side = max(4.0, 0.45 * len(labels) + 2)
    fig = Figure(figsize=(side, side))
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels=list(labels), rotation=90 if len(labels) > 10 else 0)
    ax.set_yticks(ticks, labels=list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(labels) <= 30:  # beyond that the numbers are unreadable anyway
        for i, j in np.ndindex(counts.shape):
            if counts[i, j]:
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7, color=color)
    return save_figure(fig, path)


def plot_class_bars(
    path: Path, names: Sequence[str], series: Mapping[str, Sequence[float]], *, ylabel: str, title: str
) -> Path | None:
    """Per-class bars of scores in [0, 1], one bar per series side by side (a legend when there are several)."""
    if not names:
        return None
    x = np.arange(len(names))
    width = 0.8 / len(series)
    fig = Figure(figsize=(max(5.0, 0.5 * len(names) + 2), 4))
    ax = fig.add_subplot()
    for k, (label, values) in enumerate(series.items()):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, list(values), width=width, label=label)
    ax.set_xticks(x, labels=list(names), rotation=90 if len(names) > 10 else 0)
    if len(series) > 1:
        ax.set_ylim(0, 1.15)  # headroom: the legend sits above the bars, never over one
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.legend(loc="upper center", ncol=len(series), fontsize="small")
    else:
        ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def plot_pr_curves(path: Path, curves: dict[str, tuple[list[float], list[float]]], title: str) -> Path | None:
    """One precision-recall curve per class."""
    if not curves:
        return None
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    for name, (recall, precision) in curves.items():
        ax.plot(recall, precision, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) <= 20:
        ax.legend(fontsize=8)
    return save_figure(fig, path)
