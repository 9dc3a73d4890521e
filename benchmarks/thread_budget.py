"""Threads that yield: does a fedser job share the machine fairly with another one?

    python benchmarks/thread_budget.py [--threads 1 0 2] [--ae 300] [--gan 150] [--keep]
    python benchmarks/thread_budget.py --study [--workers N] [--federated] [--interval S]

Default: ``fedser pretrain`` (the tiny preset's networks, ``--ae``/``--gan`` iterations) alone, then
two of them at once in separate work dirs, for each ``training.threads`` setting given (1: the
tiny preset's; 0: adaptive, common/threads.py; 2: as many threads as this 2-core machine has
cores, what every process used before). It prints each one's wall seconds and the ratio beside /
alone: two jobs sharing 2 cores should each take about twice their time alone (the goal: <= 2.5);
threads spinning at OpenMP barriers while the other job holds their core make it far worse.
Corpora and feature caches are prepared first, so only the training is timed. Run it with
nothing else on the machine.

``--study``: a 2-worker ``fedser study`` (real-central and gan-central over two folds; with
``--federated`` gan-federated and fedavg on Ray actors) while sampling, every ``--interval`` s, the
threads of the study's process tree in state R: the mean and peak runnable threads against the
cores.

To compare with an older checkout: ``git worktree add /tmp/before <commit>`` and ``--repo
/tmp/before`` (this venv's python runs both; quote ratios from one run, alone on the machine).
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

from server.processes import descendants  # noqa: E402

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


PRETRAIN = """
name = "pretrain-{tag}"
[data.synthetic]
utterances_per_dialog = 6
[training]
ae_iterations = {ae}
gan_iterations = {gan}
threads = {threads}
"""


def pretrain_seconds(repo: Path, configs: list[Path]) -> list[float]:
    """Wall seconds of ``fedser pretrain`` on each config, all started at once."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    start = time.perf_counter()
    procs = [subprocess.Popen(fedser("pretrain", str(c)), cwd=repo, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for c in configs]
    seconds = []
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"fedser pretrain failed ({proc.returncode}): {err.strip().splitlines()[-1:]}")
        seconds.append(time.perf_counter() - start)
    return seconds


def pretrain_pair(args: argparse.Namespace, repo: Path, work: Path) -> None:
    print(f"fedser pretrain, alone and beside a second one ({os.cpu_count()} cores; ae {args.ae}, gan {args.gan} "
          "iterations; the tiny preset's networks)")
    print(f"{'training.threads':>18} | {'alone s':>8} | {'beside s (each)':>16} | {'ratio':>5}")
    for threads in args.threads:
        configs = []
        for tag in ("a", "b"):
            config = work / f"pretrain-{threads}-{tag}.toml"
            config.write_text(f'work_dir = "{work / f"out-{threads}-{tag}"}"\n'
                              + PRETRAIN.format(tag=tag, ae=args.ae, gan=args.gan, threads=threads))
            configs.append(config)
        pretrain_seconds(repo, configs[:1])  # corpora and features of a written once, untimed
        pretrain_seconds(repo, configs[1:])
        [alone] = pretrain_seconds(repo, configs[:1])
        beside = pretrain_seconds(repo, configs)
        label = {0: "0 (adaptive)"}.get(threads, str(threads))
        print(f"{label:>18} | {alone:8.1f} | {' / '.join(f'{b:.1f}' for b in beside):>16} | {max(beside) / alone:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=HERE)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 0, os.cpu_count() or 1],
                        help="training.threads settings to compare (pretrain mode)")
    parser.add_argument("--ae", type=int, default=300, help="autoencoder iterations (pretrain mode)")
    parser.add_argument("--gan", type=int, default=150, help="WGAN-GP iterations (pretrain mode)")
    parser.add_argument("--study", action="store_true", help="sample a 2-worker study's runnable threads instead")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--federated", action="store_true", help="--study: gan-federated and fedavg instead")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args()
    repo = args.repo.resolve()
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="fedser-threads-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not args.study:
        try:
            pretrain_pair(args, repo, work)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        return
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
