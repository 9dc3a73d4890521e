"""The study runner: every configured regime x every fold, logged to MLflow, summarized as a table.

Centralized regimes run here, their folds in parallel worker processes (``workers``); federated
regimes run through ``flwr run`` on a simulation SuperLink the study starts and stops
(simulations/flower.py), and their ServerApp logs to the same MLflow experiment.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from common.config import CENTRAL_REGIMES, SESSIONS, StudyConfig
from common.features import MinMax
from common.metrics import mean_std
from common.pipeline import Corpus, load_checkpoint, load_corpus, pretrained_checkpoint
from common.regimes import FoldOutcome, run_central_fold
from common.splits import Fold, make_folds
from server.report import fold_rows
from server.tracking import SCORES, Tracker, log_fold, log_summary
from simulations.flower import LocalSuperLink

Row = dict[str, Any]


def scaling_stats(cfg: StudyConfig, corpus: Corpus) -> MinMax:
    """The pre-trained checkpoint's statistics when there is one (they travel with it, seed 002 §4.2),
    else the combined per-session min/max of the labeled corpus."""
    if cfg.pretrained_path.is_file():
        return MinMax.from_dict(load_checkpoint(cfg.pretrained_path)["stats"])
    per_session = corpus.session_stats().values()
    # Corpora without sessions (RAVDESS): the min/max of every utterance.
    return MinMax.combine(*per_session) if per_session else MinMax.combine(
        *(MinMax.empty().update(f) for f in corpus.feats.values()))


def workers(cfg: StudyConfig) -> int:
    """Processes for centralized folds: ``cfg.workers``, 0 = one per CPU core."""
    return cfg.workers or os.cpu_count() or 1


def run_study(cfg: StudyConfig, progress: bool = True, say: Callable[[str], None] = print) -> list[Row]:
    """Run ``cfg.regimes`` over the leave-one-session-out folds; returns one row per regime x fold."""
    if any(r not in ("real-central", "fedavg") for r in cfg.regimes):
        if not cfg.pretrained_path.is_file():
            raise FileNotFoundError(f"{cfg.pretrained_path}: no pre-trained GAN; run `fedser pretrain` with this "
                                    "config first (or set model.pretrained)")
        pretrained_checkpoint(cfg)  # sizes checked here, before any regime (or a Flower run) starts
    corpus = load_corpus(cfg)
    folds = make_folds(corpus.utterances, cfg.folds)
    stats = scaling_stats(cfg, corpus)
    tracker = Tracker(cfg)
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        link: LocalSuperLink | None = None
        for trainer in cfg.study_trainers:
            tcfg = cfg.with_trainer(trainer)
            for regime in cfg.regimes:
                if regime in CENTRAL_REGIMES:
                    rows += _central(regime, tcfg, corpus, stats, folds, tracker, progress, say)
                    continue
                if link is None:  # one SuperLink for all federated regimes of the study
                    link = stack.enter_context(LocalSuperLink(cfg.work_dir / "flower" / "home"))
                say(f"{regime} [{trainer}]: flwr run on a local simulation ({len(SESSIONS)} session nodes)")
                link.run(tcfg, regime, say)
                rows += fold_rows(cfg.tracking_uri, cfg.tracking.experiment, [regime], [trainer])
    return rows


def _central(regime: str, cfg: StudyConfig, corpus: Corpus, stats: MinMax, folds: list[Fold], tracker: Tracker,
             progress: bool, say: Callable[[str], None]) -> list[Row]:
    rows, outcomes = [], []
    trainer = cfg.training.trainer
    tags = {"kind": "regime", "regime": regime, "trainer": trainer, "study": cfg.name, "preset": cfg.preset}
    with tracker.run(regime, tags):
        tracker.params(cfg.flat())
        for outcome in _fold_outcomes(regime, cfg, corpus, stats, folds, progress, say):
            tags = {"regime": regime, "trainer": trainer, "fold": outcome.fold, "session": outcome.test_session,
                    "study": cfg.name}
            with tracker.run(f"{regime}/fold{outcome.fold}", tags, nested=True):
                log_fold(tracker, cfg.data.classes, outcome)
            outcomes.append(outcome)
            rows.append({"regime": regime, "trainer": trainer, "fold": outcome.fold,
                         **{k: outcome.metrics[k] for k in SCORES}})
            say(f"{regime} [{trainer}]: fold {outcome.fold} (test Session{outcome.test_session}): macro-F1 "
                f"{outcome.metrics['f1_macro']:.3f}  UA {outcome.metrics['ua']:.3f}  "
                f"WA {outcome.metrics['wa']:.3f}  ({outcome.seconds:.0f} s)")
        log_summary(tracker, outcomes)
    return sorted(rows, key=lambda r: r["fold"])


def _fold_outcomes(regime: str, cfg: StudyConfig, corpus: Corpus, stats: MinMax, folds: list[Fold],
                   progress: bool, say: Callable[[str], None]) -> Iterator[FoldOutcome]:
    """Each fold's outcome as it finishes: in-process with one worker, else in a process pool."""
    n = min(workers(cfg), len(folds))
    if n <= 1:
        for fold in folds:
            say(f"{regime}: fold {fold.index} (test Session{fold.test_session})")
            yield run_central_fold(regime, cfg, corpus, stats, fold, progress)
        return
    say(f"{regime}: {len(folds)} folds in {n} processes")
    # spawn: a clean interpreter per worker (torch and forked threads do not mix).
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init, initargs=(cfg, corpus, stats)) as pool:
        futures = [pool.submit(_worker_fold, regime, i) for i in range(len(folds))]
        for future in as_completed(futures):
            yield future.result()


_WORKER: dict[str, Any] = {}


def _worker_init(cfg: StudyConfig, corpus: Corpus, stats: MinMax) -> None:
    import torch

    torch.set_num_threads(1)  # one core per worker: the pool is the parallelism
    _WORKER.update(cfg=cfg, corpus=corpus, stats=stats,
                   folds=make_folds(corpus.utterances, cfg.folds))


def _worker_fold(regime: str, index: int) -> FoldOutcome:
    w = _WORKER
    return run_central_fold(regime, w["cfg"], w["corpus"], w["stats"], w["folds"][index])


def summary_table(rows: list[Row]) -> list[tuple[str, str, float, float, int]]:
    """(regime, trainer, mean macro-F1, std, folds) in the order the regimes ran."""
    out = []
    for regime, trainer in dict.fromkeys((r["regime"], r["trainer"]) for r in rows):
        scores = [r["f1_macro"] for r in rows if (r["regime"], r["trainer"]) == (regime, trainer)]
        mean, std = mean_std(scores)
        out.append((regime, trainer, mean, std, len(scores)))
    return out
