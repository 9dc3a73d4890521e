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

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from common.config import SESSIONS
from common.schema import StudyConfig
from server.processes import Watchdog, descendants, stop_tree

__all__ = ["APP_DIR", "LocalSuperLink", "descendants", "flwr_run", "free_port", "stop_tree", "write_run_config"]

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


class LocalSuperLink:
    """A simulation SuperLink on loopback, owned by this process (a context manager)."""

    def __init__(self, home: Path, startup: float = 60.0) -> None:
        self.home, self.startup = home.resolve(), startup
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.watchdog: Watchdog | None = None
        self.clients: list[subprocess.Popen] = []  # `flwr run` processes against it (their own sessions)

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
        # Stops the SuperLink's tree even if this process is SIGKILLed (server/processes.py).
        self.watchdog = Watchdog(self.proc.pid, self.home / "watchdog.log").__enter__()
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
        for client in self.clients:  # a run still streaming when the study stops (Ctrl-C, a failed fold)
            if client.poll() is None:
                stop_tree(client, grace=5)
        if self.proc is not None:
            stop_tree(self.proc)
            self.proc = None
        if self.watchdog is not None:
            self.watchdog.__exit__()
            self.watchdog = None

    def run(self, cfg: StudyConfig, regimes: str | Sequence[str], say: Callable[[str], None] = print,
            nodes: int | None = None, **extra: object) -> None:
        """One ``flwr run`` of ``regimes`` (run one after another by the ServerApp, on the same
        nodes: one Ray runtime, and each node reads its data once) with one virtual node per
        session and, under a partition, one per training node (``nodes``: their count when the
        caller has it, else :func:`simulation_nodes`; ``extra``: more run config, e.g. ``owner``
        and ``resume``); raises if the run fails."""
        fed = cfg.federation
        names = [regimes] if isinstance(regimes, str) else list(regimes)
        nodes = simulation_nodes(cfg) if nodes is None else nodes
        federation = (f"num-supernodes={nodes} client-resources-num-cpus={fed.client_cpus} "
                      f"client-resources-num-gpus={fed.client_gpus}")
        if not os.environ.get("RAY_ADDRESS"):  # an existing cluster refuses num-cpus (notes §3.4)
            federation += f" init-args-num-cpus={os.cpu_count() or 1}"
        label = f"{cfg.training.trainer}-seed{cfg.training.seed}"
        run_config = write_run_config(self.home / f"run-{label}.toml", cfg, ",".join(names), nodes=nodes, **extra)
        flwr_run(self.env, CONNECTION, run_config, self.home / f"flwr-run-{label}.log", federation, say,
                 started=self.clients.append)


def simulation_nodes(cfg: StudyConfig) -> int:
    """Virtual nodes a simulation of ``cfg`` starts: the five session nodes, plus the partition's
    training nodes unless it is by session (counted from the corpus listing as the nodes count
    them: client/partitions.py)."""
    if cfg.federation.partition == "session":
        return len(SESSIONS)
    from client.partitions import nodes_per_session, partition_listing

    return len(SESSIONS) + sum(nodes_per_session(partition_listing(cfg), cfg.federation).values())


