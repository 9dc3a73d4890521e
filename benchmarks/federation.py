"""The eyes-off GAN round through Flower + Ray against the same fine-tuning in a plain loop.

    python benchmarks/federation.py [--finetune-iterations 200] [--work-dir outputs/bench-federation]

(a) Wall time of the ``train.gan`` round of ``gan-federated``: five simulated session nodes
    (``flwr run`` on a local SuperLink, Ray actors of ``client_cpus`` cores) each fine-tune the
    pre-trained GAN on their session; the ServerApp logs the round's seconds (``gan_round_seconds``)
    to MLflow. Measured with 1 core per node (two nodes at a time on two cores) and with all cores
    per node (one node at a time).
(b) The same five fine-tunings, one after the other, in this process with all cores: the plain
    in-process loop. Goal: Flower + Ray within 1.10x of it.
(c) Bytes of one generator on the wire, fp32 and fp16 (``federation.generator_fp16``), from the
    ArrayRecords the server received (the run's wire audit).

The tiny preset's sizes; only the fine-tuning length is shortened (``--finetune-iterations``). The
study around the round runs one fold with a few SER iterations, so each ``flwr run`` stays short.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(ROOT))

import mlflow  # noqa: E402
import torch  # noqa: E402

from common.audit import generator_split  # noqa: E402
from common.config import SESSIONS  # noqa: E402
from common.data import load_corpus  # noqa: E402
from common.features import MinMax  # noqa: E402
from common.pipeline import finetune, pretrain, pretrained  # noqa: E402
from common.schema import StudyConfig, load_config  # noqa: E402
from simulations.flower import LocalSuperLink  # noqa: E402
from simulations.report import latest_parents  # noqa: E402


def config(work_dir: Path, iterations: int, **federation: object) -> StudyConfig:
    return load_config(overrides={
        "name": "bench-federation", "work_dir": str(work_dir), "regimes": ["gan-federated"],
        "training": {"finetune_iterations": iterations, "ser_iterations": 10, "eval_every": 0,
                     "ae_iterations": 50, "gan_iterations": 50},
        "synthesis": {"per_class_federated": 16},
        "folds": {"sessions": [1]},
        "federation": federation,
        "tracking": {"experiment": "bench-federation"},
    })


def through_flower(link: LocalSuperLink, cfg: StudyConfig) -> dict[str, float]:
    """One gan-federated run; the round's seconds and the generator bytes the server received."""
    start = time.perf_counter()
    # resume off: a second invocation measures a new run instead of re-reading the first one's figures.
    link.run(cfg, "gan-federated", say=lambda line: None, resume=False)
    wall = time.perf_counter() - start
    mlflow.set_tracking_uri(cfg.tracking_uri)
    run = latest_parents(cfg.tracking.experiment)[("gan-federated", cfg.training.trainer)]
    return {"round_s": run.data.metrics["gan_round_seconds"], "bytes": run.data.metrics["generator_bytes"],
            "received": run.data.metrics["generators_received"], "flwr_run_s": wall}


def in_process(cfg: StudyConfig) -> float:
    """The five fine-tunings in a plain loop in this process (features already cached), each on
    what its node fine-tunes on: the session's members (common.audit.generator_split)."""
    gan = pretrained(cfg)
    corpora = {s: load_corpus(cfg, {s}) for s in SESSIONS}
    stats = MinMax.combine(gan.pretrain_stats, *(c.session_stats()[s] for s, c in corpora.items()))
    start = time.perf_counter()
    for session, corpus in corpora.items():
        gen, disc = gan.networks()
        torch.manual_seed(cfg.training.seed + session)
        finetune(cfg, gen, disc, generator_split(corpus.labeled_set(corpus.utterances, stats), cfg).members)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--finetune-iterations", type=int, default=200)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "outputs" / "bench-federation")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    base = config(args.work_dir, args.finetune_iterations)
    if not base.pretrained_path.is_file():
        print(f"pre-training a short tiny GAN into {base.pretrained_path} ...", flush=True)
        pretrain(base)
    torch.set_num_threads(cores)
    results = {}
    with LocalSuperLink(base.work_dir / "flower" / "home") as link:
        results["flower, 1 core per node"] = through_flower(link, config(args.work_dir, args.finetune_iterations,
                                                                          client_cpus=1))
        results[f"flower, {cores} cores per node"] = through_flower(
            link, config(args.work_dir, args.finetune_iterations, client_cpus=cores))
        results["flower, fp16 generators"] = through_flower(
            link, config(args.work_dir, args.finetune_iterations, client_cpus=1, generator_fp16=True))
    plain = in_process(base)
    print(f"\n5 sessions x {args.finetune_iterations} fine-tuning iterations (tiny preset), {cores} cores")
    print(f"{'path':<28} {'round s':>9} {'vs plain':>9} {'bytes/generator':>16} {'flwr run s':>11}")
    print(f"{'plain in-process loop':<28} {plain:>9.1f} {1.0:>9.2f} {'-':>16} {'-':>11}")
    for name, r in results.items():
        print(f"{name:<28} {r['round_s']:>9.1f} {r['round_s'] / plain:>9.2f} {int(r['bytes']):>16,} "
              f"{r['flwr_run_s']:>11.1f}")
    print(json.dumps({"plain_s": plain, **results}))


if __name__ == "__main__":
    main()
