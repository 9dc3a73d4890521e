"""The federated regimes end to end: `fedser study` -> `flwr run` -> simulated nodes, one per
speaker (``federation.partition = "speaker"``) plus the five whole-session nodes that evaluate.

One study runs gan-federated, gan-fedavg and the fedprox strategy regime in one ``flwr run`` on a
SuperLink it starts itself, with Session3's ``train.gan`` made to fail (both its speakers' nodes).
The test then reads MLflow (runs, metrics, tags, artifacts, the generator audits), inspects every
reply that reached the server (the wire audit: the eyes-off guarantee) and checks that no Flower or
Ray process is left behind. SER from stored generators with the corpus folder gone
(``synthesis.from_run``) runs on the in-process grid (tests/inline.py), as do the scripted-grid
tests of reply order and retries below.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from typer.testing import CliRunner

from common.audit import AUDIT_KEYS
from common.data import synthetic_iemocap_root
from common.models.sngan import Discriminator, GanSpec, Generator
from common.schema import config_from_run, load_config
from common.trainers.registry import build_trainer
from server.federation import Federation, WireGrid, reason_line
from simulations.cli import app
from simulations.flower import APP_DIR, app_source, descendants, stop_tree
from tests.conftest import FAST_STUDY_TABLES, study_file
from tests.inline import run_inline

FAST = """
name = "fed"
regimes = ["gan-federated", "gan-fedavg", "fedprox"]
""" + FAST_STUDY_TABLES + """
[federation]
partition = "speaker"
gan_rounds = 2
rounds = 2
local_iterations = 3
failures = ["train.gan:3"]
node_wait = 60
timeout = 300
[tracking]
experiment = "fed"
"""
pytestmark = pytest.mark.usefixtures("serverapp_identity")
FLOWER = re.compile(r"flower-superlink|flower-superexec|flower-supernode|flwr-simulation|flwr-serverapp|flwr-clientapp|raylet|gcs_server|ray::|mlflow")


def flower_processes(flwr_home: Path) -> set[int]:
    """Live Flower and Ray processes started for ``flwr_home`` (they inherit FLWR_HOME)."""
    marker = f"FLWR_HOME={flwr_home}".encode()
    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            text = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if FLOWER.search(text) and state != "Z" and marker in environ:
            found.add(int(proc.name))
    return found


def left_behind(flwr_home: Path, grace: float = 15.0) -> set[int]:
    """:func:`flower_processes` once they had ``grace`` seconds to exit (Ray's workers die after
    their raylet, asynchronously, once the study stopped the tree)."""
    deadline = time.monotonic() + grace
    while (found := flower_processes(flwr_home)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


def audit_lines(run) -> list[dict]:
    [audit] = [a.path for a in mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="flower")]
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=audit)
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


SCALAR_REPLIES = {  # message type -> the metric keys a reply may hold (all scalars)
    "query": re.compile(r"utterances|count-\w+|feat-min|feat-max"),
    "evaluate": re.compile(r"num-examples|f1_macro|ua|wa|cm_\d+_\d+"),
    "train": re.compile(r"num-examples|loss|train_loss|epsilon"),
    "train.gan": re.compile(r"num-examples|seconds|epsilon"),
    "train.fedgan": re.compile(r"num-examples|epsilon"),
}


def state_shapes(net: Any) -> dict[str, list[int]]:  # a module or a trainer: anything with state_dict()
    return {k: list(v.shape) for k, v in net.state_dict().items()}


def assert_eyes_off(lines: list[dict], shapes: dict[str, dict[str, list]]) -> None:
    """Every reply holds weights of the known models (``shapes``: generator, discriminator and ser,
    name -> shape) and scalar metrics: nothing shaped like data."""
    for line in lines:
        if line["error"]:
            continue
        if line["type"] == "query.audit":  # the generator audit: its figures, scalars, nothing else
            assert line["arrays"] == {} and line["configs"] == {} and set(line["metrics"]) == {"audit"}, line
            assert line["metrics"]["audit"] == dict.fromkeys(AUDIT_KEYS, "float"), line
            continue
        assert set(line["metrics"]) <= {"metrics"}, line
        for key, kind in line["metrics"].get("metrics", {}).items():
            assert SCALAR_REPLIES[line["type"]].fullmatch(key), line
            assert kind in ("int", "float"), line  # no lists: per-utterance values cannot travel
        sent = {name: {k: shape for k, (shape, _dtype) in arrays.items()} for name, arrays in line["arrays"].items()}
        if line["type"] == "train.gan":
            assert sent == {"generator": shapes["generator"]} and line["configs"] == {}, line
        elif line["type"] == "train.fedgan":  # FedGAN: both networks travel, the server averages them
            assert sent == {"generator": shapes["generator"], "discriminator": shapes["discriminator"]}, line
            assert line["configs"] == {}, line
        elif line["type"] == "train":  # FedAvg and the other strategies: the SER weights, nothing else
            assert sent == {"arrays": shapes["ser"]} and line["configs"] == {}, line
        elif line["type"] == "query":
            # where the node sits (its name is a session and a speaker id or shard number: no data)
            assert line["arrays"] == {} and line["configs"] == {"node": {"session": "int", "name": "str", "shard": "int"}}
        else:
            assert line["arrays"] == {} and line["configs"] == {}, line


@pytest.mark.slow
def test_federated_regimes_through_flwr_run(tmp_path: Path, pretrained_gan: Path) -> None:
    config = study_file(tmp_path, FAST + f'[model]\npretrained = "{pretrained_gan}"\n')
    runner = CliRunner()
    result = runner.invoke(app, ["study", str(config)])
    assert result.exit_code == 0, result.output
    assert "gan-federated" in result.output and "fedprox" in result.output and "±" in result.output
    assert "flwr run on a local simulation (15 nodes, partition speaker)" in " ".join(result.output.split())

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["fed"], output_format="list")
    parents = {r.data.tags["regime"]: r for r in runs if r.data.tags.get("kind") == "regime"}
    children = [r for r in runs if "fold" in r.data.tags]
    assert set(parents) == {"gan-federated", "gan-fedavg", "fedprox"}  # the strategy's own row name
    assert sorted((c.data.tags["regime"], c.data.tags["fold"]) for c in children) == [
        (r, f) for r in ("fedprox", "gan-fedavg", "gan-federated") for f in ("1", "2")]
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[child.data.tags["regime"]].info.run_id
        assert {"f1_macro", "ua", "wa", "cm_0_0", "val_f1_macro"} <= set(child.data.metrics)
        files = {a.path for a in mlflow.artifacts.list_artifacts(run_id=child.info.run_id, artifact_path="plots")}
        fedgan = child.data.tags["regime"] == "gan-fedavg"  # one generator per fold, logged and audited there
        assert files == {"plots/confusion.png", *(["plots/spectrograms_0.png"] if fedgan else [])}
        assert {f"audit.{k}" for k in AUDIT_KEYS} <= set(child.data.metrics) if fedgan else not any(
            k.startswith("audit.") for k in child.data.metrics)
    assert all("val_f1_macro_curve" in c.data.metrics for c in children if c.data.tags["regime"] == "fedprox")

    # One training node per speaker (two per session) beside the five evaluating session nodes.
    # Session3's two generators failed: recorded by node, and the regime went on with the other eight.
    gan = parents["gan-federated"]
    assert gan.data.params["federation.partition"] == "speaker"
    assert gan.data.metrics["nodes"] == 15 and gan.data.metrics["training_nodes"] == 10
    assert gan.data.metrics["generators_received"] == 8 and gan.data.metrics["generator_failures"] == 2
    assert gan.data.metrics["failed_nodes"] == 2
    for name in ("Session3-Ses03F", "Session3-Ses03M"):  # one line each, after one retry
        assert gan.data.tags[f"failure.{name}"] == f"train.gan: {injected(name)}"
    assert parents["fedprox"].data.metrics["failed_nodes"] == 0
    # The shadow-model gender attack on fedprox's updates (one speaker per node, common/attacks.py):
    # every node that trained in a fold scored, the figures over the ten on the regime run.
    prox = parents["fedprox"].data.metrics
    assert {k for k in prox if k.startswith("gender_female_")} == {
        f"gender_female_Session{s}-Ses0{s}{g}" for s in range(1, 6) for g in "FM"}
    assert prox["gender_nodes"] == 10 and prox["gender_auc_low"] <= prox["gender_auc"] <= prox["gender_auc_high"]
    trained = [f"Session{s}-Ses0{s}{g}" for s in (1, 2, 4, 5) for g in "FM"]
    # ... and on gan-fedavg's (the discriminator's first layer): the eight nodes that answered.
    fedgan = parents["gan-fedavg"].data.metrics
    assert {k for k in fedgan if k.startswith("gender_female_")} == {f"gender_female_{name}" for name in trained}
    assert fedgan["gender_nodes"] == 8 and fedgan["gender_auc_low"] <= fedgan["gender_auc"] <= fedgan["gender_auc_high"]
    ckpts = {a.path for a in mlflow.artifacts.list_artifacts(run_id=gan.info.run_id, artifact_path="checkpoints")}
    assert ckpts == {f"checkpoints/generator_{name}.pt" for name in trained}
    assert {"f1_macro_mean", "f1_macro_std"} <= set(gan.data.metrics)
    # Each generator audited at its own node (Session3's made none).
    assert {k for k in gan.data.metrics if k.startswith("audit.")} == {
        f"audit.{name}.{k}" for name in trained for k in AUDIT_KEYS}
    # Every node's class counts (counts only); a session's speakers add up to the session.
    nodes = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=gan.info.run_id, artifact_path="federation/nodes.json")).read_text())
    assert len(nodes) == 15 and all(set(n) == {"session", "shard", "utterances", "counts"} for n in nodes.values())
    for s in range(1, 6):
        speakers = [nodes[f"Session{s}-Ses0{s}{g}"]["counts"] for g in "FM"]
        assert {c: a + b for (c, a), b in zip(speakers[0].items(), speakers[1].values(), strict=True)} == (
            nodes[f"Session{s}"]["counts"])

    # The eyes-off guarantee, on every reply that reached the server.
    cfg = config_from_run({"study-config": str(config)})
    spec = GanSpec.of(cfg)
    shapes = {"generator": state_shapes(Generator(spec)), "discriminator": state_shapes(Discriminator(spec, spec.n_c + 1)),
              "ser": state_shapes(build_trainer(cfg, torch.device("cpu")))}
    lines = audit_lines(gan)
    by_type = {t: [x for x in lines if x["type"] == t] for t in ("query", "train.gan", "query.audit", "evaluate")}
    assert len(by_type["query"]) == 15 and len(by_type["train.gan"]) == 12  # Session3's two were asked twice
    assert sorted(x["name"] for x in by_type["query.audit"]) == trained
    assert sorted((x["name"], x["attempt"]) for x in by_type["train.gan"] if x["error"]) == [
        ("Session3-Ses03F", 1), ("Session3-Ses03F", 2), ("Session3-Ses03M", 1), ("Session3-Ses03M", 2)]
    assert {x["name"] for x in by_type["evaluate"]} == {"Session1", "Session2"}  # held-out sessions score the folds
    assert len(lines) == sum(map(len, by_type.values()))
    assert_eyes_off(lines, shapes)
    fedgan_lines = audit_lines(parents["gan-fedavg"])
    assert {x["type"] for x in fedgan_lines} == {"query", "train.fedgan", "query.audit", "evaluate"}
    # Fold 1 trains on sessions 2-5's speakers (Session3's failing each round), fold 2 on 1, 3, 4, 5: 2 rounds each.
    assert sorted(x["name"] for x in fedgan_lines if x["type"] == "train.fedgan" and not x["error"]) == sorted(
        name for name in trained for _ in range(4 if name[7] in "45" else 2))
    assert_eyes_off(fedgan_lines, shapes)
    fedavg_lines = audit_lines(parents["fedprox"])
    assert {x["type"] for x in fedavg_lines} == {"query", "train", "evaluate"}
    assert not any(x["error"] for x in fedavg_lines if x["type"] == "train")
    assert_eyes_off(fedavg_lines, shapes)

    # The report reads both federated regimes; nothing Flower or Ray started is still running.
    report = runner.invoke(app, ["report", "--config", str(config), "--json"])
    assert report.exit_code == 0, report.output
    assert {(r["regime"], r["fold"]) for r in json.loads(report.output)["rows"]} == {
        (g, f) for g in ("gan-federated", "gan-fedavg", "fedprox") for f in (1, 2)}
    assert left_behind(tmp_path / "out" / "flower" / "home") == set()
    assert load_config(config).federation.failures == ("train.gan:3",)



def test_ser_from_stored_generators_with_the_corpus_gone(tmp_path: Path, pretrained_gan: Path) -> None:
    """Seed 002 §5 (``synthesis.from_run``), on the in-process grid: the nodes score with their own
    copy of the corpus (``federation.node_data_root``), the server reads none and writes none, and
    the same generators and seed give the same SER weights as the run that trained them."""
    cfg = load_config(study_file(tmp_path, 'name = "stored"\n' + FAST_STUDY_TABLES + f'[model]\npretrained = "{pretrained_gan}"\n'
                                 '[federation]\nnode_wait = 60\n[tracking]\nexperiment = "stored"\n'))
    trained = run_inline(cfg, ["gan-federated"], 5)["gan-federated"]
    mlflow.set_tracking_uri(cfg.tracking_uri)
    [gan] = [r for r in mlflow.search_runs(experiment_names=["stored"], output_format="list") if r.data.tags.get("kind") == "regime"]
    corpus = synthetic_iemocap_root(cfg).parent
    copy = tmp_path / "nodes"
    shutil.copytree(corpus, copy)
    shutil.rmtree(corpus)
    values = json.loads(cfg.model_dump_json())
    values["synthesis"]["from_run"] = gan.info.run_id
    values["federation"]["node_data_root"] = str(copy / "IEMOCAP_full_release")
    later = load_config(overrides=values)
    again = run_inline(later, ["gan-federated"], 5)["gan-federated"]
    assert not corpus.exists()
    runs = mlflow.search_runs(experiment_names=["stored"], output_format="list")
    [stored] = [r for r in runs if r.data.tags.get("kind") == "regime" and r.data.params.get("synthesis.from_run") == gan.info.run_id]
    assert stored.data.metrics["generators_reused"] == 5 and "generators_received" not in stored.data.metrics
    assert {x["type"] for x in audit_lines(stored)} == {"query", "evaluate"}  # no node fine-tuned anything
    assert [o.model_digest for o in again] == [o.model_digest for o in trained] and len(again) == 2


def test_stop_tree_stops_processes_and_their_children_together() -> None:
    """Two parents, each with a child that ignores SIGTERM: one call stops both families."""
    code = ("import signal, subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
            "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); time.sleep(60)")
    parents = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    try:
        deadline = time.monotonic() + 20
        while not all(descendants(p.pid) for p in parents) and time.monotonic() < deadline:
            time.sleep(0.05)
        children = [child for p in parents for child in descendants(p.pid)]
        assert len(children) == 2
    finally:
        stop_tree(*parents, grace=1)
    assert all(p.returncode is not None for p in parents)
    for child in children:
        stat = Path(f"/proc/{child}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_flwr_run_is_given_exactly_the_files_of_the_fab(tmp_path: Path) -> None:
    """``app_source`` copies what ``flwr build`` packs from the repo root, found without walking
    .venv. The reference: git's listing of every file it does not ignore, through Flower's filter."""
    from flwr.cli.utils import filter_paths_for_publish

    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=APP_DIR, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    names = [n for n in listed.stdout.decode().split("\0") if n and (APP_DIR / n).is_file()]
    expected = set(filter_paths_for_publish({n: APP_DIR / n for n in names}))
    staged = app_source(tmp_path / "app")
    copied = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    assert copied == expected and {"pyproject.toml", "server/app.py", "client/app.py"} <= copied
    assert all((staged / n).read_bytes() == (APP_DIR / n).read_bytes() for n in copied)


# --- The server's side of the wire, against a scripted grid (fast) --------------------------------

# Real error reasons, as Flower 1.41's simulation runtime wrote them into error replies
# (flwr/server/superlink/fleet/vce/vce_api.py, worker(): str(type(ex)) + ":<'" + str(ex) + "'>").
# A ClientAppActor killed (kill -9) during train.gan:
ACTOR_DIED = (
    "<class 'ray.exceptions.ActorDiedError'>:<'The actor died unexpectedly before finishing this task.\n"
    "\tclass_name: ClientAppActor\n\tactor_id: 4ba54b1df6d8d08a99c5516d01000000\n\tpid: 25219\n"
    "\tnamespace: e3aefd80-9cc5-4a3a-be85-f979561e870a\n\tip: 192.0.2.2\nThe actor is dead because its "
    "worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits "
    "with a connection error code 2. End of file. Some common causes include: (1) the process was killed by "
    "the OOM killer due to high memory usage, (2) ray stop --force was called, or (3) the worker crashed "
    "unexpectedly due to SIGSEGV or another unexpected error.'>"
)
INJECTED = "RuntimeError: injected failure: train.gan on Session3 (federation.failures)"


def injected(name: str) -> str:
    """The one-line reason of ``federation.failures``' injected train.gan failure at node ``name``."""
    return INJECTED.replace("Session3", name)
