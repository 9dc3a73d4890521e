"""The federated regimes, run by the ServerApp over the session nodes (names as in DESIGN.md).

- ``gan-federated`` (eyes-off, seed 002 §3.3): every node fine-tunes the pre-trained GAN on its own
  session once and returns the generator; per fold the server trains the SER model on the streamed
  pool of the four training sessions' generators (``per_class_federated`` per emotion each, 10K in
  §4.5) and the held-out session's node scores it (validation speaker for model selection, test
  speaker for the fold's metrics).
- ``fedavg``: FedAvg / FedProx / FedAdam (``flwr.serverapp.strategy``) of the configured SER trainer
  over the four training nodes of each fold, selected and scored at the held-out node.

No raw audio, features or per-utterance values ever reach the server: only weights and scalars.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, Strategy

from common.config import StudyConfig
from common.features import MinMax, resolve_device
from common.models.sngan import Generator
from common.pipeline import load_checkpoint, load_pretrained, pretrain_stats, pretrained_checkpoint
from common.regimes import FoldOutcome, synthetic_sampler
from common.trainers.registry import SerTrainer, build_trainer
from server.federation import Federation, NodeFailure, confusion_from, restore_fp32, stats_config
from server.tracking import Tracker, log_generators

log = logging.getLogger("fedser.server")
FoldRunner = Callable[[int, int], FoldOutcome | None]  # (fold index, test session) -> outcome


def remote_scores(fed: Federation, session: int, state: dict[str, torch.Tensor], stats: MinMax,
                  split: str) -> dict:
    """Scores of SER weights ``state`` on ``session``'s ``split``, computed at that session's node."""
    reply = fed.ask("evaluate", session, RecordDict({
        "arrays": ArrayRecord(state), "config": stats_config(stats, split=split),
    }))
    m = reply["metrics"]
    scores = {k: float(v) for k, v in m.items() if not k.startswith("cm-") and k != "num-examples"}
    return {**scores, "confusion": confusion_from(m)}


def _selects(cfg: StudyConfig) -> bool:
    # Model selection needs a validation speaker at the held-out node.
    return cfg.folds.holdout == "speaker" and cfg.training.eval_every > 0


def gan_federated(fed: Federation, cfg: StudyConfig, tracker: Tracker, per_fold: Callable) -> list[FoldOutcome]:
    """Fine-tune one generator per session node (once), then one SER model per fold on their pool."""
    ckpt = pretrained_checkpoint(cfg)
    gen, disc, _ = load_pretrained(cfg, ckpt)
    stats = fed.combined_stats(pretrain_stats(ckpt))
    start = time.perf_counter()
    content = RecordDict({"generator": ArrayRecord(gen.state_dict()), "discriminator": ArrayRecord(disc.state_dict()),
                          "config": stats_config(stats)})
    outcome = fed.exchange("train.gan", dict.fromkeys(fed.nodes, content))
    generators: dict[int, Generator] = {}
    for session, reply in sorted(outcome.replies.items()):
        g = Generator(gen.spec)
        g.load_state_dict(restore_fp32(reply["generator"]))
        generators[session] = g.to(resolve_device(cfg.training.device)).eval()
    sizes = [reply["generator"].count_bytes() for reply in outcome.replies.values()]
    tracker.metrics({"gan_round_seconds": time.perf_counter() - start, "generators_received": len(generators),
                     "generator_failures": len(outcome.failures),
                     "generator_bytes": sizes[0] if sizes else 0.0})
    log.info("generators from sessions %s, failures %s", sorted(generators), outcome.failures)
    with tempfile.TemporaryDirectory() as tmp:  # the server holds no real data: generated columns only
        log_generators(tracker, cfg.data.classes, {f"Session{s}": g for s, g in generators.items()}, None, Path(tmp))

    def fold(index: int, test: int) -> FoldOutcome | None:
        sources = [g for s, g in generators.items() if s != test]
        if not sources:
            log.warning("fold %s: no training session's generator arrived; fold skipped", index)
            return None
        sample = synthetic_sampler(cfg, sources, cfg.synthesis.per_class_federated, index)
        trainer = build_trainer(cfg, resolve_device(cfg.training.device))
        def fit(score: Callable[[], float] | None) -> float | None:
            result = trainer.fit(sample, score)
            return result.best_score if result.best_step is not None else None

        return _fit_and_score(fed, cfg, "gan-federated", index, test, stats, trainer, fit)

    return per_fold(fold)


STRATEGIES: dict[str, Callable[[StudyConfig], Strategy]] = {
    # fraction_evaluate 0: the training nodes do not evaluate; the held-out node does (evaluate_fn).
    # min nodes 1: a fold goes on with the training nodes that answer (built-in waits are unbounded).
    "fedavg": lambda cfg: FedAvg(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1),
    "fedprox": lambda cfg: FedProx(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1,
                                   proximal_mu=cfg.federation.proximal_mu),
    "fedadam": lambda cfg: FedAdam(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1,
                                   eta=cfg.federation.server_lr, eta_l=cfg.training.ser_lr),
}


def fedavg(fed: Federation, cfg: StudyConfig, tracker: Tracker, per_fold: Callable) -> list[FoldOutcome]:
    """Per fold: the configured strategy over the training nodes, scored at the held-out node."""
    # fedavg needs no GAN; with a checkpoint its pre-training corpus counts as in every regime.
    has_ckpt = cfg.pretrained_path.is_file()
    stats = fed.combined_stats(pretrain_stats(load_checkpoint(cfg.pretrained_path)) if has_ckpt else MinMax.empty())

    def fold(index: int, test: int) -> FoldOutcome | None:
        train_nodes = [n.node_id for s, n in fed.nodes.items() if s != test]
        if not train_nodes:
            log.warning("fold %s: no training node; fold skipped", index)
            return None
        trainer = build_trainer(cfg, resolve_device(cfg.training.device))

        def fit(score: Callable[[], float] | None) -> float | None:
            best = {"score": -math.inf, "state": None}

            def evaluate_fn(rnd: int, arrays: ArrayRecord) -> MetricRecord | None:
                trainer.load_state_dict(arrays.to_torch_state_dict())
                if score is None:
                    return None
                value = score()
                if value > best["score"]:
                    best.update(score=value, state={k: v.clone() for k, v in trainer.state_dict().items()})
                return MetricRecord({f"val_{trainer.selection}": value})

            # The fold's training sessions (public metadata, no data): nodes derive speaker indices.
            sessions = [s for s in fed.nodes if s != test]
            result = STRATEGIES[cfg.federation.strategy](cfg).start(
                grid=fed.grid.restrict(train_nodes), initial_arrays=ArrayRecord(trainer.state_dict()),
                num_rounds=cfg.federation.rounds, timeout=cfg.federation.timeout,
                train_config=stats_config(stats, **{"train-sessions": sessions}), evaluate_fn=evaluate_fn,
            )
            for rnd, metrics in result.evaluate_metrics_serverapp.items():
                key = f"val_{trainer.selection}"
                tracker.metrics({f"{key}_round": float(metrics[key])}, step=rnd)
            if best["state"] is not None:
                trainer.load_state_dict(best["state"])  # model selection: the best round
                return best["score"]
            if result.arrays is not None:
                trainer.load_state_dict(result.arrays.to_torch_state_dict())
            return None

        return _fit_and_score(fed, cfg, "fedavg", index, test, stats, trainer, fit)

    return per_fold(fold)


def _fit_and_score(fed: Federation, cfg: StudyConfig, regime: str, index: int, test: int, stats: MinMax,
                   trainer: SerTrainer, fit: Callable[[Callable[[], float] | None], float | None]) -> FoldOutcome | None:
    """Fit with model selection at the held-out node (``fit`` returns the selected model's
    validation macro-F1), then score it there on the test speaker(s)."""
    start = time.perf_counter()
    torch.manual_seed(cfg.training.seed)
    score = None
    if _selects(cfg):
        def score() -> float:
            return remote_scores(fed, test, trainer.state_dict(), stats, "validation")[trainer.selection]
    try:
        val = fit(score)
        metrics = remote_scores(fed, test, trainer.state_dict(), stats, "test")
    except NodeFailure as exc:
        log.warning("fold %s of %s cannot be scored: %s", index, regime, exc)
        return None
    return FoldOutcome(regime, index, test, metrics, val, time.perf_counter() - start,
                       selection=trainer.selection)


REGIMES: dict[str, Callable[[Federation, StudyConfig, Tracker, Callable], list[FoldOutcome]]] = {
    "gan-federated": gan_federated,
    "fedavg": fedavg,
}
