"""From a validated config to utterance records: the labeled corpus and the pre-training corpus.

Without a configured root, the embedded synthetic corpora are written once (atomically) under
``work_dir/corpora`` and then read by the same readers that read the real corpora.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from common.config import StudyConfig
from common.corpora import Scan, Skip, read_corpus
from common.corpora.synthetic import write_iemocap, write_librispeech


def _ensure(target: Path, write: Callable[[Path], Path]) -> Path:
    """Write a corpus into a temp folder beside ``target`` and move it in place when complete.

    Only complete corpora are ever moved to ``target``, so its existence means it is whole.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".writing-", dir=target.parent))
    try:
        os.replace(write(tmp), target)
    except OSError:
        if not target.is_dir():  # another process (a simulated node) finished it first: fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def synthetic_iemocap_root(cfg: StudyConfig) -> Path:
    """The embedded IEMOCAP-format corpus for ``cfg.data.synthetic``, written on first use."""
    syn = cfg.data.synthetic
    folder = cfg.corpus_dir / f"synthetic-seed{syn.seed}-u{syn.utterances_per_dialog}"
    return _ensure(folder / "IEMOCAP_full_release", lambda out: write_iemocap(
        out, seed=syn.seed, utterances_per_dialog=syn.utterances_per_dialog))


def synthetic_librispeech_root(cfg: StudyConfig) -> Path:
    """The embedded LibriSpeech-layout corpus for pre-training, written on first use."""
    syn = cfg.data.synthetic
    folder = cfg.corpus_dir / f"synthetic-seed{syn.seed}-s{syn.pretrain_speakers}"
    return _ensure(folder / "LibriSpeech", lambda out: write_librispeech(
        out, seed=syn.seed, speakers=syn.pretrain_speakers))


def labeled_scan(cfg: StudyConfig) -> Scan:
    """The labeled corpus after label map, subset and the minimum-duration rule."""
    root = cfg.data.root or synthetic_iemocap_root(cfg)
    scan = read_corpus(root, cfg.data.corpus, label_map=cfg.data.label_map, subset=cfg.data.subset)
    return _drop_short(scan, cfg.data.min_duration)


def pretrain_scan(cfg: StudyConfig) -> Scan:
    """The unlabeled pre-training corpus (labels, if any, are ignored by pre-training)."""
    root = cfg.data.pretrain_root or synthetic_librispeech_root(cfg)
    return _drop_short(read_corpus(root, cfg.data.pretrain_corpus), cfg.data.min_duration)


def _drop_short(scan: Scan, min_duration: float) -> Scan:
    keep, short = [], []
    for u in scan.utterances:
        if u.duration is None or u.duration >= min_duration:
            keep.append(u)
        else:
            short.append(Skip(u.path, f"too short (< {min_duration} s)"))
    return replace(scan, utterances=keep, skipped=[*scan.skipped, *short])
