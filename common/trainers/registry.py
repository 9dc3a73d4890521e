"""SER trainers by name: what ``training.trainer`` selects, in every regime and on every node.

A new SER model is one file in ``common/models/``, one trainer in ``common/trainers/`` and one line
here; the contract test in tests/test_trainers.py then covers it with no new test code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

if TYPE_CHECKING:  # type names only: common.config validates trainer names against this module
    from common.config import StudyConfig
    from common.trainers.base import LoopResult
    from common.trainers.gan import Sampler
    from common.views import LabeledSet


class SerTrainer(Protocol):
    """What regimes and ClientApps need of an SER model."""

    name: str

    def fit(self, sample: Sampler, validation: Any = None, iterations: int | None = None,
            progress: bool = False, *, lr: float | None = None, proximal_mu: float = 0.0) -> LoopResult:
        """Train on batches from ``sample``; select on ``validation`` (a set or a scoring function)."""

    def predict_proba(self, feats: Sequence[np.ndarray]) -> np.ndarray:
        """Per-file class probabilities (N, N_c)."""

    def evaluate(self, data: LabeledSet) -> dict[str, Any]:
        """File-level ``f1_macro``, ``ua``, ``wa`` and ``confusion``."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights (what FedAvg averages and what travels)."""

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the weights."""


def _ser_cnn(cfg: StudyConfig, device: torch.device | str) -> SerTrainer:
    from common.pipeline import gan_spec
    from common.trainers.ser import SerCnnTrainer

    return SerCnnTrainer(gan_spec(cfg), cfg.training, device, window_hop=cfg.features.window_hop)


TRAINERS: dict[str, Callable[[StudyConfig, torch.device | str], SerTrainer]] = {
    # Seed 002 §4.3: the discriminator architecture with an N_c head.
    "ser-cnn": _ser_cnn,
}


def build_trainer(cfg: StudyConfig, device: torch.device | str = "cpu") -> SerTrainer:
    """A fresh, seeded instance of ``cfg.training.trainer``."""
    try:
        factory = TRAINERS[cfg.training.trainer]
    except KeyError:
        raise ValueError(f"training.trainer: unknown {cfg.training.trainer!r}; registered: "
                         f"{', '.join(sorted(TRAINERS))}") from None
    return factory(cfg, device)
