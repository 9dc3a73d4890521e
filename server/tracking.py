"""MLflow tracking: the only module that talks to MLflow (only the server side logs).

One parent run per regime and one nested child run per fold, tagged with ``regime``, ``fold``
and ``session`` so that every regime of a study lands in one experiment and compares fold by fold.
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
from common.metrics import mean_std
from common.pipeline import save_checkpoint
from common.regimes import FoldOutcome
from common.views import LabeledSet
from server.plots import confusion_png, spectrogram_grid_png


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


SCORES = ("f1_macro", "ua", "wa")


def log_fold(tracker: Tracker, classes: Sequence[str], outcome: FoldOutcome) -> None:
    """A fold run's metrics, its confusion-matrix plot, and for GAN regimes a spectrogram grid
    (real patches beside generated ones where the server has real data) and the generator."""
    # Every scalar the trainer reports (seed 000 adds ua3 and pearson_r to SCORES).
    scalars = {k: float(v) for k, v in outcome.metrics.items() if isinstance(v, (int, float))}
    tracker.metrics({**scalars, **confusion_metrics(outcome.metrics["confusion"]), "seconds": outcome.seconds})
    n = len(outcome.metrics["confusion"])
    classes = classes if len(classes) == n else [str(level) for level in range(1, n + 1)]  # valence levels
    if outcome.validation_score is not None:
        tracker.metrics({f"val_{outcome.selection}": outcome.validation_score})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tracker.artifact(confusion_png(outcome.metrics["confusion"], classes, folder / "confusion.png",
                                       f"{outcome.regime}, fold {outcome.fold}"), "plots")
        log_generators(tracker, classes, outcome.generators, outcome.train, folder, seed=outcome.fold)


def log_generators(tracker: Tracker, classes: Sequence[str], generators: Mapping[Any, Any] | Sequence[Any],
                   train: LabeledSet | None, folder: Path, seed: int = 0) -> None:
    """Spectrogram grids and checkpoints of ``generators`` (a list, or a mapping name -> generator)."""
    named = generators if isinstance(generators, Mapping) else dict(enumerate(generators))
    for name, gen in named.items():
        real, labels = [], []
        if train is not None:
            rng = np.random.default_rng(seed)
            real = [random_patch(f, gen.spec.patch, rng, pad_value=-1.0) for f in train.feats]
            labels = list(train.labels)
        tracker.artifact(spectrogram_grid_png(real, labels, gen, classes, folder / f"spectrograms_{name}.png"),
                         "plots")
        tracker.artifact(save_checkpoint(folder / f"generator_{name}.pt", kind="generator",
                                         spec=gen.spec.to_dict(), generator=gen.state_dict()), "checkpoints")


def log_summary(tracker: Tracker, outcomes: Sequence[FoldOutcome]) -> None:
    """Mean and std over the folds of each score, on the regime's parent run."""
    summary: dict[str, float] = {}
    for key in SCORES:
        mean, std = mean_std([o.metrics[key] for o in outcomes])
        summary |= {f"{key}_mean": mean, f"{key}_std": std}
    if outcomes:
        tracker.metrics(summary)


def log_failures(tracker: Tracker, failures: Mapping[Any, str]) -> None:
    """Nodes that failed or timed out: a ``failure.SessionN`` tag each and a ``failed_nodes`` count."""
    for session, reason in failures.items():
        tracker.tag(f"failure.Session{session}", reason[:4000])
    tracker.metrics({"failed_nodes": len(failures)})


def confusion_metrics(confusion: list[list[int]]) -> dict[str, float]:
    """The confusion matrix as scalar metrics ``cm_<true>_<pred>`` (how it travels and is logged)."""
    return {f"cm_{i}_{j}": float(n) for i, row in enumerate(confusion) for j, n in enumerate(row)}
