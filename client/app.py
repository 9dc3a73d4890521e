"""The ClientApp: one node holds one IEMOCAP session (or a partition's shard of it), and its audio
never leaves it. What each message type does is in client/node.py.

This module imports only Flower: a deployed SuperNode starts a ClientApp process per message, and
such a process hands the message to the node's long-lived worker (client/worker.py), which keeps
torch loaded and the node's data in memory between messages. A simulated node runs in a Ray
actor that lives for the whole run, so there the handlers run in the actor itself.
"""

from __future__ import annotations

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from client import worker

app = ClientApp()


def reply(kind: str, msg: Message, context: Context) -> Message:
    """Handler ``kind``'s reply to ``msg``: computed by the node's worker on a deployed SuperNode
    (its node config names its ``session``), in this process in a simulation."""
    where = {"run_id": context.run_id, "node_config": dict(context.node_config), "run_config": dict(context.run_config),
             "state": context.state}
    content: RecordDict
    if "session" in context.node_config and worker.enabled():
        content, state = worker.ask(kind, msg.content, where)
        context.state.clear()  # the worker's copy, as the handler left it
        context.state.update(state)
    else:
        from client import node  # torch and the platform: imported once per actor

        content = node.HANDLERS[kind](msg.content, node.Where(**where))  # changes context.state in place
    return Message(content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The node's session, name, class counts and feature min/max (scalars)."""
    return reply("query", msg, context)


@app.train("gan")
def train_gan(msg: Message, context: Context) -> Message:
    """Fine-tune the received GAN on the node's data; the generator travels back."""
    return reply("train.gan", msg, context)


@app.train("fedgan")
def train_fedgan(msg: Message, context: Context) -> Message:
    """One FedGAN round; both networks travel back."""
    return reply("train.fedgan", msg, context)


@app.query("audit")
def audit(msg: Message, context: Context) -> Message:
    """The generator audit at the node: its figures travel back (scalars)."""
    return reply("query.audit", msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One FedAvg round of the configured SER trainer."""
    return reply("train", msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Scores of the received SER weights on the node's validation or test speaker(s)."""
    return reply("evaluate", msg, context)
