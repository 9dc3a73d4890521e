"""Threads per process: as many as the job can use without making other jobs wait.

Why this matters: torch's intra-op pool (OpenMP) waits for its threads at the end of every
parallel region by spinning. When two processes each run as many threads as the machine has
cores, each keeps preempting the other inside those regions; on 2 cores a tiny GAN step then
took 3x its time alone, and 100x once a third process joined (benchmarks/thread_budget.py).
A process with one thread never waits at such a barrier, so processes that share cores simply
share them. Passive waiting is no cure: at the tiny preset's op sizes it made one process
alone 2.4x slower (measured, OMP_WAIT_POLICY=passive).

``training.threads`` says how many threads a process computing a stage may use:

- ``N`` (the tiny preset: 1): exactly N, always. The thread count changes how float sums are
  split, so only a fixed count gives the same numbers on every run of a config (resume and
  ``synthesis.from_run`` are bit for bit).
- ``0`` (auto): the cores the job actually has: the machine's cores (or this process's CPU
  affinity) minus what other processes used, re-measured every ``interval`` seconds from
  ``/proc/stat`` while a stage trains (:func:`tick`, called by the one training loop). Fastest on
  a machine shared with other jobs; the numbers can then differ in the last bits between runs.

Ray actors and deployed nodes keep their ``federation.client_cpus`` (the resources Ray gave them).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

_PROC_STAT = Path("/proc/stat")


def cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


_applied: int | None = None  # what set_threads last gave the BLAS/OpenMP pools


def set_threads(n: int) -> None:
    """``n`` threads for torch and for the BLAS/OpenMP pools numpy, scipy and scikit-learn use.
    The pools are capped only when ``n`` changes (threadpoolctl walks every loaded library);
    torch's own setting is per pool and cheap."""
    global _applied
    if n != _applied:
        threadpool_limits(limits=n)
        _applied = n
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _busy_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot, from the first line of /proc/stat."""
    try:
        fields = [int(x) for x in _PROC_STAT.read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def _runnable_others() -> int:
    """Threads runnable on the machine right now, this one not counted (``procs_running``)."""
    try:
        for line in _PROC_STAT.read_text().splitlines():
            if line.startswith("procs_running"):
                return max(0, int(line.split()[1]) - 1)
    except (OSError, ValueError):
        pass
    return 0


class ThreadBudget:
    """Adaptive threads (``training.threads = 0``): every ``interval`` seconds, the cores other
    processes kept busy since the last look are subtracted from :func:`cores`.

    "Other" is everything the machine did minus this process's own CPU time (``os.times``, all
    its threads, spinning ones included): two budgeted processes on 2 cores each see the other's
    core busy and settle on one thread each; when one ends, the other takes both cores."""

    def __init__(self, interval: float = 2.0) -> None:
        self.cap, self.interval = cores(), interval
        self.last = time.monotonic()
        self.ticks = _busy_ticks()
        self.own = self._own_seconds()
        # At the start there is no history yet: what is runnable at this instant.
        self.threads = self._fit(self.cap - _runnable_others())
        set_threads(self.threads)

    @staticmethod
    def _own_seconds() -> float:
        t = os.times()
        return t.user + t.system

    def _fit(self, free: float) -> int:
        # A core counts as free when others used at most 0.3 of it: a second thread sharing a core
        # with a neighbour waits for it at every barrier.
        return max(1, min(self.cap, int(free + 0.3)))

    def tick(self) -> None:
        """Cheap unless ``interval`` has passed; then re-size the pools to the free cores."""
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        ticks, own = _busy_ticks(), self._own_seconds()
        if ticks is not None and self.ticks is not None and ticks[1] > self.ticks[1]:
            # /proc/stat counts every CPU of the machine: the busy share of its ticks times its CPUs
            # is how many cores were busy on average; this process's own CPU time is taken out.
            busy = (ticks[0] - self.ticks[0]) / (ticks[1] - self.ticks[1]) * (os.cpu_count() or self.cap)
            others = max(0.0, busy - (own - self.own) / (now - self.last))
            self.threads = self._fit(self.cap - others)
            set_threads(self.threads)
        self.last, self.ticks, self.own = now, ticks, own


_BUDGET: ThreadBudget | None = None


def use(threads: int) -> None:
    """This process's threads from now on: ``threads`` > 0 fixed, 0 adaptive (module docstring)."""
    global _BUDGET
    if threads > 0:
        _BUDGET = None
        set_threads(threads)
    else:
        _BUDGET = ThreadBudget()


def tick() -> None:
    """Called by the training loop every step: lets an adaptive budget re-size the pools."""
    if _BUDGET is not None:
        _BUDGET.tick()
