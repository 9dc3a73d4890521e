"""The centralized regimes (names as in DESIGN.md), one fold at a time, folds in parallel processes.

- ``real-central``: the SER network trains on real patches of the four training sessions
  (seed 002 Table 2, "IEMOCAP" row);
- ``gan-central``: one pre-trained GAN fine-tuned on the pooled training sessions generates
  ``per_class_central`` samples per emotion (40K in §4.5), the SER network trains on those alone;
- ``baseline-gan``: the same with the BAGAN-style baseline of Chatziagapi et al. (Table 2, "Baseline").

Every regime selects its model on the held-out session's validation speaker (when the fold has one)
and reports file-level metrics on the test speaker(s).
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from common import threads
from common.audit import GeneratorSplit, audit_generator, generator_split, selector
from common.config import GAN_REGIMES
from common.data import Corpus
from common.features import MinMax, resolve_device
from common.models.sngan import GanSpec, Generator
from common.pipeline import PretrainedGan, finetune, state_digest, training_speakers
from common.privacy import private_plan
from common.regimes import FoldOutcome, GeneratorStore, RegimeLog, fold_generator, stored_generator
from common.schema import StudyConfig
from common.splits import Fold
from common.synthesis import synthetic_sampler
from common.trainers.bagan import train_bagan
from common.trainers.registry import SerTrainer, build_trainer
from common.views import Sampler
from server.processes import die_with_parent


@dataclass(frozen=True)
class FoldData:
    """What every fold of a centralized regime reads: the config, the labeled corpus, the scaling
    statistics and the pre-trained GAN (None when no regime needs it). Read once by the study and
    handed to the worker processes, which never read a checkpoint or scan a corpus themselves."""

    cfg: StudyConfig
    corpus: Corpus
    stats: MinMax
    gan: PretrainedGan | None
    # synthesis.from_run: the earlier run's generators by name (``fold<N>``), trained on instead of new ones.
    stored: Mapping[str, Any] = field(default_factory=dict)

    def generator(self, regime: str, fold: Fold) -> Any:
        """The stored generator of ``fold``."""
        return stored_generator(self.stored, fold_generator(fold.index), self.cfg, regime)


def _real(data: FoldData, trainer: SerTrainer, split: GeneratorSplit, fold: Fold,
          progress: bool) -> tuple[Sampler, list[Generator]]:
    return trainer.sampler(split.members, seed=data.cfg.training.seed), []  # all of train: nothing held back


def _gan_central(data: FoldData, trainer: SerTrainer, split: GeneratorSplit, fold: Fold,
                 progress: bool) -> tuple[Sampler, list[Generator]]:
    if data.gan is None:
        raise ValueError("gan-central needs the pre-trained GAN; run `fedser pretrain` first")
    cfg = data.cfg
    gen = (data.generator("gan-central", fold) if cfg.synthesis.from_run else
           finetune(cfg, *data.gan.networks(), split.members, progress, select=selector(cfg, split, seed=cfg.training.seed)))
    gen = gen.to(resolve_device(cfg.training.device))
    return synthetic_sampler(cfg, [gen], cfg.synthesis.per_class_central, fold.index), [gen]


def _baseline(data: FoldData, trainer: SerTrainer, split: GeneratorSplit, fold: Fold,
              progress: bool) -> tuple[Sampler, list[Generator]]:
    cfg = data.cfg
    device = resolve_device(cfg.training.device)
    gen = (data.generator("baseline-gan", fold).to(device) if cfg.synthesis.from_run
           else train_bagan(GanSpec.of(cfg), cfg.training, split.members, device, progress=progress))
    return synthetic_sampler(cfg, [gen], cfg.synthesis.per_class_central, fold.index), [gen]


# Each regime makes the batches the SER trainer fits on: real windows cut as the trainer's paper
# cuts them, or samples of generators (which every trainer takes: (B, 1, P, P) log-mel).
SOURCES: dict[str, Callable[[FoldData, SerTrainer, GeneratorSplit, Fold, bool], tuple[Sampler, list[Any]]]] = {
    "real-central": _real,
    "gan-central": _gan_central,
    "baseline-gan": _baseline,
}


def run_central_fold(regime: str, data: FoldData, fold: Fold, progress: bool = False) -> FoldOutcome:
    """Train ``regime``'s SER model for ``fold`` and score it on the fold's test speaker(s); the
    validation score is the selected model's (KeepBest restores it)."""
    if regime not in SOURCES:
        raise ValueError(f"unknown centralized regime {regime!r}; choose from {sorted(SOURCES)}")
    cfg, corpus, stats = data.cfg, data.corpus, data.stats
    start = time.perf_counter()
    torch.manual_seed(cfg.training.seed)
    train = corpus.labeled_set(fold.train, stats, training_speakers(fold.train))
    validation = corpus.labeled_set(fold.validation, stats)
    trainer = build_trainer(cfg, resolve_device(cfg.training.device))
    trains_gan = regime in GAN_REGIMES and not cfg.synthesis.from_run
    audited = cfg.audit.enabled and trains_gan
    # The audit (and generator selection) hold back some of every speaker's utterances from the
    # generator (its non-members).
    split = generator_split(train, cfg, hold_back=trains_gan)
    sample, generators = SOURCES[regime](data, trainer, split, fold, progress)
    result = trainer.fit(sample, validation, progress=progress)
    metrics = trainer.evaluate(corpus.labeled_set(fold.test, stats))
    private = (private_plan(cfg.training, len(split.members), cfg.training.finetune_iterations)
               if regime == "gan-central" and trains_gan else None)
    if private is not None:
        metrics["epsilon"] = private.epsilon()  # training.dp: the fine-tuned generator's guarantee
    val = result.best_score if result.best_step is not None else None
    audit = audit_generator(cfg, generators[0], split.members, split.held_out, seed=cfg.training.seed) if audited else {}
    return FoldOutcome(regime=regime, fold=fold.index, test_session=fold.test_session, metrics=metrics,
                       validation_score=val, seconds=time.perf_counter() - start, generators=generators, train=train,
                       selection=trainer.selection, history=result.evals,
                       model_digest=state_digest(trainer.state_dict()), audit=audit)


