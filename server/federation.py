"""The server's view of the federation: nodes by name, bounded message rounds, the wire audit.

Nodes are named by what they hold (client/partitions.py): ``Session3`` holds a session whole,
``Session3-Ses03F`` / ``Session3-n2`` is a training node of a partition of it. Nothing here waits
forever (notes/flower-1.41.md §6): discovery waits ``federation.node_wait`` seconds for the nodes,
every round ``federation.timeout`` seconds for replies; a node that fails or stays silent is
reported by name and the regime goes on without it.

Replies come back in node order (session, then shard), not arrival order, so that FedAvg sums them
in the same order on every run (float addition is not associative). A node whose reply is an error is asked once
more before it counts as failed: in a simulation, a Ray actor that dies fails every message it
takes, including messages of nodes it was not serving (docs/federated.md, "When a node fails").
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from common.config import SESSIONS
from common.features import MinMax
from common.schema import StudyConfig
from common.splits import session_name, train_sessions

Rank = tuple[int, int]  # a node's place in reply order: (session, 0 for the whole session / 1 + shard index)

log = logging.getLogger("fedser.server")


def describe(content: RecordDict) -> dict[str, Any]:
    """What a message content holds, value-free: array names with shape/dtype, metric and config
    keys with their value types, and the bytes of its arrays (the wire audit's unit)."""
    out: dict[str, Any] = {"arrays": {}, "metrics": {}, "configs": {}, "bytes": 0}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            out["arrays"][name] = {k: [list(a.shape), a.dtype] for k, a in record.items()}
            out["bytes"] += record.count_bytes()
        elif isinstance(record, MetricRecord):
            out["metrics"][name] = {k: type(v).__name__ for k, v in record.items()}
        elif isinstance(record, ConfigRecord):
            out["configs"][name] = {k: type(v).__name__ for k, v in record.items()}
        else:  # pragma: no cover - RecordDict holds only these three
            out.setdefault("other", []).append(name)
    return out


ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")  # colour codes Ray puts in task tracebacks
# Flower's simulation runtime turns an exception into ``str(type(ex)) + ":<'" + str(ex) + "'>"``
# (flwr/server/superlink/fleet/vce/vce_api.py, worker()); the ClientApp process does the same.
WRAPPED = re.compile(r"<class '([^']+)'>:<'(.*)'>", re.S)
# A traceback's "module.Type: message" line (unindented): in a RayTaskError, the first one is the
# exception our handler raised; Flower's ClientAppException wrapper comes after it.
RAISED = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Failure)): ?(.*)$", re.M)
WRAPPERS = ("ClientAppException", "RayTaskError")
REASON_CHARS = 500


def reason_line(reason: str, limit: int = REASON_CHARS) -> str:
    """An error reply's reason as one readable line: ``Type: message`` for an exception (the one
    the ClientApp raised, not Ray's or Flower's wrapper; ANSI codes, tracebacks and Ray's detail
    lines dropped), any other reason with its whitespace collapsed; at most ``limit`` characters."""
    text = ANSI.sub("", reason).strip()
    if wrapped := WRAPPED.fullmatch(text):
        kind, body = wrapped.group(1).rsplit(".", 1)[-1], wrapped.group(2).strip()
        raised = [m for m in RAISED.finditer(body) if m.group(1) not in WRAPPERS]
        if raised:  # a task error: Ray's text is the traceback, the cause is printed first
            kind, body = raised[0].group(1), raised[0].group(2)
        elif kind.startswith(WRAPPERS):  # no traceback line: Flower's "Exception X occurred. Message: m"
            kind, body = "ClientAppException", body.rsplit("Message: ", 1)[-1]
        text = f"{kind}: {body.strip().splitlines()[0] if body.strip() else ''}".rstrip(": ")
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def failed(reply: Message) -> str:
    """Why an error reply failed, in one line (``train.gan: ActorDiedError: The actor died ...``)."""
    return f"{reply.metadata.message_type or 'message'}: {reason_line(reply.error.reason)}"


def silent(message_type: str, timeout: float | None) -> str:
    """Why a node gave no reply."""
    return f"{message_type}: no reply within {timeout:.0f} s"


