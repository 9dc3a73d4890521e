"""Scaling of features to [-1, 1] with a global min/max (seed 002 §4.2)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MinMax:
    """Global scalar min/max of features; ``MinMax()`` is the empty statistic (identity of combine).

    Seed 002 §4.2 scales spectrograms to [-1, 1] with the min and max of the combined corpora.
    In eyes-off runs every node reports its own ``MinMax`` and the server combines them.
    """

    lo: float = float("inf")
    hi: float = float("-inf")

    @classmethod
    def empty(cls) -> MinMax:
        """The statistic of no values (same as ``MinMax()``)."""
        return cls()

    def update(self, array: np.ndarray) -> MinMax:
        """This statistic extended by the values of ``array``."""
        array = np.asarray(array)
        if array.size == 0:
            return self
        if not np.isfinite(array).all():
            raise ValueError("cannot take min/max of features containing NaN or Inf")
        return MinMax(min(self.lo, float(array.min())), max(self.hi, float(array.max())))

    @classmethod
    def combine(cls, *stats: MinMax) -> MinMax:
        """Min of the mins and max of the maxes (the server's merge of per-node statistics)."""
        lo = min((s.lo for s in stats), default=float("inf"))
        return cls(lo, max((s.hi for s in stats), default=float("-inf")))

    def scale(self, x: np.ndarray) -> np.ndarray:
        """Map [lo, hi] linearly to [-1, 1], clipping values outside."""
        span = self._span()
        return np.clip(2.0 * (np.asarray(x) - self.lo) / span - 1.0, -1.0, 1.0).astype(np.float32)

    def unscale(self, y: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`scale` (for values inside [-1, 1])."""
        return ((np.asarray(y) + 1.0) * 0.5 * self._span() + self.lo).astype(np.float32)

    def to_dict(self) -> dict[str, float]:
        """``{"lo": ..., "hi": ...}``; travels with checkpoints and in node replies."""
        return {"lo": self.lo, "hi": self.hi}

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> MinMax:
        """Inverse of :meth:`to_dict`."""
        return cls(float(data["lo"]), float(data["hi"]))

    def _span(self) -> float:
        if not self.hi > self.lo:
            raise ValueError(f"cannot scale with an empty or constant range [{self.lo}, {self.hi}]")
        return self.hi - self.lo