# Relative cost of a fold (tiny preset, 2 cores: ~55 s, ~30 s, ~8 s): the pool starts the longest
# first, so that the last fold to finish is a short one and no core idles behind it.
FOLD_COST = {"gan-central": 3, "baseline-gan": 2, "real-central": 1}


class FoldPool:
    """Processes for the centralized folds of a whole study: every (regime, trainer, seed, fold)
    is queued when the study starts, longest first, and each regime collects its own folds as
    they finish. One pool per regime left a core idle behind each regime's last fold.

    ``workers`` spawned processes share the machine's cores (``training.threads`` each, 1 at the
    tiny preset); ``data`` is pickled once per worker, each task carries only its config and fold."""

    def __init__(self, data: FoldData, workers: int) -> None:
        # spawn: a clean interpreter per worker (torch and forked threads do not mix).
        self.workers = workers
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_worker_init, initargs=(data,))
        self.futures: dict[tuple[str, str, int, int], Future[FoldOutcome]] = {}

    @staticmethod
    def key(regime: str, cfg: StudyConfig, fold: Fold) -> tuple[str, str, int, int]:
        return regime, cfg.training.trainer, cfg.training.seed, fold.index

    def submit(self, tasks: list[tuple[str, StudyConfig, Fold]]) -> None:
        """Queue ``tasks`` (regime, config, fold), the costliest first."""
        for regime, cfg, fold in sorted(tasks, key=lambda t: -FOLD_COST[t[0]]):
            key = self.key(regime, cfg, fold)
            if key not in self.futures:
                self.futures[key] = self.pool.submit(_worker_fold, regime, cfg, fold)

    def results(self, regime: str, cfg: StudyConfig, folds: list[Fold]) -> Iterator[FoldOutcome]:
        """The outcomes of ``regime``'s ``folds`` as they finish (queued now if not yet)."""
        self.submit([(regime, cfg, f) for f in folds])
        yield from (f.result() for f in as_completed([self.futures[self.key(regime, cfg, f)] for f in folds]))

    def close(self, cancel: bool = False) -> None:
        """Wait for the workers to exit; ``cancel``: kill them first (Ctrl-C, a failed fold)."""
        if cancel:
            for process in list(getattr(self.pool, "_processes", {}).values()):  # Python 3.14: pool.kill_workers()
                process.kill()
        self.pool.shutdown(wait=not cancel, cancel_futures=cancel)

    def __enter__(self) -> FoldPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.close(cancel=kind is not None)


class CentralRegime:
    """A centralized regime over ``folds``: its folds from the study's :class:`FoldPool`, or
    in-process, one after another, without one."""

    def __init__(self, name: str, data: FoldData, folds: list[Fold], pool: FoldPool | None = None,
                 say: Callable[[str], None] = print, progress: bool = False) -> None:
        if name not in SOURCES:
            raise ValueError(f"unknown centralized regime {name!r}; choose from {sorted(SOURCES)}")
        self.name, self.data, self.pool, self.say, self.progress = name, data, pool, say, progress
        self.by_index = {fold.index: fold for fold in folds}
        self.folds = tuple(self.by_index)
        self.log = RegimeLog()

    def run(self, todo: Collection[int], store: GeneratorStore) -> Iterator[FoldOutcome]:
        """Each fold's outcome as it finishes (centralized regimes store no generators to resume)."""
        folds = [self.by_index[i] for i in self.folds if i in todo]
        if self.pool is not None:
            yield from self.pool.results(self.name, self.data.cfg, folds)
            return
        for fold in folds:
            self.say(f"{self.name}: fold {fold.index} (test Session{fold.test_session})")
            yield run_central_fold(self.name, self.data, fold, self.progress)


_WORKER: dict[str, FoldData] = {}  # a worker's FoldData, pickled once per worker rather than per fold


def _worker_init(data: FoldData) -> None:
    # The study's process handles Ctrl-C and stops the pool; a worker dies with the study (Linux).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    threads.use(data.cfg.training.threads)  # torch's and numpy's pools (common/threads.py)
    _WORKER["data"] = data


def _worker_fold(regime: str, cfg: StudyConfig, fold: Fold) -> FoldOutcome:
    # The corpus, scaling and GAN are the worker's; the config is the task's (its trainer and seed).
    return run_central_fold(regime, replace(_WORKER["data"], cfg=cfg), fold)
