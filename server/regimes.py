"""The federated regimes, run by the ServerApp over the nodes (names as in DESIGN.md).

The training nodes are the session nodes, or a partition's nodes (``federation.partition``,
client/partitions.py); a fold's training nodes are those of its training sessions, and the
held-out session's whole-session node selects and scores its model.

- ``gan-federated`` (eyes-off, seed 002 §3.3): every training node fine-tunes the pre-trained GAN
  on its own data once and returns the generator; per fold the server trains the SER model on the
  streamed pool of the fold's training nodes' generators (``per_class_federated`` per emotion each,
  10K in §4.5) and the held-out session's node scores it (validation speaker for model selection,
  test speaker for the fold's metrics).
- ``gan-fedavg`` (FedGAN, Rasouli et al. 2020): per fold, the pre-trained GAN fine-tuned over the
  training nodes with generator and discriminator averaged every round, then SER as above;
- the strategy regimes (``fedavg``, ``fedprox``, ``fedyogi``, ``krum``, ... ``_strategy``): the
  configured SER trainer federated by that ``flwr.serverapp.strategy`` over the fold's training
  nodes (``federation.fraction_train`` of them per round), selected and scored at the held-out node.

No raw audio, features or per-utterance values ever reach the server: only weights and scalars.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from functools import partial
from typing import Any, cast

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flower

from common.attacks import (
    UpdateAttack,
    fedgan_update_attack,
    female_score,
    gender_attack,
    gender_classifier,
    public_genders,
    ser_update_attack,
    shadow_clients,
)
from common.audit import fake_trained_classifier
from common.config import STRATEGY_REGIMES, DpConfig
from common.features import MinMax, resolve_device
from common.metrics import confusion_from_cells
from common.models.sngan import Generator
from common.pipeline import pretrained, state_digest
from common.regimes import FoldOutcome, GeneratorStore, RegimeLog, fold_generator, stored_generator
from common.schema import StudyConfig
from common.splits import validates, validation_session
from common.synthesis import synthetic_sampler
from common.trainers.base import KeepBest, LoopResult
from common.trainers.registry import SerTrainer, build_trainer
from common.trainers.supervised import NetTrainer, fedavg_round
from common.views import LabeledSet
from server.federation import (
    Federation,
    NodeFailure,
    restore_fp32,
    stats_config,
    weighted_average,
)

log = logging.getLogger("fedser.server")
Score = Callable[[], float]
Selection = tuple[float | None, list[tuple[int, float]]]  # selected validation score, (round, score) pairs


def remote_scores(fed: Federation, session: int, state: dict[str, torch.Tensor], stats: MinMax,
                  split: str) -> dict:
    """Scores of SER weights ``state`` on ``session``'s ``split``, computed at the node holding it whole."""
    reply = fed.ask("evaluate", fed.evaluator(session), RecordDict({
        "arrays": ArrayRecord(state), "config": stats_config(stats, split=split),
    }))
    m = reply["metrics"]
    scores = {k: float(v) for k, v in m.items() if not k.startswith("cm_") and k != "num-examples"}
    return {**scores, "confusion": confusion_from_cells(m)}


def refusal(dp: DpConfig | None, metrics: Mapping[str, Any]) -> str | None:
    """Why a reply with these ``metrics`` is over the study's privacy budget (``training.dp.epsilon``,
    the ``epsilon`` metric a private node reports) or silent about it; None when it is accepted."""
    if dp is None:
        return None
    spent = metrics.get("epsilon")
    if spent is None:
        return "refused: it reports no epsilon, but training.dp is set (is the node running this config?)"
    if dp.epsilon is not None and float(spent) > dp.epsilon:
        return f"refused: it spent epsilon {float(spent):.4g}, over the budget training.dp.epsilon = {dp.epsilon:g}"
    return None


def within_budget(dp: DpConfig | None, replies: Mapping[str, RecordDict], failures: dict[str, str]) -> dict[str, RecordDict]:
    """The ``replies`` whose node spent at most the study's privacy budget (:func:`refusal`). One
    refused is left out, said in one line and recorded in ``failures`` (the run's failure tags)."""
    kept: dict[str, RecordDict] = {}
    for name, reply in replies.items():
        why = refusal(dp, reply["metrics"])
        if why is None:
            kept[name] = reply
            continue
        log.warning("%s: %s", name, why)
        failures.setdefault(name, why)
    return kept


