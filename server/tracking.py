"""MLflow tracking, as a wrapper around a regime (with report.py, the only MLflow code).

:func:`tracked` runs a regime inside one parent run per (regime, trainer, seed) and logs each fold
it yields as a nested child run, tagged with ``regime``, ``trainer``, ``seed``, ``fold`` and
``session``, so that every regime of a study lands in one experiment and compares fold by fold.
Regimes know nothing of MLflow.

Resume: every run carries ``config_hash`` (:func:`config_digest`: the resolved config of that
regime x trainer x seed, and the pre-trained checkpoint's bytes) and ``owner`` (the process that
opened it, server/processes.py). Re-running a study re-opens the newest parent of the same
hash and runs only the folds without a FINISHED child; runs whose owner process is gone are
marked KILLED (:meth:`Tracker.reap`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric, Run
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

from common.corpora import skip_summary
from common.features import random_patch
from common.metrics import confusion_cells
from common.models.sngan import GanSpec, Generator
from common.pipeline import load_checkpoint, save_checkpoint
from common.regimes import SCORES, FoldOutcome, Regime, RegimeLog, fold_generator, summary
from common.schema import StudyConfig
from common.views import LabeledSet
from server.plots import confusion_png, spectrogram_grid_png
from server.processes import owner, owner_alive

log = logging.getLogger("fedser")

# What does not change a single (regime, trainer, seed) run's fold results: the study's axes and
# bookkeeping (which folds run, too: a fold's result does not depend on the others). Everything
# else of the resolved config is hashed.
UNHASHED: dict[str, Any] = {**dict.fromkeys(("name", "work_dir", "regimes", "trainers", "seeds", "epsilons",
                                             "workers", "tracking"), True), "folds": {"sessions"}}


@functools.cache
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def config_digest(cfg: StudyConfig) -> str:
    """16 hex digits naming what one (regime, trainer, seed) run computes: the resolved config
    without :data:`UNHASHED`, and the pre-trained checkpoint's content when there is one."""
    tree = cfg.model_dump(mode="json", exclude=UNHASHED)
    path = cfg.pretrained_path
    if path.is_file():
        st = path.stat()
        tree["pretrained_sha256"] = _file_digest(path, st.st_size, st.st_mtime_ns)
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def quiet_mlflow() -> None:
    """MLflow's and alembic's INFO lines (table creation, migrations) are noise in a terminal table."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Tracker:
    """An MLflow experiment with an absolute artifact location (Flower apps run with another cwd)."""

    def __init__(self, cfg: StudyConfig, owner_tag: str | None = None) -> None:
        # The study process's identity, also on the runs its ServerApp opens (run config ``owner``).
        self.owner = owner_tag or owner()
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
    def run(self, name: str, tags: Mapping[str, Any], nested: bool = False, run_id: str | None = None) -> Iterator[str]:
        """A run (nested under the active one when ``nested``; the existing run ``run_id`` re-opened);
        yields its id. It ends FINISHED, FAILED on an error, KILLED on Ctrl-C."""
        active = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else self.experiment_id,
                                  run_name=None if run_id else name, nested=nested)
        mlflow.set_tags({**{k: str(v) for k, v in tags.items()}, "owner": self.owner})
        try:
            yield active.info.run_id
        except (KeyboardInterrupt, SystemExit):
            mlflow.end_run("KILLED")
            raise
        except BaseException:
            mlflow.end_run("FAILED")
            raise
        mlflow.end_run("FINISHED")

    def reap(self, mine: bool = False) -> int:
        """Mark KILLED the RUNNING runs whose owner process is gone (``mine``: this process's,
        after an interrupt); returns how many. Runs of other hosts and untagged runs are left."""
        client = mlflow.MlflowClient()
        stale = [run for run in client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'", max_results=5000)
                 if "owner" in run.data.tags
                 and (run.data.tags["owner"] == self.owner if mine else owner_alive(run.data.tags["owner"]) is False)]
        for run in stale:
            client.set_terminated(run.info.run_id, "KILLED")
        return len(stale)

    def progress(self, regime: str, cfg: StudyConfig, folds: Sequence[int]) -> Progress:
        """What an earlier run of the same (regime, trainer, seed, config hash) already finished."""
        digest = config_digest(cfg)
        tags = {"kind": "regime", "regime": regime, "trainer": cfg.training.trainer,
                "seed": str(cfg.training.seed), "config_hash": digest}
        query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
        parents = mlflow.search_runs([self.experiment_id], query, output_format="list",
                                     order_by=["attributes.start_time DESC"], max_results=1)
        if not parents:
            return Progress(digest, list(folds))
        [parent] = parents
        children = mlflow.search_runs(
            [self.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and "
            f"attributes.status = 'FINISHED' and tags.config_hash = '{digest}'", output_format="list")
        done = {int(c.data.tags["fold"]): {"regime": regime, "trainer": cfg.training.trainer,
                                           "fold": int(c.data.tags["fold"]), **c.data.metrics}
                for c in children if "fold" in c.data.tags and all(m in c.data.metrics for m in SCORES)}
        return Progress(digest, [f for f in folds if f not in done], parent, done)

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


@dataclass
class Progress:
    """A (regime, trainer, seed) cell's state in MLflow: the parent run to re-open (None: start
    one), the folds still to run, and the finished ones' rows."""

    digest: str
    todo: list[int]
    parent: Run | None = None
    done: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Nothing left to run and the parent ended cleanly."""
        return not self.todo and self.parent is not None and self.parent.info.status == "FINISHED"

    def skip_line(self, regime: str, cfg: StudyConfig) -> str:
        """What the study and the ServerApp say for a complete cell they skip."""
        return (f"{cell_label(regime, cfg)}: all {len(self.done)} folds finished in an earlier run "
                f"(config {self.digest}); skipped")


def cell_label(regime: str, cfg: StudyConfig) -> str:
    """A (regime, trainer, seed) cell as the logs name it: ``fedavg [ser-cnn] seed 0``."""
    return f"{regime} [{cfg.training.trainer}] seed {cfg.training.seed}"


def _run_generators(run_id: str, spec: GanSpec, folder: Path) -> dict[str, torch.nn.Module]:
    """The generators logged on run ``run_id`` (``checkpoints/generator_<name>.pt``) of size ``spec``."""
    client = mlflow.MlflowClient()
    out: dict[str, torch.nn.Module] = {}
    for f in client.list_artifacts(run_id, "checkpoints"):
        name = Path(f.path).stem.removeprefix("generator_")
        if not Path(f.path).name.startswith("generator_"):
            continue
        ckpt = load_checkpoint(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f.path,
                                                                        dst_path=str(folder))))
        if ckpt.get("spec") == spec.to_dict():
            gen = Generator(spec)
            gen.load_state_dict(ckpt["generator"])
            out[name] = gen.eval()
    return out


def stored_generators(run_id: str, spec: GanSpec) -> dict[str, torch.nn.Module]:
    """Every generator an earlier regime run logged, by name: those on the parent run itself
    (gan-federated's ``Session<N>``) and those of its fold runs as ``fold<N>`` (the other GAN
    regimes train one per fold). ``run_id`` may also name a single fold run."""
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ValueError(f"no MLflow run {run_id!r} in this tracking store; copy the run id from `mlflow ui` "
                         "or the study's output") from None
    with tempfile.TemporaryDirectory() as tmp:
        found = {fold_generator(int(run.data.tags["fold"])) if "fold" in run.data.tags else k: g
                 for k, g in _run_generators(run_id, spec, Path(tmp)).items()}
        children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}' "
                                      "and attributes.status = 'FINISHED'", order_by=["attributes.start_time ASC"])
        for child in children:  # a fold finished twice: its newest run wins
            for gen in _run_generators(child.info.run_id, spec, Path(tmp)).values():
                found[fold_generator(int(child.data.tags["fold"]))] = gen
    return found


def run_config(run_id: str) -> dict[str, Any]:
    """The resolved study config a regime run logged (``config/study.json``), as plain data."""
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    parent = run.data.tags.get("mlflow.parentRunId", run_id)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=parent, artifact_path="config/study.json", dst_path=tmp)
        except (OSError, MlflowException):
            raise ValueError(f"run {run_id} has no config/study.json (logged by fedser since the generator audit); "
                             "pass the study's config file with --config") from None
        return json.loads(Path(path).read_text())


class RunStore:
    """Generators kept as the parent run's artifacts (``checkpoints/generator_<name>.pt``)."""

    def __init__(self, tracker: Tracker, cfg: StudyConfig, run_id: str | None) -> None:
        self.tracker, self.cfg, self.run_id = tracker, cfg, run_id

    def load(self) -> dict[str, torch.nn.Module]:
        if self.run_id is None:
            return {}
        with tempfile.TemporaryDirectory() as tmp:
            return _run_generators(self.run_id, GanSpec.of(self.cfg), Path(tmp))

    def keep(self, generators: Mapping[str, torch.nn.Module]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            log_generators(self.tracker, self.cfg.data.classes, generators, None, Path(tmp))


def tracked(regime: Regime, tracker: Tracker, cfg: StudyConfig, resume: bool = True,
            say: Callable[[str], None] = log.info, skips: Mapping[str, int] | None = None,
            **tags: Any) -> list[FoldOutcome]:
    """Run ``regime`` inside a parent run (params = the flat config, ``tags``); each fold it yields
    becomes a nested run; then the regime's own log, its failures and the summary over the folds.
    ``skips``: what the corpus reader skipped, by kind (``skipped.<kind>`` metrics).

    With ``resume``, the newest parent of the same config hash is re-opened and only its folds
    without a FINISHED child run. A regime that raises leaves its parent FAILED (KILLED on Ctrl-C),
    with whatever it logged so far."""
    trainer, seed = cfg.training.trainer, cfg.training.seed
    state = tracker.progress(regime.name, cfg, regime.folds) if resume else Progress(config_digest(cfg), list(regime.folds))
    label = cell_label(regime.name, cfg)
    if state.complete:
        say(state.skip_line(regime.name, cfg))
        return []
    if state.done:
        say(f"{label}: resuming run {state.parent.info.run_id if state.parent else ''}: folds "
            f"{sorted(state.done)} finished earlier, running {state.todo}")
    base = {"regime": regime.name, "trainer": trainer, "seed": seed, "study": cfg.name, "config_hash": state.digest}
    outcomes: list[FoldOutcome] = []
    parent_id = state.parent.info.run_id if state.parent is not None else None
    with tracker.run(regime.name, {"kind": "regime", **base, "preset": cfg.preset, **tags}, run_id=parent_id) as run_id:
        if parent_id is None:
            tracker.params(cfg.flat())
            with tempfile.TemporaryDirectory() as tmp:  # the exact config, for `fedser audit` and from_run
                (Path(tmp) / "study.json").write_text(cfg.model_dump_json(indent=1))
                tracker.artifact(Path(tmp) / "study.json", "config")
        if skips is not None:
            log_skips(tracker, skips)
        try:
            for outcome in regime.run(state.todo, RunStore(tracker, cfg, run_id)):
                with tracker.run(f"{regime.name}/fold{outcome.fold}", {**base, "fold": outcome.fold,
                                                                        "session": outcome.test_session}, nested=True):
                    if outcome.skipped is not None:
                        tracker.tag("skipped", outcome.skipped)
                        continue
                    if outcome.model_digest is not None:
                        tracker.tag("model_sha256", outcome.model_digest)
                    log_fold(tracker, cfg.data.classes, outcome)
                outcomes.append(outcome)
        finally:
            log_regime(tracker, regime.log)
        rows = [*state.done.values(), *(o.row(trainer) for o in outcomes)]
        if rows:  # mean and std over the folds of each score
            [stats] = summary(rows)
            tracker.metrics({**{f"{k}_mean": stats[k] for k in SCORES}, **{f"{k}_std": stats[f"{k}_std"] for k in SCORES}})
    return outcomes


def log_fold(tracker: Tracker, classes: Sequence[str], outcome: FoldOutcome) -> None:
    """A fold run's metrics, its validation curve, its confusion matrix (``cm_i_j`` and a plot), and for GAN
    regimes a spectrogram grid (real patches beside generated ones where the server has real data)
    and the generator."""
    # Every scalar the trainer reports (seed 000 adds ua3 and pearson_r to SCORES).
    scalars = {k: float(v) for k, v in outcome.metrics.items() if isinstance(v, (int, float))}
    tracker.metrics({**scalars, **confusion_cells(outcome.metrics["confusion"]), "seconds": outcome.seconds,
                     **{f"audit.{k}": v for k, v in outcome.audit.items()}})
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


def log_skips(tracker: Tracker, skips: Mapping[str, int]) -> None:
    """The corpus reader's skips: a ``skipped.<kind>`` metric each, their total, and the summary line."""
    tracker.metrics({"skipped": sum(skips.values()), **{f"skipped.{k.replace(' ', '_')}": n for k, n in skips.items()}})
    tracker.tag("skips", skip_summary(skips))


def log_regime(tracker: Tracker, log: RegimeLog) -> None:
    """A regime's own scalars, files, the nodes that failed or timed out (a ``failure.<node>`` tag
    each and a ``failed_nodes`` count), and the nodes with their class counts (``federation/nodes.json``)."""
    if log.metrics:
        tracker.metrics(log.metrics)
    for name, audit in log.audits.items():  # one generator serving several folds: audit.<name>.<figure>
        tracker.metrics({f"audit.{name}.{k}": v for k, v in audit.items()})
    for path, folder in log.artifacts:
        if path.exists():
            tracker.artifact(path, folder)
    for name, reason in log.failures.items():
        tracker.tag(f"failure.{name}", reason[:4000])
    tracker.metrics({"failed_nodes": len(log.failures)})
    if log.nodes:  # who trained and evaluated, with class counts (counts only: docs/federated.md, "Clients: partitions")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "nodes.json").write_text(json.dumps(log.nodes, indent=1))
            tracker.artifact(Path(tmp) / "nodes.json", "federation")


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


def log_audit(run_id: str, figures: Mapping[str, float], name: str | None = None) -> None:
    """Log ``figures`` on run ``run_id`` (``audit.<figure>``; ``audit.<name>.<figure>`` with a
    ``name``) through the client: no run is re-opened, none is left RUNNING, its status is kept."""
    prefix = "audit." if name is None else f"audit.{name}."
    now = int(time.time() * 1000)
    mlflow.MlflowClient().log_batch(run_id, metrics=[Metric(prefix + k, float(v), now, 0) for k, v in figures.items()])
