"""Bump chart: each model's rank in each ordering (profiled prediction, full training, reference dataset)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def bump_chart(orders: dict[str, list[str]], path: Path, title: str) -> Path:
    """`orders`: column name -> labels from best to worst. Rank 1 is drawn at the top."""
    columns = list(orders)
    labels = list(dict.fromkeys(label for order in orders.values() for label in order))
    fig, ax = plt.subplots(figsize=(2.2 + 1.8 * len(columns), 1.2 + 0.5 * len(labels)))
    for label in labels:
        points = [(i, order.index(label) + 1) for i, order in enumerate(orders.values()) if label in order]
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", linewidth=2)
        ax.annotate(label, (xs[0], ys[0]), xytext=(-8, 0), textcoords="offset points", ha="right", va="center")
        ax.annotate(label, (xs[-1], ys[-1]), xytext=(8, 0), textcoords="offset points", ha="left", va="center")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_xlim(-0.8, len(columns) - 0.2)
    ax.set_yticks(range(1, len(labels) + 1))
    ax.set_ylim(len(labels) + 0.5, 0.5)
    ax.set_ylabel("rank (1 = lowest validation MAE)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
