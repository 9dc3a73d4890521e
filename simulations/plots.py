"""Figures logged as MLflow artifacts: confusion matrices and real-vs-generated spectrogram grids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def confusion_png(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str) -> Path:
    """A labeled confusion matrix (rows = truth) written to ``path``."""
    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(3.6, 3.2), dpi=120)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > cm.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


@torch.no_grad()
def spectrogram_grid_png(
    real: Sequence[np.ndarray], real_labels: Sequence[int], generator: torch.nn.Module, classes: Sequence[str],
    path: Path, per_class: int = 3, seed: int = 0,
) -> Path:
    """Rows = emotions; the first ``per_class`` columns real patches, the rest generated ones.

    ``real`` holds scaled (F, P) patches; the generator must offer ``generate(noise, classes)``.
    """
    rng = torch.Generator().manual_seed(seed)
    fig, axes = plt.subplots(len(classes), 2 * per_class, figsize=(2 * per_class * 1.1, len(classes) * 1.2),
                             dpi=110, squeeze=False)
    device = next(generator.parameters()).device
    for c, name in enumerate(classes):
        mine = [p for p, y in zip(real, real_labels, strict=True) if y == c][:per_class]
        noise = torch.randn(per_class, generator.n_z, generator=rng).to(device)
        fake = generator.generate(noise, torch.full((per_class,), c, device=device)).cpu().numpy()[:, 0]
        for k in range(per_class):
            for ax, img, kind in ((axes[c, k], mine[k] if k < len(mine) else None, "real"),
                                  (axes[c, per_class + k], fake[k], "generated")):
                if img is not None:
                    ax.imshow(img, origin="lower", aspect="auto", vmin=-1, vmax=1, cmap="magma")
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_title(kind, fontsize=7)
            axes[c, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def bar_chart_png(
    regimes: Sequence[str], means: dict[str, Sequence[float]], stds: dict[str, Sequence[float]],
    paper_f1: dict[str, float], path: Path,
) -> Path:
    """Grouped bars (one group per regime, one bar per metric, std as error bars); the paper's
    Table 2 macro-F1 as a marker where it has one."""
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(regimes), 3.2), dpi=120)
    width = 0.8 / len(means)
    x = np.arange(len(regimes))
    for k, (metric, values) in enumerate(means.items()):
        ax.bar(x + (k - (len(means) - 1) / 2) * width, values, width, yerr=stds[metric], capsize=2, label=metric)
    marks = [(i, paper_f1[r]) for i, r in enumerate(regimes) if r in paper_f1]
    if marks:
        ax.scatter([i for i, _ in marks], [v for _, v in marks], marker="_", s=400, color="black",
                   label="seed 002 Table 2 F1", zorder=3)
    ax.set_xticks(x, regimes, fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
