"""A deployed node's worker: one long-lived process per node that runs the node's handlers.

Why: a deployed SuperNode (Flower 1.41) starts a new ClientApp process (``flwr-clientapp``) for
every message; Flower keeps nothing between those processes but ``Context.state``. Each one would
import torch and the platform (2.9 s of CPU on this project's 2-core machine) and read the node's
session before its handler could start. So the ClientApp process (client/app.py) hands the
message to this worker over a Unix socket and waits for the reply: the worker imported everything
once and keeps the node's config, data, scaled splits and audit classifier (client/node.py's
caches) between messages, as a Ray actor does in a simulation. What a message still costs beyond
a simulated one is the ClientApp process's own start (Python and flwr).

The first message of a node starts its worker (``python -m client.worker``, same Python, same
app folder: a new app version gets a new worker). It serves one message at a time and exits when
the process that launches the ClientApp processes (the SuperNode's SuperExec) is gone, or after
``FEDSER_NODE_IDLE`` seconds without a message (default 3600). Its socket and log are in
``$TMPDIR/fedser-<uid>/``. ``FEDSER_NODE_WORKER=0`` runs the handlers in the ClientApp process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

APP_DIR = Path(__file__).resolve().parent.parent  # the folder holding client/ (the installed app)
START_SECONDS = 300.0  # a worker imports torch and the platform; on a busy node that takes a while
_HEADER = struct.Struct("!Q")


def enabled() -> bool:
    """Whether a deployed node hands its messages to a worker (``FEDSER_NODE_WORKER``, default on)."""
    return os.environ.get("FEDSER_NODE_WORKER", "1") != "0"


def _folder() -> Path:
    folder = Path(tempfile.gettempdir()) / f"fedser-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def address(node_config: Mapping[str, Any]) -> Path:
    """The socket of the worker of the node with ``node_config``, for this app folder and Python
    (short enough for a Unix socket path: a digest names it)."""
    key = json.dumps({"node": dict(node_config), "app": str(APP_DIR), "python": sys.executable},
                     sort_keys=True, default=str)
    return _folder() / f"node-{hashlib.sha256(key.encode()).hexdigest()[:16]}.sock"


def _send(sock: socket.socket, value: object) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(data)) + data)


def _receive(sock: socket.socket) -> Any:
    def exactly(n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = sock.recv(min(left, 1 << 20))
            if not chunk:
                raise ConnectionError("the node's worker closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    (size,) = _HEADER.unpack(exactly(_HEADER.size))
    return pickle.loads(exactly(size))  # noqa: S301 - our own worker, a socket only this user can open


def ask(kind: str, content: object, where: Mapping[str, Any]) -> Any:
    """(The reply content, the node's state after it) of handler ``kind`` at the node ``where``
    names, computed by its worker (started if it is not running); what the handler raised is raised here."""
    path = address(where["node_config"])
    with _connected(path) as sock:
        _send(sock, (kind, content, dict(where)))
        status, value = _receive(sock)
    if status == "error":
        raise value
    return value


@contextlib.contextmanager
def _connected(path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(str(path))
        except OSError:
            _start(path)
            sock.connect(str(path))
        yield sock
    finally:
        sock.close()


def _start(path: Path) -> None:
    """Start the worker for ``path`` unless another ClientApp process just did; return once it listens."""
    with path.with_suffix(".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter per node; the others find it listening
        if _listening(path):
            return
        log = path.with_suffix(".log")
        with log.open("ab") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "client.worker", str(path), str(os.getppid())],
                cwd=APP_DIR, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(APP_DIR), os.environ.get("PYTHONPATH")]))},
            )
        deadline = time.monotonic() + START_SECONDS
        while not _listening(path):
            if worker.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
                raise RuntimeError(f"the node's worker did not start (exit {worker.poll()}): {tail[0]}; see {log}")
            time.sleep(0.05)


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process has that PID now or still: treat as alive
        return True
    with contextlib.suppress(OSError, IndexError):  # a zombie has exited
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def serve(path: Path, watch: int, idle: float) -> None:
    """Answer messages on ``path`` until process ``watch`` is gone or ``idle`` seconds pass without one."""
    from client import node  # the heavy part: torch, the platform; once per worker

    path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(16)
        server.settimeout(2.0)
        last = time.monotonic()
        try:
            while _alive(watch) and time.monotonic() - last < idle:
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(None)
                    try:
                        kind, content, where = _receive(conn)
                    except ConnectionError:  # a starter's probe: connected, then closed
                        continue
                    try:
                        at = node.Where(**where)
                        reply: tuple[str, object] = ("ok", (node.HANDLERS[kind](content, at), at.state))
                    except Exception as exc:  # the handler's own exception, raised again in the ClientApp
                        reply = ("error", exc if _picklable(exc) else RuntimeError(f"{type(exc).__name__}: {exc}"))
                    with contextlib.suppress(OSError):  # the ClientApp process was stopped meanwhile
                        _send(conn, reply)
                last = time.monotonic()
        finally:
            path.unlink(missing_ok=True)


def _picklable(exc: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 - round trip of our own object
    except Exception:
        return False
    return True


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]), float(os.environ.get("FEDSER_NODE_IDLE", "3600")))
