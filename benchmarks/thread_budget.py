"""Threads at work during a 2-worker ``fedser study``: does the study keep to the machine's cores?

    nice -n 10 python benchmarks/thread_budget.py [--repo DIR] [--work-dir DIR] [--workers N]
                                                  [--interval S] [--keep]

Runs, with the code of ``--repo`` (default: this checkout), ``fedser pretrain`` and then ``fedser
study`` on the embedded tiny corpus: real-central and gan-central over two folds in ``--workers``
spawned fold workers, with short schedules (``--federated``: gan-federated and fedavg instead, five
session nodes on Ray actors of one core each, beside the ServerApp). While the study runs it samples, every ``--interval``
seconds, every thread of the study process and of all its descendants (from /proc) and counts
those in state R (running or runnable). It prints the study's wall time, the mean and peak number
of runnable threads, and the share of samples with more runnable threads than cores: runnable
threads beyond the cores wait for a core and slow everything down.

To compare with an older checkout: ``git worktree add /tmp/before <commit>`` and ``--repo
/tmp/before`` (this venv's python runs both; quote ratios from one session, the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from simulations.processes import descendants  # noqa: E402

CONFIG = """
name = "threads"
regimes = {regimes}
workers = {workers}
[data.synthetic]
utterances_per_dialog = 6
[training]
ae_iterations = 20
gan_iterations = 20
finetune_iterations = 60
ser_iterations = 300
eval_every = 100
[synthesis]
per_class_central = 64
per_class_federated = 32
[federation]
rounds = 2
local_iterations = 30
[folds]
sessions = [1, 2]
"""


def running_threads(pids: list[int], by_kind: Counter[str]) -> tuple[int, int]:
    """(runnable, total) threads of ``pids``; adds each process kind's runnable threads to ``by_kind``."""
    running = total = 0
    for pid in pids:
        try:
            kind = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            name = next((Path(a.decode(errors="replace")).name for a in kind[1:3] if a and not a.startswith(b"-")),
                        Path(kind[0].decode(errors="replace")).name)
            name = kind[0].decode(errors="replace") if kind[0].startswith(b"ray::") else name
        except OSError:
            continue
        for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
            try:
                state = stat.read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            total += 1
            running += state == "R"
            by_kind[name] += state == "R"
    return running, total


def fedser(*args: str) -> list[str]:
    return [sys.executable, "-c", "from simulations.cli import main; main()", *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=HERE)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--federated", action="store_true", help="gan-federated and fedavg instead")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args()
    repo = args.repo.resolve()
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="fedser-threads-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    config = work / "study.toml"
    config.write_text(f'work_dir = "{work / "out"}"\n' + CONFIG.format(
        workers=args.workers, regimes='["gan-federated", "fedavg"]' if args.federated else '["real-central", "gan-central"]'))
    env = {**os.environ, "PYTHONPATH": str(repo)}
    if not (work / "out" / "checkpoints" / "pretrained.pt").is_file():
        subprocess.run(fedser("pretrain", str(config)), cwd=repo, env=env, check=True,
                       stdout=subprocess.DEVNULL)
    cores = os.cpu_count() or 1
    start = time.perf_counter()
    study = subprocess.Popen(fedser("study", str(config)), cwd=repo, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[int, int]] = []
    by_kind: Counter[str] = Counter()
    while study.poll() is None:
        samples.append(running_threads([study.pid, *descendants(study.pid)], by_kind))
        time.sleep(args.interval)
    seconds = time.perf_counter() - start
    if study.returncode != 0:
        raise SystemExit(f"fedser study failed ({study.returncode}): {study.stderr.read() if study.stderr else ''}")
    runnable = [r for r, _ in samples]
    print(f"repo {repo}: {'federated regimes' if args.federated else f'{args.workers} workers'} on {cores} cores")
    print(f"  study wall time        {seconds:.1f} s")
    print(f"  runnable threads       mean {sum(runnable) / len(runnable):.2f}, peak {max(runnable)} "
          f"({len(samples)} samples every {args.interval} s)")
    print(f"  samples above {cores} cores  {sum(r > cores for r in runnable) / len(runnable):.1%}")
    print(f"  threads in the tree    peak {max(t for _, t in samples)}")
    print("  mean runnable threads by process: " + ", ".join(
        f"{name} {n / len(samples):.2f}" for name, n in by_kind.most_common(6)))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
