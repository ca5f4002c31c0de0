"""The PNG figures of CLI runs: annotated heatmaps and mean +- std curves (matplotlib, Agg backend)."""

from typing import Mapping, Optional, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(path: str, mean: np.ndarray, std: Optional[np.ndarray], rows: Sequence[str], columns: Sequence[str],
            title: str, labels: Optional[np.ndarray] = None, vmin: float = 0.0, vmax: float = 1.0) -> None:
    """Saves ``mean`` (``[rows, columns]``) as a heatmap, each cell annotated with its value, ``+- std`` where
    given and ``labels`` (strings, e.g. the worst attack) where given."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(columns) + 3, 0.5 * len(rows) + 2))
    im = ax.imshow(mean, vmin=vmin, vmax=vmax, cmap="RdYlGn", aspect="auto")
    for i in range(len(rows)):
        for j in range(len(columns)):
            text = f"{mean[i, j]:.3g}" + (f"\n±{std[i, j]:.2g}" if std is not None else "")
            text += f"\n{labels[i, j]}" if labels is not None else ""
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curves(path: str, x: np.ndarray, runs: Mapping[str, np.ndarray], title: str) -> None:
    """Saves one line per ``runs`` entry (``[seeds, len(x)]``): the mean over seeds with a +- std band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, values in runs.items():
        mean, std = values.mean(0), values.std(0)
        line, = ax.plot(x, mean, label=label)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2, color=line.get_color())
    ax.set(xlabel="round", ylabel="test accuracy", title=title, ylim=(0, 1))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
