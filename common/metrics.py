"""Classification metrics (thin wrappers on scikit-learn): macro-F1, UA, WA, confusion matrix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> dict[str, Any]:
    """``f1_macro`` (seed 002's measure) over the classes that occur in truth or prediction (a class
    absent from both is not scored as 0), ``ua`` (mean recall over the classes present in the truth),
    ``wa`` (accuracy) and ``confusion`` (n_classes x n_classes list, rows = truth)."""
    if len(y_true) == 0:
        raise ValueError("no samples to score")
    present = sorted({int(y) for y in y_true})
    return {
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "ua": float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "wa": float(accuracy_score(y_true, y_pred)),
        "confusion": confusion_matrix(y_true, y_pred, labels=list(range(n_classes))).tolist(),
    }


def confusion_cells(confusion: Sequence[Sequence[int]]) -> dict[str, int]:
    """A confusion matrix (true x predicted) as scalars ``cm_<true>_<pred>``: how it travels in a
    node's MetricRecord (scalars only: the wire audit refuses lists) and how MLflow logs it."""
    return {f"cm_{i}_{j}": int(n) for i, row in enumerate(confusion) for j, n in enumerate(row)}


def confusion_from_cells(cells: Mapping[str, float]) -> list[list[int]]:
    """Inverse of :func:`confusion_cells` (the size from the keys; other keys are ignored)."""
    n = sum(1 for k in cells if k.startswith("cm_0_"))
    return [[int(cells[f"cm_{i}_{j}"]) for j in range(n)] for i in range(n)]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (how fold results are summarized)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std())


# --- Seed 000 (Chang & Scherer 2017): 5-point valence/activation as fuzzy labels ---------------

LIKERT = 5  # IEMOCAP's valence and activation scale, 1..5
POOLED_3 = (0, 0, 1, 2, 2)  # §5: levels 1-2 negative, 3 neutral, 4-5 positive


def fuzzy_label(mean: float, points: int = LIKERT) -> np.ndarray:
    """The annotators' mean on the 1..``points`` scale as a probability vector over the levels (§4):
    3 -> one-hot on 3; 4.5 -> half on 4 and half on 5; 3.67 -> 1/3 on 3 and 2/3 on 4."""
    if not 1 <= mean <= points:
        raise ValueError(f"label {mean} outside the 1..{points} scale")
    out = np.zeros(points, dtype=np.float32)
    low = min(int(np.floor(mean)), points - 1)  # 5.0 -> levels 4/5 with weight 0/1
    frac = mean - low
    out[low - 1], out[low] = 1 - frac, frac
    return out


def resolve(fuzzy: np.ndarray, pred: int) -> int:
    """The true level a prediction is scored against: a level tied for the most annotator mass
    (a perfectly split label accepts either level, §5) if the prediction is one, else the first."""
    best = fuzzy.max()
    return pred if np.isclose(fuzzy[pred], best) else int(np.argmax(fuzzy))


def fuzzy_metrics(fuzzy: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Seed 000 §5 on fuzzy labels (N, 5) and predicted distributions (N, 5):

    ``ua`` unweighted 5-class accuracy where a split label accepts both levels (with ``f1_macro``,
    ``wa`` and ``confusion`` on the same resolved labels), ``ua3`` the same after pooling levels
    1-2 / 3 / 4-5, and ``pearson_r`` between the expected value sum_k k p_k and the mean label.
    """
    pred = probs.argmax(axis=1)
    metrics = classification_metrics([resolve(f, p) for f, p in zip(fuzzy, pred, strict=True)], pred.tolist(), LIKERT)
    pool = np.eye(3, dtype=np.float32)[list(POOLED_3)]  # (5, 3)
    fuzzy3, pred3 = fuzzy @ pool, (probs @ pool).argmax(axis=1)
    metrics3 = classification_metrics([resolve(f, p) for f, p in zip(fuzzy3, pred3, strict=True)], pred3.tolist(), 3)
    levels = np.arange(1, LIKERT + 1)
    expected, truth = probs @ levels, fuzzy @ levels
    r = float(np.corrcoef(expected, truth)[0, 1]) if expected.std() > 0 and truth.std() > 0 else 0.0
    return {**metrics, "ua3": metrics3["ua"], "wa3": metrics3["wa"], "pearson_r": r}
