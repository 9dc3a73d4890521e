"""The thread budget (common/threads.py): fixed counts, and the adaptive one's arithmetic on
/proc/stat readings (the readings scripted; benchmarks/thread_budget.py measures real jobs)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from common import threads
from common.trainers.base import run


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    """Each test leaves the process as it found it: one thread, no budget."""
    with threadpool_limits(limits=None):
        yield
    threads.use(1)


def test_a_fixed_count_caps_torch_and_every_blas_pool() -> None:
    threads.use(2)
    assert torch.get_num_threads() == 2 and {p["num_threads"] for p in threadpool_info()} == {2}
    threads.use(1)
    assert torch.get_num_threads() == 1 and {p["num_threads"] for p in threadpool_info()} == {1}
    threads.tick()  # no budget: nothing changes
    assert torch.get_num_threads() == 1


class Machine:
    """A scripted 2-core machine: /proc/stat's busy and total ticks (100 per core-second), this
    process's CPU seconds, the clock, and what is runnable at an instant."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, runnable: int = 0) -> None:
        self.now, self.busy, self.total, self.own = 1000.0, 0, 0, 0.0
        monkeypatch.setattr(threads, "cores", lambda: 2)
        monkeypatch.setattr(os, "cpu_count", lambda: 2)
        monkeypatch.setattr(threads, "_busy_ticks", lambda: (self.busy, self.total))
        monkeypatch.setattr(threads, "_runnable_others", lambda: runnable)
        monkeypatch.setattr(threads.ThreadBudget, "_own_seconds", staticmethod(lambda: self.own))
        monkeypatch.setattr(threads.time, "monotonic", lambda: self.now)

    def passes(self, seconds: float, own_cores: float, other_cores: float) -> None:
        """``seconds`` in which this process kept ``own_cores`` busy and other processes ``other_cores``."""
        self.now += seconds
        self.total += int(200 * seconds)
        self.busy += int(100 * seconds * (own_cores + other_cores))
        self.own += seconds * own_cores


def test_adaptive_threads_take_the_cores_others_leave(monkeypatch: pytest.MonkeyPatch) -> None:
    machine = Machine(monkeypatch)
    threads.use(0)
    assert torch.get_num_threads() == 2  # nothing else runnable at the start
    machine.passes(1.0, own_cores=2.0, other_cores=0.0)
    threads.tick()  # within the interval: no new look
    assert torch.get_num_threads() == 2
    machine.passes(1.5, own_cores=1.4, other_cores=0.9)  # another job took most of a core
    threads.tick()
    assert torch.get_num_threads() == 1
    machine.passes(2.5, own_cores=1.0, other_cores=1.0)  # it still runs: one each, nobody waits
    threads.tick()
    assert torch.get_num_threads() == 1
    machine.passes(2.5, own_cores=1.0, other_cores=0.1)  # it ended
    threads.tick()
    assert torch.get_num_threads() == 2
    machine.passes(2.5, own_cores=1.8, other_cores=0.2)  # a light neighbour: both threads stay
    threads.tick()
    assert torch.get_num_threads() == 2
    machine.passes(2.5, own_cores=1.5, other_cores=0.5)  # half a core taken: a second thread would wait on it
    threads.tick()
    assert torch.get_num_threads() == 1


def test_adaptive_threads_start_from_what_is_runnable(monkeypatch: pytest.MonkeyPatch) -> None:
    Machine(monkeypatch, runnable=1)
    threads.use(0)
    assert torch.get_num_threads() == 1


def test_the_training_loop_lets_the_budget_look(monkeypatch: pytest.MonkeyPatch) -> None:
    machine = Machine(monkeypatch)
    threads.use(0)

    def step(i: int) -> dict[str, float]:
        machine.passes(1.0, own_cores=1.0, other_cores=1.0)
        return {"loss": 0.0}

    run(step, 3)
    assert torch.get_num_threads() == 1
