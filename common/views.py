"""Network inputs cut from scaled feature matrices: random training patches and evaluation sets."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from common.features import random_patch

Batch = tuple[torch.Tensor, torch.Tensor]  # x (B, 1, F, P) in [-1, 1], y (B,) class indices
# What SER trainers receive: a Batch, or a Batch plus per-sample auxiliary targets
# (speaker index (B,), fuzzy valence (B, 5), ...) when the sampler was asked for them.
SerBatch = Batch | tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]
# Where training batches come from (real patches, a synthetic pool): batch size -> batch.
Sampler = Callable[[int], SerBatch]


@dataclass(frozen=True)
class LabeledSet:
    """Scaled feature matrices (F, T) with class indices; what trainers fit and evaluate on.

    ``aux`` holds further per-utterance values by name, one per utterance (speaker index,
    annotators' mean valence/activation, word centres in frames), for trainers that use them.
    """

    feats: tuple[np.ndarray, ...]
    labels: tuple[int, ...]
    ids: tuple[str, ...] = ()
    aux: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.feats) != len(self.labels):
            raise ValueError(f"{len(self.feats)} feature matrices but {len(self.labels)} labels")
        bad = [k for k, v in self.aux.items() if len(v) != len(self.feats)]
        if bad:
            raise ValueError(f"aux {bad}: one value per utterance expected ({len(self.feats)})")

    def __len__(self) -> int:
        return len(self.feats)


def _check(data: LabeledSet, aux: Sequence[str]) -> None:
    """A sampler needs utterances, and the per-utterance ``aux`` entries it is asked to return."""
    if not len(data):
        raise ValueError("no training utterances to sample from")
    missing = [k for k in aux if k not in data.aux]
    if missing:
        raise ValueError(f"the training set has no {missing} per utterance (available: {sorted(data.aux)})")


class PatchSampler:
    """Random ``size``-frame patches of random utterances: one call = one batch (seed 002 §4.2).

    Sampling is with replacement, so an iteration count (not epochs) sets the schedule as in the
    paper. Padding of utterances shorter than a patch uses -1, the scaled minimum.

    Options for the other papers' trainers: ``aux`` names ``data.aux`` entries returned as a third
    element (stacked tensors); ``weights`` are per-utterance sampling weights (oversampling,
    seed 000 §4); ``spans`` gives per utterance the (first, last) frame ranges a crop may be
    centred in: a random span, then a random frame in it (seed 000 §4: a random point within a
    random word).
    """

    def __init__(self, data: LabeledSet, size: int, seed: int = 0, *, aux: Sequence[str] = (),
                 weights: Sequence[float] | None = None,
                 spans: Sequence[Sequence[tuple[int, int]]] | None = None) -> None:
        _check(data, aux)
        self.data, self.size, self.aux, self.spans = data, size, tuple(aux), spans
        self.p = None if weights is None else np.asarray(weights, dtype=float) / np.sum(weights)
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch_size: int) -> SerBatch:
        """(B, 1, F, size) patches and their labels (and the requested ``aux`` values)."""
        rows = (self.rng.integers(0, len(self.data), size=batch_size) if self.p is None
                else self.rng.choice(len(self.data), size=batch_size, p=self.p))
        return self._batch(rows)

    def _batch(self, rows: np.ndarray) -> SerBatch:
        x = (np.stack([self._crop(r) for r in rows]) if len(rows)
             else np.zeros((0, self.data.feats[0].shape[0], self.size), dtype=self.data.feats[0].dtype))
        y = np.asarray([self.data.labels[r] for r in rows], dtype=np.int64)
        batch = torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)
        if not self.aux:
            return batch
        extra = {k: torch.as_tensor(np.stack([np.asarray(self.data.aux[k][r]) for r in rows])) for k in self.aux}
        return (*batch, extra)

    def _crop(self, row: int) -> np.ndarray:
        feat = self.data.feats[row]
        if self.spans is None or not len(self.spans[row]) or feat.shape[1] <= self.size:
            return random_patch(feat, self.size, self.rng, pad_value=-1.0)
        first, last = self.spans[row][int(self.rng.integers(len(self.spans[row])))]
        centre = int(self.rng.integers(first, last + 1))
        start = min(max(centre - self.size // 2, 0), feat.shape[1] - self.size)
        return feat[:, start : start + self.size]


class PoissonPatchSampler(PatchSampler):
    """DP-SGD's sampling (common/privacy.py): each call draws every utterance independently with
    probability q = min(1, ``batch_size`` / N) and one random patch of each drawn one, so a batch
    holds at most one patch per utterance and its size varies around q N (what the privacy
    accountants analyse). Per-utterance weights do not apply."""

    def __call__(self, batch_size: int) -> SerBatch:
        """(B, 1, F, size) patches and labels, B ~ Binomial(N, q) (possibly 0)."""
        rate = min(1.0, batch_size / len(self.data))
        return self._batch(np.flatnonzero(self.rng.random(len(self.data)) < rate))


class UtteranceSampler:
    """Whole utterances, padded with -1 to the batch's longest (and at least ``min_frames``): one
    call = one batch, drawn without replacement from a reshuffled order, so that
    :func:`common.trainers.supervised.epochs_to_steps` steps are that many passes (seed 001 §3.2).

    Returns ``(x (B, 1, F, T_max), y (B,), aux)`` with ``aux["frames"]`` (B,) each utterance's true
    frame count (at least ``min_frames``: a shorter one counts its padding as frames, as scoring
    does) and the requested ``aux`` entries of ``data``.
    """

    def __init__(self, data: LabeledSet, min_frames: int, seed: int = 0, *, aux: Sequence[str] = ()) -> None:
        _check(data, aux)
        self.data, self.min_frames, self.aux = data, min_frames, tuple(aux)
        self.rng = np.random.default_rng(seed)
        self.order: list[int] = []

    def _rows(self, batch_size: int) -> list[int]:
        rows: list[int] = []
        while len(rows) < batch_size:
            if not self.order:
                self.order = self.rng.permutation(len(self.data)).tolist()
            rows.append(self.order.pop())
        return rows

    def __call__(self, batch_size: int) -> SerBatch:
        rows = self._rows(batch_size)
        frames = [max(self.data.feats[r].shape[1], self.min_frames) for r in rows]
        longest = max(frames)
        x = np.full((len(rows), *self.data.feats[rows[0]].shape[:1], longest), -1.0, dtype=np.float32)
        for i, r in enumerate(rows):
            feat = self.data.feats[r]
            x[i, :, : feat.shape[1]] = feat
        y = np.asarray([self.data.labels[r] for r in rows], dtype=np.int64)
        extra = {"frames": torch.as_tensor(frames, dtype=torch.long),
                 **{k: torch.as_tensor(np.stack([np.asarray(self.data.aux[k][r]) for r in rows])) for k in self.aux}}
        return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y), extra


def subset(data: LabeledSet, keep: Sequence[int]) -> LabeledSet:
    """The rows ``keep`` of ``data``."""
    return LabeledSet(tuple(data.feats[i] for i in keep), tuple(data.labels[i] for i in keep),
                      tuple(data.ids[i] for i in keep) if data.ids else (),
                      {k: tuple(v[i] for i in keep) for k, v in data.aux.items()})