def write_run_config(path: Path, cfg: StudyConfig, regime: str, **extra: object) -> Path:
    """The run config of ``regime`` (one, or several comma-separated): the resolved study config
    travels as JSON, so remote nodes need no file (json.dumps of a str, bool or int is a valid
    TOML value: same escapes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {"regime": regime, "study-config": cfg.model_dump_json(), "work-dir": str(cfg.work_dir), **extra}
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()), encoding="utf-8")
    return path


def flwr_run(env: dict[str, str], connection: str, run_config: Path, log_path: Path,
             federation_config: str | None = None, say: Callable[[str], None] = print,
             started: Callable[[subprocess.Popen], None] | None = None) -> None:
    """``flwr run`` of this repository's app on ``connection`` (a simulation or a deployment),
    streamed; our own log lines are relayed to ``say``, everything goes to ``log_path``. Raises
    :class:`FlowerRunError` unless the SuperLink reports the run completed. Interrupted (Ctrl-C),
    it stops the run on the SuperLink before re-raising."""
    with tempfile.TemporaryDirectory(prefix="fedser-app-") as app:
        cmd = [_bin("flwr"), "run", str(app_source(Path(app))), connection, "--run-config", str(run_config),
               "--stream"]
        if federation_config:
            cmd += ["--federation-config", federation_config]
        code, run_id = _stream(cmd, env, connection, log_path, say, started)
    status = run_status(env, connection, run_id)
    if code != 0 or status not in ("finished:completed", None):
        raise FlowerRunError(f"flwr run ended with exit code {code}, status {status}; see {log_path} "
                             "and the SuperLink's log")


def _stream(cmd: list[str], env: dict[str, str], connection: str, log_path: Path, say: Callable[[str], None],
            started: Callable[[subprocess.Popen], None] | None) -> tuple[int, str | None]:
    """``cmd`` (a ``flwr run --stream``) to its end: (exit code, the run's id once announced)."""
    run_id: str | None = None
    # Its own session: a Ctrl-C reaches this process only, which then stops the run itself.
    with log_path.open("w", encoding="utf-8") as log, subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        text=True, cwd=APP_DIR, start_new_session=True,
    ) as proc:
        assert proc.stdout is not None
        if started is not None:  # whoever owns the SuperLink can stop this process too
            started(proc)
        try:
            for line in proc.stdout:
                log.write(line)
                if run_id is None and (found := _STARTED.search(line)):
                    run_id = found.group(1)
                if _worth_showing(line):
                    say("  " + line.rstrip())
            code = proc.wait()
        except BaseException:
            stop_tree(proc, grace=5)
            if run_id is not None:
                _flwr(env, "stop", run_id, connection)
            raise
    return code, run_id


def app_source(dest: Path) -> Path:
    """``dest`` holding a copy of the files ``flwr build`` puts in this repository's FAB (Flower's
    own include, exclude and .gitignore rules), for ``flwr run``. Why: ``flwr run DIR`` resolves
    every file under DIR before it filters, and the repo root holds .venv (~74,000 files: 8-9 s of
    CPU per run on two cores); walked here with the ignored folders pruned, the copy gives the same
    FAB bytes (tests/test_federation.py) in milliseconds."""
    from flwr.cli.utils import build_pathspec, filter_paths_for_publish, load_gitignore_patterns

    ignored = build_pathspec([*load_gitignore_patterns(APP_DIR / ".gitignore"), ".git/", ".flwr/"])
    files: dict[str, Path | bytes] = {}
    for folder, dirs, names in os.walk(APP_DIR):
        rel = Path(folder).relative_to(APP_DIR)
        dirs[:] = [d for d in dirs if not ignored.match_file(f"{(rel / d).as_posix()}/")]
        files.update({(rel / n).as_posix(): Path(folder) / n for n in names if not (Path(folder) / n).is_symlink()})
    for name in filter_paths_for_publish(files):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(APP_DIR / name, dest / name)
    return dest


_STARTED = re.compile(r"Successfully started run (\d+)")


def _flwr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_bin("flwr"), *args], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, check=False)


def run_status(env: dict[str, str], connection: str, run_id: str | None = None) -> str | None:
    """Run ``run_id``'s status as the SuperLink reports it (``flwr ls``; the newest run when no id
    is known), None if unknown."""
    try:
        runs = json.loads(_flwr(env, "ls", connection, "--format", "json").stdout).get("runs", [])
    except json.JSONDecodeError:
        return None
    mine = [r for r in runs if run_id is None or str(r.get("run-id")) == run_id]
    if not mine:
        return None
    last = max(mine, key=lambda r: r.get("pending-at", "") or "")
    return str(last.get("status"))


def _worth_showing(line: str) -> bool:
    """Our own log lines and problems; Flower's round-by-round chatter stays in the log file."""
    return "fedser:" in line or "ERROR" in line or "Traceback" in line or "Error:" in line
