"""The study runner: every configured regime x every fold, logged to MLflow, summarized as a table.

Every (regime, trainer, seed) is one MLflow parent run with a child run per fold. Centralized
regimes run here, their folds in parallel worker processes (``workers``); federated
regimes run through ``flwr run`` on a simulation SuperLink the study starts and stops
(simulations/flower.py), and their ServerApp logs to the same MLflow experiment. The corpus and
the pre-trained GAN are read once here and handed to the centralized regimes' workers.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

from common.config import CENTRAL_REGIMES, StudyConfig
from common.corpora import skip_summary
from common.data import Corpus, load_corpus
from common.features import MinMax
from common.models.sngan import GanSpec
from common.pipeline import PretrainedGan, pretrained
from common.splits import make_folds
from simulations.flower import LocalSuperLink, simulation_nodes
from simulations.processes import work_dir_lock
from simulations.regimes.central import CentralRegime, FoldData
from simulations.report import fold_rows
from simulations.tracking import Tracker, stored_generators, tracked

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
    needs_gan = any(r not in ("real-central", "fedavg") for r in cfg.regimes)
    # Read once (sizes checked) before any regime or Flower run starts; fedavg and real-central
    # scale with the checkpoint's statistics when there is one.
    gan = pretrained(cfg) if needs_gan or cfg.pretrained_path.is_file() else None
    central = any(r in CENTRAL_REGIMES for r in cfg.regimes)
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
    with contextlib.ExitStack() as stack:
        link: LocalSuperLink | None = None
        for seed in cfg.study_seeds:
            for trainer in cfg.study_trainers:
                scfg = cfg.with_trainer(trainer).with_seed(seed)
                for regime in cfg.regimes:
                    if regime in CENTRAL_REGIMES:
                        assert corpus is not None  # read above whenever a centralized regime runs
                        regime_run = CentralRegime(regime, FoldData(scfg, corpus, stats, gan, stored), folds,
                                                   cfg.workers, say, progress)
                        for outcome in tracked(regime_run, tracker, scfg, resume=resume, say=say, skips=skips):
                            m = outcome.metrics
                            say(f"{regime} [{trainer}] seed {seed}: fold {outcome.fold} (test Session"
                                f"{outcome.test_session}): macro-F1 {m['f1_macro']:.3f}  UA {m['ua']:.3f}  "
                                f"WA {m['wa']:.3f}  ({outcome.seconds:.0f} s)")
                        continue
                    # Decided here, so that a finished regime costs no SuperLink or Flower run.
                    state = tracker.progress(regime, scfg, scfg.folds.sessions) if resume else None
                    if state is not None and state.complete:
                        say(f"{regime} [{trainer}] seed {seed}: all {len(state.done)} folds finished in an "
                            f"earlier run (config {state.digest}); skipped")
                        continue
                    if link is None:  # one SuperLink for all federated regimes of the study
                        link = stack.enter_context(LocalSuperLink(cfg.work_dir / "flower" / "home"))
                    nodes = simulation_nodes(scfg)  # counted once: a partition reads the corpus listing
                    say(f"{regime} [{trainer}] seed {seed}: flwr run on a local simulation ({nodes} "
                        f"nodes, partition {scfg.federation.partition})")
                    link.run(scfg, regime, say, nodes=nodes, owner=tracker.owner, resume=resume,
                             skips=json.dumps(skips) if skips is not None else "")
