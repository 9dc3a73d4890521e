"""MLflow tracking, as a wrapper around a regime (with report.py, the only MLflow code).

:func:`tracked` runs a regime inside one parent run and logs each fold it yields as a nested
child run, tagged with ``regime``, ``fold`` and ``session``, so that every regime of a study lands
in one experiment and compares fold by fold. Regimes know nothing of MLflow.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

from common.config import StudyConfig
from common.features import random_patch
from common.metrics import confusion_cells
from common.pipeline import save_checkpoint
from common.views import LabeledSet
from simulations.plots import confusion_png, spectrogram_grid_png
from simulations.regimes import SCORES, FoldOutcome, Regime, RegimeLog, summary


def quiet_mlflow() -> None:
    """MLflow's and alembic's INFO lines (table creation, migrations) are noise in a terminal table."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Tracker:
    """An MLflow experiment with an absolute artifact location (Flower apps run with another cwd)."""

    def __init__(self, cfg: StudyConfig) -> None:
        self.uri = cfg.tracking_uri
        self.experiment = cfg.tracking.experiment
        quiet_mlflow()
        mlflow.set_tracking_uri(self.uri)
        found = mlflow.get_experiment_by_name(self.experiment)
        if found is None and self.uri.startswith(("http://", "https://")):
            # A tracking server stores artifacts itself (`mlflow server --serve-artifacts`).
            self.experiment_id = mlflow.create_experiment(self.experiment)
        elif found is None:
            artifacts = (cfg.work_dir / "mlartifacts").resolve()
            artifacts.mkdir(parents=True, exist_ok=True)
            self.experiment_id = mlflow.create_experiment(self.experiment, artifact_location=artifacts.as_uri())
        else:
            self.experiment_id = found.experiment_id

    @contextlib.contextmanager
    def run(self, name: str, tags: Mapping[str, Any], nested: bool = False) -> Iterator[str]:
        """A run (nested under the active one when ``nested``); yields its id."""
        with mlflow.start_run(experiment_id=self.experiment_id, run_name=name, nested=nested,
                              tags={k: str(v) for k, v in tags.items()}) as active:
            yield active.info.run_id

    @staticmethod
    def params(params: Mapping[str, Any]) -> None:
        """Log params in batches of MLflow's per-call limit."""
        items = [(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            mlflow.log_params(dict(items[i:i + MAX_PARAMS_TAGS_PER_BATCH]))

    @staticmethod
    def metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics (non-numbers are a bug in the caller)."""
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    @staticmethod
    def artifact(path: Path, folder: str | None = None) -> None:
        """Copy a file into the active run's artifacts."""
        mlflow.log_artifact(str(path), artifact_path=folder)

    @staticmethod
    def tag(key: str, value: Any) -> None:
        """Set one tag on the active run."""
        mlflow.set_tag(key, str(value))


def tracked(regime: Regime, tracker: Tracker, cfg: StudyConfig, **tags: Any) -> list[FoldOutcome]:
    """Run ``regime`` inside a parent run (params = the flat config, ``tags``); each fold it yields
    becomes a nested run; then the regime's own log, its failures and the summary over the folds.
    A regime that raises leaves its parent run FAILED, with whatever it logged so far."""
    trainer = cfg.training.trainer
    base = {"regime": regime.name, "trainer": trainer, "study": cfg.name}
    outcomes: list[FoldOutcome] = []
    with tracker.run(regime.name, {"kind": "regime", **base, "preset": cfg.preset, **tags}):
        tracker.params(cfg.flat())
        try:
            for outcome in regime.run():
                with tracker.run(f"{regime.name}/fold{outcome.fold}", {**base, "fold": outcome.fold,
                                                                        "session": outcome.test_session}, nested=True):
                    if outcome.skipped is not None:
                        tracker.tag("skipped", outcome.skipped)
                        continue
                    log_fold(tracker, cfg.data.classes, outcome)
                outcomes.append(outcome)
        finally:
            log_regime(tracker, cfg.data.classes, regime.log)
        if outcomes:  # mean and std over the folds of each score
            [stats] = summary([o.row(trainer) for o in outcomes])
            tracker.metrics({**{f"{k}_mean": stats[k] for k in SCORES}, **{f"{k}_std": stats[f"{k}_std"] for k in SCORES}})
    return outcomes


def log_fold(tracker: Tracker, classes: Sequence[str], outcome: FoldOutcome) -> None:
    """A fold run's metrics, its validation curve, its confusion matrix (``cm_i_j`` and a plot), and for GAN
    regimes a spectrogram grid (real patches beside generated ones where the server has real data)
    and the generator."""
    # Every scalar the trainer reports (seed 000 adds ua3 and pearson_r to SCORES).
    scalars = {k: float(v) for k, v in outcome.metrics.items() if isinstance(v, (int, float))}
    tracker.metrics({**scalars, **confusion_cells(outcome.metrics["confusion"]), "seconds": outcome.seconds})
    if outcome.validation_score is not None:
        tracker.metrics({f"val_{outcome.selection}": outcome.validation_score})
    for step, score in outcome.history:
        tracker.metrics({f"val_{outcome.selection}_curve": score}, step=step)
    confusion = outcome.metrics["confusion"]
    n = len(confusion)
    classes = classes if len(classes) == n else [str(level) for level in range(1, n + 1)]  # valence levels
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tracker.artifact(confusion_png(confusion, classes, folder / "confusion.png",
                                       f"{outcome.regime}, fold {outcome.fold}"), "plots")
        log_generators(tracker, classes, dict(enumerate(outcome.generators)), outcome.train, folder,
                       seed=outcome.fold)


def log_regime(tracker: Tracker, classes: Sequence[str], log: RegimeLog) -> None:
    """A regime's own scalars, generators, files, and the nodes that failed or timed out (a
    ``failure.SessionN`` tag each and a ``failed_nodes`` count)."""
    if log.metrics:
        tracker.metrics(log.metrics)
    if log.generators:
        with tempfile.TemporaryDirectory() as tmp:
            log_generators(tracker, classes, log.generators, None, Path(tmp))
    for path, folder in log.artifacts:
        if path.exists():
            tracker.artifact(path, folder)
    for session, reason in log.failures.items():
        tracker.tag(f"failure.Session{session}", reason[:4000])
    tracker.metrics({"failed_nodes": len(log.failures)})


def log_generators(tracker: Tracker, classes: Sequence[str], generators: Mapping[Any, Any],
                   train: LabeledSet | None, folder: Path, seed: int = 0) -> None:
    """Spectrogram grids and checkpoints of ``generators`` (name -> generator)."""
    for name, gen in generators.items():
        real, labels = [], []
        if train is not None:
            rng = np.random.default_rng(seed)
            real = [random_patch(f, gen.spec.patch, rng, pad_value=-1.0) for f in train.feats]
            labels = list(train.labels)
        tracker.artifact(spectrogram_grid_png(real, labels, gen, classes, folder / f"spectrograms_{name}.png"),
                         "plots")
        tracker.artifact(save_checkpoint(folder / f"generator_{name}.pt", kind="generator",
                                         spec=gen.spec.to_dict(), generator=gen.state_dict()), "checkpoints")
