"""The docker-compose topology without an engine: the compose file validates, and the same services
run as plain processes on loopback — a TLS SuperLink with SuperNode authentication, five SuperNodes
each holding only its own session folder, an MLflow tracking server — and the eyes-off regime runs
through ``flwr run`` against them. A SuperNode with an unregistered key is refused; every process
the test starts is stopped by PID."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from common.config import SESSIONS
from common.data import synthetic_iemocap_root
from common.schema import load_config
from simulations.flower import APP_DIR, flwr_run, free_port, stop_tree, write_run_config
from tests.conftest import FAST_STUDY_TABLES
from tests.test_federation import flower_processes

BIN = Path(sys.executable).parent
DEPLOY = APP_DIR / "deploy"


def test_compose_file_validates(tmp_path: Path) -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("Debian's docker-compose is not installed (.ci/run installs it)")
    env = {**os.environ, "IEMOCAP_ROOT": "/data/IEMOCAP_full_release"}
    (tmp_path / "empty.env").write_text("")  # not the user's .env, which may set IEMOCAP_ROOT
    for files in (["docker-compose.yml"], ["docker-compose.yml", "docker-compose.insecure.yml"]):
        args = ["--env-file", str(tmp_path / "empty.env"), *(a for f in files for a in ("-f", f))]
        out = subprocess.run([compose, *args, "config"], cwd=APP_DIR, env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert all(f"supernode-{s}:" in out.stdout for s in SESSIONS)
    # Without IEMOCAP_ROOT compose refuses with the variable's own message.
    env.pop("IEMOCAP_ROOT")
    out = subprocess.run([compose, "--env-file", str(tmp_path / "empty.env"), "config"], cwd=APP_DIR, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "set IEMOCAP_ROOT" in out.stderr


class Processes:
    """Processes started by a test, each in its own session with its output in a log file."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env, self.procs = logs, env, {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env, cwd=APP_DIR, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        stop_tree(*self.procs.values(), grace=10)


def wait_for(url: str, context: ssl.SSLContext | None = None, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3, context=context) as r:
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def tls_connection(flwr_home: Path, name: str, address: str, ca: Path) -> dict[str, str]:
    """An environment whose Flower config (``FLWR_HOME``) has one TLS connection ``name``; the
    user's own ~/.flwr stays untouched."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\n'
                                           f'address = "{address}"\nroot-certificates = "{ca}"\n')
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "FLWR_HOME": str(flwr_home),
            "FLWR_DISABLE_UPDATE_CHECK": "1"}


@pytest.mark.slow
def test_tls_deployment_on_loopback(tmp_path: Path, pretrained_gan: Path) -> None:
    certs = tmp_path / "certs"
    subprocess.run(["bash", str(DEPLOY / "make-certs.sh"), str(certs)], check=True, capture_output=True, timeout=120)
    link_port, mlflow_port = free_port(), free_port()
    toml = tmp_path / "study.toml"
    # One fold: each deployed message costs seconds of Flower's own process start and polling.
    toml.write_text(f'name = "deploy"\nregimes = ["gan-federated"]\nwork_dir = "{tmp_path / "server"}"\n'
                    + FAST_STUDY_TABLES.replace("sessions = [1, 2]", "sessions = [1]").replace(
                        "[audit]\n", "[audit]\nenabled = false  # the audit's handler: tests/test_federation.py\n")
                    # the last SER iterate: one evaluate message (the test's), not three
                    .replace("eval_every = 6", "eval_every = 0")
                    + f'[model]\npretrained = "{pretrained_gan}"\n'  # the GAN lives with the server
                    + f'[tracking]\nuri = "http://127.0.0.1:{mlflow_port}"\nexperiment = "deploy"\n')
    cfg = load_config(toml)
    # Each node gets a corpus folder holding nothing but its own session.
    corpus = synthetic_iemocap_root(cfg)
    for s in SESSIONS:
        shutil.copytree(corpus / f"Session{s}", tmp_path / f"node{s}" / "IEMOCAP_full_release" / f"Session{s}")

    flwr_home = tmp_path / "flwr"
    env = tls_connection(flwr_home, "tls", f"127.0.0.1:{link_port}", certs / "ca.crt")
    # The tracking server alone, as in docker-compose.yml: no MLflow job runner and its consumers.
    procs = Processes(tmp_path / "logs", {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        procs.start("mlflow", [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                               "--artifacts-destination", str(tmp_path / "mlartifacts"), "--workers", "1"])
        # Flower's default in-memory state, not compose's --database file (kept there for restarts,
        # which this test does not make): with the file, committing every object of every message
        # kept the SuperLink at 100 % of a core for ~22 s per run here.
        procs.start("superlink", [
            str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(link_port),
            "--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile", str(certs / "superlink.crt"),
            "--ssl-keyfile", str(certs / "superlink.key"), "--enable-supernode-auth",
            "--isolation", "subprocess", "--disable-runtime-dependency-installation"])
        tls = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        wait_for(f"https://127.0.0.1:{link_port}/health", tls)
        with pytest.raises(OSError):  # TLS only: plain HTTP is not served
            urllib.request.urlopen(f"http://127.0.0.1:{link_port}/health", timeout=3)

        register = subprocess.run(["bash", str(DEPLOY / "register-supernodes.sh"), f"127.0.0.1:{link_port}",
                                   str(certs)], env=env, capture_output=True, text=True, timeout=120)
        assert register.returncode == 0, register.stdout + register.stderr
        again = subprocess.run(["bash", str(DEPLOY / "register-supernodes.sh"), f"127.0.0.1:{link_port}",
                                str(certs), "1"], env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "already registered" in again.stdout, again.stdout + again.stderr

        def supernode(name: str, key: Path, session: int) -> subprocess.Popen:
            return procs.start(name, [
                str(BIN / "fedser-supernode"), "--superlink", f"127.0.0.1:{link_port}",
                "--root-certificates", str(certs / "ca.crt"), "--auth-supernode-private-key", str(key),
                "--isolation", "subprocess", "--port", str(free_port()),
                "--node-config", f"session={session} data-root='{tmp_path / f'node{session}' / 'IEMOCAP_full_release'}' "
                                 f"work-dir='{tmp_path / f'node{session}' / 'outputs'}'"])

        for s in SESSIONS:
            supernode(f"supernode-{s}", certs / f"supernode-{s}", s)
        # A key the SuperLink never registered: the SuperNode is refused and exits.
        stranger = tmp_path / "stranger"
        subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(stranger)], check=True)
        refused = supernode("stranger", stranger, 1)
        assert refused.wait(120) != 0
        assert "Failed to activate SuperNode" in procs.log("stranger"), procs.log("stranger")[-2000:]

        wait_for(f"http://127.0.0.1:{mlflow_port}/health")
        start = time.perf_counter()
        flwr_run(env, "tls", write_run_config(tmp_path / "run.toml", cfg, "gan-federated"),
                 tmp_path / "logs" / "flwr-run.log", say=lambda line: None)
        print(f"gan-federated through the TLS SuperLink: {time.perf_counter() - start:.1f} s")

        client = MlflowClient(f"http://127.0.0.1:{mlflow_port}")
        exp = client.get_experiment_by_name("deploy")
        runs = client.search_runs([exp.experiment_id])
        parent = next(r for r in runs if r.data.tags.get("kind") == "regime")
        folds = sorted((r for r in runs if "fold" in r.data.tags), key=lambda r: r.data.tags["fold"])
        print(f"train.gan round through the TLS SuperLink: {parent.data.metrics['gan_round_seconds']:.1f} s, "
              f"{int(parent.data.metrics['generator_bytes']):,} bytes per generator")
        assert parent.data.tags["regime"] == "gan-federated"
        assert parent.data.metrics["nodes"] == 5 and parent.data.metrics["generators_received"] == 5
        assert parent.data.metrics["failed_nodes"] == 0
        assert [r.data.tags["fold"] for r in folds] == ["1"]
        assert all({"f1_macro", "ua", "wa"} <= set(r.data.metrics) for r in folds)
        artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "checkpoints")}
        assert artifacts == {f"checkpoints/generator_Session{s}.pt" for s in SESSIONS}
        # The ClientApps ran where the data is: each node cached its own session's features only.
        assert all(procs.procs[f"supernode-{s}"].poll() is None for s in SESSIONS)
        for s in SESSIONS:
            cached = list((tmp_path / f"node{s}" / "outputs" / "cache").rglob("*.npy"))
            assert 0 < len(cached) <= len(list((tmp_path / f"node{s}").rglob("*.wav")))
        # Each node's messages went to its one worker (client/worker.py), which ran from the app
        # Flower installed for this run.
        assert len(node_workers(flwr_home)) == len(SESSIONS)
    finally:
        procs.stop()
        # Whatever outlived the stopped trees (an orphan, reparented to init) carries this test's
        # FLWR_HOME: described for the assertion below, then stopped by PID all the same.
        orphans = {pid: describe(pid) for pid in flower_processes(flwr_home)}
        stop_tree(*orphans, grace=5)
    assert orphans == {}, orphans
    deadline = time.monotonic() + 20  # the workers notice their SuperExec is gone (they poll every 2 s)
    while node_workers(flwr_home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert node_workers(flwr_home) == []


def describe(pid: int) -> str:
    """``pid``'s command line and parent PID, for a message."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
    except OSError:
        return "(exited)"
    return f"ppid {ppid}: {args[:300]}"


