"""A deployed node's worker (client/worker.py): the ClientApp processes of a SuperNode hand their
messages to one long-lived process per node, which answers them all, raises what the handler
raised, and ends with the process that launched them (the SuperNode's SuperExec)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from client import worker
from common.data import synthetic_iemocap_root
from common.schema import load_config
from tests.conftest import FAST_STUDY_TABLES, study_file

ROOT = Path(__file__).parents[1]

# What one flwr-clientapp process does with a message, twice (two messages, two processes in a
# deployment; one process here is enough to show both are answered by the same worker).
ASK = """
import json, sys
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from client.app import reply
for name, value in {"_run_id": 1, "_node_id": 5, "_task_id": 1}.items():
    setattr(TaskIdentity, name, value)
node_config, run_config = json.loads(sys.argv[1]), json.loads(sys.argv[2])
context = Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config=run_config)
for _ in range(2):
    try:
        answer = reply("query", Message(RecordDict(), dst_node_id=5, message_type="query"), context)
        print(json.dumps(dict(answer.content["metrics"])), flush=True)
    except RuntimeError as exc:
        print("raised", type(exc).__name__, exc, flush=True)
"""


# Three FedGAN rounds of one node with federation.gan_local_state: fold 1 rounds 1 and 2, then
# fold 2 round 2 (a node that missed that fold's first round). Prints the Adam step count the node
# keeps in its Context.state after each: continued within a fold, fresh across folds.
FEDGAN = """
import json, sys
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from client.app import reply
from common.models.sngan import Discriminator, GanSpec, Generator
from common.schema import config_from_run
for name, value in {"_run_id": 1, "_node_id": 5, "_task_id": 1}.items():
    setattr(TaskIdentity, name, value)
node_config, run_config = json.loads(sys.argv[1]), json.loads(sys.argv[2])
spec = GanSpec.of(config_from_run(run_config))
gen, disc = Generator(spec), Discriminator(spec, head=spec.n_c + 1)
context = Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config=run_config)
for fold, rnd in ((1, 1), (1, 2), (2, 2)):
    content = RecordDict({"generator": ArrayRecord(gen.state_dict()), "discriminator": ArrayRecord(disc.state_dict()),
                          "config": ConfigRecord({"lo": -80.0, "hi": 0.0, "server-round": rnd, "local-steps": 2, "fold": fold})})
    reply("train.fedgan", Message(content, dst_node_id=5, message_type="train.fedgan"), context)
    moments = context.state["fedgan.moments"].to_torch_state_dict()
    print(json.dumps([int(context.state["fedgan.fold"]["fold"]), int(moments["g.0.step"])]), flush=True)
"""


def _workers(socket: Path) -> list[int]:
    """Live processes serving ``socket``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"client.worker" in args and str(socket).encode() in args and state != "Z":
            found.append(int(cmdline.parent.name))
    return found


def _ask(tmp_path: Path, failures: str = "", script: str = ASK, lines: int = 2,
         federation: str = "") -> tuple[subprocess.Popen, list[str], Path]:
    cfg = load_config(study_file(tmp_path, FAST_STUDY_TABLES + f"[federation]\nfailures = [{failures}]\n{federation}"))
    root = synthetic_iemocap_root(cfg)
    node_config = {"session": 2, "data-root": str(root), "work-dir": str(tmp_path / "node")}
    run_config = {"study-config": cfg.model_dump_json(), "work-dir": str(cfg.work_dir)}
    # A stand-in for the SuperExec: the ClientApp process is its child, the worker watches it.
    superexec = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\n"
         f"subprocess.run([sys.executable, '-c', {script!r}, sys.argv[1], sys.argv[2]])\ntime.sleep(120)",
         json.dumps(node_config), json.dumps(run_config)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "FEDSER_NODE_IDLE": "120"})
    assert superexec.stdout is not None
    printed = [superexec.stdout.readline().strip() for _ in range(lines)]
    return superexec, printed, worker.address(node_config)


def _stop(superexec: subprocess.Popen, socket: Path) -> None:
    superexec.kill()
    superexec.wait()
    deadline = time.monotonic() + 20
    while _workers(socket) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _workers(socket) == [] and not socket.exists()


def test_a_deployed_node_answers_from_one_worker_that_ends_with_its_superexec(tmp_path: Path) -> None:
    superexec, lines, socket = _ask(tmp_path)
    try:
        first, second = (json.loads(line) for line in lines)
        assert first == second and first["utterances"] > 0  # Session2's counts, from the worker
        assert len(_workers(socket)) == 1  # both messages, one process that read the node's data
    finally:
        _stop(superexec, socket)


def test_what_the_handler_raises_is_raised_in_the_clientapp_process(tmp_path: Path) -> None:
    superexec, lines, socket = _ask(tmp_path, failures='"query:2"')
    try:
        assert lines == ["raised RuntimeError injected failure: query on Session2 (federation.failures)"] * 2
        assert len(_workers(socket)) == 1  # the worker outlives its handler's exceptions
    finally:
        _stop(superexec, socket)


def test_the_node_state_a_handler_changes_in_the_worker_comes_back_to_the_context(tmp_path: Path) -> None:
    superexec, lines, socket = _ask(tmp_path, script=FEDGAN, lines=3, federation="gan_local_state = true\n")
    try:
        # (fold, Adam steps kept): round 2 continues round 1's moments; another fold starts fresh.
        assert [json.loads(line) for line in lines] == [[1, 2], [1, 4], [2, 2]], lines
    finally:
        _stop(superexec, socket)
