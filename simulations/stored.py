"""What a finished run stored, used again: ``fedser audit RUN_ID`` re-runs the generator audit
(common/audit.py) on the generators a run kept, against the utterances each was trained on."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import mlflow

from common.audit import audit_generator, generator_split
from common.config import validate
from common.data import load_corpus
from common.models.sngan import GanSpec
from common.pipeline import pretrained
from common.regimes import generator_source
from common.schema import StudyConfig, load_config
from common.splits import make_folds
from server.tracking import log_audit, quiet_mlflow, run_config, stored_generators
from simulations.report import DEFAULT_TRAINER, find_run, generator_order, generator_runs, generators_markdown
from simulations.study import scaling_stats


def audit_run(run_id: str, config: Path | None, tracking_uri: str | None, say: Callable[[str], None]) -> str:
    """The generator audit of every generator run ``run_id`` stored (a regime run or one fold run),
    each against the real utterances it was trained on: its members and held-out split rebuilt from
    the run's config (``config`` replaces it) and seed. Logs the figures back on the run each
    generator belongs to and returns the report's generators table (markdown)."""
    given = load_config(config) if config is not None else None
    uri = tracking_uri or (given or load_config(None)).tracking_uri
    quiet_mlflow()
    mlflow.set_tracking_uri(uri)
    run = find_run(run_id)
    cfg = given or validate(StudyConfig, run_config(run_id), f"run {run_id}: config/study.json")
    if "seed" in run.data.tags:  # the run's seed decides which utterances its generators never saw
        cfg = cfg.with_seed(int(run.data.tags["seed"]))
    spec = GanSpec.of(cfg)
    generators = stored_generators(run_id, spec)
    if not generators:
        raise ValueError(f"run {run_id} has no stored generator of {spec} (checkpoints/generator_*.pt on it or "
                         "on its finished fold runs); audit the run of a GAN regime")
    owners = generator_runs(run_id)
    corpus = load_corpus(cfg)
    stats = scaling_stats(corpus, pretrained(cfg))
    folds = {f.index: f for f in make_folds(corpus.utterances, cfg.folds)} if any(
        generator_source(n)[0] == "fold" for n in generators) else {}
    regime, trainer = run.data.tags.get("regime", "?"), run.data.tags.get("trainer", DEFAULT_TRAINER)
    rows = []
    for name in sorted(generators, key=generator_order):
        # Session<N>: gan-federated's node generator, trained on session N; fold<N>: trained on fold N's training set.
        kind, number = generator_source(name)
        if kind == "session":
            utts = [u for u in corpus.utterances if u.session == number]
        elif number in folds:
            utts = list(folds[number].train)
        else:
            raise ValueError(f"generator {name} of run {run_id}: no such session or fold in the corpus of its "
                             f"config (folds: {sorted(folds) or '-'})")
        if not utts:
            raise ValueError(f"generator {name} of run {run_id}: the corpus has none of the utterances it was trained on")
        members, _, held_out = generator_split(corpus.labeled_set(utts, stats), cfg.model_copy(
            update={"audit": cfg.audit.model_copy(update={"enabled": True})}))
        start = time.perf_counter()
        figures = audit_generator(cfg, generators[name], members, held_out, seed=cfg.training.seed)
        log_audit(owners[name], figures, None if kind == "fold" else name)
        say(f"{name}: audited on {len(members)} member and {len(held_out)} held-out utterances in "
            f"{time.perf_counter() - start:.0f} s; logged to MLflow run {owners[name]}")
        rows.append({"regime": regime, "trainer": trainer, "seed": cfg.training.seed, "generator": name, **figures})
    return generators_markdown(rows)