def node_workers(flwr_home: Path) -> list[int]:
    """Live node workers (``python -m client.worker``) running from an app installed under ``flwr_home``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(proc / "cwd"))
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"client.worker" in args and cwd.is_relative_to(flwr_home) and state != "Z":
            found.append(int(proc.name))
    return found


@pytest.mark.slow
def test_study_attaches_to_an_existing_ray_cluster(tmp_path: Path) -> None:
    """`ray start --head` on loopback, `fedser study` with RAY_ADDRESS, then the cluster stopped by PID."""
    import tempfile

    from typer.testing import CliRunner

    from simulations.cli import app

    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths have a length limit
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    config = tmp_path / "study.toml"
    config.write_text(f'name = "ray"\nregimes = ["fedavg"]\nwork_dir = "{tmp_path / "out"}"\n'
                      + FAST_STUDY_TABLES.replace("sessions = [1, 2]", "sessions = [1]")
                      + '[federation]\nrounds = 1\nlocal_iterations = 2\n[tracking]\nexperiment = "ray"\n')
    started = subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                              "--num-cpus", "2", "--include-dashboard", "false", "--temp-dir", str(ray_tmp)],
                             env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
        try:
            result = CliRunner().invoke(app, ["study", str(config)])
        finally:
            del os.environ["RAY_ADDRESS"]
        assert result.exit_code == 0, result.output
        assert "fedavg" in result.output and "±" in result.output
        # The simulation ran as a driver of that cluster (its logs are in the cluster's session folder).
        drivers = list(ray_tmp.glob("session_*/logs/python-core-driver-*.log"))
        assert drivers, sorted(p.name for p in ray_tmp.glob("session_*/logs/*"))
    finally:
        # By PID: `ray stop` would end every Ray process on the machine, other users' simulations too.
        cluster = processes_mentioning(str(ray_tmp))
        stop_tree(*cluster, grace=10)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert cluster and not [pid for pid in cluster if Path(f"/proc/{pid}").exists()
                            and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (the Ray head's processes name its temp dir)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found
