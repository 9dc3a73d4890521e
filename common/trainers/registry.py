"""SER trainers by name: what ``training.trainer`` selects, in every regime and on every node.

The one place that collects the trainer families. An entry is a real class plus the keyword
arguments that make a variant (a paper's ablations are entries, not subclasses). A family's
``[model.<family>]`` section and its ``tiny`` sizes are declared beside its trainer
(``NetTrainer.family`` / ``NetTrainer.Config``); :data:`FAMILIES` collects them for the study schema
(common/schema.py). Adding a trainer is one file plus one line here; the contract test in
tests/test_trainers.py then covers it with no new test code (docs/trainers.md: "Adding a trainer").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from common.config import Section, StudySections
from common.privacy import DpPlan
from common.trainers.base import LoopResult
from common.trainers.chang import ChangTrainer
from common.trainers.fcn import FcnTrainer
from common.trainers.ser import SerCnnTrainer
from common.trainers.supervised import NetTrainer, Validation
from common.trainers.tripathi import TripathiTrainer
from common.trainers.tu import TuTrainer
from common.views import LabeledSet, Sampler


class SerTrainer(Protocol):
    """What regimes and ClientApps need of an SER model."""

    name: str

    @property
    def selection(self) -> str:
        """The evaluate() key model selection maximizes (read-only: a class constant of NetTrainer)."""

    def sampler(self, data: LabeledSet, seed: int = 0) -> Sampler:
        """Training batches from real data, cut as the trainer's paper cuts them."""

    def private_sampler(self, data: LabeledSet, seed: int = 0) -> Sampler:
        """DP-SGD's Poisson batches of real data (``training.dp``); refused by families that cannot."""

    def fit(self, sample: Sampler, validation: Validation = None, iterations: int | None = None,
            progress: bool = False, *, start_step: int = 0, proximal_mu: float = 0.0,
            private: DpPlan | None = None) -> LoopResult:
        """Train on batches from ``sample``; select on ``validation`` (a set or a scoring function);
        ``private``: DP-SGD on :meth:`private_sampler`'s batches."""

    def predict_proba(self, feats: Sequence[np.ndarray]) -> np.ndarray:
        """Per-file class probabilities (N, N_out)."""

    def evaluate(self, data: LabeledSet) -> dict[str, Any]:
        """File-level scalars (at least ``f1_macro``, ``ua``, ``wa``) and ``confusion``."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights (what FedAvg averages and what travels)."""

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the weights."""


@dataclass(frozen=True)
class Entry:
    """A registered trainer: its class and the keyword arguments of the variant."""

    cls: type[NetTrainer]
    options: Mapping[str, Any] = field(default_factory=dict)

    def build(self, name: str, cfg: StudySections, device: torch.device | str = "cpu") -> SerTrainer:
        """A fresh, seeded instance."""
        return self.cls(cfg, device, name=name, **self.options)


def entry(cls: type[NetTrainer], **options: Any) -> Entry:
    """``Entry(cls, options)`` written as a call."""
    return Entry(cls, options)


TRAINERS: dict[str, Entry] = {
    # Seed 002 §4.3: the discriminator architecture with an N_c head.
    "ser-cnn": entry(SerCnnTrainer),
    # Seed 000 (Chang & Scherer 2017): valence (+ activation) from four stride-2 convolutions, with
    # the convolutions shared with a DCGAN discriminator in the DCGAN variants.
    "chang-cnn": entry(ChangTrainer),
    "chang-multitask-cnn": entry(ChangTrainer, multitask=True),
    "chang-dcgan": entry(ChangTrainer, adversarial=True),
    "chang-multitask-dcgan": entry(ChangTrainer, multitask=True, adversarial=True),
    # Seed 001 (Tu et al. 2019) Table 2: TDNN + Bi-LSTM + statistics pooling; speaker invariance.
    "tu-ser": entry(TuTrainer, objective="ser"),
    "tu-mtl": entry(TuTrainer, objective="mtl"),
    "tu-dat": entry(TuTrainer, objective="dat"),
    "tu-cgt": entry(TuTrainer, objective="cgt"),
    # Seed 003 (Tripathi et al. 2019) Table 1: softmax (S), + reconstruction (A), + center loss (C).
    "tripathi-s": entry(TripathiTrainer),
    "tripathi-sa": entry(TripathiTrainer, reconstruct=True),
    "tripathi-sc": entry(TripathiTrainer, center=True),
    "tripathi-sac": entry(TripathiTrainer, reconstruct=True, center=True),
    # Seed 004 (Gans et al.): 1-D FCN + attention; Zhang et al. 2019's 2-D attention FCN.
    "fcn1d-attention": entry(FcnTrainer, dims=1),
    "fcn2d-attention": entry(FcnTrainer, dims=2),
}


def _families() -> dict[str, type[Section]]:
    families: dict[str, type[Section]] = {}
    for name, e in TRAINERS.items():
        family, section = e.cls.family, e.cls.Config
        if family is None or section is None:
            continue
        if families.setdefault(family, section) is not section:
            raise TypeError(f"trainer {name!r}: family {family!r} is already declared with another section")
    return families


# [model.<family>] -> its section class (sizes from ``Config.tiny`` under the tiny preset).
FAMILIES: dict[str, type[Section]] = _families()


def registered(name: str) -> Entry:
    """The entry registered as ``name``; the error lists the valid names."""
    try:
        return TRAINERS[name]
    except KeyError:
        raise ValueError(f"training.trainer: unknown {name!r}; registered: {', '.join(sorted(TRAINERS))}") from None


def build_trainer(cfg: StudySections, device: torch.device | str = "cpu") -> SerTrainer:
    """A fresh, seeded instance of ``cfg.training.trainer``."""
    return registered(cfg.training.trainer).build(cfg.training.trainer, cfg, device)
