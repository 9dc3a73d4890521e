"""The ServerApp: discover the session nodes, run one federated regime, log it to MLflow.

Run configuration (``[tool.flwr.app.config]`` in pyproject.toml, overridable with
``flwr run . --run-config``): ``regime`` (gan-federated, gan-fedavg or a strategy regime such as fedavg),
``study-config`` (the resolved study config as JSON, a study TOML path, or "" for the embedded default),
``work-dir``, and ``nodes`` (how many nodes a simulation started; discovery waits for them).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common import threads
from common.config import FEDERATED_REGIMES
from common.models.sngan import GanSpec
from common.regimes import FoldOutcome
from common.schema import StudyConfig, config_from_run
from server.federation import Federation, WireGrid, mend_ray_pool
from server.regimes import REGIMES
from server.tracking import Tracker, stored_generators, tracked

app = ServerApp()
log = logging.getLogger("fedser.server")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower's entry: the configured regime(s) over the nodes of this run, one after another
    (``regime`` = "gan-federated,gan-fedavg,fedavg": the nodes start and read their data once)."""
    cfg = config_from_run(context.run_config)
    config = context.run_config
    skips = str(config.get("skips", ""))
    nodes = int(config.get("nodes", 0))  # how many nodes the simulation started (0: a deployment, unknown)
    regimes = [r.strip() for r in str(config.get("regime", "")).split(",")]
    for regime in regimes:  # all checked before the first one runs
        check_regime(regime)
    for regime in regimes:
        run_regime(grid, cfg, regime, run_id=context.run_id,
                   owner=str(config.get("owner", "")) or None, resume=bool(config.get("resume", True)),
                   skips=json.loads(skips) if skips else None, expected=nodes or None)


def check_regime(regime: str) -> None:
    """One line naming the federated regimes when ``regime`` is none of them."""
    if regime not in REGIMES:
        raise ValueError(f"run config regime: {regime!r} is not a federated regime; choose from "
                         f"{', '.join(FEDERATED_REGIMES)} (several: comma-separated)")


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


def run_regime(grid: Grid, cfg: StudyConfig, regime: str, run_id: int = 0, owner: str | None = None,
               resume: bool = True, skips: dict[str, int] | None = None,
               expected: int | None = None) -> list[FoldOutcome]:
    """Discover the nodes, then run ``regime`` fold by fold inside its MLflow run (failures and the
    wire audit logged with it). ``owner``: the study process that started this run (its runs are
    its to mark KILLED); ``resume``: run only the folds an earlier run of this config left;
    ``skips``: the study's corpus skips by kind (the corpus the simulated nodes read), logged;
    ``expected``: the nodes discovery waits for (None: the five session nodes, or ``node_wait``)."""
    check_regime(regime)
    _log_to_stderr()
    mend_ray_pool()  # a simulated node's dead Ray actor is replaced (docs/federated.md, "When a node fails")
    threads.use(cfg.training.threads)  # the server trains SER models (common/threads.py)
    audit = audit_path(cfg, regime, run_id)
    fed = Federation(WireGrid(grid, audit), cfg, expected)
    tracker = Tracker(cfg, owner)
    # synthesis.from_run: the SER models train on an earlier run's generators (no node fine-tunes).
    stored = stored_generators(cfg.synthesis.from_run, GanSpec.of(cfg)) if cfg.synthesis.from_run else None
    federated = REGIMES[regime](fed, cfg, stored)
    federated.log.artifacts.append((audit, "flower"))
    return tracked(federated, tracker, cfg, resume=resume, skips=skips, flwr_run_id=run_id)