# Session3's handler raising (federation.failures) in the same run: Ray's RayTaskError text, the
# traceback of our exception, then Flower's ClientAppException wrapper (ray_actor.py:65).
CLIENT_RAISED = (
    "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=28317, ip=192.0.2.2, actor_id=9cec11ad1b46f5559a02cc4201000000, repr=<flwr.simulation.ray_transport.ray_actor.ClientAppActor object at 0x7f6be14c4190>)\n"
    '                  ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n'
    '  File "/work/main/.venv/lib/python3.11/site-packages/flwr/clientapp/client_app.py", line 161, in __call__\n'
    '    return self._registered_funcs[full_name](message, context)\n'
    '           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n'
    '  File "/tmp/h13/after/work/flower/home/apps/fedser.fedser.0.1.0.86f7a45d/client/app.py", line 157, in train_gan\n'
    '    _check_failure(node, "train.gan")\n'
    '  File "/tmp/h13/after/work/flower/home/apps/fedser.fedser.0.1.0.86f7a45d/client/app.py", line 131, in _check_failure\n'
    '    raise RuntimeError(f"injected failure: {handler} on Session{node.session} (federation.failures)")\n'
    'RuntimeError: injected failure: train.gan on Session3 (federation.failures)\n'
    '\n'
    'The above exception was the direct cause of the following exception:\n'
    '\n'
    '\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=28317, ip=192.0.2.2, actor_id=9cec11ad1b46f5559a02cc4201000000, repr=<flwr.simulation.ray_transport.ray_actor.ClientAppActor object at 0x7f6be14c4190>)\n'
    '           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n'
    '           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n'
    '  File "/work/main/.venv/lib/python3.11/site-packages/flwr/simulation/ray_transport/ray_actor.py", line 65, in run\n'
    '    raise ClientAppException(str(ex)) from ex\n'
    'flwr.clientapp.client_app.ClientAppException: \n'
    "Exception ClientAppException occurred. Message: injected failure: train.gan on Session3 (federation.failures)'>"
)