def spent(replies: Mapping[str, RecordDict]) -> dict[str, float]:
    """Each reply's ``epsilon`` metric, by node (none when training.dp is off)."""
    return {name: float(r["metrics"]["epsilon"]) for name, r in replies.items() if "epsilon" in r["metrics"]}


class FederatedRegime:
    """What both federated regimes share: the nodes, the scaling statistics and the per-fold flow
    (fit with selection at the held-out node, then score it there)."""

    name = ""

    def __init__(self, fed: Federation, cfg: StudyConfig, stored: Mapping[str, torch.nn.Module] | None = None) -> None:
        """``stored``: generators of an earlier run (``synthesis.from_run``) used instead of training any."""
        self.fed, self.cfg, self.stored = fed, cfg, stored
        self.folds = tuple(cfg.folds.sessions)  # a fold is named by its held-out session
        self.log = RegimeLog(failures=fed.failures)
        self.epsilons: dict[str, float] = {}  # training.dp: what each node reported spending, by name
        self.update_scores: dict[str, list[float]] = {}  # the attack on updates: node -> P(female) per fold
        self.shadows: list[tuple[str, LabeledSet]] | None = None  # its shadow clients (none: no public speech)

    def run(self, todo: Collection[int], store: GeneratorStore) -> Iterator[FoldOutcome]:
        """Discover the nodes, then one outcome per fold in ``todo`` (skipped folds say why)."""
        if not todo:
            return
        start = time.perf_counter()
        nodes = self.fed.discover()
        self.log.metrics.update({"nodes": len(nodes), "training_nodes": len(self.fed.training()),
                                 "discovery_seconds": time.perf_counter() - start})
        self.log.nodes = {name: n.summary() for name, n in nodes.items()}
        if not nodes:
            raise RuntimeError(f"no node answered within federation.node_wait = {self.cfg.federation.node_wait} s; "
                               "are the SuperNodes connected?")
        self.prepare(store)
        for session in (s for s in self.folds if s in todo):
            outcome = self.fold(session)
            if outcome.skipped is None:  # what `flwr run --stream` (and `fedser study`) shows per fold
                m = outcome.metrics
                log.info("%s fold %s: macro-F1 %.3f UA %.3f WA %.3f", self.name, session, m["f1_macro"], m["ua"], m["wa"])
            yield outcome

    def prepare(self, store: GeneratorStore) -> None:
        """Work done once before the folds (none by default)."""

    def fold(self, test: int) -> FoldOutcome:
        """The fold that holds out ``test``."""
        raise NotImplementedError

    def stats(self, pretrain: MinMax) -> MinMax:
        """The pre-training corpus's and the nodes' min/max combined (seed 002 §4.2)."""
        return self.fed.combined_stats(pretrain)

    def scored(self, test: int, stats: MinMax, trainer: SerTrainer,
               fit: Callable[[Score | None], Selection]) -> FoldOutcome:
        """Fit with model selection at the held-out node (when it has a validation speaker), then
        score the selected model there on the test speaker(s). ``fit`` returns the selected
        model's validation score (None without selection) and every (step or round, score)."""
        start = time.perf_counter()
        torch.manual_seed(self.cfg.training.seed)
        score = None
        if validates(self.cfg.folds) and self.cfg.training.eval_every > 0:
            def score() -> float:
                return remote_scores(self.fed, validation_session(self.cfg.folds, test), trainer.state_dict(), stats,
                                     "validation")[trainer.selection]
        try:
            best, history = fit(score)
            metrics = remote_scores(self.fed, test, trainer.state_dict(), stats, "test")
        except NodeFailure as exc:
            log.warning("fold %s of %s cannot be scored: %s", test, self.name, exc)
            return self.skip(test, f"the held-out node cannot score: {exc}")
        return FoldOutcome(regime=self.name, fold=test, test_session=test, metrics=metrics, validation_score=best,
                           seconds=time.perf_counter() - start, selection=trainer.selection, history=history, model_digest=state_digest(trainer.state_dict()))

    def skip(self, test: int, reason: str) -> FoldOutcome:
        """A fold without metrics, and why."""
        return FoldOutcome(regime=self.name, fold=test, test_session=test, metrics={}, validation_score=None,
                           seconds=0.0, skipped=reason)

    def audit(self, generators: Mapping[str, Generator], at: Collection[str] | None = None) -> dict[str, dict[str, float]]:
        """The generator audit (common/audit.py) run by the nodes that own the data: each node's
        generator at that node, or one generator at every node of ``at`` (keyed by node name).
        Scalars come back only; a node that fails is recorded and left out."""
        if not self.cfg.audit.enabled or self.stored is not None:
            return {}
        def content(g: Generator) -> RecordDict:
            return RecordDict({"generator": ArrayRecord(g.state_dict()), "config": stats_config(self.scaling)})
        if at is None:
            asks = {s: content(g) for s, g in generators.items()}
        else:  # one generator, several nodes: its GAN-train classifier (generated data only) trained here once
            [g] = generators.values()
            shared = content(g)
            shared["classifier"] = ArrayRecord(fake_trained_classifier(self.cfg, g, self.cfg.training.seed).state_dict())
            asks = dict.fromkeys(at, shared)
        outcome = self.fed.exchange("query.audit", asks)
        for name, reason in outcome.failures.items():
            log.warning("audit at %s failed: %s", name, reason)
        return {s: {k: float(v) for k, v in reply["audit"].items()} for s, reply in outcome.replies.items()}

    def genders(self, nodes: Collection[str]) -> dict[str, str]:
        """The truth the gender attacks are scored against (the attacker does not use it): each node's
        gender, when the audit's gender attack is on and every node holds one speaker whose IEMOCAP
        id ends in it (``federation.partition = "speaker"``); empty otherwise."""
        audit = self.cfg.audit
        if not (audit.enabled and audit.gender_attack and self.cfg.federation.partition == "speaker"):
            return {}
        return {name: m[1] for name in nodes if (m := re.search(r"Ses\d\d[a-z]?([FM])$", name))}

    def shadow_clients(self, nodes: list[str]) -> list[tuple[str, LabeledSet]]:
        """The attack on updates' shadow clients (common/attacks.py), read once per regime; none when
        the nodes do not hold one speaker each (:meth:`genders`) or the public speech lacks a gender."""
        if not self.genders(nodes):
            return []
        if self.shadows is None:
            cfg = self.cfg
            try:
                self.shadows = shadow_clients(cfg, self.scaling, cfg.audit.gender_public_per_gender, cfg.training.seed)
            except (ValueError, OSError) as exc:  # no public speech of both genders: said, the study goes on
                log.warning("gender attack on updates skipped: %s", exc)
                self.shadows = []
        return self.shadows

    def score_updates(self, attack: UpdateAttack) -> None:
        """Each node's P(female) from this fold's updates, averaged with its earlier folds', and the
        figures over nodes, on the regime run (``gender_female_<node>``, ``gender_auc``, ...)."""
        for name, score in attack.scores().items():
            self.update_scores.setdefault(name, []).append(score)
        scores = {name: float(np.mean(v)) for name, v in self.update_scores.items()}
        figures = gender_attack(scores, self.genders(scores), seed=self.cfg.training.seed)
        log.info("gender attack on the updates of %d nodes: %s", len(scores), {k: round(v, 3) for k, v in figures.items()})
        self.log.metrics.update({**{f"gender_female_{name}": v for name, v in scores.items()}, **figures})

    def stored_generator(self, name: str) -> Generator:
        """Generator ``name`` of the run ``synthesis.from_run`` names (one line when it has none)."""
        assert self.stored is not None
        gen = cast(Generator, stored_generator(self.stored, name, self.cfg, self.name))
        return gen.to(resolve_device(self.cfg.training.device)).eval()


