"""The study runner: every configured regime x every fold, logged to MLflow, summarized as a table."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common.config import StudyConfig
from common.features import MinMax, random_patch
from common.metrics import mean_std
from common.pipeline import Corpus, load_checkpoint, load_corpus, save_checkpoint
from common.regimes import FoldOutcome, run_central_fold
from common.splits import leave_one_session_out
from server.plots import confusion_png, spectrogram_grid_png
from server.tracking import Tracker, confusion_metrics

Row = dict[str, Any]


def scaling_stats(cfg: StudyConfig, corpus: Corpus) -> MinMax:
    """The pre-trained checkpoint's statistics when there is one (they travel with it, seed 002 §4.2),
    else the combined per-session min/max of the labeled corpus."""
    if cfg.pretrained_path.is_file():
        return MinMax.from_dict(load_checkpoint(cfg.pretrained_path)["stats"])
    return MinMax.combine(*corpus.session_stats().values())


def run_study(cfg: StudyConfig, progress: bool = True, say: Callable[[str], None] = print) -> list[Row]:
    """Run ``cfg.regimes`` over the leave-one-session-out folds; returns one row per regime x fold."""
    if any(r != "real-central" for r in cfg.regimes) and not cfg.pretrained_path.is_file():
        raise FileNotFoundError(f"{cfg.pretrained_path}: no pre-trained GAN; run `fedser pretrain` with this "
                                "config first (or set model.pretrained)")
    corpus = load_corpus(cfg)
    folds = leave_one_session_out(corpus.utterances, cfg.folds)
    stats = scaling_stats(cfg, corpus)
    tracker = Tracker(cfg)
    rows: list[Row] = []
    for regime in cfg.regimes:
        with tracker.run(regime, {"kind": "regime", "regime": regime, "study": cfg.name, "preset": cfg.preset}):
            tracker.params(cfg.flat())
            outcomes = []
            for fold in folds:
                say(f"{regime}: fold {fold.index} (test Session{fold.test_session})")
                tags = {"regime": regime, "fold": fold.index, "session": fold.test_session, "study": cfg.name}
                with tracker.run(f"{regime}/fold{fold.index}", tags, nested=True):
                    outcome = run_central_fold(regime, cfg, corpus, stats, fold, progress)
                    _log_fold(tracker, cfg, corpus, outcome)
                outcomes.append(outcome)
                rows.append({"regime": regime, "fold": fold.index, **_scores(outcome)})
                say(f"  macro-F1 {outcome.metrics['f1_macro']:.3f}  UA {outcome.metrics['ua']:.3f}  "
                    f"WA {outcome.metrics['wa']:.3f}  ({outcome.seconds:.0f} s)")
            summary = {}
            for key in ("f1_macro", "ua", "wa"):
                mean, std = mean_std([o.metrics[key] for o in outcomes])
                summary |= {f"{key}_mean": mean, f"{key}_std": std}
            tracker.metrics(summary)
    return rows


def _scores(outcome: FoldOutcome) -> dict[str, float]:
    return {k: outcome.metrics[k] for k in ("f1_macro", "ua", "wa")}


def _log_fold(tracker: Tracker, cfg: StudyConfig, corpus: Corpus, outcome: FoldOutcome) -> None:
    """Metrics, the confusion-matrix plot, and for GAN regimes a spectrogram grid and the generator."""
    tracker.metrics({**_scores(outcome), **confusion_metrics(outcome.metrics["confusion"]),
                     "seconds": outcome.seconds})
    if outcome.validation_f1 is not None:
        tracker.metrics({"val_f1_macro": outcome.validation_f1})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        title = f"{outcome.regime}, fold {outcome.fold}"
        tracker.artifact(confusion_png(outcome.metrics["confusion"], cfg.data.classes,
                                       folder / "confusion.png", title), "plots")
        for n, gen in enumerate(outcome.generators):
            if outcome.train is not None:
                rng = np.random.default_rng(outcome.fold)
                real = [random_patch(f, gen.spec.patch, rng, pad_value=-1.0) for f in outcome.train.feats]
                tracker.artifact(spectrogram_grid_png(real, outcome.train.labels, gen, cfg.data.classes,
                                                      folder / f"spectrograms_{n}.png"), "plots")
            tracker.artifact(save_checkpoint(folder / f"generator_{n}.pt", kind=f"{outcome.regime}-generator",
                                             spec=gen.spec.to_dict(), generator=gen.state_dict()), "checkpoints")


def summary_table(rows: list[Row]) -> list[tuple[str, float, float, int]]:
    """(regime, mean macro-F1, std, folds) in the order the regimes ran."""
    out = []
    for regime in dict.fromkeys(r["regime"] for r in rows):
        scores = [r["f1_macro"] for r in rows if r["regime"] == regime]
        mean, std = mean_std(scores)
        out.append((regime, mean, std, len(scores)))
    return out
