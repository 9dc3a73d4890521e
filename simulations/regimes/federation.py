"""The server's view of the federation: nodes by session, bounded message rounds, the wire audit.

Nothing here waits forever (notes/flower-1.41.md §6): discovery waits ``federation.node_wait``
seconds for IEMOCAP's five session nodes, every round ``federation.timeout`` seconds for replies; a
node that fails or stays silent is reported by session and the regime goes on without it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from common.config import SESSIONS, StudyConfig
from common.features import MinMax

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


def failed(reply: Message) -> str:
    """Why an error reply failed, in one line."""
    return f"{reply.metadata.message_type or 'message'} failed (code {reply.error.code}): {reply.error.reason}"


def silent(message_type: str, timeout: float | None) -> str:
    """Why a node gave no reply."""
    return f"{message_type}: no reply within {timeout:.0f} s"


class WireGrid:
    """A Grid that writes one JSON line per reply it hands out (who, what type, what shapes), and
    optionally shows only some nodes (a fold's training nodes to a Flower strategy)."""

    def __init__(self, grid: Grid, audit: Path | None, nodes: Iterable[int] | None = None) -> None:
        self.grid, self.audit = grid, audit
        self.nodes = None if nodes is None else set(nodes)
        self.sessions: dict[int, int] = {}  # node id -> session, for readable audit lines
        self.sent: dict[str, Message] = {}
        self.failures: dict[int, str] = {}  # session (or node id) -> first failure reason

    def restrict(self, nodes: Iterable[int]) -> WireGrid:
        """The same grid and audit, showing only ``nodes``."""
        view = WireGrid(self.grid, self.audit, nodes)
        view.sessions, view.sent, view.failures = self.sessions, self.sent, self.failures  # shared
        return view

    def get_node_ids(self) -> list[int]:
        ids = list(self.grid.get_node_ids())
        return ids if self.nodes is None else [n for n in ids if n in self.nodes]

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        messages = list(messages)
        ids = list(self.grid.push_messages(messages))
        self.sent.update(zip(ids, messages, strict=True))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        replies = list(self.grid.pull_messages(message_ids))
        for reply in replies:
            self._record(reply)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Push, then pull until every message has a reply or ``timeout`` seconds passed."""
        return self.collect(self.push_messages(messages), timeout)

    def collect(self, message_ids: Iterable[str], timeout: float | None) -> list[Message]:
        """Replies to ``message_ids`` as they arrive, until all came or ``timeout`` s passed; the
        nodes that stayed silent are recorded as failed."""
        ids = set(message_ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while ids and (deadline is None or time.monotonic() < deadline):
            new = self.pull_messages(list(ids))
            replies += new
            ids -= {m.metadata.reply_to_message_id for m in new}
            if ids:
                time.sleep(0.1)
        for mid in ids:
            self.fail(self.sent[mid].metadata.dst_node_id, silent(self.sent[mid].metadata.message_type, timeout))
        return replies

    def fail(self, node: int, reason: str) -> None:
        """Record (once per node) why a node failed; logged and reported to MLflow by the regime."""
        key = self.sessions.get(node, node)
        log.warning("Session%s: %s", key, reason)
        self.failures.setdefault(key, reason)

    def _record(self, reply: Message) -> None:
        request = self.sent.get(reply.metadata.reply_to_message_id)
        node = request.metadata.dst_node_id if request is not None else reply.metadata.src_node_id
        line = {"time": time.time(), "session": self.sessions.get(node), "node": node,
                "type": reply.metadata.message_type, "error": None}
        if reply.has_error():
            line["error"] = {"code": reply.error.code, "reason": reply.error.reason}
            self.fail(node, failed(reply))
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
    session: int
    utterances: int
    counts: dict[str, int]
    stats: MinMax


@dataclass
class Outcome:
    """Replies of one round by session, and why the other sessions gave none."""

    replies: dict[int, RecordDict] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)


class Federation:
    """The nodes of a study by session, reached through a (wire-audited) grid."""

    def __init__(self, grid: WireGrid, cfg: StudyConfig) -> None:
        self.grid, self.cfg = grid, cfg
        self.nodes: dict[int, NodeInfo] = {}

    @property
    def failures(self) -> dict[int, str]:
        """Session -> why its node failed or stayed silent, over the whole run."""
        return self.grid.failures

    def discover(self) -> dict[int, NodeInfo]:
        """Query every node until all five sessions answered or ``node_wait`` passed."""
        want, deadline = set(SESSIONS), time.monotonic() + self.cfg.federation.node_wait
        asked: set[int] = set()
        while True:
            fresh = [n for n in self.grid.get_node_ids() if n not in asked]
            asked |= set(fresh)
            if fresh:
                messages = [Message(RecordDict(), dst_node_id=n, message_type="query") for n in fresh]
                for reply in self.grid.send_and_receive(messages, timeout=self.cfg.federation.timeout):
                    self._add(reply)
            if want <= set(self.nodes) or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        for session in sorted(want - set(self.nodes)):
            self.failures.setdefault(session, f"no node answered the query within {self.cfg.federation.node_wait:.0f} s")
        log.info("nodes by session: %s", {s: n.node_id for s, n in sorted(self.nodes.items())})
        return self.nodes

    def _add(self, reply: Message) -> None:
        request = self.grid.sent[reply.metadata.reply_to_message_id]
        if reply.has_error():
            log.warning("query to node %s failed: %s", request.metadata.dst_node_id, reply.error.reason)
            return
        session = int(reply.content["node"]["session"])
        if session not in SESSIONS:
            log.warning("node %s holds Session%s, not one of %s; ignored", request.metadata.dst_node_id,
                        session, SESSIONS)
            return
        if session in self.nodes:
            raise ValueError(f"two nodes hold Session{session} ({self.nodes[session].node_id} and "
                             f"{request.metadata.dst_node_id}); give each SuperNode its own session")
        m = reply.content["metrics"]
        self.nodes[session] = NodeInfo(
            request.metadata.dst_node_id, session, int(m["utterances"]),
            {c: int(m[f"count-{c}"]) for c in self.cfg.data.classes},
            MinMax(float(m["feat-min"]), float(m["feat-max"])),
        )
        self.grid.sessions[request.metadata.dst_node_id] = session

    def exchange(self, message_type: str, contents: Mapping[int, RecordDict]) -> Outcome:
        """Send ``contents[session]`` to each session's node; collect replies until ``timeout``."""
        out = Outcome()
        targets = {s: c for s, c in contents.items() if s in self.nodes}
        for s in contents:
            if s not in self.nodes:
                out.failures[s] = "no node holds this session"
        messages = {s: Message(c, dst_node_id=self.nodes[s].node_id, message_type=message_type)
                    for s, c in targets.items()}
        ids = dict(zip(self.grid.push_messages(messages.values()), messages, strict=True))  # message id -> session
        for reply in self.grid.collect(ids, self.cfg.federation.timeout):
            session = ids[reply.metadata.reply_to_message_id]
            if reply.has_error():
                out.failures[session] = failed(reply)
            else:
                out.replies[session] = reply.content
        for session in set(ids.values()) - set(out.replies) - set(out.failures):
            out.failures[session] = silent(message_type, self.cfg.federation.timeout)
        return out

    def ask(self, message_type: str, session: int, content: RecordDict) -> RecordDict:
        """One message to one session's node; its reply content (a failure raises NodeFailure)."""
        outcome = self.exchange(message_type, {session: content})
        if session not in outcome.replies:
            raise NodeFailure(session, outcome.failures[session])
        return outcome.replies[session]

    def combined_stats(self, pretrain: MinMax) -> MinMax:
        """Scaling statistics from the pre-training corpus and the nodes' min/max scalars (§4.2)."""
        return MinMax.combine(pretrain, *(n.stats for n in self.nodes.values()))


class NodeFailure(RuntimeError):
    """A node failed or timed out on a message the regime cannot do without."""

    def __init__(self, session: int, reason: str) -> None:
        super().__init__(f"Session{session}: {reason}")
        self.session, self.reason = session, reason


def stats_config(stats: MinMax, **extra: Any) -> ConfigRecord:
    """The scaling statistics (and any other scalars) as a ConfigRecord for the nodes."""
    return ConfigRecord({"lo": stats.lo, "hi": stats.hi, **extra})


def restore_fp32(record: ArrayRecord) -> dict[str, Any]:
    """A received state dict with fp16 tensors (``generator_fp16``) back in fp32."""
    return {k: v.float() if v.is_floating_point() else v for k, v in record.to_torch_state_dict().items()}
