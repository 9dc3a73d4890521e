"""Fixed-size windows over (F, T) features: patches and random training crops (seed 002 §4.2-4.3)."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def patches(feat: np.ndarray, size: int = 128, hop: int = 32, pad_value: float | None = None) -> np.ndarray:
    """Sliding windows (N, F, size) over (F, T), seed 002 §4.3: hop 32 frames, last one end-aligned.

    A clip shorter than ``size`` is right-padded with ``pad_value`` (default: its minimum, i.e.
    silence in a log spectrogram) to exactly one window.
    """
    feat = _pad_to(feat, size, pad_value)
    n_frames = feat.shape[1]
    starts = list(range(0, n_frames - size + 1, hop))
    if starts[-1] != n_frames - size:
        starts.append(n_frames - size)
    windows = sliding_window_view(feat, size, axis=1)  # (F, T - size + 1, size)
    return np.ascontiguousarray(windows[:, starts].transpose(1, 0, 2))


def random_patch(
    feat: np.ndarray, size: int, rng: np.random.Generator, pad_value: float | None = None
) -> np.ndarray:
    """One (F, size) window at a uniformly random start (training crops), padded like :func:`patches`."""
    feat = _pad_to(feat, size, pad_value)
    start = int(rng.integers(0, feat.shape[1] - size + 1))
    return feat[:, start : start + size]


def _pad_to(feat: np.ndarray, size: int, pad_value: float | None) -> np.ndarray:
    if feat.ndim != 2 or feat.shape[1] == 0:
        raise ValueError(f"expected features (F, T) with T > 0, got shape {feat.shape}")
    missing = size - feat.shape[1]
    if missing <= 0:
        return feat
    value = feat.min() if pad_value is None else pad_value
    return np.pad(feat, ((0, 0), (0, missing)), constant_values=value)
