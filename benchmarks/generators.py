"""Stage-3 variants against the generator audit and SER, paired on identical folds and seeds.

    python benchmarks/generators.py CONFIG [--folds 1,2] [--seeds 0] [--session N | --fedgan] [--ser] \\
        [--workers 2] [--variant "NAME=section.key=value,section.key=value" ...]

Each variant (a name, then comma-separated ``section.key=value`` overrides of CONFIG; "as-is" =
CONFIG itself) fine-tunes the study's pre-trained GAN (``fedser pretrain CONFIG`` first) on the
members of each fold's training sessions (gan-central), or of one session (``--session``: a
gan-federated node), or with ``--fedgan`` runs FedGAN over the fold's training sessions (gan-fedavg:
each session's members a node, ``federation.gan_rounds`` rounds as client/node.py runs them, weighted
averages between), for every seed, audits the generator (common/audit.py) on its held-out
utterances, and with ``--ser`` trains the study's SER trainer on the generator's pool and scores it
on the fold's test speaker as gan-central would. Without ``--variant`` it runs the ablation of the
stage-3 switches (ABLATION). Every variant sees the same folds, seeds and pre-trained GAN, so the
differences are paired. Prints one row per run, then one table of means (± std over runs) per
variant, with FD over its real-vs-real floor and GAN-train over real-train.

A benchmark, not a test: it prints figures. ``--workers`` processes run the (variant, fold, seed)
jobs, one torch thread each; their seconds are only comparable within one invocation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.audit import AUDIT_KEYS, audit_generator, generator_split, selector  # noqa: E402
from common.data import Corpus, load_corpus  # noqa: E402
from common.features import MinMax, resolve_device  # noqa: E402
from common.models.sngan import Generator  # noqa: E402
from common.pipeline import PretrainedGan, fedgan_round, finetune, pretrained, training_speakers  # noqa: E402
from common.schema import load_config  # noqa: E402
from common.splits import make_folds  # noqa: E402
from common.synthesis import synthetic_sampler  # noqa: E402
from common.trainers.registry import build_trainer  # noqa: E402
from common.views import LabeledSet, subset  # noqa: E402
from server.federation import weighted_average  # noqa: E402
from simulations.study import scaling_stats  # noqa: E402

# The stage-3 switches one at a time, then together (issue: generators that keep their diversity).
ABLATION = (
    "as-is=",
    "ramp=training.finetune_class_ramp=300",
    'augment=training.finetune_augment=["shift","time_mask","freq_mask","gain"]',
    "select=training.finetune_select_every=50",
    "lr-ratio-10=training.d_lr=2e-3",
    'all=training.finetune_class_ramp=300,training.finetune_augment=["shift","time_mask","freq_mask","gain"],'
    "training.finetune_select_every=50,training.d_lr=2e-3",
)
SUMMARY = ("gan_test", "gan_train", "fd_ratio", "diversity", "ct", "mia_auc", "ser_f1", "seconds")


def overrides(spec: str) -> dict[str, Any]:
    """``a.b=1,c.d=x`` -> {"a": {"b": 1}, "c": {"d": "x"}} (values parsed as JSON when they are;
    a comma inside a JSON list stays in its value)."""
    out: dict[str, Any] = {}
    items: list[str] = []
    for part in filter(None, (s.strip() for s in spec.split(","))):
        if "=" in part.split("[")[0] or not items:
            items.append(part)
        else:  # a JSON list's later element
            items[-1] += "," + part
    for item in items:
        key, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *path, last = key.split(".")
        node = out
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def with_seed(spec: dict[str, Any], seed: int) -> dict[str, Any]:
    """``spec`` with ``training.seed`` set."""
    return {**spec, "training": {**spec.get("training", {}), "seed": seed}}


@cache
def _study(config: str) -> tuple[Corpus, MinMax]:
    """The corpus and its scaling, read once per worker."""
    base = load_config(Path(config))
    corpus = load_corpus(base)
    return corpus, scaling_stats(corpus, pretrained(base))


def fedgan(cfg: Any, gan: PretrainedGan, members: LabeledSet, session_of: dict[str, int], test: int) -> Generator:
    """gan-fedavg's generator for fold ``test``, its nodes in this process: each session's
    ``members`` a node, seeded as client/node.py seeds them, averaged as server/regimes.py does."""
    gen, disc = gan.networks()
    torch.manual_seed(cfg.training.seed + test)
    disc.replace_head(gen.spec.n_c + 1)
    nodes = {s: subset(members, [i for i, u in enumerate(members.ids) if session_of[u] == s])
             for s in sorted(set(session_of.values()))}
    local = -(-cfg.training.finetune_iterations // cfg.federation.gan_rounds)
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for rnd in range(1, cfg.federation.gan_rounds + 1):
        states, weights = [], []
        for s, data in nodes.items():
            g, d = gan.networks()
            d.replace_head(gen.spec.n_c + 1)
            g.load_state_dict(gen.state_dict())
            d.load_state_dict(disc.state_dict())
            kept = fedgan_round(cfg, g, d, data, seed=cfg.training.seed + 1000 * rnd + s, round_=rnd, steps=local,
                                moments=moments.get(s) if cfg.federation.gan_local_state else None)
            moments[s] = kept
            states.append((g.cpu().state_dict(), d.cpu().state_dict()))
            weights.append(len(data))
        gen.load_state_dict(weighted_average([g for g, _ in states], weights))
        disc.load_state_dict(weighted_average([d for _, d in states], weights))
    return gen.eval()


def one(config: str, name: str, spec: dict[str, Any], fold_index: int, seed: int, session: int | None,
        ser: bool, federated: bool = False) -> dict[str, Any]:
    """Fine-tune, audit and (``ser``) score one variant on one fold and seed."""
    torch.set_num_threads(1)
    corpus, stats = _study(config)
    cfg = load_config(Path(config), with_seed(spec, seed))
    gan = pretrained(cfg)
    [fold] = [f for f in make_folds(corpus.utterances, cfg.folds) if f.index == fold_index]
    utts = [u for u in corpus.utterances if u.session == session] if session else list(fold.train)
    split = generator_split(corpus.labeled_set(utts, stats, training_speakers(utts)), cfg)
    start = time.perf_counter()
    select = selector(cfg, split, seed=seed)
    torch.manual_seed(seed)
    if federated:
        gen = fedgan(cfg, gan, split.members, {u.id: u.session for u in utts}, fold_index)
    else:
        gen = finetune(cfg, *gan.networks(), split.members, select=select)
    row: dict[str, Any] = {"variant": name, "fold": fold_index, "seed": seed, "seconds": time.perf_counter() - start}
    row |= audit_generator(cfg, gen, split.members, split.held_out, seed=seed)
    row["fd_ratio"] = row["fd"] / row["fd_real"]
    if ser:
        torch.manual_seed(seed)
        trainer = build_trainer(cfg, resolve_device(cfg.training.device))
        trainer.fit(synthetic_sampler(cfg, [gen], cfg.synthesis.per_class_central, fold.index),
                    corpus.labeled_set(fold.validation, stats))
        row["ser_f1"] = float(trainer.evaluate(corpus.labeled_set(fold.test, stats))["f1_macro"])
    return row


def _init() -> None:
    torch.set_num_threads(1)


def table(rows: list[dict[str, Any]], names: list[str]) -> str:
    """Means ± std per variant, and each variant's paired SER difference from the first."""
    keys = [k for k in SUMMARY if k in rows[0]]
    lines = ["| variant | runs | " + " | ".join(keys) + (" | Δ ser_f1 vs " + names[0] if "ser_f1" in keys else "") + " |",
             "|---" * (len(keys) + 2 + ("ser_f1" in keys)) + "|"]
    first = {(r["fold"], r["seed"]): r for r in rows if r["variant"] == names[0]}
    for name in names:
        mine = [r for r in rows if r["variant"] == name]
        cells = [f"{np.mean([r[k] for r in mine]):.3f} ± {np.std([r[k] for r in mine]):.3f}" for k in keys]
        if "ser_f1" in keys:
            diff = [r["ser_f1"] - first[(r["fold"], r["seed"])]["ser_f1"] for r in mine]
            cells.append(f"{np.mean(diff):+.3f}")
        lines.append(f"| {name} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--folds", default="1,2", help="folds (held-out sessions) whose training sets are used")
    ap.add_argument("--seeds", default="0", help="fine-tuning seeds (training.seed), paired across variants")
    ap.add_argument("--session", type=int, default=None, help="fine-tune on this one session instead (a node)")
    ap.add_argument("--fedgan", action="store_true", help="FedGAN over the fold's training sessions (gan-fedavg)")
    ap.add_argument("--variant", action="append", default=None, help="NAME=overrides; default: the ablation")
    ap.add_argument("--ser", action="store_true", help="also train and score SER on the generator's pool")
    ap.add_argument("--workers", type=int, default=1, help="processes, one torch thread each")
    args = ap.parse_args()
    variants = [v.partition("=")[::2] for v in (args.variant or ABLATION)]
    try:  # every variant validated before any runs; a bad one is one line, not a traceback
        base = load_config(args.config)
        for name, spec in variants:
            if pretrained(load_config(args.config, overrides(spec))).spec != pretrained(base).spec:
                raise SystemExit(f"variant {name!r} changes the GAN's sizes; pre-train a config with them instead")
    except (ValueError, OSError) as exc:  # ConfigError is a ValueError; a missing checkpoint an OSError
        raise SystemExit(f"error: {exc}") from None
    if args.fedgan and args.session:
        raise SystemExit("--fedgan trains over the fold's sessions; --session names one node: give one of them")
    jobs = [(str(args.config), name, overrides(spec), int(f), int(s), args.session, args.ser, args.fedgan)
            for name, spec in variants for f in args.folds.split(",") for s in args.seeds.split(",")]
    cols = ["variant", "fold", "seed", "seconds", *AUDIT_KEYS[:-1], *(["ser_f1"] if args.ser else [])]
    print(" | ".join(cols), flush=True)
    rows = []
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=_init) as pool:
        for row in pool.map(one, *zip(*jobs, strict=True)):
            rows.append(row)
            print(" | ".join(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in cols), flush=True)
    print()
    print(table(rows, [name for name, _ in variants]))


if __name__ == "__main__":
    main()
