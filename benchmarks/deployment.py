"""A fedavg fold deployed against the same fold simulated: what a deployed message costs.

    python benchmarks/deployment.py [--folds 1 2] [--rounds 6] [--work-dir DIR] [--keep]

The same study config (tiny preset, embedded corpus, ``fedavg``, ``--rounds`` rounds of 50 local
steps, model selection at the held-out node) runs three ways, one after the other:

- simulated: ``flwr run`` on the study's own simulation SuperLink (Ray actors, simulations/flower.py);
- deployed: the compose topology as plain processes on loopback (what tests/test_deployment.py
  starts, without TLS): a SuperLink, five ``fedser-supernode`` SuperNodes each naming its session,
  whose ClientApp processes hand messages to the node's worker (client/worker.py);
- deployed as before: the same with Flower's ``flower-supernode`` and ``FEDSER_NODE_WORKER=0`` (each
  message's process imports torch and reads the node's session itself).

It prints each fold's seconds (the fold run's ``seconds``: training with validation at the
held-out node, then its test) and the ratio to the simulated fold. Every process it starts is
stopped by PID. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(ROOT))

import mlflow  # noqa: E402

from common.config import SESSIONS  # noqa: E402
from common.data import synthetic_iemocap_root  # noqa: E402
from common.schema import StudyConfig, load_config  # noqa: E402
from simulations.flower import LocalSuperLink, flwr_run, free_port, stop_tree, write_run_config  # noqa: E402

BIN = Path(sys.executable).parent


def config(work: Path, name: str, folds: list[int], rounds: int) -> StudyConfig:
    return load_config(overrides={
        "name": name, "work_dir": str(work / name), "regimes": ["fedavg"], "folds": {"sessions": folds},
        "federation": {"rounds": rounds}, "tracking": {"experiment": name},
    })


def fold_seconds(cfg: StudyConfig) -> dict[int, float]:
    mlflow.set_tracking_uri(cfg.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list")
    return {int(r.data.tags["fold"]): r.data.metrics["seconds"] for r in runs if "fold" in r.data.tags}


def simulated(cfg: StudyConfig) -> dict[int, float]:
    with LocalSuperLink(cfg.work_dir / "flower" / "home") as link:
        link.run(cfg, ["fedavg"], say=lambda line: None, resume=False)
    return fold_seconds(cfg)


def deployed(cfg: StudyConfig, supernode: str, node_env: dict[str, str]) -> dict[int, float]:
    """The fedavg regime on a loopback deployment: SuperLink + one SuperNode per session."""
    home = cfg.work_dir / "flwr"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "local"\n\n[superlink.local]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "FLWR_HOME": str(home),
           "FLWR_DISABLE_UPDATE_CHECK": "1"}
    corpus = synthetic_iemocap_root(cfg)
    procs = []
    logs = cfg.work_dir / "logs"
    logs.mkdir(exist_ok=True)

    def start(name: str, cmd: list[str], extra: dict[str, str] | None = None) -> None:
        with (logs / f"{name}.log").open("wb") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env={**env, **(extra or {})}, cwd=ROOT, start_new_session=True))

    try:
        start("superlink", [str(BIN / "flower-superlink"), "--insecure", "--isolation", "subprocess",
                            "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(port)])
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        for s in SESSIONS:
            start(f"supernode-{s}", [str(BIN / supernode), "--insecure", "--superlink", f"127.0.0.1:{port}",
                                     "--isolation", "subprocess", "--port", str(free_port()),
                                     "--node-config", f"session={s} data-root='{corpus}' "
                                                      f"work-dir='{cfg.work_dir / f'node{s}'}'"], node_env)
        flwr_run(env, "local", write_run_config(cfg.work_dir / "run.toml", cfg, "fedavg", resume=False),
                 cfg.work_dir / "flwr-run.log", say=lambda line: None)
    finally:
        for proc in procs:
            stop_tree(proc, grace=10)
    return fold_seconds(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="fedser-deploy-"))).resolve()
    try:
        results = {
            "simulated (Ray actors)": simulated(config(work, "simulated", args.folds, args.rounds)),
            "deployed (fedser-supernode + node worker)": deployed(
                config(work, "deployed", args.folds, args.rounds), "fedser-supernode", {}),
            "deployed as before (flower-supernode, no worker)": deployed(
                config(work, "before", args.folds, args.rounds), "flower-supernode", {"FEDSER_NODE_WORKER": "0"}),
        }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    base = results["simulated (Ray actors)"]
    print(f"fedavg, tiny preset, {args.rounds} rounds x 50 local steps, folds {args.folds} ({os.cpu_count()} cores)")
    print(f"{'':>50} | " + " | ".join(f"fold {f} s" for f in args.folds) + " | vs simulated")
    for name, seconds in results.items():
        ratio = sum(seconds[f] for f in args.folds) / sum(base[f] for f in args.folds)
        print(f"{name:>50} | " + " | ".join(f"{seconds[f]:9.1f}" for f in args.folds) + f" | {ratio:.2f}x")


if __name__ == "__main__":
    main()
