"""Classification metrics (thin wrappers on scikit-learn): macro-F1, UA, WA, confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
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


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (how fold results are summarized)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std())
