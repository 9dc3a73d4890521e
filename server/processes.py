"""The processes a study owns: its work-dir lock, its identity on MLflow runs, and stopping the
process trees it starts, also when the study itself is killed.

- :func:`work_dir_lock`: one ``fedser study``/``pretrain`` per work dir (``flock``, so the lock of a
  killed process is released by the kernel and simply taken over);
- :func:`owner` / :func:`owner_alive`: ``host:pid:start`` of this process, written on every MLflow
  run it opens, so that a later study can tell a run whose process is gone from a live one;
- :func:`stop_tree` and the watchdog (``python -m server.processes PID``): a SIGKILLed study
  cannot clean up, so a watchdog in its own session waits for the study's end of a pipe to close
  and then stops the SuperLink's whole tree (SuperExec, simulation, Ray), which would otherwise be
  adopted by init and finish the regime unattended.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".fedser.lock"


class WorkDirBusy(ValueError):
    """Another live fedser process holds the work dir (a ValueError: the CLI prints one line)."""


_HELD: dict[Path, int] = {}  # work dir -> nesting depth in this process (demo = pretrain + study)


@contextlib.contextmanager
def work_dir_lock(work_dir: Path, what: str) -> Iterator[None]:
    """Hold ``work_dir``'s lock for ``what`` (``study``, ``pretrain``), or raise :class:`WorkDirBusy`
    naming the process that holds it. Re-entrant within one process."""
    work_dir = work_dir.resolve()
    if work_dir in _HELD:
        _HELD[work_dir] += 1
        try:
            yield
        finally:
            _HELD[work_dir] -= 1
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # CLOEXEC: children never hold it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise WorkDirBusy(f"{work_dir} is in use by {holder}; wait for it to end, stop it, or give this "
                              "run another work_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"`fedser {what}` (PID {os.getpid()} on {socket.gethostname()})\n".encode(), 0)
        _HELD[work_dir] = 1
        try:
            yield
        finally:
            del _HELD[work_dir]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a reused PID from the original)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner(pid: int | None = None) -> str:
    """``host:pid:start`` of a process (this one by default): the ``owner`` tag of MLflow runs."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def owner_alive(tag: str) -> bool | None:
    """Whether the process named by an ``owner`` tag still runs; None when it ran on another host
    (nothing can be known from here)."""
    host, _, rest = tag.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    return _start_ticks(int(pid)) == start


# ------------------------------------------------------------------------------- process trees


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


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; its parent (or init) reaps it


def stop_tree(*procs: subprocess.Popen | int, grace: float = 15.0) -> None:
    """SIGTERM ``procs`` (children, or any PIDs) and all their descendants at once, wait up to
    ``grace`` s for them together, then SIGKILL what is left. The families are listed first: once
    a root dies, init adopts the rest. Together, not one by one: a Ray cluster's dozen processes
    would otherwise cost a grace period each."""
    roots = [p if isinstance(p, int) else p.pid for p in procs]
    family = [*roots, *(child for pid in roots for child in descendants(pid))]
    ours = [p for p in procs if not isinstance(p, int)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for member in family:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(member, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in family):
            for child in ours:
                child.poll()  # reap our own children
            time.sleep(0.2)
    for child in ours:
        child.wait(5)


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux ``PR_SET_PDEATHSIG``; a
    no-op elsewhere): fold workers of a SIGKILLed study stop instead of training on unattended."""
    if sys.platform != "linux":
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before the call
        os._exit(1)


class Watchdog:
    """Stops ``pid``'s tree if this process dies without doing so (a context manager).

    The watchdog runs in its own session (a Ctrl-C to the study's terminal does not reach it) and
    blocks reading a pipe whose only writer is this process: the kernel closes it however this
    process ends, SIGKILL included. A clean exit closes it after the tree is already stopped."""

    def __init__(self, pid: int, log: Path | None = None) -> None:
        self.pid, self.log = pid, log
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Watchdog:
        out = self.log.open("ab") if self.log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "server.processes", str(self.pid)],
                                     stdin=subprocess.PIPE, stdout=out, stderr=out, start_new_session=True,
                                     cwd=Path(__file__).resolve().parent.parent)
        if self.log is not None:
            out.close()  # type: ignore[union-attr]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()
            self.proc.wait(30)
            self.proc = None


def _watch(pid: int) -> None:
    """The watchdog's body: wait for EOF on stdin, then stop ``pid``'s tree if it still runs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdin.buffer.read()
    if _alive(pid):
        print(f"fedser watchdog: the study ended without stopping PID {pid}; stopping its tree", flush=True)
        stop_tree(pid)


if __name__ == "__main__":
    _watch(int(sys.argv[1]))
