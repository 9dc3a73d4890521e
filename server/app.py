"""The ServerApp: discover the session nodes, run one federated regime, log it to MLflow.

Run configuration (``[tool.flwr.app.config]`` in pyproject.toml, overridable with
``flwr run . --run-config``): ``regime`` (gan-federated or fedavg), ``study-config`` (the resolved
study config as JSON, a study TOML path, or "" for the embedded default) and ``work-dir``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import FEDERATED_REGIMES, StudyConfig, config_from_run
from common.regimes import FoldOutcome
from server.federation import Federation, WireGrid
from server.regimes import REGIMES
from server.tracking import Tracker, log_failures, log_fold, log_summary

app = ServerApp()
log = logging.getLogger("fedser.server")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower's entry: the configured regime over the nodes of this run."""
    cfg = config_from_run(context.run_config)
    regime = str(context.run_config.get("regime", ""))
    run_regime(grid, cfg, regime, run_id=context.run_id)


def _log_to_stderr() -> None:
    """Our INFO lines on stderr (what `flwr run --stream` shows), without touching Flower's loggers."""
    mine = logging.getLogger("fedser")
    if not mine.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s fedser: %(message)s"))
        mine.addHandler(handler)
        mine.setLevel(logging.INFO)
        mine.propagate = False


def audit_path(cfg: StudyConfig, regime: str, run_id: int) -> Path:
    """Where the wire audit of a run goes (one JSON line per reply that reached the server)."""
    return cfg.work_dir / "flower" / f"audit-{regime}-{run_id}.jsonl"


def run_regime(grid: Grid, cfg: StudyConfig, regime: str, run_id: int = 0) -> list[FoldOutcome]:
    """Discover the nodes, run ``regime`` fold by fold, log runs, failures and the wire audit."""
    if regime not in REGIMES:
        raise ValueError(f"run config regime: {regime!r} is not a federated regime; choose from "
                         f"{', '.join(FEDERATED_REGIMES)}")
    _log_to_stderr()
    torch.set_num_threads(os.cpu_count() or 1)  # the server trains while the nodes idle
    audit = audit_path(cfg, regime, run_id)
    fed = Federation(WireGrid(grid, audit), cfg)
    tracker = Tracker(cfg)
    tags = {"kind": "regime", "regime": regime, "trainer": cfg.training.trainer, "study": cfg.name,
            "preset": cfg.preset, "flwr_run_id": run_id}
    with tracker.run(regime, tags):
        tracker.params(cfg.flat())
        nodes = fed.discover()
        if not nodes:
            log_failures(tracker, fed.failures)
            raise RuntimeError(f"no node answered within federation.node_wait = {cfg.federation.node_wait} s; "
                               "are the SuperNodes connected?")
        tracker.metrics({"nodes": len(nodes)})

        def per_fold(fold: Callable[[int, int], FoldOutcome | None]) -> list[FoldOutcome]:
            outcomes = []
            for session in cfg.folds.sessions:
                tags = {"regime": regime, "trainer": cfg.training.trainer, "fold": session, "session": session,
                        "study": cfg.name}
                with tracker.run(f"{regime}/fold{session}", tags, nested=True):
                    outcome = fold(session, session)
                    if outcome is None:
                        tracker.tag("skipped", "no node could train or score this fold (see failure tags)")
                        continue
                    log_fold(tracker, cfg.data.classes, outcome)
                    log.info("%s fold %s: macro-F1 %.3f UA %.3f WA %.3f", regime, session,
                             outcome.metrics["f1_macro"], outcome.metrics["ua"], outcome.metrics["wa"])
                outcomes.append(outcome)
            return outcomes

        outcomes = REGIMES[regime](fed, cfg, tracker, per_fold)
        log_failures(tracker, fed.failures)
        log_summary(tracker, outcomes)
        if audit.exists():
            tracker.artifact(audit, "flower")
    return outcomes
