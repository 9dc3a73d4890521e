"""The study runner: every configured regime x every fold, logged to MLflow, summarized as a table.

Every (regime, trainer, seed) is one MLflow parent run with a child run per fold. Centralized
regimes run here, every fold of the study queued at once in one pool of worker processes
(``workers``); at the same time the federated regimes run through one ``flwr run`` per (trainer,
seed) on a simulation SuperLink the study starts and stops (simulations/flower.py), and their
ServerApp logs to the same MLflow experiment. The corpus and the pre-trained GAN are read once here
and handed to the centralized regimes' workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from typing import Any

from common import threads
from common.config import CENTRAL_REGIMES, GAN_REGIMES
from common.corpora import skip_summary
from common.data import Corpus, load_corpus
from common.features import MinMax
from common.models.sngan import GanSpec
from common.pipeline import PretrainedGan, pretrained
from common.schema import StudyConfig
from common.splits import make_folds
from server.processes import work_dir_lock
from server.tracking import Tracker, stored_generators, tracked
from simulations.central import FOLD_COST, CentralRegime, FoldData, FoldPool
from simulations.flower import LocalSuperLink, simulation_nodes
from simulations.report import fold_rows

Row = dict[str, Any]


def scaling_stats(corpus: Corpus, gan: PretrainedGan | None) -> MinMax:
    """The pre-trained checkpoint's statistics when there is one (they travel with it, seed 002 §4.2),
    else the combined per-session min/max of the labeled corpus (every utterance's, without sessions)."""
    if gan is not None:
        return gan.stats
    per_session = corpus.session_stats().values()
    return MinMax.combine(*per_session) if per_session else corpus.overall


def run_study(cfg: StudyConfig, progress: bool = True, say: Callable[[str], None] = print,
              resume: bool = True) -> list[Row]:
    """Run ``cfg.regimes`` x trainers x seeds over the folds; returns one row per regime x trainer x
    seed x fold. With ``resume``, what an earlier (killed) run of the same config finished is kept
    and only the rest runs. Holds the work dir's lock; interrupted (Ctrl-C, SIGTERM), it stops what
    it started and marks its open runs KILLED before re-raising KeyboardInterrupt."""
    with work_dir_lock(cfg.work_dir, "study"):
        threads.use(cfg.training.threads)  # in-process folds and the report's plots
        tracker = Tracker(cfg)
        if reaped := tracker.reap():
            say(f"marked {reaped} run(s) left RUNNING by a killed study KILLED")
        try:
            _run(cfg, tracker, progress, say, resume)
        except KeyboardInterrupt:
            tracker.reap(mine=True)  # what the stopped ServerApp had open
            raise
        rows = fold_rows(cfg.tracking_uri, cfg.tracking.experiment, cfg.regimes, cfg.study_trainers)
    seeds = cfg.study_seeds
    mine = [r for r in rows if r["seed"] in seeds]
    return sorted(mine, key=lambda r: (cfg.study_trainers.index(r["trainer"]), cfg.regimes.index(r["regime"]),
                                       seeds.index(r["seed"]), r["fold"]))


def _run(cfg: StudyConfig, tracker: Tracker, progress: bool, say: Callable[[str], None], resume: bool) -> None:
    """The centralized regimes' folds in a pool of processes (or in this one) while, at the same
    time, the federated regimes run through Flower: both families share the cores, so neither
    leaves one idle behind its last fold or while its server trains alone."""
    # Read once (sizes checked) before any regime or Flower run starts; the other regimes scale
    # with the checkpoint's statistics when there is one.
    gan = pretrained(cfg) if any(r in GAN_REGIMES for r in cfg.regimes) or cfg.pretrained_path.is_file() else None
    central = [r for r in cfg.regimes if r in CENTRAL_REGIMES]
    if cfg.synthesis.from_run and not central:
        # SER from stored generators, scored at the nodes: the server reads no corpus (seed 002 §5).
        corpus, folds, stats, stored = None, [], MinMax(), {}
        say(f"SER from the generators of run {cfg.synthesis.from_run}; the nodes score, this process reads no corpus")
    else:
        corpus = load_corpus(cfg)
        say(f"corpus: {len(corpus.utterances)} utterances; {skip_summary(corpus.skips)}")
        folds = make_folds(corpus.utterances, cfg.folds)
        stats = scaling_stats(corpus, gan)
        stored = stored_generators(cfg.synthesis.from_run, GanSpec.of(cfg)) if cfg.synthesis.from_run else {}
    skips = corpus.skips if corpus is not None else None
    cells = [cfg.with_trainer(trainer).with_seed(seed) for seed in cfg.study_seeds for trainer in cfg.study_trainers]
    # Decided before anything starts, so that a finished regime costs no fold, SuperLink or Flower run.
    todo: dict[tuple[str, str, int], list[int]] = {}
    for scfg in cells:
        for regime in cfg.regimes:
            state = tracker.progress(regime, scfg, scfg.folds.sessions) if resume else None
            if state is not None and state.complete:
                say(state.skip_line(regime, scfg))
            else:
                todo[regime, scfg.training.trainer, scfg.training.seed] = state.todo if state else list(scfg.folds.sessions)
    with contextlib.ExitStack() as stack:
        federated = [(scfg, [r for r in cfg.regimes if r not in CENTRAL_REGIMES
                             and (r, scfg.training.trainer, scfg.training.seed) in todo]) for scfg in cells]
        if any(regimes for _, regimes in federated):
            link = stack.enter_context(LocalSuperLink(cfg.work_dir / "flower" / "home"))  # one for the study
            stack.enter_context(Background(_federated, link, federated, tracker, say, resume, skips))
        pool = None
        if central:
            assert corpus is not None  # read above whenever a centralized regime runs
            tasks = [(regime, scfg, fold) for scfg in cells for regime in central for fold in folds
                     if fold.index in todo.get((regime, scfg.training.trainer, scfg.training.seed), [])]
            workers = min(cfg.workers or os.cpu_count() or 1, len(tasks))
            if workers > 1:
                pool = stack.enter_context(FoldPool(FoldData(cells[0], corpus, stats, gan, stored), workers))
                pool.submit(tasks)
                say(f"centralized folds: {len(tasks)} in {workers} processes")
        for scfg in cells if central else []:
            trainer, seed = scfg.training.trainer, scfg.training.seed
            for regime in sorted(central, key=lambda r: -FOLD_COST[r]):  # in the order the pool runs them
                if (regime, trainer, seed) not in todo:
                    continue
                regime_run = CentralRegime(regime, FoldData(scfg, corpus, stats, gan, stored), folds, pool, say, progress)
                for outcome in tracked(regime_run, tracker, scfg, resume=resume, say=say, skips=skips):
                    m = outcome.metrics
                    say(f"{regime} [{trainer}] seed {seed}: fold {outcome.fold} (test Session{outcome.test_session}): "
                        f"macro-F1 {m['f1_macro']:.3f}  UA {m['ua']:.3f}  WA {m['wa']:.3f}  ({outcome.seconds:.0f} s)")


class Background:
    """``fn(*args)`` in a thread beside this one (a context manager): :meth:`join` waits for it and
    re-raises what it raised. Leaving the context on an error does not wait: the caller stops
    what the thread waits on (the SuperLink and its runs)."""

    def __init__(self, fn: Callable[..., None], *args: Any) -> None:
        self.error: BaseException | None = None

        def body() -> None:
            try:
                fn(*args)
            except BaseException as exc:  # handed to join(), in the study's thread
                self.error = exc

        self.thread = threading.Thread(target=body, name=fn.__name__, daemon=True)

    def __enter__(self) -> Background:
        self.thread.start()
        return self

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is None:
            self.join()


def _federated(link: LocalSuperLink, jobs: list[tuple[StudyConfig, list[str]]], tracker: Tracker,
               say: Callable[[str], None], resume: bool, skips: dict[str, int] | None) -> None:
    """One ``flwr run`` per (trainer, seed) with all its federated regimes, one after another."""
    for scfg, regimes in jobs:
        if not regimes:
            continue
        nodes = simulation_nodes(scfg)  # counted once: a partition reads the corpus listing
        say(f"{', '.join(regimes)} [{scfg.training.trainer}] seed {scfg.training.seed}: one flwr run on a local "
            f"simulation ({nodes} nodes, partition {scfg.federation.partition})")
        link.run(scfg, regimes, say, nodes=nodes, owner=tracker.owner, resume=resume,
                 skips=json.dumps(skips) if skips is not None else "")
