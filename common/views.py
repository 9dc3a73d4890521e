"""Network inputs cut from scaled feature matrices: random training patches and evaluation sets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from common.features import random_patch

Batch = tuple[torch.Tensor, torch.Tensor]  # x (B, 1, F, P) in [-1, 1], y (B,) class indices


@dataclass(frozen=True)
class LabeledSet:
    """Scaled feature matrices (F, T) with class indices; what trainers fit and evaluate on."""

    feats: tuple[np.ndarray, ...]
    labels: tuple[int, ...]
    ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.feats) != len(self.labels):
            raise ValueError(f"{len(self.feats)} feature matrices but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.feats)


class PatchSampler:
    """Random ``size``-frame patches of random utterances: one call = one batch (seed 002 §4.2).

    Sampling is with replacement, so an iteration count (not epochs) sets the schedule as in the
    paper. Padding of utterances shorter than a patch uses -1, the scaled minimum.
    """

    def __init__(self, data: LabeledSet, size: int, seed: int = 0) -> None:
        if not len(data):
            raise ValueError("no training utterances to sample patches from")
        self.data, self.size = data, size
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch_size: int) -> Batch:
        """(B, 1, F, size) patches and their labels."""
        rows = self.rng.integers(0, len(self.data), size=batch_size)
        x = np.stack([random_patch(self.data.feats[r], self.size, self.rng, pad_value=-1.0) for r in rows])
        y = np.asarray([self.data.labels[r] for r in rows], dtype=np.int64)
        return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)


def subset(data: LabeledSet, keep: Sequence[int]) -> LabeledSet:
    """The rows ``keep`` of ``data``."""
    return LabeledSet(tuple(data.feats[i] for i in keep), tuple(data.labels[i] for i in keep),
                      tuple(data.ids[i] for i in keep) if data.ids else ())
