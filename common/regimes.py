"""The centralized regimes of a study, one fold at a time (names as in DESIGN.md).

- ``real-central``: the SER network trains on real patches of the four training sessions
  (seed 002 Table 2, "IEMOCAP" row);
- ``gan-central``: one pre-trained GAN fine-tuned on the pooled training sessions generates
  ``per_class_central`` samples per emotion (40K in §4.5), the SER network trains on those alone;
- ``baseline-gan``: the same with the BAGAN-style baseline of Chatziagapi et al. (Table 2, "Baseline").

Every regime selects its model on the held-out session's validation speaker (when the fold has one)
and reports file-level metrics on the test speaker(s).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from common.config import StudyConfig
from common.features import MinMax, resolve_device
from common.pipeline import Corpus, finetune, gan_spec, load_pretrained, training_speakers
from common.splits import Fold
from common.synthesis import ClassConditionalGenerator, SyntheticPool
from common.trainers.bagan import train_bagan
from common.trainers.gan import Sampler
from common.trainers.registry import SerTrainer, build_trainer
from common.views import LabeledSet


@dataclass
class FoldOutcome:
    """What one regime produced on one fold."""

    regime: str
    fold: int
    test_session: int
    metrics: dict[str, Any]
    validation_score: float | None
    seconds: float
    # The generator(s) the SER network was trained from (empty for real-central).
    generators: list[torch.nn.Module] = field(default_factory=list)
    train: LabeledSet | None = None
    # What ``validation_score`` measures: the trainer's selection key (macro-F1; seed 000: UA).
    selection: str = "f1_macro"

    # Outcomes cross process boundaries (parallel folds); spectral-norm parametrized modules do not
    # pickle, so generators travel as (class, spec, weights) and are rebuilt on arrival.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["generators"] = [(type(g), g.spec, g.state_dict()) for g in self.generators]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        rebuilt = []
        for cls, spec, weights in state["generators"]:
            gen = cls(spec)
            gen.load_state_dict(weights)
            rebuilt.append(gen.eval())
        self.__dict__.update(state, generators=rebuilt)


def synthetic_sampler(cfg: StudyConfig, generators: list[ClassConditionalGenerator], per_class: int,
                      fold: int) -> Sampler:
    """Batches from the streamed pool of ``generators`` (``per_class`` samples per emotion each)."""
    pool = SyntheticPool(generators, per_class, len(cfg.data.classes), seed=cfg.training.seed + fold,
                         device=resolve_device(cfg.training.device))
    return pool.sampler(seed=cfg.training.seed)


def _real(cfg: StudyConfig, trainer: SerTrainer, train: LabeledSet, fold: Fold,
          progress: bool) -> tuple[Sampler, list]:
    return trainer.sampler(train, seed=cfg.training.seed), []


def _gan_central(cfg: StudyConfig, trainer: SerTrainer, train: LabeledSet, fold: Fold,
                 progress: bool) -> tuple[Sampler, list]:
    gen, disc, _ = load_pretrained(cfg)
    gen = finetune(cfg, gen, disc, train, progress)
    gen.to(resolve_device(cfg.training.device))
    return synthetic_sampler(cfg, [gen], cfg.synthesis.per_class_central, fold.index), [gen]


def _baseline(cfg: StudyConfig, trainer: SerTrainer, train: LabeledSet, fold: Fold,
              progress: bool) -> tuple[Sampler, list]:
    device = resolve_device(cfg.training.device)
    gen = train_bagan(gan_spec(cfg), cfg.training, train, device, progress=progress)
    return synthetic_sampler(cfg, [gen], cfg.synthesis.per_class_central, fold.index), [gen]


# Each regime makes the batches the SER trainer fits on: real windows cut as the trainer's paper
# cuts them, or samples of generators (which every trainer takes: (B, 1, P, P) log-mel).
CENTRAL: dict[str, Callable[[StudyConfig, SerTrainer, LabeledSet, Fold, bool], tuple[Sampler, list]]] = {
    "real-central": _real,
    "gan-central": _gan_central,
    "baseline-gan": _baseline,
}


def run_central_fold(
    regime: str, cfg: StudyConfig, corpus: Corpus, stats: MinMax, fold: Fold, progress: bool = False
) -> FoldOutcome:
    """Train ``regime``'s SER model for ``fold`` and score it on the fold's test speaker(s)."""
    if regime not in CENTRAL:
        raise ValueError(f"unknown centralized regime {regime!r}; choose from {sorted(CENTRAL)}")
    start = time.perf_counter()
    torch.manual_seed(cfg.training.seed)
    speakers = training_speakers(fold.train)
    train = corpus.labeled_set(fold.train, stats, speakers)
    validation = corpus.labeled_set(fold.validation, stats)
    trainer = build_trainer(cfg, resolve_device(cfg.training.device))
    sample, generators = CENTRAL[regime](cfg, trainer, train, fold, progress)
    trainer.fit(sample, validation, progress=progress)
    metrics = trainer.evaluate(corpus.labeled_set(fold.test, stats))
    val = trainer.evaluate(validation)[trainer.selection] if len(validation) else None
    return FoldOutcome(regime, fold.index, fold.test_session, metrics, val, time.perf_counter() - start,
                       generators, train, trainer.selection)