# Message types whose handler is a function of the message and the node's data alone (seeded by
# round and session; client/app.py), so a second attempt gives the reply the first would have:
# all of ours, FedAvg's ``train`` rounds included.
RETRIED = frozenset({"query", "train.gan", "train", "evaluate"})


@dataclass
class WireLedger:
    """What every view of one grid shares (:meth:`WireGrid.restrict`): who each node is, what was
    sent, which messages were second attempts, and which nodes failed."""

    names: dict[int, str] = field(default_factory=dict)  # node id -> name, for readable logs and audit lines
    ranks: dict[int, Rank] = field(default_factory=dict)  # node id -> its place in reply order
    sent: dict[str, Message] = field(default_factory=dict)  # message id -> the message
    retries: dict[str, str] = field(default_factory=dict)  # message id of a second attempt -> the first's
    failures: dict[str, str] = field(default_factory=dict)  # node name (or "node <id>") -> first failure reason
    answered: Counter[str] = field(default_factory=Counter)  # message type -> replies without an error


class WireGrid:
    """A Grid that writes one JSON line per reply it hands out (who, what type, what shapes), and
    optionally shows only some nodes (a fold's training nodes to a Flower strategy).

    ``send_and_receive`` (what Flower's strategies call) and ``collect`` return replies in node
    order and ask a node whose reply is an error once more (message types in ``RETRIED``)."""

    def __init__(self, grid: Grid, audit: Path | None, nodes: Iterable[int] | None = None,
                 ledger: WireLedger | None = None, screen: Callable[[Message], str | None] | None = None) -> None:
        self.grid, self.audit = grid, audit
        self.nodes = None if nodes is None else set(nodes)
        self.ledger = ledger if ledger is not None else WireLedger()
        # ``screen``: why a reply that arrived is refused (training.dp's budget), None to accept it.
        self.screen = screen

    def restrict(self, nodes: Iterable[int], screen: Callable[[Message], str | None] | None = None) -> WireGrid:
        """The same grid, audit and ledger, showing only ``nodes``; ``screen`` refuses replies
        (a refused reply is handed out as none, and its node's failure recorded)."""
        return WireGrid(self.grid, self.audit, nodes, self.ledger, screen)

    def order(self, node: int) -> tuple[int, int, int]:
        """Sort key of a node: by session and shard once discovery knows it (node ids are random per run)."""
        return (*self.ledger.ranks[node], 0) if node in self.ledger.ranks else (len(SESSIONS) + 1, 0, node)

    def get_node_ids(self) -> list[int]:
        """The (visible) online nodes in node order: what Flower's strategies sample from."""
        ids = sorted(self.grid.get_node_ids(), key=self.order)
        return ids if self.nodes is None else [n for n in ids if n in self.nodes]

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        messages = list(messages)
        ids = list(self.grid.push_messages(messages))
        self.ledger.sent.update(zip(ids, messages, strict=True))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Flower's pull, each reply written to the audit (failures are recorded by ``collect``)."""
        replies = list(self.grid.pull_messages(message_ids))
        for reply in replies:
            self._record(reply)
            if not reply.has_error():
                self.ledger.answered[reply.metadata.message_type] += 1
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Push, then pull until every message has a reply or ``timeout`` seconds passed (see ``collect``)."""
        return self.collect(self.push_messages(messages), timeout)

    def collect(self, message_ids: Iterable[str], timeout: float | None) -> list[Message]:
        """One reply per message of ``message_ids`` that got one, in node order (then push
        order), whatever order they arrived in; failures are recorded by node name.

        A node whose reply is an error is sent a copy of its message once more, one node at a
        time, each with its own ``timeout``: one at a time because Flower's Ray backend puts a dead
        actor back on top of its idle stack, so a batch of retries would hand it one of them again.
        Silent nodes are not asked again: their message still waits in the node's queue."""
        pushed = list(message_ids)
        rank = {mid: (self.order(self.ledger.sent[mid].metadata.dst_node_id), i) for i, mid in enumerate(pushed)}
        ids = sorted(pushed, key=rank.__getitem__)
        replies = self._pull(ids, timeout)
        for mid in ids:
            reply = replies.get(mid)
            if reply is not None and reply.has_error() and reply.metadata.message_type in RETRIED:
                replies[mid] = self._retry(mid, reply, timeout)
        for mid in ids:
            node = self.ledger.sent[mid].metadata.dst_node_id
            if mid not in replies:
                self.fail(node, silent(self.ledger.sent[mid].metadata.message_type, timeout))
            elif replies[mid].has_error():
                self.fail(node, failed(replies[mid]))
            elif self.screen is not None and (why := self.screen(replies[mid])) is not None:
                self.fail(node, why)
                del replies[mid]
        return [replies[mid] for mid in ids if mid in replies]

    def _pull(self, ids: list[str], timeout: float | None) -> dict[str, Message]:
        """Replies to ``ids`` by message id, pulled until all came or ``timeout`` s passed."""
        waiting = set(ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: dict[str, Message] = {}
        while waiting and (deadline is None or time.monotonic() < deadline):
            for reply in self.pull_messages(list(waiting)):
                replies[reply.metadata.reply_to_message_id] = reply
            waiting -= set(replies)
            if waiting:
                time.sleep(0.1)
        return replies

    def _retry(self, mid: str, first: Message, timeout: float | None) -> Message:
        """The reply to a second copy of message ``mid``; the first error reply if none came."""
        request = self.ledger.sent[mid]
        node, meta = request.metadata.dst_node_id, request.metadata
        log.warning("%s: %s; asking once more", self.who(node), failed(first))
        again = Message(request.content, dst_node_id=node, message_type=meta.message_type,
                        ttl=meta.ttl, group_id=meta.group_id)
        [retry_id] = self.push_messages([again])
        self.ledger.retries[retry_id] = mid
        second = self._pull([retry_id], timeout).get(retry_id, first)
        if not second.has_error():
            log.info("%s: %s answered on the second attempt", self.who(node), meta.message_type)
        return second

    def who(self, node: int) -> str:
        """A node as log lines and failure records name it: its name once discovery knows it."""
        return self.ledger.names.get(node, f"node {node}")

    def fail(self, node: int, reason: str) -> None:
        """Record (once per node) why a node failed; logged and reported to MLflow by the regime."""
        log.warning("%s: %s", self.who(node), reason)
        self.ledger.failures.setdefault(self.who(node), reason)

    def _record(self, reply: Message) -> None:
        request = self.ledger.sent.get(reply.metadata.reply_to_message_id)
        node = request.metadata.dst_node_id if request is not None else reply.metadata.src_node_id
        line = {"time": time.time(), "name": self.ledger.names.get(node), "node": node,
                "type": reply.metadata.message_type, "error": None,
                "attempt": 2 if reply.metadata.reply_to_message_id in self.ledger.retries else 1}
        if reply.has_error():
            line["error"] = {"code": reply.error.code, "reason": reason_line(reply.error.reason)}
        else:
            line |= describe(reply.content)
        if self.audit is None:
            return
        self.audit.parent.mkdir(parents=True, exist_ok=True)
        with self.audit.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def __getattr__(self, name: str) -> Any:  # everything else (run, set_run, ...) as the real grid
        return getattr(self.grid, name)


@dataclass
class NodeInfo:
    """One node as its ``query`` reply described it."""

    node_id: int
    name: str
    session: int
    shard: int | None  # index of a training node within its session; None: it holds the session whole
    utterances: int
    counts: dict[str, int]
    stats: MinMax

    @property
    def rank(self) -> Rank:
        return (self.session, 0 if self.shard is None else 1 + self.shard)

    def summary(self) -> dict[str, Any]:
        """What the run records of the node: where it sits and its class counts (counts only)."""
        return {"session": self.session, "shard": self.shard, "utterances": self.utterances, "counts": self.counts}


@dataclass
class Outcome:
    """Replies of one round by node name, and why the other nodes gave none."""

    replies: dict[str, RecordDict] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


class Federation:
    """The nodes of a study by name, reached through a (wire-audited) grid.

    With ``federation.partition = "session"`` the session nodes train and evaluate; otherwise the
    partition's training nodes train and the whole-session nodes only evaluate (the held-out
    session's node selects and scores every fold's model)."""

    def __init__(self, grid: WireGrid, cfg: StudyConfig, expected: int | None = None) -> None:
        """``expected``: how many nodes the simulation started (discovery stops when all answered);
        None (a deployment): the five session nodes under the session partition, else wait ``node_wait``."""
        self.grid, self.cfg, self.expected = grid, cfg, expected
        self.nodes: dict[str, NodeInfo] = {}
        self.small: dict[str, str] = {}  # training nodes too small to train, and why

    @property
    def failures(self) -> dict[str, str]:
        """Node name -> why it failed, stayed silent or was left out, over the whole run."""
        return self.grid.ledger.failures

    @property
    def partitioned(self) -> bool:
        return self.cfg.federation.partition != "session"

    def training(self, test: int | None = None) -> list[NodeInfo]:
        """The training nodes (in node order) of the fold that tests on ``test`` (None: of any
        fold), those too small to train left out."""
        sessions = train_sessions(self.cfg.folds, test, SESSIONS)
        return [n for n in self.nodes.values() if (n.shard is not None) == self.partitioned
                and n.session in sessions and n.name not in self.small]

    def evaluator(self, session: int) -> str:
        """The name of the node that holds ``session`` whole (it selects and scores that fold)."""
        return session_name(session)

    def discover(self) -> dict[str, NodeInfo]:
        """Query every node until all expected nodes answered or ``node_wait`` passed."""
        deadline = time.monotonic() + self.cfg.federation.node_wait
        asked: set[int] = set()
        while True:
            fresh = [n for n in self.grid.get_node_ids() if n not in asked]
            asked |= set(fresh)
            if fresh:
                messages = [Message(RecordDict(), dst_node_id=n, message_type="query") for n in fresh]
                # Bounded by node_wait, not the round timeout: a first query starts the node (Ray
                # actors, the corpus listing, features), which a short straggler timeout would cut.
                wait = max(self.cfg.federation.timeout, deadline - time.monotonic())
                for reply in self.grid.send_and_receive(messages, timeout=wait):
                    self._add(reply)
            if self._complete() or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        self.nodes = dict(sorted(self.nodes.items(), key=lambda kv: kv[1].rank))
        for session in SESSIONS:
            if self.evaluator(session) not in self.nodes:
                self.failures.setdefault(self.evaluator(session), f"no node answered the query within "
                                         f"{self.cfg.federation.node_wait:.0f} s")
        least = self.cfg.federation.min_partition_size
        for n in self.training():
            if n.utterances < least:
                self.small[n.name] = (f"holds {n.utterances} utterances, fewer than federation.min_partition_size "
                                      f"= {least}: not asked to train")
                self.failures.setdefault(n.name, self.small[n.name])
        trainers = self.training()
        log.info("%d nodes: %d training (%s partition), evaluators %s", len(self.nodes), len(trainers),
                 self.cfg.federation.partition, [n for n in self.nodes if self.nodes[n].shard is None])
        return self.nodes

    def _complete(self) -> bool:
        if self.expected is not None:
            return len(self.nodes) >= self.expected
        return not self.partitioned and all(self.evaluator(s) in self.nodes for s in SESSIONS)

    def _add(self, reply: Message) -> None:
        request = self.grid.ledger.sent[reply.metadata.reply_to_message_id]
        node_id = request.metadata.dst_node_id
        if reply.has_error():
            log.warning("query to node %s failed: %s", node_id, reason_line(reply.error.reason))
            return
        node = reply.content["node"]
        session = int(node["session"])
        if session not in SESSIONS:
            log.warning("node %s holds Session%s, not one of %s; ignored", node_id, session, SESSIONS)
            return
        name = str(node.get("name", session_name(session)))  # a node of an older fedser names no shard
        shard = int(node.get("shard", -1))
        if name in self.nodes:
            raise ValueError(f"two nodes hold {name} ({self.nodes[name].node_id} and {node_id}); "
                             "give each SuperNode its own session")
        m = reply.content["metrics"]
        info = NodeInfo(node_id, name, session, None if shard < 0 else shard, int(m["utterances"]),
                        {c: int(m[f"count-{c}"]) for c in self.cfg.data.classes},
                        MinMax(float(m["feat-min"]), float(m["feat-max"])))
        self.nodes[name] = info
        self.grid.ledger.names[node_id], self.grid.ledger.ranks[node_id] = name, info.rank

    def exchange(self, message_type: str, contents: Mapping[str, RecordDict]) -> Outcome:
        """Send ``contents[name]`` to each named node; collect replies until ``timeout`` (a node
        whose reply is an error is asked once more; ``WireGrid.collect``)."""
        out = Outcome()
        targets = {s: c for s, c in contents.items() if s in self.nodes}
        for s in contents:
            if s not in self.nodes:
                out.failures[s] = "no such node answered discovery"
        messages = {s: Message(c, dst_node_id=self.nodes[s].node_id, message_type=message_type)
                    for s, c in targets.items()}
        ids = dict(zip(self.grid.push_messages(messages.values()), messages, strict=True))  # message id -> name
        for reply in self.grid.collect(ids, self.cfg.federation.timeout):  # node order, errors retried once
            name = self.grid.who(self.grid.ledger.sent[reply.metadata.reply_to_message_id].metadata.dst_node_id)
            if reply.has_error():
                out.failures[name] = failed(reply)
            else:
                out.replies[name] = reply.content
        for name in set(ids.values()) - set(out.replies) - set(out.failures):
            out.failures[name] = silent(message_type, self.cfg.federation.timeout)
        return out

    def ask(self, message_type: str, name: str, content: RecordDict) -> RecordDict:
        """One message to one named node; its reply content (a failure raises NodeFailure)."""
        outcome = self.exchange(message_type, {name: content})
        if name not in outcome.replies:
            raise NodeFailure(name, outcome.failures[name])
        return outcome.replies[name]

    def combined_stats(self, pretrain: MinMax) -> MinMax:
        """Scaling statistics from the pre-training corpus and the nodes' min/max scalars (§4.2)."""
        return MinMax.combine(pretrain, *(n.stats for n in self.nodes.values()))


class NodeFailure(RuntimeError):
    """A node failed or timed out on a message the regime cannot do without."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


def mend_ray_pool() -> None:
    """Make Flower 1.41's Ray simulation backend replace an actor that died (``kill -9``, the OOM
    killer) with a new one. Unpatched, ``RayBackend.process_message`` puts the dead actor back on
    top of its idle stack (flwr/server/superlink/fleet/vce/backend/raybackend.py, ``except``
    branch), and every later message it is handed fails with ``ActorDiedError``, whichever node the
    message was for. Patched, a death costs the message that actor was running (which
    ``WireGrid.collect`` then retries). Call it in the ServerApp: in a simulation the ServerApp
    runs in the process of the backend (``flwr-simulation``); elsewhere the patch is never used."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from ray.exceptions import ActorDiedError

    process = RayBackend.process_message
    if getattr(process, "replaces_dead_actors", False):
        return
    replaced: set[str] = set()  # dead actors' ids: each is replaced once, by whichever worker saw it first
    lock = threading.Lock()

    def process_message(self: Any, message: Message, context: Any) -> Any:
        try:
            return process(self, message, context)
        except ActorDiedError as ex:
            if self.pool is not None and ex.actor_id:
                with lock:
                    for actor in [a for a in self.pool.pool if a._actor_id.hex() == ex.actor_id]:
                        with contextlib.suppress(ValueError):  # another worker took it meanwhile
                            self.pool.pool.remove(actor)
                    if ex.actor_id not in replaced:
                        replaced.add(ex.actor_id)
                        self.pool.pool.append(self.pool.create_actor_fn())
                        log.warning("Ray actor %s died; replaced by a new one", ex.actor_id)
            raise

    process_message.replaces_dead_actors = True  # type: ignore[attr-defined]
    RayBackend.process_message = process_message  # type: ignore[method-assign]


def stats_config(stats: MinMax, **extra: Any) -> ConfigRecord:
    """The scaling statistics (and any other scalars) as a ConfigRecord for the nodes."""
    return ConfigRecord({"lo": stats.lo, "hi": stats.hi, **extra})


def restore_fp32(record: ArrayRecord) -> dict[str, Any]:
    """A received state dict with fp16 tensors (``generator_fp16``) back in fp32."""
    return {k: v.float() if v.is_floating_point() else v for k, v in record.to_torch_state_dict().items()}


def weighted_average(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """FedAvg of state dicts: floating tensors averaged with ``weights`` (examples per node), the
    others (counters) taken from the first state."""
    total = float(sum(weights))
    return {k: (sum((w / total) * s[k].float() for s, w in zip(states, weights, strict=True)) if v.is_floating_point()
                else v) for k, v in states[0].items()}  # type: ignore[misc]
