"""SER trainers by name: what ``training.trainer`` selects, in every regime and on every node.

A new SER model is one file in ``common/models/``, one trainer in ``common/trainers/`` (a
:class:`common.trainers.supervised.NetTrainer`) and one line here; the contract test in
tests/test_trainers.py then covers it with no new test code. Entries are import paths so that
``common.config`` can validate names without importing torch models.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
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
    selection: str  # the evaluate() key model selection maximizes

    def sampler(self, data: LabeledSet, seed: int = 0) -> Sampler:
        """Training batches from real data, cut as the trainer's paper cuts them."""

    def fit(self, sample: Sampler, validation: Any = None, iterations: int | None = None,
            progress: bool = False, *, start_step: int = 0, proximal_mu: float = 0.0) -> LoopResult:
        """Train on batches from ``sample``; select on ``validation`` (a set or a scoring function)."""

    def predict_proba(self, feats: Sequence[np.ndarray]) -> np.ndarray:
        """Per-file class probabilities (N, N_out)."""

    def evaluate(self, data: LabeledSet) -> dict[str, Any]:
        """File-level scalars (at least ``f1_macro``, ``ua``, ``wa``) and ``confusion``."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights (what FedAvg averages and what travels)."""

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the weights."""


TRAINERS: dict[str, str] = {
    # Seed 002 §4.3: the discriminator architecture with an N_c head.
    "ser-cnn": "common.trainers.ser:SerCnnTrainer",
    # Seed 000 (Chang & Scherer 2017): valence (+ activation) from four stride-2 convolutions.
    "chang-cnn": "common.trainers.chang:BasicCnn",
    "chang-multitask-cnn": "common.trainers.chang:MultitaskCnn",
    "chang-dcgan": "common.trainers.chang:BasicDcgan",
    "chang-multitask-dcgan": "common.trainers.chang:MultitaskDcgan",
    # Seed 001 (Tu et al. 2019): TDNN + Bi-LSTM + statistics pooling; speaker-invariance variants.
    "tu-ser": "common.trainers.tu:SerOnly",
    "tu-mtl": "common.trainers.tu:MultiTask",
    "tu-dat": "common.trainers.tu:Adversarial",
    "tu-cgt": "common.trainers.tu:CrossGradient",
    # Seed 003 (Tripathi et al. 2019): parallel CNN paths; softmax (S), reconstruction (A), center (C).
    "tripathi-s": "common.trainers.tripathi:SoftmaxOnly",
    "tripathi-sa": "common.trainers.tripathi:WithReconstruction",
    "tripathi-sc": "common.trainers.tripathi:WithCenterLoss",
    "tripathi-sac": "common.trainers.tripathi:WithBoth",
    # Seed 004 (Gans et al.): 1-D FCN + attention; Zhang et al. 2019's 2-D attention FCN.
    "fcn1d-attention": "common.trainers.fcn:Fcn1dAttention",
    "fcn2d-attention": "common.trainers.fcn:Fcn2dAttention",
}


def trainer_class(name: str) -> type:
    """The trainer class registered as ``name``."""
    try:
        module, cls = TRAINERS[name].split(":")
    except KeyError:
        raise ValueError(f"training.trainer: unknown {name!r}; registered: {', '.join(sorted(TRAINERS))}") from None
    return getattr(importlib.import_module(module), cls)


def build_trainer(cfg: StudyConfig, device: torch.device | str = "cpu") -> SerTrainer:
    """A fresh, seeded instance of ``cfg.training.trainer``."""
    return trainer_class(cfg.training.trainer)(cfg, device)
