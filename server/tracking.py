"""MLflow tracking: the only module that talks to MLflow (only the server side logs).

One parent run per regime and one nested child run per fold, tagged with ``regime``, ``fold``
and ``session`` so that every regime of a study lands in one experiment and compares fold by fold.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

from common.config import StudyConfig


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
        if found is None:
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


def confusion_metrics(confusion: list[list[int]]) -> dict[str, float]:
    """The confusion matrix as scalar metrics ``cm_<true>_<pred>`` (how it travels and is logged)."""
    return {f"cm_{i}_{j}": float(n) for i, row in enumerate(confusion) for j, n in enumerate(row)}
