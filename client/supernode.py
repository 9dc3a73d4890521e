"""``fedser-supernode``: Flower's ``flower-supernode``, with the waits between messages shortened.

A deployed message passes three pollers before its handler runs and two after: the SuperNode asks
the SuperLink for messages and, when there is none, sleeps 3 s (flwr 1.41,
flwr/supernode/start_client_internal.py, hard-coded); its SuperExec looks for tasks every 1 s
(``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``); the SuperNode checks for the ClientApp's reply every
0.5 s. A server that sends its next message right after a reply (FedAvg's rounds, validation
after every ``eval_every`` steps) meets the SuperNode asleep: 2-5 s per message on loopback, where
a simulated message takes milliseconds. Here every wait of that module is at most
``FEDSER_SUPERNODE_POLL`` seconds (default 0.2) and the SuperExec polls as often, unless set; one
idle node then asks the SuperLink five times a second, a small HTTP request each.

Everything else is ``flower-supernode`` as is (same arguments, ``--help``).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import SimpleNamespace

POLL_ENV = "FEDSER_SUPERNODE_POLL"
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"  # Flower's own knob (flwr/supercore/superexec/run_superexec.py)


def poll_seconds() -> float:
    """The longest wait between two looks for work (``FEDSER_SUPERNODE_POLL``, default 0.2 s)."""
    raw = os.environ.get(POLL_ENV, "0.2")
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{POLL_ENV}={raw!r}: give the seconds between two polls, e.g. {POLL_ENV}=0.2") from None
    if not 0.01 <= value <= 60:
        raise SystemExit(f"{POLL_ENV}={raw!r}: must be between 0.01 and 60 seconds")
    return value


def shorten_waits(poll: float) -> None:
    """Cap every ``time.sleep`` of Flower's SuperNode loop at ``poll`` seconds (its module only)."""
    from flwr.supernode import start_client_internal

    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, poll))

    clock = {k: getattr(time, k) for k in dir(time) if not k.startswith("_")}
    start_client_internal.time = SimpleNamespace(**{**clock, "sleep": sleep})  # type: ignore[attr-defined]


def main() -> None:
    """``flower-supernode`` with :func:`shorten_waits` and the SuperExec's poll set to match."""
    from flwr.supernode.cli import flower_supernode

    poll = poll_seconds()
    # The SuperExec this SuperNode starts exits, when its parent is gone, by raising SIGINT once
    # (flwr/supercore/app_utils.py). Started from a shell's background job or nohup, SIGINT is
    # inherited as ignored, and a SuperExec whose SuperNode died before it installed its own handler
    # (a refused SuperNode exits within a second) then polls a dead Runtime API forever. A Python
    # handler is reset to the default on exec, so the SuperExec starts with SIGINT deliverable.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.setdefault(SUPEREXEC_POLL_ENV, str(poll))  # inherited by the SuperExec the SuperNode starts
    shorten_waits(poll)
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
