"""Streamed synthetic pools: a dataset over generators x classes x samples, generated on demand.

Sample ``i`` always maps to the same (generator, class, noise seed), so a pool of 160K samples has
a fixed identity while costing one batch of memory: nothing is ever materialized (seed 002 §4.5
pools 10K samples per emotion per client generator, or 40K per emotion from one generator).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from common.config import StudySections
from common.features import resolve_device
from common.views import Batch, Sampler


class ClassConditionalGenerator(Protocol):
    """What a pool needs of a generator: its noise size and class-conditional sampling."""

    n_z: int

    def generate(self, noise: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(B, n_z) noise and (B,) class indices -> (B, 1, F, P) samples in [-1, 1]."""
        ...

    def eval(self) -> object:
        """Inference mode (spectral-norm power iterations frozen)."""
        ...


class SyntheticPool:
    """``len(generators) * n_classes * per_class`` samples, index-addressed, generated per batch.

    Index layout: ``i = (g * n_classes + c) * per_class + k``.
    """

    def __init__(
        self, generators: Sequence[ClassConditionalGenerator], per_class: int, n_classes: int,
        seed: int = 0, device: str | torch.device = "cpu",
    ) -> None:
        if not generators:
            raise ValueError("a synthetic pool needs at least one generator")
        if per_class < 1 or n_classes < 1:
            raise ValueError(f"per_class and n_classes must be >= 1, got {per_class}, {n_classes}")
        self.generators = list(generators)
        self.per_class, self.n_classes, self.seed = per_class, n_classes, seed
        self.device = torch.device(device)
        for g in self.generators:
            g.eval()  # frozen spectral-norm estimates: the same index gives the same sample

    def __len__(self) -> int:
        return len(self.generators) * self.n_classes * self.per_class

    def key(self, index: int) -> tuple[int, int, int]:
        """(generator, class, noise seed) of sample ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} outside a pool of {len(self)}")
        g, rest = divmod(index, self.n_classes * self.per_class)
        return g, rest // self.per_class, _noise_seed(self.seed, index)

    @torch.no_grad()
    def generate(self, indices: Sequence[int]) -> Batch:
        """The samples at ``indices``: x (B, 1, F, P), y (B,), in the order given."""
        if not len(indices):
            raise ValueError("no sample indices given")
        keys = [self.key(int(i)) for i in indices]
        out: dict[int, torch.Tensor] = {}  # row -> sample
        for g in sorted({k[0] for k in keys}):  # one forward pass per generator in the batch
            rows = [r for r, k in enumerate(keys) if k[0] == g]
            gen = self.generators[g]
            noise = torch.stack([
                torch.randn(gen.n_z, generator=torch.Generator().manual_seed(keys[r][2])) for r in rows
            ]).to(self.device)
            classes = torch.tensor([keys[r][1] for r in rows], device=self.device)
            for r, x in zip(rows, gen.generate(noise, classes).cpu(), strict=True):
                out[r] = x
        return torch.stack([out[r] for r in range(len(keys))]), torch.tensor([k[1] for k in keys])

    def sampler(self, seed: int = 0) -> Sampler:
        """A training batch source: uniformly random indices (with replacement), generated on demand."""
        rng = np.random.default_rng(seed)

        def sample(batch_size: int) -> Batch:
            return self.generate(rng.integers(0, len(self), size=batch_size).tolist())

        return sample


def _noise_seed(seed: int, index: int) -> int:
    # SeedSequence mixes (seed, index) well, so neighbouring indices get unrelated noise.
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> 1)

def synthetic_sampler(cfg: StudySections, generators: list[ClassConditionalGenerator], per_class: int,
                      fold: int) -> Sampler:
    """Batches from the streamed pool of ``generators`` (``per_class`` samples per emotion each)."""
    pool = SyntheticPool(generators, per_class, len(cfg.data.classes), seed=cfg.training.seed + fold,
                         device=resolve_device(cfg.training.device))
    return pool.sampler(seed=cfg.training.seed)
