"""The federated regimes end to end: `fedser study` -> `flwr run` -> five simulated session nodes.

One study runs both federated regimes on a SuperLink it starts itself, with Session3's
``train.gan`` made to fail. The test then reads MLflow (runs, metrics, tags, artifacts), inspects
every reply that reached the server (the wire audit: the eyes-off guarantee) and checks that no
Flower or Ray process is left behind.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from common.models.sngan import GanSpec, Generator
from common.schema import config_from_run, load_config
from simulations.cli import app
from simulations.flower import descendants, stop_tree
from tests.conftest import FAST_STUDY_TABLES, study_file

FAST = """
name = "fed"
regimes = ["gan-federated", "fedavg"]
""" + FAST_STUDY_TABLES + """
[federation]
strategy = "fedprox"
rounds = 2
local_iterations = 3
failures = ["train.gan:3"]
node_wait = 60
timeout = 300
[tracking]
experiment = "fed"
"""
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


def audit_lines(run) -> list[dict]:
    [audit] = [a.path for a in mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="flower")]
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=audit)
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


SCALAR_REPLIES = {  # message type -> the metric keys a reply may hold (all scalars)
    "query": re.compile(r"utterances|count-\w+|feat-min|feat-max"),
    "evaluate": re.compile(r"num-examples|f1_macro|ua|wa|cm_\d+_\d+"),
    "train": re.compile(r"num-examples|loss"),
    "train.gan": re.compile(r"num-examples|seconds"),
}


def assert_eyes_off(lines: list[dict], generator_shapes: dict[str, list]) -> None:
    """Every reply holds weights of the known models and scalar metrics: nothing shaped like data."""
    for line in lines:
        if line["error"]:
            continue
        assert set(line["metrics"]) <= {"metrics"}, line
        for key, kind in line["metrics"].get("metrics", {}).items():
            assert SCALAR_REPLIES[line["type"]].fullmatch(key), line
            assert kind in ("int", "float"), line  # no lists: per-utterance values cannot travel
        if line["type"] == "train.gan":
            assert set(line["arrays"]) == {"generator"}
            assert {k: shape for k, (shape, _dtype) in line["arrays"]["generator"].items()} == generator_shapes
        elif line["type"] == "query":
            assert line["arrays"] == {} and line["configs"] == {"node": {"session": "int"}}
        else:
            assert line["arrays"] == {} and line["configs"] == {}, line


@pytest.mark.slow
def test_federated_regimes_through_flwr_run(tmp_path: Path) -> None:
    config = study_file(tmp_path, FAST)
    runner = CliRunner()
    done = runner.invoke(app, ["pretrain", str(config)])
    assert done.exit_code == 0, done.output
    result = runner.invoke(app, ["study", str(config)])
    assert result.exit_code == 0, result.output
    assert "gan-federated" in result.output and "fedavg" in result.output and "±" in result.output

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["fed"], output_format="list")
    parents = {r.data.tags["regime"]: r for r in runs if r.data.tags.get("kind") == "regime"}
    children = [r for r in runs if "fold" in r.data.tags]
    assert set(parents) == {"gan-federated", "fedavg"}
    assert sorted((c.data.tags["regime"], c.data.tags["fold"]) for c in children) == [
        ("fedavg", "1"), ("fedavg", "2"), ("gan-federated", "1"), ("gan-federated", "2")]
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[child.data.tags["regime"]].info.run_id
        assert {"f1_macro", "ua", "wa", "cm_0_0", "val_f1_macro"} <= set(child.data.metrics)
        files = {a.path for a in mlflow.artifacts.list_artifacts(run_id=child.info.run_id, artifact_path="plots")}
        assert files == {"plots/confusion.png"}
    assert all("val_f1_macro_curve" in c.data.metrics for c in children if c.data.tags["regime"] == "fedavg")

    # Session3's generator failed: recorded, and the regime went on with the other four.
    gan = parents["gan-federated"]
    assert gan.data.metrics["nodes"] == 5
    assert gan.data.metrics["generators_received"] == 4 and gan.data.metrics["generator_failures"] == 1
    assert gan.data.metrics["failed_nodes"] == 1
    assert "injected failure: train.gan on Session3" in gan.data.tags["failure.Session3"]
    assert parents["fedavg"].data.metrics["failed_nodes"] == 0
    ckpts = {a.path for a in mlflow.artifacts.list_artifacts(run_id=gan.info.run_id, artifact_path="checkpoints")}
    assert ckpts == {f"checkpoints/generator_Session{s}.pt" for s in (1, 2, 4, 5)}
    assert {"f1_macro_mean", "f1_macro_std"} <= set(gan.data.metrics)

    # The eyes-off guarantee, on every reply that reached the server.
    cfg = config_from_run({"study-config": str(config)})
    shapes = {k: list(v.shape) for k, v in Generator(GanSpec.of(cfg)).state_dict().items()}
    lines = audit_lines(gan)
    by_type = {t: [x for x in lines if x["type"] == t] for t in ("query", "train.gan", "evaluate")}
    assert len(by_type["query"]) == 5 and len(by_type["train.gan"]) == 5
    assert [x["session"] for x in by_type["train.gan"] if x["error"]] == [3]
    assert {x["session"] for x in by_type["evaluate"]} == {1, 2}  # held-out nodes score the folds
    assert len(lines) == sum(map(len, by_type.values()))
    assert_eyes_off(lines, shapes)
    fedavg_lines = audit_lines(parents["fedavg"])
    assert {x["type"] for x in fedavg_lines} == {"query", "train", "evaluate"}
    assert_eyes_off([x for x in fedavg_lines if x["type"] != "train"], shapes)
    for line in fedavg_lines:  # FedAvg replies carry the SER weights, nothing else
        if line["type"] == "train":
            assert set(line["arrays"]) == {"arrays"} and not line["error"]

    # The report reads both federated regimes; nothing Flower or Ray started is still running.
    report = runner.invoke(app, ["report", "--config", str(config), "--json"])
    assert report.exit_code == 0, report.output
    assert {(r["regime"], r["fold"]) for r in json.loads(report.output)} == {
        (g, f) for g in ("gan-federated", "fedavg") for f in (1, 2)}
    assert flower_processes(tmp_path / "out" / "flower" / "home") == set()
    assert load_config(config).federation.failures == ("train.gan:3",)


def test_stop_tree_stops_a_process_and_its_children() -> None:
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 20
        while not descendants(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        [child] = descendants(parent.pid)
    finally:
        stop_tree(parent, grace=5)
    assert parent.returncode is not None
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
