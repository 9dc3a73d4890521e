"""The federation in this process: the real ClientApp and the real ServerApp logic, without Flower's
transport (no SuperLink, SuperExec or Ray), for tests of what the apps do; tests/test_federation.py
keeps one run through ``flwr run`` end to end.

:class:`InlineGrid` hands each message to ``client.app.app`` with the node's Context, as a
SuperNode would, and turns an exception of a handler into the error reply Flower's runtimes send
(flwr/server/superlink/fleet/vce/vce_api.py and flwr/supernode/runtime/run_clientapp.py:
``str(type(ex)) + ":<'" + str(ex) + "'>"``). :func:`run_inline` runs regimes as the ServerApp's
``main`` does (server/app.py: discovery, the regime, MLflow tracking, the wire audit).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode

from client.app import app as client_app
from common.regimes import FoldOutcome
from common.schema import StudyConfig
from server.app import run_regime

RUN_ID = 7


class InlineGrid:
    """A Grid whose nodes are ``client.app.app`` called in this process, one Context per node
    (``partition-id`` as in a simulation); ``slow`` nodes never answer
    a ``train`` message (a straggler past any timeout)."""

    def __init__(self, cfg: StudyConfig, nodes: int, slow: Iterable[int] = (), run_id: int = RUN_ID) -> None:
        self.run_config = {"study-config": cfg.model_dump_json(), "work-dir": str(cfg.work_dir)}
        self.run_id = run_id
        self.contexts = {1000 + pid: Context(run_id=run_id, node_id=1000 + pid,
                                             node_config={"partition-id": pid},
                                             state=RecordDict(), run_config=self.run_config) for pid in range(nodes)}
        self.slow = set(slow)
        self.replies: dict[str, Message] = {}
        self.asked: list[tuple[int, str]] = []  # (node id, message type), in push order
        self.configs: list[dict[str, object]] = []  # each message's "config" record, in push order

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())  # what a real grid's push does
            node = msg.metadata.dst_node_id
            self.asked.append((node, msg.metadata.message_type))
            self.configs.append(dict(msg.content["config"]) if "config" in msg.content else {})
            if node not in self.slow or msg.metadata.message_type != "train":
                self.replies[msg.metadata.message_id] = self.answer(msg, self.contexts[node])
            ids.append(msg.metadata.message_id)
        return ids

    @staticmethod
    def answer(msg: Message, context: Context) -> Message:
        try:
            return client_app(msg, context)
        except Exception as ex:  # what the runtimes send back for a handler that raised
            reason = str(type(ex)) + ":<'" + str(ex) + "'>"
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self.replies.pop(m) for m in list(message_ids) if m in self.replies]


_RUNS = itertools.count(RUN_ID)


def run_inline(cfg: StudyConfig, regimes: Sequence[str], nodes: int) -> dict[str, list[FoldOutcome]]:
    """``regimes`` over ``nodes`` inline nodes, each as the ServerApp runs it (tracked in MLflow,
    wire-audited under ``work_dir/flower``), in a run of its own (nodes keep what they read per
    run); the outcomes by regime."""
    grid = InlineGrid(cfg, nodes, run_id=next(_RUNS))
    return {regime: run_regime(grid, cfg, regime, run_id=grid.run_id, expected=nodes)  # type: ignore[arg-type]
            for regime in regimes}
