"""Run the federated regimes through ``flwr run`` on a simulation SuperLink of our own.

Why not Flower's ``:local:`` connection (notes/flower-1.41.md §2.3, §4.5): it starts a detached
SuperLink that outlives the run, lives in the user's ``~/.flwr`` and by default ``uv sync``-installs
the app's dependencies (torch...) into a fresh environment per run. Here the study owns a
SuperLink with its own ``FLWR_HOME`` (under ``work_dir/flower``), a free loopback port and runtime
dependency installation off (the venv already has everything), and stops it, with everything it
spawned (SuperExec, simulation, Ray), by process group when done.

``RAY_ADDRESS`` in the environment attaches the simulation to an existing Ray cluster (§3.4): it is
passed to the SuperLink, whose simulation process calls ``ray.init()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from common.config import SESSIONS, StudyConfig

APP_DIR = Path(__file__).resolve().parent.parent  # the repo root: pyproject.toml with [tool.flwr.app]
CONNECTION = "fedser"


class FlowerRunError(RuntimeError):
    """The SuperLink did not start or a ``flwr run`` failed (the message names the log files)."""


def _bin(name: str) -> str:
    """A console script of this environment (flwr, flower-superlink), found beside python."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: not installed; run `make venv` (pip install -e .)")
    return str(path)


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (from /proc; Flower starts its SuperExec in a new session,
    so a process group does not cover everything the SuperLink spawned)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop_tree(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM ``proc`` and every descendant, wait up to ``grace`` s, then SIGKILL what is left."""
    family = [proc.pid, *descendants(proc.pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in family:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in family):
            proc.poll()  # reap our own child
            time.sleep(0.2)
    proc.wait(5)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; its parent (or init) reaps it


class LocalSuperLink:
    """A simulation SuperLink on loopback, owned by this process (a context manager)."""

    def __init__(self, home: Path, startup: float = 60.0) -> None:
        self.home, self.startup = home.resolve(), startup
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment of the SuperLink and of ``flwr`` commands against it."""
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # flower-superexec
        return {**os.environ, "PATH": path, "FLWR_HOME": str(self.home), "FLWR_DISABLE_UPDATE_CHECK": "1",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_DEDUP_LOGS": "0"}

    def __enter__(self) -> LocalSuperLink:
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n', encoding="utf-8")
        log = (self.home / "superlink.log").open("ab")
        self.proc = subprocess.Popen(
            [_bin("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
             "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.home, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + self.startup
        while not self._healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise FlowerRunError(f"flower-superlink did not start; see {self.home / 'superlink.log'}")
            time.sleep(0.3)
        return self

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_tree(self.proc)
            self.proc = None

    def run(self, cfg: StudyConfig, regime: str, say: Callable[[str], None] = print) -> None:
        """``flwr run`` of ``regime`` with one virtual node per session; raises if the run fails."""
        fed = cfg.federation
        federation = (f"num-supernodes={len(SESSIONS)} client-resources-num-cpus={fed.client_cpus} "
                      f"client-resources-num-gpus={fed.client_gpus}")
        if not os.environ.get("RAY_ADDRESS"):  # an existing cluster refuses num-cpus (notes §3.4)
            federation += f" init-args-num-cpus={os.cpu_count() or 1}"
        run_config = write_run_config(self.home / f"run-{regime}.toml", cfg, regime)
        flwr_run(self.env, CONNECTION, run_config, self.home / f"flwr-run-{regime}.log", federation, say)


def write_run_config(path: Path, cfg: StudyConfig, regime: str) -> Path:
    """The run config of one regime: the resolved study config travels as JSON, so remote nodes
    need no file (json.dumps of a str is a valid TOML basic string: same escapes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"regime = {json.dumps(regime)}\nstudy-config = {json.dumps(cfg.model_dump_json())}\n"
                    f"work-dir = {json.dumps(str(cfg.work_dir))}\n", encoding="utf-8")
    return path


def flwr_run(env: dict[str, str], connection: str, run_config: Path, log_path: Path,
             federation_config: str | None = None, say: Callable[[str], None] = print) -> None:
    """``flwr run`` of this repository's app on ``connection`` (a simulation or a deployment),
    streamed; our own log lines are relayed to ``say``, everything goes to ``log_path``. Raises
    :class:`FlowerRunError` unless the SuperLink reports the run completed."""
    cmd = [_bin("flwr"), "run", str(APP_DIR), connection, "--run-config", str(run_config), "--stream"]
    if federation_config:
        cmd += ["--federation-config", federation_config]
    with log_path.open("w", encoding="utf-8") as log, subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        text=True, cwd=APP_DIR,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if _worth_showing(line):
                say("  " + line.rstrip())
        code = proc.wait()
    status = run_status(env, connection)
    if code != 0 or status not in ("finished:completed", None):
        raise FlowerRunError(f"flwr run ended with exit code {code}, status {status}; see {log_path} "
                             "and the SuperLink's log")


def run_status(env: dict[str, str], connection: str) -> str | None:
    """The newest run's status as the SuperLink reports it (``flwr ls``), None if unknown."""
    out = subprocess.run([_bin("flwr"), "ls", connection, "--format", "json"], env=env,
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    try:
        runs = json.loads(out.stdout).get("runs", [])
    except json.JSONDecodeError:
        return None
    if not runs:
        return None
    last = max(runs, key=lambda r: r.get("pending-at", "") or "")
    return str(last.get("status"))


def _worth_showing(line: str) -> bool:
    """Our own log lines and problems; Flower's round-by-round chatter stays in the log file."""
    return "fedser:" in line or "ERROR" in line or "Traceback" in line or "Error:" in line
