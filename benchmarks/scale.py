"""One federated round as the number of virtual clients grows: 10, 100, 1,000 on one machine.

    python benchmarks/scale.py [--clients 10 100 1000] [--fraction 0.1] [--work-dir outputs/bench-scale]
    RAY_ADDRESS=127.0.0.1:6379 python benchmarks/scale.py ...   # attached to a running Ray cluster

For each N: one ``fedavg`` round through ``flwr run`` on a local SuperLink (tiny SER, one local
step, one fold, no validation) with ``federation.partition = "iid"``, ``num_clients = N`` and
``fraction_train`` of them sampled by Flower's FedAvg. The corpus is the embedded one written
with 60 utterances per dialog (about 270 per session), so that each of 1,000 clients (200 per
session) holds at least one utterance. Printed per N:

- ``round s``: the round's wall seconds as the ServerApp measures them (``round_seconds``:
  sampling, the sampled clients' messages and training, aggregation);
- ``per client-round ms``: round seconds / train replies that arrived per round (``trained_per_round``; goal: at 1,000 within
  1.2x of the figure at 100, i.e. linear);
- ``discovery s``: the ServerApp querying all N + 5 nodes once (their shard, class counts);
- ``peak PSS MiB``: the peak over the run of the summed proportional set size of every process
  below this one (the SuperLink, SuperExec, flwr-simulation with the ServerApp, Ray's GCS, raylet,
  workers and actors), sampled every 0.2 s. PSS, not RSS: Ray's processes share pages (the plasma
  store, libraries) that an RSS sum would count once per process.

With ``RAY_ADDRESS`` set the simulation runs on that cluster (simulations/flower.py); the cluster's
own processes (GCS, raylets, actors) are not children of this one: ``--also ray`` adds every process
whose command line matches the regex ``ray`` (on a machine running nothing else of Ray: the cluster).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(ROOT))

import mlflow  # noqa: E402

from common.data import prepared_labeled  # noqa: E402
from common.schema import StudyConfig, load_config  # noqa: E402
from server.processes import descendants  # noqa: E402
from simulations.flower import LocalSuperLink  # noqa: E402
from simulations.report import latest_parents  # noqa: E402


def config(work_dir: Path, clients: int, fraction: float) -> StudyConfig:
    return load_config(overrides={
        "name": f"bench-scale-{clients}", "work_dir": str(work_dir), "regimes": ["fedavg"],
        "data": {"synthetic": {"utterances_per_dialog": 60}},
        "training": {"eval_every": 0},
        "folds": {"sessions": [1], "holdout": "session"},
        "federation": {"partition": "iid", "num_clients": clients, "fraction_train": fraction,
                       "min_partition_size": 1, "rounds": 1, "local_iterations": 1,
                       "node_wait": 1800, "timeout": 1800},
        "audit": {"enabled": False},
        "tracking": {"experiment": "bench-scale"},
    })


def pss_kib(pid: int) -> int:
    """A process's proportional set size in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def matching(pattern: re.Pattern[str]) -> set[int]:
    """Processes whose command line matches ``pattern``."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if pattern.search(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")):
                found.add(int(cmdline.parent.name))
        except OSError:
            continue
    return found


class PeakMemory:
    """The peak of the summed PSS of this process's descendants (and of the processes matching
    ``also``) while the block runs."""

    def __init__(self, also: re.Pattern[str] | None = None, every: float = 0.2) -> None:
        self.also, self.every, self.peak_kib = also, every, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.done.wait(self.every):
            pids = set(descendants(os.getpid())) | (matching(self.also) if self.also else set())
            self.peak_kib = max(self.peak_kib, sum(pss_kib(p) for p in pids - {os.getpid()}))

    def __enter__(self) -> PeakMemory:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def one(cfg: StudyConfig, also: re.Pattern[str] | None = None) -> dict[str, float]:
    """One fedavg study of ``cfg`` in a SuperLink of its own; the server's figures and the peak memory."""
    start = time.perf_counter()
    with PeakMemory(also) as memory, LocalSuperLink(cfg.work_dir / "flower" / f"home-{cfg.name}") as link:
        link.run(cfg, "fedavg", say=lambda line: None, resume=False)
    wall = time.perf_counter() - start
    mlflow.set_tracking_uri(cfg.tracking_uri)
    m = latest_parents(cfg.tracking.experiment)[("fedavg", cfg.training.trainer)].data.metrics  # the run just made
    return {"clients": cfg.federation.num_clients, "sampled": m["sampled_per_round"], "round_s": m["round_seconds"],
            "per_client_ms": 1000 * m["round_seconds"] / m["trained_per_round"], "discovery_s": m["discovery_seconds"],
            "nodes": m["nodes"], "failed": m["failed_nodes"], "peak_pss_mib": memory.peak_kib / 1024, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "outputs" / "bench-scale")
    parser.add_argument("--also", type=re.compile, default=None,
                        help="also count processes whose command line matches this regex (a Ray cluster: ray)")
    args = parser.parse_args()
    where = f"Ray cluster at {os.environ['RAY_ADDRESS']}" if os.environ.get("RAY_ADDRESS") else "one machine, local Ray"
    configs = [config(args.work_dir.resolve(), n, args.fraction) for n in args.clients]
    print(f"corpus: {len(prepared_labeled(configs[0]))} utterances (features cached before timing)", flush=True)
    rows = []
    for cfg in configs:
        rows.append(one(cfg, args.also))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\none fedavg round, {args.fraction:.0%} of the clients sampled; {where}; {os.cpu_count()} cores")
    print(f"{'clients':>8} {'sampled':>8} {'round s':>8} {'per client-round ms':>20} {'discovery s':>12} "
          f"{'peak PSS MiB':>13} {'flwr run s':>11}")
    for r in rows:
        print(f"{r['clients']:>8} {r['sampled']:>8.0f} {r['round_s']:>8.2f} {r['per_client_ms']:>20.1f} "
              f"{r['discovery_s']:>12.1f} {r['peak_pss_mib']:>13.0f} {r['wall_s']:>11.1f}")
    by_n = {r["clients"]: r for r in rows}
    if 100 in by_n and 1000 in by_n:
        ratio = by_n[1000]["per_client_ms"] / by_n[100]["per_client_ms"]
        print(f"per client-round at 1,000 / at 100: {ratio:.2f} (goal <= 1.20)")


if __name__ == "__main__":
    main()
