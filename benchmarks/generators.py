"""Stage-3 fine-tuning variants against the generator audit: what limits the GAN regimes.

    python benchmarks/finetune_sweep.py CONFIG [--fold 1] [--session N] [--ser] \\
        --variant "" --variant "training.finetune_iterations=200" \\
        --variant "training.g_lr=5e-5,training.d_lr=1e-4"

Each variant (comma-separated ``section.key=value`` overrides of CONFIG; "" = CONFIG itself)
fine-tunes the study's pre-trained GAN (``fedser pretrain CONFIG`` first) on the members of one
fold's training sessions (gan-central), or of one session (``--session``: gan-federated's node),
audits the generator (common/audit.py) and prints one row of figures per variant. ``--ser`` also
trains the study's SER trainer on the generator's pool and scores it on the fold's test speaker, as
gan-central would. Variants that change pre-training sizes are refused (re-run pretrain instead).
A benchmark, not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from common.audit import AUDIT_KEYS, audit_generator, members_of  # noqa: E402
from common.data import load_corpus  # noqa: E402
from common.features import resolve_device  # noqa: E402
from common.pipeline import finetune, pretrained, training_speakers  # noqa: E402
from common.schema import load_config  # noqa: E402
from common.splits import make_folds  # noqa: E402
from common.trainers.registry import build_trainer  # noqa: E402
from simulations.regimes.central import synthetic_sampler  # noqa: E402
from simulations.study import scaling_stats  # noqa: E402


def overrides(spec: str) -> dict[str, Any]:
    """``a.b=1,c.d=x`` -> {"a": {"b": 1}, "c": {"d": "x"}} (values parsed as JSON when they are)."""
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--fold", type=int, default=1, help="the fold (held-out session) whose training set is used")
    ap.add_argument("--session", type=int, default=None, help="fine-tune on this one session instead (a node)")
    ap.add_argument("--variant", action="append", default=None, help="overrides, e.g. training.finetune_iterations=200")
    ap.add_argument("--ser", action="store_true", help="also train and score SER on the generator's pool")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = load_config(args.config)
    corpus = load_corpus(base)
    gan = pretrained(base)
    stats = scaling_stats(corpus, gan)
    [fold] = [f for f in make_folds(corpus.utterances, base.folds) if f.index == args.fold]
    utts = [u for u in corpus.utterances if u.session == args.session] if args.session else list(fold.train)
    cols = ["variant", "seconds", *AUDIT_KEYS[:-1], *(["ser_f1"] if args.ser else [])]
    print(" | ".join(cols))
    for variant in args.variant or [""]:
        cfg = load_config(args.config, overrides(variant))
        if gan.spec != pretrained(cfg).spec:
            raise SystemExit(f"variant {variant!r} changes the GAN's sizes; pre-train a config with them instead")
        members, held_out = members_of(corpus.labeled_set(utts, stats, training_speakers(utts)), cfg.audit.holdout,
                                       cfg.training.seed)
        torch.manual_seed(cfg.training.seed)
        start = time.perf_counter()
        gen = finetune(cfg, *gan.networks(), members)
        seconds = time.perf_counter() - start
        figures = audit_generator(cfg, gen, members, held_out, seed=cfg.training.seed)
        row = [variant or "(config)", f"{seconds:.0f}", *(f"{figures[k]:.3f}" for k in AUDIT_KEYS[:-1])]
        if args.ser:
            trainer = build_trainer(cfg, resolve_device(cfg.training.device))
            trainer.fit(synthetic_sampler(cfg, [gen], cfg.synthesis.per_class_central, fold.index),
                        corpus.labeled_set(fold.validation, stats))
            row.append(f"{trainer.evaluate(corpus.labeled_set(fold.test, stats))['f1_macro']:.3f}")
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
