"""Figures of the pipeline (matplotlib, headless): written atomically, byte-stable PNGs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lq.atomic import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_matrix(ax, R: np.ndarray, title: str, spread: np.ndarray | None = None) -> object:
    """An accuracy matrix as a heatmap, values in % written in each cell (± spread if given)."""
    image = ax.imshow(R, vmin=0, vmax=1, cmap="viridis")
    for (t, j), value in np.ndenumerate(R):
        text = f"{100 * value:.1f}" + (f"\n±{100 * spread[t, j]:.1f}" if spread is not None else "")
        ax.text(j, t, text, ha="center", va="center", fontsize=8, color="white" if value < 0.6 else "black")
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task t")
    ax.set_xticks(range(len(R)))
    ax.set_yticks(range(len(R)))
    ax.set_title(title, fontsize=9)
    return image


def save(fig, path: Path) -> None:
    """PNG without a timestamp or software tag, so the same data gives the same bytes."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    _pyplot().close(fig)


def matrix_figure(path: Path, R: np.ndarray, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(R), 1.0 + 0.8 * len(R)), dpi=100)
    fig.colorbar(draw_matrix(ax, R, title), ax=ax, fraction=0.046)
    save(fig, path)


def matrices_figure(path: Path, matrices: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """One heatmap per run (mean over seeds, ± std in each cell), in a grid of panels."""
    plt = _pyplot()
    n = len(matrices)
    cols = min(n, 4)
    rows = -(-n // cols)
    size = len(matrices[0][1])
    fig, axes = plt.subplots(rows, cols, figsize=(cols * (1.6 + 0.9 * size), rows * (1.4 + 0.8 * size)),
                             dpi=100, squeeze=False)
    for ax, (label, mean, std) in zip(axes.flat, matrices):
        draw_matrix(ax, mean, label, std)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    save(fig, path)


def curves_figure(path: Path, curves: Sequence[tuple[str, np.ndarray, np.ndarray]], ylabel: str, title: str) -> None:
    """Lines over tasks with a ± std band, one per run (20 distinct colours, legend outside)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 4.2), dpi=100)
    colours = plt.get_cmap("tab20").colors
    for i, (label, mean, std) in enumerate(curves):
        tasks = np.arange(len(mean))
        colour = colours[i % len(colours)]
        ax.plot(tasks, 100 * mean, marker="o", color=colour, label=label)
        ax.fill_between(tasks, 100 * (mean - std), 100 * (mean + std), color=colour, alpha=0.12)
    ax.set_xlabel("after training task t")
    ax.set_ylabel(ylabel)
    ax.set_xticks(range(max(len(c[1]) for c in curves)))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    save(fig, path)


def bars_figure(path: Path, labels: Sequence[str], mean: np.ndarray, std: np.ndarray, ylabel: str, title: str) -> None:
    """Bars with ± std error bars, one per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(labels) + 1.5), 4.2), dpi=100)
    ax.bar(range(len(labels)), 100 * mean, yerr=100 * std, capsize=4, color="tab:red", alpha=0.8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    save(fig, path)
