"""Figures logged as MLflow artifacts: confusion matrices, real-vs-generated spectrogram grids, the
report's per-cell scores with confidence intervals and its generator audit panels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402


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


def cells_interval_png(
    groups: Sequence[str], cells: Sequence[Sequence[tuple[int, int, float]]], means: Sequence[float],
    intervals: Sequence[tuple[float, float] | None], paper: dict[str, float], path: Path, metric: str = "score",
) -> Path:
    """One column per group (x axis): a point per ``(fold, seed, value)`` cell (colour = fold, marker =
    seed, spread by seed so they do not overlap), to its right the mean with its confidence interval
    as an error bar (none where ``intervals`` has None), and a grey dash at the reference value of
    the groups ``paper`` has (seed 002 Table 2)."""
    folds = sorted({f for group in cells for f, _, _ in group})
    seeds = sorted({s for group in cells for _, s, _ in group})
    colours = {f: plt.get_cmap("tab10")(k % 10) for k, f in enumerate(folds)}
    markers = {s: "osD^vP*Xhp"[k % 10] for k, s in enumerate(seeds)}
    fig, ax = plt.subplots(figsize=(2.0 + 1.5 * len(groups), 3.6), dpi=120)
    for i, (group, mine) in enumerate(zip(groups, cells, strict=True)):
        for fold, seed, value in mine:
            # Seeds side by side in [i - 0.35, i], folds a little apart within a seed.
            x = (i - 0.35 + 0.35 * (seeds.index(seed) + 0.5) / len(seeds)
                 + 0.1 / len(seeds) * (folds.index(fold) / max(len(folds) - 1, 1) - 0.5))
            ax.scatter(x, value, s=18, color=colours[fold], marker=markers[seed], alpha=0.85, linewidths=0)
        ci = intervals[i]
        err = None if ci is None else [[means[i] - ci[0]], [ci[1] - means[i]]]
        ax.errorbar(i + 0.2, means[i], yerr=err, fmt="D", color="black", markersize=5, capsize=4)
        if group in paper:
            ax.hlines(paper[group], i - 0.4, i + 0.4, colors="grey", linestyles="--", linewidth=1.2)
    handles = [Line2D([], [], color=colours[f], marker="o", linestyle="", label=f"fold {f}") for f in folds]
    if len(seeds) > 1:
        handles += [Line2D([], [], color="grey", marker=markers[s], linestyle="", label=f"seed {s}") for s in seeds]
    handles.append(Line2D([], [], color="black", marker="D", label="mean, 95 % CI"))
    if paper:
        handles.append(Line2D([], [], color="grey", linestyle="--", label="seed 002 Table 2 F1"))
    ax.set_xticks(range(len(groups)), groups, fontsize=8, rotation=15 if len(groups) > 4 else 0)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylabel(metric)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=handles, fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class Panel:
    """One figure of :func:`dot_panels_png`: per group its values (a dot each); a reference level
    (grey dashed line, e.g. 0.5 for a chance AUC) and per-group floor values (hollow grey dots, e.g.
    the distance real data alone gives), both optional."""

    title: str
    values: Sequence[Sequence[float]]
    reference: float | None = None
    floor: Sequence[Sequence[float]] | None = None


def dot_panels_png(groups: Sequence[str], panels: Sequence[Panel], path: Path) -> Path:
    """A row of panels sharing the x axis: a column per group, a dot per value (spread sideways so
    they do not overlap), the group's mean as a black dash; non-finite values are left out."""
    fig, axes = plt.subplots(1, len(panels), figsize=(0.8 + (0.9 + 0.5 * len(groups)) * len(panels), 3.4),
                             dpi=120, squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for i, group_values in enumerate(panel.values):
            v = np.asarray([x for x in group_values if np.isfinite(x)], dtype=float)
            offsets = np.linspace(-0.18, 0.18, len(v)) if len(v) > 1 else np.zeros(len(v))
            ax.scatter(i + offsets, v, s=18, color=plt.get_cmap("tab10")(i % 10), alpha=0.85, linewidths=0, zorder=3)
            if len(v):
                ax.hlines(v.mean(), i - 0.28, i + 0.28, colors="black", linewidth=1.4, zorder=4)
            if panel.floor is not None:
                f = np.asarray([x for x in panel.floor[i] if np.isfinite(x)], dtype=float)
                spread = np.linspace(-0.18, 0.18, len(f)) if len(f) > 1 else np.zeros(len(f))
                ax.scatter(i + spread, f, s=18, facecolors="none", edgecolors="grey", zorder=2)
        if panel.reference is not None:
            ax.axhline(panel.reference, color="grey", linestyle="--", linewidth=1.0, zorder=1)
        ax.set_xticks(range(len(groups)), groups, fontsize=7, rotation=30, ha="right")
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_title(panel.title, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class Curve:
    """A line of :func:`curves_png`: ``(x, value, interval or None)`` points; ``flat``: a quantity
    that does not depend on x, drawn as a dotted level across the panel (its first point)."""

    label: str
    points: Sequence[tuple[float, float, tuple[float, float] | None]]
    flat: bool = False


@dataclass(frozen=True)
class CurvePanel:
    """One panel of :func:`curves_png`, with an optional reference level (grey dashed, e.g. chance)."""

    title: str
    curves: Sequence[Curve]
    reference: float | None = None


def curves_png(panels: Sequence[CurvePanel], path: Path, xlabel: str) -> Path:
    """A row of panels sharing a logarithmic x axis (x = inf drawn at the right, ticked "∞"): each
    curve's points joined, with their intervals as error bars; a flat curve as a dotted level."""
    xs = sorted({x for panel in panels for c in panel.curves for x, _, _ in c.points})
    finite = [x for x in xs if np.isfinite(x)]
    at_inf = (max(finite) if finite else 1.0) * 4  # where x = inf sits on the log axis

    def place(x: float) -> float:
        return at_inf if not np.isfinite(x) else x

    fig, axes = plt.subplots(1, len(panels), figsize=(0.6 + 3.6 * len(panels), 3.4), dpi=120, squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for k, curve in enumerate(panel.curves):
            colour = plt.get_cmap("tab10")(k % 10)
            points = sorted(curve.points, key=lambda p: place(p[0]))
            if curve.flat and points:
                ax.axhline(points[0][1], color=colour, linestyle=":", linewidth=1.4, label=curve.label)
                continue
            x = [place(p[0]) for p in points]
            y = [p[1] for p in points]
            err = np.array([[v - ci[0], ci[1] - v] if ci else [0.0, 0.0] for _, v, ci in points]).T
            ax.errorbar(x, y, yerr=err, marker="o", markersize=4, capsize=3, color=colour, label=curve.label)
        if panel.reference is not None:
            ax.axhline(panel.reference, color="grey", linestyle="--", linewidth=1.0)
        ax.set_xscale("log")
        ax.set_xticks([place(x) for x in xs], ["∞" if not np.isfinite(x) else f"{x:g}" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_title(panel.title, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