class GanFederated(FederatedRegime):
    """Fine-tune one generator per training node (once), then one SER model per fold on the pool
    of the fold's training nodes' generators."""

    name = "gan-federated"

    def prepare(self, store: GeneratorStore) -> None:
        gan = pretrained(self.cfg)
        gen, disc = gan.networks()
        self.scaling = self.stats(gan.pretrain_stats)
        device = resolve_device(self.cfg.training.device)
        trainers = [n.name for n in self.fed.training()]  # node order: the pool maps indices to generators by order
        if self.stored is not None:  # synthesis.from_run: SER from an earlier run's generators, no fine-tuning
            # A node that failed in that run has no generator there: the pool goes on without it.
            self.generators = {name: self.stored_generator(name) for name in trainers if name in self.stored}
            if not self.generators:
                self.stored_generator(trainers[0] if trainers else "Session1")  # the one-line error naming what the run has
            self.log.metrics["generators_reused"] = len(self.generators)
            return
        # A resumed run reuses the generators its killed predecessor received (same resolved config).
        stored = store.load()
        self.generators: dict[str, Generator] = {name: stored[name].to(device).eval() for name in trainers if name in stored}
        if self.generators:
            log.info("reusing the stored generators of %s", list(self.generators))
        start = time.perf_counter()
        content = RecordDict({"generator": ArrayRecord(gen.state_dict()),
                              "discriminator": ArrayRecord(disc.state_dict()), "config": stats_config(self.scaling)})
        ask = [name for name in trainers if name not in self.generators]
        outcome = self.fed.exchange("train.gan", dict.fromkeys(ask, content))
        replies = within_budget(self.cfg.training.dp, outcome.replies, self.fed.failures)
        self.epsilons = spent(replies)
        fresh: dict[str, Generator] = {}
        for name, reply in replies.items():
            g = Generator(gen.spec)
            g.load_state_dict(restore_fp32(reply["generator"]))
            fresh[name] = g.to(device).eval()
        merged = {**self.generators, **fresh}
        self.generators = {name: merged[name] for name in trainers if name in merged}
        sizes = [reply["generator"].count_bytes() for reply in outcome.replies.values()]
        self.log.metrics.update({"gan_round_seconds": time.perf_counter() - start,
                                 "generators_received": len(fresh), "generators_reused": len(self.generators) - len(fresh),
                                 "generator_failures": len(outcome.failures),
                                 "generators_refused": len(outcome.replies) - len(replies),
                                 **{f"epsilon_{name}": e for name, e in self.epsilons.items()},
                                 "generator_bytes": sizes[0] if sizes else 0.0})
        # Stored at once (the server holds no real data: its spectrogram grids show generated columns only).
        store.keep(fresh)
        log.info("generators from %d nodes, failures %s", len(self.generators), outcome.failures)
        self.log.audits.update(self.audit(fresh))
        self.log.metrics.update(self.gender_attack(fresh))

    def gender_attack(self, generators: Mapping[str, Generator]) -> dict[str, float]:
        """The speaker-gender attack (common/attacks.py) on the generators the nodes sent, with public
        speech only: each node's score (``gender_female_<node>``) and the figures over nodes. Run when
        every node holds one speaker whose IEMOCAP id ends in its gender (the truth it is scored
        against; the attacker does not use it)."""
        cfg = self.cfg
        genders = self.genders(generators)
        if not genders:
            return {}
        try:
            public = public_genders(cfg, self.scaling, cfg.audit.gender_public_per_gender, cfg.training.seed)
        except (ValueError, OSError) as exc:  # no public speech of both genders: said once, the study goes on
            log.warning("gender attack skipped: %s", exc)
            return {}
        clf = gender_classifier(cfg, public, cfg.training.seed)
        scores = {name: female_score(clf, g, cfg, cfg.training.seed) for name, g in generators.items() if name in genders}
        figures = gender_attack(scores, genders, seed=cfg.training.seed)
        log.info("gender attack on %d generators: %s", len(scores), {k: round(v, 3) for k, v in figures.items()})
        return {**{f"gender_female_{name}": v for name, v in scores.items()}, **figures}

    def fold(self, test: int) -> FoldOutcome:
        training = {n.name for n in self.fed.training(test)}
        sources = [g for name, g in self.generators.items() if name in training]
        if not sources:
            log.warning("fold %s: no training node's generator arrived; fold skipped", test)
            return self.skip(test, "no training node's generator arrived (see failure tags)")
        sample = synthetic_sampler(self.cfg, sources, self.cfg.synthesis.per_class_federated, test)
        trainer = build_trainer(self.cfg, resolve_device(self.cfg.training.device))
        def fit(score: Score | None) -> Selection:
            result = trainer.fit(sample, score)
            return (result.best_score if result.best_step is not None else None), result.evals

        outcome = self.scored(test, self.scaling, trainer, fit)
        fold_epsilons = [e for name, e in self.epsilons.items() if name in training]
        if fold_epsilons:  # training.dp: the most any source of the fold's pool spent
            outcome.metrics["epsilon"] = max(fold_epsilons)
        return outcome


