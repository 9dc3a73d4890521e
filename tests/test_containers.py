"""The docker-compose deployment, run for real (``make test-containers``; ``.ci/run`` calls it).

On a copy of the repository, as a user would from a fresh clone: certificates by
``deploy/make-certs.sh``, the pre-trained GAN by ``fedser pretrain``'s function, the image built, the
stack brought up on the embedded synthetic corpus (``IEMOCAP_ROOT`` = its folder) under a compose
project of its own, then ``gan-federated`` and ``fedavg`` (two folds, the shortest schedules) through
the TLS SuperLink with ``flwr run`` from the host. Checks: the MLflow server keeps the parent and fold
runs, their metrics and the session generators, in PostgreSQL; each SuperNode container mounts only
its own session and says so on its first log line; a SuperNode with an unregistered key is refused;
``docker compose down -v`` leaves no container, network or volume of the project.

The engine: the running one, else ``dockerd`` started here (as root) and stopped by PID at the end;
the test skips, with one line, only when no engine can be started. Base images that can be neither
found nor pulled are built by the script ``FEDSER_CONTAINER_BASES`` names (``.ci/run`` points it at
``../shared/tools/container-bases.sh`` where that exists).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from common.config import SESSIONS
from common.data import synthetic_iemocap_root
from common.pipeline import pretrain
from common.schema import load_config
from simulations.flower import APP_DIR, flwr_run, free_port, stop_tree, write_run_config
from tests.conftest import FAST_STUDY_TABLES, unavailable
from tests.test_deployment import tls_connection, wait_for

# A cold image build alone takes minutes (the CUDA torch wheel): a limit of its own.
pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(3600)]

BASE_IMAGES = ("python:3.11.7-slim-bookworm", "postgres:15.10-bookworm")
IMAGE = "fedser:0.1.0"
IN_CONTAINER_ROOT = "/data/IEMOCAP_full_release"


def sh(*cmd: str, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def engine_up() -> bool:
    return shutil.which("docker") is not None and sh("docker", "info", timeout=60, check=False).returncode == 0


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A container engine: the running one, else a ``dockerd`` of ours, stopped by PID afterwards."""
    if engine_up():
        yield
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or shutil.which("docker") is None or os.geteuid() != 0:
        unavailable("no container engine can be started here (needs docker + dockerd, as root: "
                    "apt-get install docker.io docker-compose)")
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([dockerd], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + 90
    while not engine_up() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
    if not engine_up():
        stop_tree(proc, grace=30)
        unavailable(f"no container engine can be started here: dockerd did not come up ({log})")
    try:
        yield
    finally:
        stop_tree(proc, grace=60)


def compose_command() -> list[str]:
    """``docker compose`` (v2) where the plugin exists, else Debian's ``docker-compose`` (v1.29)."""
    if sh("docker", "compose", "version", check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise AssertionError("neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)")


def ensure_base_images() -> None:
    """The base images the Dockerfile and compose file name: present, pulled, or built locally."""
    missing = [i for i in BASE_IMAGES if sh("docker", "image", "inspect", i, check=False).returncode != 0]
    missing = [i for i in missing if sh("docker", "pull", "-q", i, check=False, timeout=900).returncode != 0]
    if not missing:
        return
    script = os.environ.get("FEDSER_CONTAINER_BASES")
    assert script and Path(script).is_file(), (
        f"base images {missing} can be neither found nor pulled; set FEDSER_CONTAINER_BASES to a script "
        "that builds them (e.g. ../shared/tools/container-bases.sh)")
    sh("bash", script, timeout=1800)


def repository_copy(dest: Path) -> Path:
    """The repository as a fresh clone has it (tracked and unignored files), without .venv or outputs."""
    listed = sh("git", "ls-files", "-co", "--exclude-standard", "-z", cwd=APP_DIR)
    for name in filter(None, listed.stdout.split("\0")):
        if (APP_DIR / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(APP_DIR / name, dest / name)
    return dest


def test_compose_stack_trains_and_logs(engine: None, tmp_path: Path) -> None:
    compose = compose_command()
    ensure_base_images()
    repo = repository_copy(tmp_path / "fedser")
    project = f"fedsertest{os.getpid()}"
    link_port, mlflow_port = free_port(), free_port()

    # The study: the shortest schedules, folds 1-2, paths as the containers see them.
    toml = repo / "study.toml"
    toml.write_text(f'name = "deploy"\nregimes = ["gan-federated", "fedavg"]\nwork_dir = "{repo / "outputs"}"\n'
                    + FAST_STUDY_TABLES + '[federation]\nrounds = 2\nlocal_iterations = 4\n'
                    '[tracking]\nexperiment = "deploy"\n')
    host_cfg = load_config(toml)
    pretrain(host_cfg)  # outputs/checkpoints/pretrained.pt, what the SuperLink container mounts
    corpus = synthetic_iemocap_root(host_cfg)
    node_cfg = host_cfg.model_copy(update={
        "work_dir": Path("/app/outputs"),
        "data": host_cfg.data.model_copy(update={"root": Path(IN_CONTAINER_ROOT)}),
        "tracking": host_cfg.tracking.model_copy(update={"uri": "http://mlflow:5000"}),
    })

    sh("bash", "deploy/make-certs.sh", cwd=repo)
    env = {**os.environ, "IEMOCAP_ROOT": str(corpus), "SUPERLINK_PORT": str(link_port),
           "MLFLOW_PORT": str(mlflow_port)}
    dc = [*compose, "-p", project]
    timings: dict[str, float] = {}
    passed = False
    try:
        start = time.perf_counter()
        sh(*dc, "build", cwd=repo, env=env, timeout=3600)
        timings["build"] = time.perf_counter() - start
        start = time.perf_counter()
        sh(*dc, "up", "-d", cwd=repo, env=env, timeout=900)
        wait_for(f"http://127.0.0.1:{mlflow_port}/health", seconds=120)
        timings["up"] = time.perf_counter() - start

        flwr_env = tls_connection(tmp_path / "flwr", "compose", f"127.0.0.1:{link_port}",
                                  repo / "deploy" / "certs" / "ca.crt")
        for regime in ("gan-federated", "fedavg"):
            start = time.perf_counter()
            flwr_run(flwr_env, "compose", write_run_config(tmp_path / f"run-{regime}.toml", node_cfg, regime),
                     tmp_path / f"flwr-run-{regime}.log", say=lambda line: None)
            timings[regime] = time.perf_counter() - start
        print("container stack: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))

        # MLflow on PostgreSQL: the parent and fold runs, their metrics, the session generators.
        client = MlflowClient(f"http://127.0.0.1:{mlflow_port}")
        runs = client.search_runs([client.get_experiment_by_name("deploy").experiment_id])
        for regime in ("gan-federated", "fedavg"):
            parent = next(r for r in runs if r.data.tags.get("kind") == "regime" and r.data.tags["regime"] == regime)
            assert parent.info.status == "FINISHED"
            assert parent.data.metrics["nodes"] == 5 and parent.data.metrics["failed_nodes"] == 0
            folds = [r for r in runs if r.data.tags.get("regime") == regime and "fold" in r.data.tags]
            assert sorted(r.data.tags["fold"] for r in folds) == ["1", "2"]
            assert all({"f1_macro", "ua", "wa"} <= set(r.data.metrics) for r in folds)
            if regime == "gan-federated":
                assert parent.data.metrics["generators_received"] == 5
                artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "checkpoints")}
                assert artifacts == {f"checkpoints/generator_Session{s}.pt" for s in SESSIONS}
        in_postgres = sh(*dc, "exec", "-T", "postgres", "psql", "-U", "mlflow", "-d", "mlflow", "-tAc",
                         "SELECT count(*) FROM runs", cwd=repo, env=env).stdout.strip()
        assert int(in_postgres) == len(runs)

        # Each SuperNode container mounts its own session, its own key, the CA and its cache volume.
        for s in SESSIONS:
            cid = sh(*dc, "ps", "-q", f"supernode-{s}", cwd=repo, env=env).stdout.strip()
            mounts = json.loads(sh("docker", "inspect", "--format", "{{json .Mounts}}", cid).stdout)
            binds = {m["Destination"]: m for m in mounts if m["Type"] == "bind"}
            assert set(binds) == {f"{IN_CONTAINER_ROOT}/Session{s}", "/certs/ca.crt", "/certs/supernode"}, mounts
            assert Path(binds[f"{IN_CONTAINER_ROOT}/Session{s}"]["Source"]) == corpus / f"Session{s}"
            assert not binds[f"{IN_CONTAINER_ROOT}/Session{s}"]["RW"]
            assert Path(binds["/certs/supernode"]["Source"]).name == f"supernode-{s}"
            assert [m["Destination"] for m in mounts if m["Type"] == "volume"] == ["/app/outputs"]
            first = sh(*dc, "logs", "--no-color", f"supernode-{s}", cwd=repo, env=env).stdout
            first = next(line for line in first.splitlines() if "fedser supernode" in line)
            assert f"Session{s} (" in first and f"sessions visible: Session{s})" in first, first

        # A SuperNode whose key was never registered is refused.
        stranger = tmp_path / "stranger"
        sh("ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(stranger))
        network = json.loads(sh("docker", "inspect", "--format", "{{json .NetworkSettings.Networks}}", cid).stdout)
        refused = sh("docker", "run", "--rm", "--network", next(iter(network)), "--tmpfs", "/run",
                     "-e", "SESSION=1", "-v", f"{corpus / 'Session1'}:{IN_CONTAINER_ROOT}/Session1:ro",
                     "-v", f"{repo / 'deploy' / 'certs' / 'ca.crt'}:/certs/ca.crt:ro",
                     "-v", f"{stranger}:/certs/supernode:ro", IMAGE, "deploy/supernode.sh", check=False, timeout=300)
        assert refused.returncode != 0
        assert "Failed to activate SuperNode" in refused.stdout + refused.stderr, refused.stderr[-2000:]
        passed = True
    finally:
        if not passed:  # the services' last words, in pytest's report of the failure
            print("\n".join(sh(*dc, "logs", "--no-color", cwd=repo, env=env, check=False).stdout.splitlines()[-150:]))
        down = sh(*dc, "down", "-v", "--remove-orphans", cwd=repo, env=env, check=False, timeout=600)
    assert down.returncode == 0, down.stderr
    label = f"label=com.docker.compose.project={project}"
    assert sh("docker", "ps", "-aq", "--filter", label).stdout.strip() == ""
    assert sh("docker", "network", "ls", "-q", "--filter", label).stdout.strip() == ""
    assert sh("docker", "volume", "ls", "-q", "--filter", label).stdout.strip() == ""
    assert [v for v in sh("docker", "volume", "ls", "-q").stdout.split() if v.startswith(f"{project}_")] == []
