"""The regimes' shared vocabulary (DESIGN.md's five and FedGAN's ``gan-fedavg``): what a regime is
and what it yields, below both the server and the study.

Every regime is an object whose :meth:`Regime.run` yields one :class:`FoldOutcome` per fold as the
fold finishes, and which records what it did beyond folds (metrics, generators, failed nodes) in
its :class:`RegimeLog`. Nothing here logs anywhere: :func:`server.tracking.tracked` wraps a
regime and writes MLflow runs from what it yields (a wrapper, not a callback threaded through).

- simulations/central.py: ``real-central``, ``gan-central``, ``baseline-gan`` (the study's process, folds in parallel);
- server/regimes.py: ``gan-federated``, ``gan-fedavg`` and the strategy regimes (inside the ServerApp, over the nodes);
- server/federation.py: the server's view of the nodes (bounded message rounds, the wire audit).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from common.metrics import mean_std
from common.schema import StudyConfig
from common.views import LabeledSet

# Generator names, the one encoding (MLflow artefacts, the audit, stored generators): a fold's
# generator (gan-central, gan-fedavg, baseline-gan) is "fold<N>", a node's (gan-federated) is its
# session node's name, "Session<N>" (common.splits.session_name).
_GENERATOR_NAME = re.compile(r"(Session|fold)(\d+)")


def fold_generator(fold: int) -> str:
    """The name of fold ``fold``'s generator."""
    return f"fold{fold}"


def generator_source(name: str) -> tuple[Literal["session", "fold"], int]:
    """What a generator was trained on: ("session", N) for ``Session<N>``, ("fold", N) for ``fold<N>``."""
    found = _GENERATOR_NAME.fullmatch(name)
    if found is None:
        raise ValueError(f"generator {name!r}: not a generator name (Session<N> or fold<N>)")
    return ("session" if found[1] == "Session" else "fold"), int(found[2])


SCORES = ("f1_macro", "ua", "wa")  # what every fold reports; trainers may add more (seed 000: ua3, pearson_r)


@dataclass(kw_only=True)  # eleven fields, several of one type: named at every call
class FoldOutcome:
    """What one regime produced on one fold (``skipped``: why there are no metrics)."""

    regime: str
    fold: int
    test_session: int | None
    metrics: dict[str, Any]
    validation_score: float | None
    seconds: float
    # The generator(s) the SER network was trained from (empty for real-central and fedavg).
    generators: list[torch.nn.Module] = field(default_factory=list)
    train: LabeledSet | None = None
    # What ``validation_score`` measures: the trainer's selection key (macro-F1; seed 000: UA).
    selection: str = "f1_macro"
    # Validation score per federated round (fedavg), for the fold's curve.
    history: list[tuple[int, float]] = field(default_factory=list)
    skipped: str | None = None
    # sha256 of the scored SER weights (common.pipeline.state_digest): the fold's model, by content.
    model_digest: str | None = None
    # The generator audit of the fold's generator (common/audit.py), for regimes with one per fold.
    audit: dict[str, float] = field(default_factory=dict)

    # Outcomes cross process boundaries (parallel folds); spectral-norm parametrized modules do not
    # pickle, so generators travel as (class, spec, weights) and are rebuilt on arrival.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["generators"] = [(type(g), g.spec, g.state_dict()) for g in self.generators]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        rebuilt = []
        for cls, spec, weights in state["generators"]:
            gen = cls(spec)
            gen.load_state_dict(weights)
            rebuilt.append(gen.eval())
        self.__dict__.update(state, generators=rebuilt)

    def row(self, trainer: str) -> dict[str, Any]:
        """The fold as a report row: regime, trainer, fold and every scalar score."""
        scalars = {k: v for k, v in self.metrics.items() if isinstance(v, (int, float))}
        return {"regime": self.regime, "trainer": trainer, "fold": self.fold, **scalars}


@dataclass
class RegimeLog:
    """What a regime did besides its folds: scalars, failed nodes, files, and the audit of
    generators that serve several folds (gan-federated's one per session), by name."""

    metrics: dict[str, float] = field(default_factory=dict)
    audits: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: Mapping[str, str] = field(default_factory=dict)  # node name -> why it failed
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # node name -> session, shard, class counts
    artifacts: list[tuple[Path, str]] = field(default_factory=list)  # (file, artifact folder)


class GeneratorStore(Protocol):
    """Where a regime keeps generators it may reuse when a killed study is resumed (the MLflow
    parent run's artifacts, server/tracking.py): only a run of the same resolved config is
    ever resumed, so a stored generator is the one the regime would train again."""

    def load(self) -> dict[str, torch.nn.Module]:
        """The generators stored so far, by name (e.g. ``Session3``)."""

    def keep(self, generators: Mapping[str, torch.nn.Module]) -> None:
        """Store ``generators`` now (before any fold runs, so that a kill does not lose them)."""


class Regime(Protocol):
    """One regime over the folds of a study."""

    name: str
    log: RegimeLog
    folds: tuple[int, ...]  # every fold the regime runs (fold index; the test session for LOSO)

    def run(self, todo: Collection[int], store: GeneratorStore) -> Iterator[FoldOutcome]:
        """The outcome of each fold in ``todo`` as it finishes (the others finished in an earlier run)."""


def stored_generator(stored: Mapping[str, Any], name: str, cfg: StudyConfig, regime: str) -> Any:
    """Generator ``name`` of the run ``synthesis.from_run`` names (one line when that run has none)."""
    if name not in stored:
        raise ValueError(f"synthesis.from_run = {cfg.synthesis.from_run}: that run has no generator {name} "
                         f"(it has {sorted(stored) or 'none'}); {regime} needs a run of the same regime")
    return stored[name]


def summary(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = SCORES) -> list[dict[str, Any]]:
    """Per (regime, trainer), in the order they first appear: fold count, and mean and std of every
    metric in ``metrics`` that all its rows have (the one place mean ± std is computed)."""
    out = []
    for regime, trainer in dict.fromkeys((r["regime"], r["trainer"]) for r in rows):
        mine = [r for r in rows if (r["regime"], r["trainer"]) == (regime, trainer)]
        entry: dict[str, Any] = {"regime": regime, "trainer": trainer, "folds": len(mine)}
        for m in metrics:
            if all(m in r for r in mine):
                entry[m], entry[f"{m}_std"] = mean_std([float(r[m]) for r in mine])
        out.append(entry)
    return out