class ScriptedGrid:
    """A Flower Grid whose nodes answer as scripted: per (node, message type), one entry per
    attempt (None: a normal reply, a string: an error reply with that reason). Replies are handed
    out in ``arrival`` order of the nodes (the default: the reverse of push order)."""

    def __init__(self, nodes: dict[int, int], script: dict[tuple[int, str], list[str | None]] | None = None,
                 arrival: list[int] | None = None) -> None:
        self.sessions = nodes  # node id -> session its query reply states
        self.script = script or {}
        self.arrival = arrival
        self.pushed: list[Message] = []
        self.waiting: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return sorted(self.sessions)  # Flower: whatever order the link state has (here: by id)

    def push_messages(self, messages: list[Message]) -> list[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id  # what Flower's grids do
            self.pushed.append(msg)
            self.waiting[msg.metadata.message_id] = msg
            ids.append(msg.metadata.message_id)
        return ids

    def reply(self, msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        attempt = sum(m.metadata.dst_node_id == node for m in self.pushed
                      if m.metadata.message_type == msg.metadata.message_type)
        plan = self.script.get((node, msg.metadata.message_type)) or [None]
        outcome = plan[min(attempt, len(plan)) - 1]
        if outcome is not None:
            return Message(Error(code=0, reason=outcome), reply_to=msg)
        if msg.metadata.message_type == "query":
            return Message(RecordDict({
                "node": ConfigRecord({"session": self.sessions[node]}),
                "metrics": MetricRecord({"utterances": 10, "feat-min": 0.0, "feat-max": 1.0,
                                         **{f"count-{c}": 0 for c in ("neu", "hap", "ang", "sad")}}),
            }), reply_to=msg)
        return Message(RecordDict({"metrics": MetricRecord({"session": self.sessions[node]})}), reply_to=msg)

    def pull_messages(self, message_ids: list[str]) -> list[Message]:
        asked = [self.waiting.pop(m) for m in message_ids if m in self.waiting]
        order = self.arrival or [m.metadata.dst_node_id for m in reversed(self.pushed)]
        asked.sort(key=lambda m: order.index(m.metadata.dst_node_id))
        return [self.reply(m) for m in asked]


# Node ids are random per run: here their order is not the sessions' order.
NODES = {907: 1, 113: 2, 555: 3, 42: 4, 731: 5}


def federation(grid: ScriptedGrid, tmp_path: Path) -> Federation:
    """A Federation over ``grid`` whose five nodes have answered discovery."""
    cfg = load_config(overrides={"federation": {"timeout": 5, "node_wait": 5},
                                 "data": {"classes": ["neu", "hap", "ang", "sad"]}})
    fed = Federation(WireGrid(grid, tmp_path / "audit.jsonl"), cfg)
    fed.discover()
    assert set(fed.nodes) == {f"Session{s}" for s in NODES.values()}
    return fed


@pytest.mark.parametrize("arrival", [None, [42, 731, 113, 907, 555], [555, 113, 907, 731, 42]])
def test_replies_come_back_in_session_order_whatever_order_they_arrive_in(tmp_path: Path, arrival) -> None:
    grid = ScriptedGrid(NODES, arrival=arrival)
    fed = federation(grid, tmp_path)
    # The grid a Flower strategy sees: nodes listed, and replies returned, by session.
    wire = fed.grid
    assert [NODES[n] for n in wire.get_node_ids()] == [1, 2, 3, 4, 5]
    pushed_by_id = [Message(RecordDict(), dst_node_id=n, message_type="train") for n in sorted(NODES, reverse=True)]
    replies = wire.send_and_receive(pushed_by_id, timeout=5)
    assert [int(r.content["metrics"]["session"]) for r in replies] == [1, 2, 3, 4, 5]
    # ... and so does an exchange by session (its outcome's dicts are built in that order).
    outcome = fed.exchange("evaluate", {f"Session{s}": RecordDict() for s in (5, 3, 1, 4, 2)})
    assert list(outcome.replies) == [f"Session{s}" for s in (1, 2, 3, 4, 5)] and not outcome.failures


def test_an_error_reply_is_retried_once_and_counts_only_if_the_retry_fails(tmp_path: Path, caplog) -> None:
    # Session2's node fails once (its actor died) then answers; Session3's fails both times.
    grid = ScriptedGrid(NODES, {(113, "train.gan"): [ACTOR_DIED, None],
                                (555, "train.gan"): [ACTOR_DIED, CLIENT_RAISED]})
    fed = federation(grid, tmp_path)
    with caplog.at_level(logging.INFO, logger="fedser.server"):
        outcome = fed.exchange("train.gan", dict.fromkeys(fed.nodes, RecordDict()))
    assert list(outcome.replies) == ["Session1", "Session2", "Session4", "Session5"]
    assert outcome.failures == {"Session3": f"train.gan: {INJECTED}"}
    assert fed.failures == {"Session3": f"train.gan: {INJECTED}"}  # recorded once, with the final reason
    sent = [NODES[m.metadata.dst_node_id] for m in grid.pushed if m.metadata.message_type == "train.gan"]
    assert sorted(sent) == [1, 2, 2, 3, 3, 4, 5]  # one retry each for 2 and 3, none for the others
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("asking once more" in w for w in warnings) == 2
    assert [w for w in warnings if "asking once more" not in w] == [f"Session3: train.gan: {INJECTED}"]
    # The audit shows both attempts, one line each, with one-line reasons.
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    gan = [(x["name"], x["attempt"], x["error"] and x["error"]["reason"]) for x in lines if x["type"] == "train.gan"]
    assert sorted(gan, key=lambda x: (x[0], x[1])) == [
        ("Session1", 1, None), ("Session2", 1, ACTOR_REASON), ("Session2", 2, None), ("Session3", 1, ACTOR_REASON),
        ("Session3", 2, INJECTED), ("Session4", 1, None), ("Session5", 1, None)]


def test_a_single_ask_survives_one_failure(tmp_path: Path) -> None:
    grid = ScriptedGrid(NODES, {(907, "evaluate"): [ACTOR_DIED, None]})
    fed = federation(grid, tmp_path)
    assert int(fed.ask("evaluate", "Session1", RecordDict())["metrics"]["session"]) == 1
    assert fed.failures == {}


ACTOR_REASON = "ActorDiedError: The actor died unexpectedly before finishing this task."


@pytest.mark.parametrize(("reason", "line"), [
    (ACTOR_DIED, ACTOR_REASON),
    (CLIENT_RAISED, INJECTED),
    # A deployed SuperNode's ClientApp process (flwr/supernode/runtime/run_clientapp.py) names the
    # handler's exception itself; an unregistered message type is Flower's own ValueError.
    (f"<class 'RuntimeError'>:<'{INJECTED.split(': ', 1)[1]}'>", INJECTED),
    ("<class 'ValueError'>:<'No train function registered with name 'x''>",
     "ValueError: No train function registered with name 'x'"),
    # The SuperLink's own reasons (flwr/server/superlink/linkstate/utils.py): kept, on one line.
    ("Error: Reply Message Unavailable - The reply message has expired.",
     "Error: Reply Message Unavailable - The reply message has expired."),
    ("\x1b[36mray::ClientAppActor.run()\x1b[39m failed\n  twice", "ray::ClientAppActor.run() failed twice"),
])
def test_failure_reasons_are_one_readable_line(reason: str, line: str) -> None:
    assert reason_line(reason) == line
    assert "\n" not in reason_line(reason) and "\x1b" not in reason_line(reason)


def test_failure_reasons_are_bounded() -> None:
    long = "<class 'RuntimeError'>:<'" + "x" * 2000 + "\nmore'>"
    assert len(reason_line(long)) == 500 and reason_line(long).startswith("RuntimeError: xxx")


def test_a_node_caps_every_thread_pool_at_its_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from threadpoolctl import threadpool_info, threadpool_limits

    from common import threads

    monkeypatch.setattr(threads, "_applied", None)
    with threadpool_limits(limits=None):  # puts this process's pools back as they were on exit
        threads.set_threads(1)  # what a node does with federation.client_cpus = 1
        pools = threadpool_info()
        assert {p["internal_api"] for p in pools} >= {"openblas", "openmp"}  # numpy/scipy, torch/sklearn
        assert [p["num_threads"] for p in pools] == [1] * len(pools) and torch.get_num_threads() == 1


class FakeActor:
    """A Ray actor handle as Flower's pool sees it: an id, and ``run.remote`` giving a future."""

    def __init__(self, name: str, dead: bool = False) -> None:
        self.name, self.dead = name, dead
        self._actor_id = type("ActorID", (), {"hex": lambda _self: name})()


class FakePool:
    """flwr's BasicActorPool (ray_actor.py), with futures resolved at once: a dead actor's raises."""

    def __init__(self, actors: list[FakeActor]) -> None:
        self.pool, self.created = list(actors), 0
        self._future_to_actor: dict[int, FakeActor] = {}

    def create_actor_fn(self) -> FakeActor:
        self.created += 1
        return FakeActor(f"new{self.created}")

    def submit(self, actor_fn: Any, job: Any) -> int:
        actor = self.pool.pop()  # LIFO, as in flwr
        self._future_to_actor[id(job)] = actor
        return id(job)

    def add_actor_back_to_pool(self, future: int) -> None:
        self.pool.append(self._future_to_actor.pop(future))

    def fetch_result_and_return_actor_to_pool(self, future: int) -> tuple[str, None]:
        from ray.exceptions import ActorDiedError

        actor = self._future_to_actor[future]
        if actor.dead:
            error = ActorDiedError()
            error.actor_id = actor.name
            raise error
        self.add_actor_back_to_pool(future)
        return f"served by {actor.name}", None


def test_a_dead_ray_actor_is_replaced_not_handed_the_next_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from ray.exceptions import ActorDiedError

    from server.federation import mend_ray_pool

    monkeypatch.setattr(RayBackend, "process_message", RayBackend.process_message)  # undone after the test
    mend_ray_pool()
    backend = RayBackend.__new__(RayBackend)  # no Ray: the pool is the fake above
    backend.pool, backend.app_fn = FakePool([FakeActor("alive"), FakeActor("killed", dead=True)]), lambda: None
    context = type("Context", (), {"node_config": {"partition-id": 0}})()
    with pytest.raises(ActorDiedError):  # the message the actor was running is lost (and retried)
        backend.process_message(None, context)
    # Unpatched, flwr put the dead actor back on top and it would take the next message too.
    assert [backend.process_message(None, context)[0] for _ in range(3)] == ["served by new1"] * 3
    assert sorted(a.name for a in backend.pool.pool) == ["alive", "new1"] and backend.pool.created == 1
