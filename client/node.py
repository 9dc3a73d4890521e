"""What a node does with each message: one IEMOCAP session (or a partition's shard of it) whose
audio never leaves it.

Handlers (message types, notes/flower-1.41.md §1.1), each ``(content, context) -> reply content``
(the ClientApp, client/app.py, wraps them in Flower messages):

- ``query``: the node's session, utterance counts per class and feature min/max (scalars);
- ``train.gan``: fine-tune the received pre-trained GAN on this session (stage 3, seed 002 §3.2),
  reply with the generator only;
- ``train.fedgan``: one FedGAN round (gan-fedavg): local conditional steps from the received
  generator and discriminator, reply with both;
- ``query.audit``: the generator audit of a received generator on this session (scalars only);
- ``train``: one FedAvg round of the configured SER trainer on this session;
- ``evaluate``: score received SER weights on this session's validation or test speaker(s).

Replies carry weights (``ArrayRecord``) and scalars (``MetricRecord``/``ConfigRecord``) only; the
server's wire audit (server/federation.py) records what every reply held.

What a node holds: deployment nodes say so in their node config (``session``, ``data-root`` for
where their copy of the corpus is, optionally ``work-dir`` for their feature cache). Simulated
node ``partition-id`` i < 5 holds the i-th of IEMOCAP's five sessions whole; with
``federation.partition`` other than "session", node 5 + j is the j-th training node of the
partition (client/partitions.py: sessions in order, then the shards of each), and the
whole-session nodes only evaluate. A node's config, data and scaled splits are read once per run
and kept by the process that serves it: a Ray actor in a simulation, the node's worker
(client/worker.py) in a deployment.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from client.partitions import nodes_per_session, partition_listing, shard, shard_of
from common import threads
from common.audit import (
    GeneratorSplit,
    audit_generator,
    classifier,
    generator_split,
    reference_classifier,
    selector,
)
from common.config import SESSIONS
from common.corpora.base import Utterance
from common.data import Corpus, load_corpus
from common.features import MinMax, resolve_device
from common.metrics import confusion_cells
from common.models.sngan import Discriminator, GanSpec, Generator
from common.pipeline import fedgan_plan, fedgan_round, finetune, iemocap_speakers
from common.privacy import private_plan
from common.schema import StudyConfig, config_from_run
from common.splits import holdout_split, session_name
from common.trainers.registry import build_trainer
from common.trainers.ser import SerCnnTrainer
from common.trainers.supervised import fedavg_round
from common.views import LabeledSet


@dataclass
class Node:
    """What this node holds in one run: the study config, its session, its data (the whole
    session, or training node ``shard`` of it) with features, and the scaled splits built so far
    (each once per run and scaling)."""

    cfg: StudyConfig
    session: int
    corpus: Corpus
    name: str = ""
    shard: int | None = None  # index of this training node within its session; None: the whole session
    splits: dict[tuple[str, MinMax, tuple[str, ...]], LabeledSet] = field(default_factory=dict)
    references: dict[MinMax, SerCnnTrainer] = field(default_factory=dict)

    @property
    def key(self) -> int:
        """A small integer per node of a run, for seeds: the session (as before partitions), plus
        100 per shard index."""
        return self.session + (0 if self.shard is None else 100 * (self.shard + 1))

    @property
    def slow(self) -> bool:
        """Whether the straggler drill (``federation.slow_fraction``) makes this training node slow:
        a hash of its name and the seed, so the same nodes are slow on every run."""
        fed = self.cfg.federation
        digest = hashlib.sha256(f"{self.cfg.training.seed}:{self.name}".encode()).digest()
        return self.shard is not None and int.from_bytes(digest[:8], "big") / 2**64 < fed.slow_fraction

    def split(self, name: str, stats: MinMax, speakers: tuple[str, ...] = ()) -> LabeledSet:
        """The scaled ``train`` (everything the node holds), ``validation`` or ``test`` set; ``speakers``
        is the fold's speaker vocabulary for trainers with a speaker head. ``members``,
        ``selection`` and ``held_out``: the session split for the generator (common/audit.py:
        generator_split): it trains on the members only when the audit or selection is on."""
        key = (name, stats, speakers)
        if key not in self.splits:
            if name in GeneratorSplit._fields:  # the three parts cut once, together
                split = generator_split(self.split("train", stats, speakers), self.cfg)
                self.splits |= {(part, stats, speakers): getattr(split, part) for part in GeneratorSplit._fields}
                return self.splits[key]
            utts = self.corpus.utterances
            if name != "train":
                validation, test, _ = holdout_split(utts, self.session, self.cfg.folds)
                utts = {"validation": validation, "test": test}[name]
            self.splits[key] = self.corpus.labeled_set(list(utts), stats, speakers)
        return self.splits[key]

    def reference(self, stats: MinMax) -> SerCnnTrainer:
        """The audit's classifier trained on this node's members (once per run and scaling)."""
        if stats not in self.references:
            self.references[stats] = reference_classifier(self.cfg, self.split("members", stats), self.cfg.training.seed)
        return self.references[stats]


# Simulated nodes are Ray actors, each serving messages of several nodes of a run: the config is
# validated and a node's session read once per run, actor and node. (A deployed SuperNode starts a process per
# message; there the prepared corpus manifest and feature cache keep that start cheap.)
_NODES: dict[tuple[int, str], Node] = {}


def role_of(node_config: Mapping[str, Any], cfg: StudyConfig) -> tuple[int, int | None]:
    """(session, training-node index within it, or None for a node holding the whole session):
    node config ``session``, else from ``partition-id`` (module docstring)."""
    if "session" in node_config:
        return int(node_config["session"]), None
    if "partition-id" not in node_config:
        raise ValueError("node config has neither `session` nor `partition-id`; start the SuperNode with "
                         "--node-config \"session=N data-root='/path/IEMOCAP_full_release'\"")
    pid = int(node_config["partition-id"])
    if pid < len(SESSIONS):
        return SESSIONS[pid], None
    if cfg.federation.partition == "session":
        raise ValueError(f"partition-id {pid}: the simulation has more nodes than IEMOCAP's {len(SESSIONS)} "
                         f"sessions; run it with num-supernodes={len(SESSIONS)}")
    return shard_of(pid - len(SESSIONS), nodes_per_session(listing(cfg), cfg.federation))


_LISTINGS: dict[str, tuple[Utterance, ...]] = {}


def listing(cfg: StudyConfig) -> tuple[Utterance, ...]:
    """The corpus listing partitions are cut from, read once per process and corpus (an actor
    serves many nodes of a run: at 1,000 nodes, re-reading it per node would dominate)."""
    key = cfg.data.model_dump_json() + str(cfg.work_dir)
    if key not in _LISTINGS:
        _LISTINGS[key] = partition_listing(cfg)
    return _LISTINGS[key]


@dataclass(frozen=True)
class Where:
    """What a handler needs of Flower's Context: the run and the node's config (plain values,
    so that a deployed node's worker gets them over a socket)."""

    run_id: int
    node_config: Mapping[str, Any]
    run_config: Mapping[str, Any]
    # Flower's Context.state: this node's records kept between the messages of a run (a handler
    # may change it; a deployed node's worker sends it back with the reply).
    state: RecordDict = field(default_factory=RecordDict)


def node_of(where: Where) -> Node:
    """This node's session and data (validated and read once per run)."""
    key = (where.run_id, json.dumps(dict(where.node_config), sort_keys=True, default=str))
    if key not in _NODES:
        cfg = config_from_run(where.run_config)
        node = where.node_config
        if "data-root" in node:
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": Path(str(node["data-root"]))})})
        elif cfg.federation.node_data_root is not None:  # a simulation whose nodes hold their own copy
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": cfg.federation.node_data_root})})
        if "work-dir" in node:  # the node's own outputs (feature cache): not the server's folder
            cfg = cfg.model_copy(update={"work_dir": Path(str(node["work-dir"])).resolve()})
        # The cores Ray gave this node, before reading (a cache miss extracts features).
        threads.set_threads(cfg.federation.client_cpus)
        session, index = role_of(node, cfg)
        name, ids = session_name(session), None
        if index is not None:  # a training node: its shard of the session, derived here
            held, utts = shard(listing(cfg), session, index, cfg.federation, cfg.training.seed)
            name, ids = held.name, {u.id for u in utts}
        corpus = load_corpus(cfg, sessions={session}, ids=ids)
        if not corpus.utterances and index is None:
            raise ValueError(f"node for Session{session}: no usable utterances under "
                             f"{cfg.data.root or cfg.corpus_dir}; check the node's data-root")
        for stale in [k for k in _NODES if k[0] != where.run_id]:  # an earlier run's nodes
            del _NODES[stale]
        _NODES[key] = Node(cfg, session, corpus, name, index)
    threads.set_threads(_NODES[key].cfg.federation.client_cpus)
    return _NODES[key]


def _check_failure(node: Node, handler: str) -> None:
    """Failure drills: ``federation.failures`` names handlers that raise on given sessions."""
    if f"{handler}:{node.session}" in node.cfg.federation.failures:
        raise RuntimeError(f"injected failure: {handler} on {node.name} (federation.failures)")


def _stats(config: ConfigRecord) -> MinMax:
    """The server's combined scaling statistics (seed 002 §4.2)."""
    return MinMax(float(config["lo"]), float(config["hi"]))


def query(content: RecordDict, where: Where) -> RecordDict:
    """Session, name and training-node index (-1: the whole session), utterance counts per class,
    feature min/max: scalars only."""
    node = node_of(where)
    _check_failure(node, "query")
    stats = node.corpus.overall
    counts = {f"count-{c}": sum(u.label == c for u in node.corpus.utterances) for c in node.cfg.data.classes}
    return RecordDict({
        "node": ConfigRecord({"session": node.session, "name": node.name,
                              "shard": -1 if node.shard is None else node.shard}),
        "metrics": MetricRecord({"utterances": len(node.corpus.utterances), **counts,
                                 "feat-min": stats.lo, "feat-max": stats.hi}),
    })


def _straggle(node: Node) -> None:
    """The straggler drill: a slow training node sleeps before it trains (``federation.slow_*``)."""
    if node.slow:
        time.sleep(node.cfg.federation.slow_seconds)


def train_gan(content: RecordDict, where: Where) -> RecordDict:
    """Fine-tune the received pre-trained GAN on this session; reply with the generator only."""
    node = node_of(where)
    _check_failure(node, "train.gan")
    _straggle(node)
    cfg, start = node.cfg, time.perf_counter()
    spec = GanSpec.of(cfg)
    gen, disc = Generator(spec), Discriminator(spec, head=1)
    gen.load_state_dict(content["generator"].to_torch_state_dict())
    disc.load_state_dict(content["discriminator"].to_torch_state_dict())
    stats = _stats(content["config"])
    train = node.split("members", stats)
    select = selector(cfg, GeneratorSplit(train, node.split("selection", stats), node.split("held_out", stats)),
                      node.reference(stats) if cfg.training.finetune_select_every else None, cfg.training.seed)
    torch.manual_seed(cfg.training.seed + node.key)
    gen = finetune(cfg, gen, disc, train, select=select)
    private = private_plan(cfg.training, len(train), cfg.training.finetune_iterations)
    return RecordDict({
        "generator": ArrayRecord(_wire(cfg, gen.state_dict())),
        "metrics": MetricRecord({"num-examples": len(train), "seconds": time.perf_counter() - start,
                                 **({} if private is None else {"epsilon": private.epsilon()})}),
    })


def _wire(cfg: StudyConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights as they travel back: fp16 when ``federation.generator_fp16``."""
    if not cfg.federation.generator_fp16:
        return state
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


# Context.state keys of a FedGAN node: its Adam moments and the fold they belong to.
MOMENTS, MOMENTS_FOLD = "fedgan.moments", "fedgan.fold"


def train_fedgan(content: RecordDict, where: Where) -> RecordDict:
    """One FedGAN round (gan-fedavg): ``local-steps`` conditional steps on this session's members
    from the received generator and discriminator; reply with both (the server averages them)."""
    node = node_of(where)
    _check_failure(node, "train.gan")
    _straggle(node)
    cfg, config = node.cfg, content["config"]
    spec = GanSpec.of(cfg)
    gen, disc = Generator(spec), Discriminator(spec, head=spec.n_c + 1)
    gen.load_state_dict(content["generator"].to_torch_state_dict())
    disc.load_state_dict(content["discriminator"].to_torch_state_dict())
    train = node.split("members", _stats(config))
    rnd, fold = int(config["server-round"]), int(config["fold"])
    keep = cfg.federation.gan_local_state
    # The Adam moments of this node's previous round of this fold (federation.gan_local_state).
    kept = keep and rnd > 1 and MOMENTS in where.state and where.state[MOMENTS_FOLD]["fold"] == fold
    steps = int(config["local-steps"])
    moments = fedgan_round(cfg, gen, disc, train, seed=cfg.training.seed + 1000 * rnd + node.key, round_=rnd,
                           steps=steps,
                           moments=where.state[MOMENTS].to_torch_state_dict() if kept else None)  # type: ignore[union-attr]
    if keep:
        where.state[MOMENTS], where.state[MOMENTS_FOLD] = ArrayRecord(moments), ConfigRecord({"fold": fold})
    # training.dp: what this node has spent on the fold so far (its noise covers all the fold's rounds).
    private = fedgan_plan(cfg, len(train), steps)
    return RecordDict({
        "generator": ArrayRecord(gen.cpu().state_dict()), "discriminator": ArrayRecord(disc.cpu().state_dict()),
        "metrics": MetricRecord({"num-examples": len(train),
                                 **({} if private is None else {"epsilon": private.epsilon(rnd * steps)})}),
    })


def audit(content: RecordDict, where: Where) -> RecordDict:
    """The generator audit (common/audit.py) of the received generator against this session's
    members and held-out utterances: scalars only."""
    node = node_of(where)
    _check_failure(node, "query")
    stats = _stats(content["config"])
    spec = GanSpec.of(node.cfg)
    gen = Generator(spec)
    gen.load_state_dict(content["generator"].to_torch_state_dict())
    on_fake = None
    if "classifier" in content:  # GAN-train's classifier, trained once by the server (gan-fedavg)
        on_fake = classifier(node.cfg, node.cfg.training.seed + 1)
        on_fake.load_state_dict(content["classifier"].to_torch_state_dict())
    figures = audit_generator(node.cfg, gen.eval(), node.split("members", stats), node.split("held_out", stats),
                              reference=node.reference(stats), seed=node.cfg.training.seed, on_fake=on_fake)
    return RecordDict({"audit": MetricRecord(figures)})


def train(content: RecordDict, where: Where) -> RecordDict:
    """One FedAvg round: start from the received weights, ``local_iterations`` steps on this session."""
    node = node_of(where)
    _check_failure(node, "train")
    _straggle(node)
    cfg, config = node.cfg, content["config"]
    trainer = build_trainer(cfg, resolve_device(cfg.training.device))
    trainer.load_state_dict(content["arrays"].to_torch_state_dict())
    # Speaker indices (seed 001's speaker head) from the fold's training sessions alone: every
    # node derives the same vocabulary without seeing another node's data (common.pipeline).
    speakers = iemocap_speakers([int(s) for s in config["train-sessions"]]) if "train-sessions" in config else ()
    data = node.split("train", _stats(config), speakers)
    rnd = int(config["server-round"])
    if "proximal-mu" not in config:  # every strategy regime sends it (FedProx its mu, the others 0)
        raise ValueError("train: the config has no 'proximal-mu' (the server's StrategyRegime sends it; "
                         "is the ServerApp from another fedser version?)")
    result, private = fedavg_round(trainer, data, round_=rnd, seed=cfg.training.seed + 1000 * rnd + node.key,
                                   proximal_mu=float(config["proximal-mu"]))
    local = cfg.federation.local_iterations
    return RecordDict({
        "arrays": ArrayRecord(trainer.state_dict()),
        # train_loss: what QFedAvg weighs nodes by (q-FFL)
        "metrics": MetricRecord({"num-examples": len(data), "loss": result.last.get("loss", 0.0),
                                 "train_loss": result.last.get("loss", 0.0),
                                 **({} if private is None else {"epsilon": private.epsilon(rnd * local)})}),
    })


def evaluate(content: RecordDict, where: Where) -> RecordDict:
    """Macro-F1 / UA / WA and the confusion matrix (as ``cm_i_j`` scalars) of the received weights."""
    node = node_of(where)
    _check_failure(node, "evaluate")
    config = content["config"]
    trainer = build_trainer(node.cfg, resolve_device(node.cfg.training.device))
    trainer.load_state_dict(content["arrays"].to_torch_state_dict())
    data = node.split(str(config["split"]), _stats(config))
    metrics = trainer.evaluate(data)
    scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    return RecordDict({"metrics": MetricRecord({
        "num-examples": len(data), **scalars, **confusion_cells(metrics["confusion"])})})


# Message type -> handler (client/app.py registers one ClientApp function per type).
HANDLERS: dict[str, Callable[[RecordDict, Where], RecordDict]] = {
    "query": query, "train.gan": train_gan, "train.fedgan": train_fedgan, "query.audit": audit,
    "train": train, "evaluate": evaluate,
}