class GanFedAvg(FederatedRegime):
    """FedGAN (Rasouli et al. 2020) per fold: the pre-trained GAN fine-tuned over the fold's training
    nodes, generator and discriminator averaged every round; then SER as in gan-federated, on a pool
    of that one generator as large as gan-federated's (``per_class_federated`` x training nodes)."""

    name = "gan-fedavg"

    def prepare(self, store: GeneratorStore) -> None:
        self.gan = pretrained(self.cfg)
        self.scaling = self.stats(self.gan.pretrain_stats)

    def fedgan(self, test: int, nodes: list[str]) -> Generator:
        """``federation.gan_rounds`` rounds of local conditional steps and weighted averaging."""
        cfg = self.cfg
        gen, disc = self.gan.networks()
        torch.manual_seed(cfg.training.seed + test)
        disc.replace_head(gen.spec.n_c + 1)  # stage 3's N_c + 1 discriminator, as in finetune()
        local = -(-cfg.training.finetune_iterations // cfg.federation.gan_rounds)
        self.epsilons = {}
        attack = self.fedgan_attack(nodes, local)
        for rnd in range(1, cfg.federation.gan_rounds + 1):
            content = RecordDict({"generator": ArrayRecord(gen.state_dict()), "discriminator": ArrayRecord(disc.state_dict()),
                                  "config": stats_config(self.scaling, **{"server-round": rnd, "local-steps": local,
                                                                             "fold": test})})
            outcome = self.fed.exchange("train.fedgan", dict.fromkeys(nodes, content))
            if attack is not None:  # the attacker sees every reply, over the budget or not
                sent = _networks(content)
                for name, reply in outcome.replies.items():
                    attack.observe(rnd, sent, _networks(reply), name)
            answered = within_budget(cfg.training.dp, outcome.replies, self.fed.failures)
            if not answered:
                raise NodeFailure(f"fold {test}", f"no training node answered FedGAN round {rnd} within budget: "
                                                  f"{outcome.failures or self.fed.failures}")
            self.epsilons = spent(answered)
            replies = list(answered.values())
            weights = [float(r["metrics"]["num-examples"]) for r in replies]
            gen.load_state_dict(weighted_average([r["generator"].to_torch_state_dict() for r in replies], weights))
            disc.load_state_dict(weighted_average([r["discriminator"].to_torch_state_dict() for r in replies], weights))
        if attack is not None:
            self.score_updates(attack)
        return gen.eval()

    def fedgan_attack(self, nodes: list[str], steps: int) -> UpdateAttack | None:
        """The shadow-model gender attack on this fold's FedGAN updates (common/attacks.py), when the
        nodes hold one speaker each and public speech of both genders is at hand."""
        shadows = self.shadow_clients(nodes)
        return fedgan_update_attack(self.cfg, steps, shadows, self.cfg.training.seed) if shadows else None

    def fold(self, test: int) -> FoldOutcome:
        nodes = [n.name for n in self.fed.training(test)]
        if not nodes:
            return self.skip(test, "no training node")
        start = time.perf_counter()
        try:
            gen = self.stored_generator(fold_generator(test)) if self.stored is not None else self.fedgan(test, nodes)
        except NodeFailure as exc:
            log.warning("fold %s of %s: %s", test, self.name, exc)
            return self.skip(test, str(exc))
        gen = gen.to(resolve_device(self.cfg.training.device))
        seconds = time.perf_counter() - start
        figures = list(self.audit({fold_generator(test): gen}, at=nodes).values())  # the nodes whose data trained it
        sample = synthetic_sampler(self.cfg, [gen], self.cfg.synthesis.per_class_federated * len(nodes), test)
        trainer = build_trainer(self.cfg, resolve_device(self.cfg.training.device))

        def fit(score: Score | None) -> Selection:
            result = trainer.fit(sample, score)
            return (result.best_score if result.best_step is not None else None), result.evals

        outcome = self.scored(test, self.scaling, trainer, fit)
        outcome.seconds += seconds
        outcome.generators = [gen.cpu()]
        if self.epsilons:  # training.dp: the most a node had spent after the fold's last round
            outcome.metrics["epsilon"] = max(self.epsilons.values())
        if figures:  # the mean over the training nodes (each audits its own members and held-out data)
            outcome.audit = {k: float(np.mean([f[k] for f in figures])) for k in figures[0]}
        return outcome


def _networks(content: RecordDict) -> dict[str, torch.Tensor]:
    """A FedGAN message's generator and discriminator as one state, ``generator.`` / ``discriminator.``."""
    return {f"{net}.{k}": v for net in ("generator", "discriminator")
            for k, v in content[net].to_torch_state_dict().items()}  # type: ignore[union-attr]


def _strategy(cfg: StudyConfig, name: str, sampled: int) -> flower.Strategy:
    """Flower's strategy ``name`` as the config sets it. ``sampled``: nodes asked per round (what
    the DP wrappers calibrate their noise to). fraction_evaluate 0: the training nodes do not
    evaluate; the held-out node does (evaluate_fn)."""
    fed = cfg.federation
    common: dict[str, Any] = {"fraction_train": fed.fraction_train, "fraction_evaluate": 0.0,
              "min_train_nodes": sampled, "min_available_nodes": 1}
    eta = {"eta": fed.server_lr, "eta_l": cfg.training.ser_lr}
    build: dict[str, Callable[[], flower.Strategy]] = {
        "fedavg": lambda: flower.FedAvg(**common),
        "fedprox": lambda: flower.FedProx(**common, proximal_mu=fed.proximal_mu),
        "fedadam": lambda: flower.FedAdam(**common, **eta),
        "fedadagrad": lambda: flower.FedAdagrad(**common, **eta),
        "fedyogi": lambda: flower.FedYogi(**common, **eta),
        "fedavgm": lambda: flower.FedAvgM(**common, server_momentum=fed.server_momentum),
        "fedmedian": lambda: flower.FedMedian(**common),
        "fedtrimmedavg": lambda: flower.FedTrimmedAvg(**common, beta=fed.trim_beta),
        "krum": lambda: flower.Krum(**common, num_malicious_nodes=fed.num_malicious),
        "multikrum": lambda: flower.MultiKrum(**common, num_malicious_nodes=fed.num_malicious,
                                              num_nodes_to_select=max(1, sampled - fed.num_malicious)),
        "bulyan": lambda: flower.Bulyan(**common, num_malicious_nodes=fed.num_malicious),
        "qfedavg": lambda: flower.QFedAvg(client_learning_rate=cfg.training.ser_lr, q=fed.qffl_q, **common),
        "dp-fixed": lambda: flower.DifferentialPrivacyServerSideFixedClipping(
            flower.FedAvg(**common), noise_multiplier=fed.dp_noise, clipping_norm=fed.dp_clip, num_sampled_clients=sampled),
        "dp-adaptive": lambda: flower.DifferentialPrivacyServerSideAdaptiveClipping(
            flower.FedAvg(**common), noise_multiplier=fed.dp_noise, num_sampled_clients=sampled,
            initial_clipping_norm=fed.dp_clip),
    }
    return build[name]()


class StrategyRegime(FederatedRegime):
    """Per fold: one of Flower's strategies over the fold's training nodes, selected (KeepBest
    over the rounds) and scored at the held-out node; the regime is named after the strategy."""

    def __init__(self, fed: Federation, cfg: StudyConfig, stored: Mapping[str, torch.nn.Module] | None = None,
                 *, strategy: str = "fedavg") -> None:
        super().__init__(fed, cfg, stored)
        self.name = strategy

    def prepare(self, store: GeneratorStore) -> None:
        # No GAN here; with a checkpoint its pre-training corpus counts as in every regime.
        has_gan = self.cfg.pretrained_path.is_file()
        self.scaling = self.stats(pretrained(self.cfg).pretrain_stats if has_gan else MinMax.empty())

    def fold(self, test: int) -> FoldOutcome:
        nodes = self.fed.training(test)
        if not nodes:
            log.warning("fold %s: no training node; fold skipped", test)
            return self.skip(test, "no training node")
        trainer = build_trainer(self.cfg, resolve_device(self.cfg.training.device))
        # The fold's training sessions (public metadata, no data): nodes derive speaker indices.
        sessions = sorted({n.session for n in nodes})
        # Flower samples max(int(N * fraction_train), min_train_nodes) and waits, unbounded, until
        # that many nodes are online: never ask for more than the fold has.
        fed = self.cfg.federation
        sampled = min(len(nodes), max(int(len(nodes) * fed.fraction_train), fed.min_train_nodes))
        self.log.metrics["sampled_per_round"] = sampled

        self.epsilons = {}
        attack = self.update_attack(trainer, [n.name for n in nodes])

        def screen(reply: Message) -> str | None:
            # training.dp: a node's DP-SGD reply over the budget (or silent about it) is refused
            # before the strategy aggregates it; what the accepted ones spent is the fold's epsilon.
            if reply.metadata.message_type != "train":
                return None
            if attack is not None:  # the attacker sees every update that arrives, refused or not
                sent = self.fed.grid.ledger.sent[reply.metadata.reply_to_message_id].content
                attack.observe(int(cast(int, sent["config"]["server-round"])), sent["arrays"].to_torch_state_dict(),
                               reply.content["arrays"].to_torch_state_dict(), self.fed.grid.who(reply.metadata.src_node_id))
            metrics = reply.content["metrics"]
            why = refusal(self.cfg.training.dp, metrics)
            if why is None and "epsilon" in metrics:
                name = self.fed.grid.who(reply.metadata.src_node_id)
                self.epsilons[name] = max(self.epsilons.get(name, 0.0), float(cast(float, metrics["epsilon"])))
            return why

        def fit(score: Score | None) -> Selection:
            keep = KeepBest(trainer)

            def evaluate_fn(rnd: int, arrays: ArrayRecord) -> MetricRecord | None:
                trainer.load_state_dict(arrays.to_torch_state_dict())
                if score is None:
                    return None
                value = score()
                keep.on_eval(rnd, value, {})
                return MetricRecord({f"val_{trainer.selection}": value})

            # Flower's strategies sample nodes with Python's global `random` (strategy_utils.py):
            # seeded per fold, a resumed fold draws what an uninterrupted study would.
            random.seed(self.cfg.training.seed + test)
            answered = self.fed.grid.ledger.answered["train"]
            start = time.perf_counter()
            result = _strategy(self.cfg, self.name, sampled).start(
                grid=self.fed.grid.restrict([n.node_id for n in nodes], screen), initial_arrays=ArrayRecord(trainer.state_dict()),
                num_rounds=fed.rounds, timeout=fed.timeout,
                # proximal-mu: 0 unless FedProx's configure_train sets its own; the node reads it
                # strictly, so a strategy that stops sending it fails instead of training as FedAvg.
                train_config=stats_config(self.scaling, **{"train-sessions": sessions, "proximal-mu": 0.0}),
                evaluate_fn=evaluate_fn,
            )
            # Wall seconds of one round (sampling, the nodes' training, aggregation, the held-out
            # node's validation): benchmarks/scale.py's figure.
            self.log.metrics["round_seconds"] = (time.perf_counter() - start) / fed.rounds
            # What the nodes did, not what was asked: train replies that arrived, per round.
            self.log.metrics["trained_per_round"] = (self.fed.grid.ledger.answered["train"] - answered) / fed.rounds
            if result.arrays is not None:
                trainer.load_state_dict(result.arrays.to_torch_state_dict())
            keep.on_end(LoopResult())  # model selection: the best round, when one was scored
            return (keep.best if keep.evals else None), keep.evals

        outcome = self.scored(test, self.scaling, trainer, fit)
        if self.epsilons:  # training.dp: the most a node had spent after its last round of the fold
            outcome.metrics["epsilon"] = max(self.epsilons.values())
        if attack is not None:
            self.score_updates(attack)
        return outcome

    def update_attack(self, trainer: SerTrainer, nodes: list[str]) -> UpdateAttack | None:
        """The shadow-model gender attack on this fold's SER updates (common/attacks.py), when the
        nodes hold one speaker each and public speech of both genders is at hand."""
        shadows = self.shadow_clients(nodes) if isinstance(trainer, NetTrainer) else []
        if not shadows:
            return None
        cfg, device = self.cfg, resolve_device(self.cfg.training.device)
        return ser_update_attack(lambda: cast(NetTrainer, build_trainer(cfg, device)),
                                 lambda t, data, rnd, seed: fedavg_round(t, data, round_=rnd, seed=seed), shadows,
                                 cfg.training.seed)


REGIMES: dict[str, Callable[[Federation, StudyConfig, Mapping[str, torch.nn.Module] | None], FederatedRegime]] = {
    "gan-federated": GanFederated, "gan-fedavg": GanFedAvg,
    **{name: partial(StrategyRegime, strategy=name) for name in STRATEGY_REGIMES},
}
