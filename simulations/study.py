"""The study runner: every configured regime x every fold, logged to MLflow, summarized as a table.

Centralized regimes run here, their folds in parallel worker processes (``workers``); federated
regimes run through ``flwr run`` on a simulation SuperLink the study starts and stops
(simulations/flower.py), and their ServerApp logs to the same MLflow experiment. The corpus and
the pre-trained GAN are read once here and handed to the centralized regimes' workers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from common.config import CENTRAL_REGIMES, SESSIONS, StudyConfig
from common.data import Corpus, load_corpus
from common.features import MinMax
from common.pipeline import PretrainedGan, pretrained
from common.splits import make_folds
from simulations.flower import LocalSuperLink
from simulations.regimes.central import CentralRegime, FoldData
from simulations.report import fold_rows
from simulations.tracking import Tracker, tracked

Row = dict[str, Any]


def scaling_stats(corpus: Corpus, gan: PretrainedGan | None) -> MinMax:
    """The pre-trained checkpoint's statistics when there is one (they travel with it, seed 002 §4.2),
    else the combined per-session min/max of the labeled corpus (every utterance's, without sessions)."""
    if gan is not None:
        return gan.stats
    per_session = corpus.session_stats().values()
    return MinMax.combine(*per_session) if per_session else corpus.overall


def run_study(cfg: StudyConfig, progress: bool = True, say: Callable[[str], None] = print) -> list[Row]:
    """Run ``cfg.regimes`` over the folds; returns one row per regime x trainer x fold."""
    needs_gan = any(r not in ("real-central", "fedavg") for r in cfg.regimes)
    # Read once (sizes checked) before any regime or Flower run starts; fedavg and real-central
    # scale with the checkpoint's statistics when there is one.
    gan = pretrained(cfg) if needs_gan or cfg.pretrained_path.is_file() else None
    corpus = load_corpus(cfg)
    folds = make_folds(corpus.utterances, cfg.folds)
    stats = scaling_stats(corpus, gan)
    tracker = Tracker(cfg)
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        link: LocalSuperLink | None = None
        for trainer in cfg.study_trainers:
            tcfg = cfg.with_trainer(trainer)
            for regime in cfg.regimes:
                if regime in CENTRAL_REGIMES:
                    central = CentralRegime(regime, FoldData(tcfg, corpus, stats, gan), folds, cfg.workers,
                                            say, progress)
                    for outcome in tracked(central, tracker, tcfg):
                        rows.append(outcome.row(trainer))
                        m = outcome.metrics
                        say(f"{regime} [{trainer}]: fold {outcome.fold} (test Session{outcome.test_session}): "
                            f"macro-F1 {m['f1_macro']:.3f}  UA {m['ua']:.3f}  WA {m['wa']:.3f}  "
                            f"({outcome.seconds:.0f} s)")
                    continue
                if link is None:  # one SuperLink for all federated regimes of the study
                    link = stack.enter_context(LocalSuperLink(cfg.work_dir / "flower" / "home"))
                say(f"{regime} [{trainer}]: flwr run on a local simulation ({len(SESSIONS)} session nodes)")
                link.run(tcfg, regime, say)
                rows += fold_rows(cfg.tracking_uri, cfg.tracking.experiment, [regime], [trainer])
    return sorted(rows, key=lambda r: (cfg.study_trainers.index(r["trainer"]), cfg.regimes.index(r["regime"]),
                                       r["fold"]))
