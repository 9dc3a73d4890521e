"""Prepared corpora: scanned once, featurized once, then read from disk by index.

SpeechBrain's prepare-and-skip habit. Per corpus (root, reader, label map, subset, minimum
duration) a *manifest* under ``work_dir/prepared`` holds every kept utterance with its audio's
content hash, size and mtime, and every skip with its reason; later runs reuse it as long as every
listed file still has its size and mtime (any change rescans; delete the folder to force one).
Per manifest and extractor a *feature index* holds each utterance's cache key, frame count and
min/max, built in one streaming pass: the features themselves stay in the content-addressed
cache (common/features/cache.py) and are read, or memory-mapped, by row.

Without a configured root, the embedded synthetic corpora are written once (atomically) under
``work_dir/corpora`` and then read by the same readers that read the real corpora.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config import DEFAULT_LABEL_MAP, StudySections
from common.corpora import CorpusKind, Scan, Skip, Utterance, count_skips, read_corpus
from common.corpora import skip_summary as skip_summary  # re-exported: one line per skip count
from common.corpora.iemocap import Subset, word_spans
from common.corpora.synthetic import write_iemocap, write_librispeech
from common.features import (
    AudioError,
    FeatureCache,
    MinMax,
    content_hash,
    extract_corpus,
    extractor_for,
    random_patch,
)
from common.views import LabeledSet, SerBatch

# 2: skips carry their kind ([path, reason, kind]) and label-map exclusions are counted; the
# reader now skips a bad EmoEvaluation line, not its file, so a version-1 manifest (which may
# hide whole dropped dialogs) is rescanned rather than reused.
# 3: LibriSpeech utterances carry their speaker's gender (SPEAKERS.TXT), which the gender attack's
# public speech needs (common/attacks.py).
MANIFEST_VERSION = 3


# --------------------------------------------------------------------------------------------
# The embedded synthetic corpora
# --------------------------------------------------------------------------------------------


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


def synthetic_iemocap_root(cfg: StudySections) -> Path:
    """The embedded IEMOCAP-format corpus for ``cfg.data.synthetic``, written on first use."""
    syn = cfg.data.synthetic
    folder = cfg.corpus_dir / f"synthetic-seed{syn.seed}-u{syn.utterances_per_dialog}"
    return _ensure(folder / "IEMOCAP_full_release", lambda out: write_iemocap(
        out, seed=syn.seed, utterances_per_dialog=syn.utterances_per_dialog))


def synthetic_librispeech_root(cfg: StudySections) -> Path:
    """The embedded LibriSpeech-layout corpus for pre-training, written on first use."""
    syn = cfg.data.synthetic
    folder = cfg.corpus_dir / f"synthetic-seed{syn.seed}-s{syn.pretrain_speakers}"
    return _ensure(folder / "LibriSpeech", lambda out: write_librispeech(
        out, seed=syn.seed, speakers=syn.pretrain_speakers))


# --------------------------------------------------------------------------------------------
# Manifests: one scan per corpus
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """A scanned corpus: kept utterances with their audio's sha256, and the skips."""

    scan: Scan
    digests: tuple[str, ...]  # sha256 of each kept utterance's audio file, in scan order


def _write_json(path: Path, content: dict[str, Any]) -> None:
    """Atomically: a reader sees the old file or the whole new one (several nodes may prepare at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(content, f)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def scan_corpus(root: Path, kind: CorpusKind, *, cfg: StudySections,
                label_map: Mapping[str, str] = DEFAULT_LABEL_MAP, subset: Subset = "all") -> Manifest:
    """The manifest of the corpus at ``root``: reused when present and current, else written now."""
    options = {"root": str(root.resolve()), "kind": kind, "label_map": dict(label_map), "subset": subset,
               "min_duration": cfg.data.min_duration, "version": MANIFEST_VERSION}
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]
    path = cfg.work_dir / "prepared" / f"{kind}-{digest}.json"
    stored = _read_json(path)
    if stored is not None and stored.get("options") == options and all(
            _stat(Path(row["utterance"]["path"])) == row["stat"] for row in stored["utterances"]):
        return Manifest(
            Scan(kind, root, [Utterance.from_json(row["utterance"]) for row in stored["utterances"]],
                 # [path, reason, kind]; a row without kind gets it from its reason (Skip's default)
                 [Skip(Path(row[0]), *row[1:3]) for row in stored["skipped"]],
                 dict(stored.get("excluded", {}))),
            tuple(row["sha256"] for row in stored["utterances"]))
    scan = _drop_short(read_corpus(root, kind, label_map=label_map, subset=subset), cfg.data.min_duration)
    kept, digests, skipped = [], [], list(scan.skipped)
    for u in scan.utterances:
        try:
            digests.append(content_hash(u.path))
            kept.append(u)
        except AudioError as exc:
            skipped.append(Skip(u.path, exc.reason))
    _write_json(path, {
        "options": options,
        "utterances": [{"utterance": u.to_json(), "sha256": d, "stat": _stat(u.path)}
                       for u, d in zip(kept, digests, strict=True)],
        "skipped": [[str(s.path), s.reason, s.kind] for s in skipped],
        "excluded": scan.excluded,
    })
    return Manifest(replace(scan, utterances=kept, skipped=skipped), tuple(digests))


def _drop_short(scan: Scan, min_duration: float) -> Scan:
    keep, short = [], []
    for u in scan.utterances:
        if u.duration is None or u.duration >= min_duration:
            keep.append(u)
        else:
            short.append(Skip(u.path, f"too short (< {min_duration} s)"))
    return replace(scan, utterances=keep, skipped=[*scan.skipped, *short])


def labeled_manifest(cfg: StudySections) -> Manifest:
    """The labeled corpus after label map, subset and the minimum-duration rule."""
    root = cfg.data.root or synthetic_iemocap_root(cfg)
    return scan_corpus(root, cfg.data.corpus, cfg=cfg, label_map=cfg.data.label_map, subset=cfg.data.subset)


def unlabeled_manifest(cfg: StudySections) -> Manifest:
    """The unlabeled pre-training corpus (labels, if any, are ignored by pre-training)."""
    root = cfg.data.pretrain_root or synthetic_librispeech_root(cfg)
    return scan_corpus(root, cfg.data.pretrain_corpus, cfg=cfg)


def labeled_scan(cfg: StudySections) -> Scan:
    """The labeled corpus's utterances and skips (from its manifest)."""
    return labeled_manifest(cfg).scan


# --------------------------------------------------------------------------------------------
# Feature indexes: one featurization per corpus and extractor
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """A corpus with features: the utterances that have them, their cache keys, frame counts and
    min/max, and the skips (the reader's, too short, unreadable audio). Features are read by row."""

    utterances: tuple[Utterance, ...]
    keys: tuple[str, ...]
    frames: tuple[int, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    skipped: tuple[Skip, ...]
    cache: FeatureCache
    cfg: StudySections

    def __len__(self) -> int:
        return len(self.utterances)

    def skip_counts(self) -> dict[str, int]:
        """Skips per kind (common.corpora.SKIP_KINDS), most frequent first: the reader's, too short,
        unreadable audio; ``skip_summary(prepared.skip_counts())`` is the one-line report."""
        return count_skips(self.skipped)

    def stats(self, rows: Collection[int] | None = None) -> MinMax:
        """The min/max of ``rows`` (all by default) without reading a feature."""
        rows = range(len(self)) if rows is None else rows
        return MinMax(min((self.lo[r] for r in rows), default=float("inf")),
                      max((self.hi[r] for r in rows), default=float("-inf")))

    def session_stats(self) -> dict[int, MinMax]:
        """Per-session min/max scalars: what each federated node reports (seed 002 §4.2)."""
        sessions = sorted({u.session for u in self.utterances if u.session is not None})
        return {s: self.stats([r for r, u in enumerate(self.utterances) if u.session == s]) for s in sessions}

    def feature(self, row: int, mmap: bool = False) -> np.ndarray:
        """Row ``row``'s features (F, T) (or (F,)), memory-mapped when ``mmap``; recomputed if the
        cache entry went missing (AudioError if its audio no longer loads)."""
        found = self.cache.load(self.keys[row], mmap=mmap)
        if found is not None:
            return found
        utt = self.utterances[row]
        feats, skipped = _extract(self.cfg, self.cache, [utt], [self.keys[row]])
        if skipped:
            raise AudioError(utt.path, skipped[0].reason)
        return feats[utt.id]


def prepare(cfg: StudySections, manifest: Manifest) -> Prepared:
    """The feature index of ``manifest`` for ``cfg.features``: reused, or built in one streaming
    pass (compute on a cache miss, keep only frame counts and min/max)."""
    f = cfg.features
    extractor = extractor_for(f.kind, f.params)
    cache = FeatureCache(cfg.feature_cache_dir)
    keys = [cache.key(d, extractor, f.backend) for d in manifest.digests]
    scope = hashlib.sha256("".join(keys).encode()).hexdigest()[:16]
    path = cfg.work_dir / "prepared" / f"features-{manifest.scan.corpus}-{scope}.json"
    stored = _read_json(path)
    if stored is None or stored.get("keys") != keys:
        stored = _featurize(cfg, manifest, keys, cache)
        _write_json(path, stored)
    ok = [i for i, n in enumerate(stored["frames"]) if n is not None]
    utts = manifest.scan.utterances
    failed = [Skip(utts[i].path, stored["errors"][str(i)]) for i in range(len(utts)) if stored["frames"][i] is None]
    return Prepared(tuple(utts[i] for i in ok), tuple(keys[i] for i in ok), tuple(stored["frames"][i] for i in ok),
                    tuple(stored["lo"][i] for i in ok), tuple(stored["hi"][i] for i in ok),
                    (*manifest.scan.skipped, *failed), cache, cfg)


def _extract(cfg: StudySections, cache: FeatureCache, utterances: Sequence[Utterance],
             keys: Sequence[str]) -> tuple[dict[str, np.ndarray], list[Skip]]:
    """Features of ``utterances`` (cache keys known) through the cache, batched as extract_corpus batches."""
    f = cfg.features
    return extract_corpus(utterances, extractor_for(f.kind, f.params), cache, device=f.device, backend=f.backend,
                          keys=keys)


def _featurize(cfg: StudySections, manifest: Manifest, keys: list[str], cache: FeatureCache,
               chunk: int = 256) -> dict[str, Any]:
    """The index, ``chunk`` utterances at a time: memory is one chunk's features, whatever the corpus."""
    out: dict[str, Any] = {"keys": keys, "frames": [], "lo": [], "hi": [], "errors": {}}
    utts = manifest.scan.utterances
    for start in range(0, len(utts), chunk):
        feats, skipped = _extract(cfg, cache, utts[start:start + chunk], keys[start:start + chunk])
        reasons = {s.path: s.reason for s in skipped}
        for i, u in enumerate(utts[start:start + chunk], start):
            if u.id not in feats:
                out["errors"][str(i)] = reasons[u.path]
                for name in ("frames", "lo", "hi"):
                    out[name].append(None)
                continue
            feat, stats = feats[u.id], MinMax.empty().update(feats[u.id])
            out["frames"].append(int(feat.shape[-1]) if feat.ndim == 2 else 1)
            out["lo"].append(stats.lo)
            out["hi"].append(stats.hi)
    return out


_PREPARED: dict[tuple[str, str], Prepared] = {}


def _prepared(cfg: StudySections, which: str) -> Prepared:
    # Keyed by what decides the corpus and its features (configs hold dicts: not hashable).
    key = (which, cfg.data.model_dump_json() + cfg.features.model_dump_json() + str(cfg.work_dir))
    if key not in _PREPARED:
        manifest = labeled_manifest(cfg) if which == "labeled" else unlabeled_manifest(cfg)
        _PREPARED[key] = prepare(cfg, manifest)
    return _PREPARED[key]


def prepared_labeled(cfg: StudySections) -> Prepared:
    """The labeled corpus, prepared (once per process and config)."""
    return _prepared(cfg, "labeled")


def prepared_unlabeled(cfg: StudySections) -> Prepared:
    """The unlabeled pre-training corpus, prepared (once per process and config)."""
    found = _prepared(cfg, "unlabeled")
    if not len(found):
        raise ValueError(f"no usable audio in the pre-training corpus "
                         f"({cfg.data.pretrain_root or 'the embedded synthetic LibriSpeech'}); check data.pretrain_root")
    return found


# --------------------------------------------------------------------------------------------
# What trainers read: the labeled corpus in memory, the unlabeled one streamed
# --------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """Labeled utterances (all, or one node's sessions) with their unscaled features in memory."""

    utterances: list[Utterance]
    feats: dict[str, np.ndarray]
    classes: tuple[str, ...]
    stats_by_session: dict[int, MinMax]
    overall: MinMax  # every utterance's min/max (corpora without sessions)
    # Skips per kind of the whole labeled corpus (not only these sessions: a skip may have none),
    # e.g. {"too short": 11, "unknown label": 1}; skip_summary(corpus.skips) is the one-line report.
    skips: dict[str, int] = field(default_factory=dict)

    def session_stats(self) -> dict[int, MinMax]:
        """Per-session min/max scalars: what each federated node reports (seed 002 §4.2)."""
        return self.stats_by_session

    def labeled_set(self, utterances: Sequence[Utterance], stats: MinMax, speakers: Sequence[str] = ()) -> LabeledSet:
        """Scaled features (F, T) (a vector becomes (F, 1)) and class indices of ``utterances``.

        ``aux`` carries what the other papers' trainers use: ``speaker`` (index into ``speakers``,
        the fold's training speakers, -1 for others; seed 001), ``valence``/``activation`` (the
        annotators' means, when every utterance has them; seed 000) and ``words`` (IEMOCAP word
        spans in seconds; seed 000's crops).
        """
        index = {c: i for i, c in enumerate(self.classes)}
        aux: dict[str, tuple[Any, ...]] = {}
        if speakers:
            position = {s: i for i, s in enumerate(speakers)}
            aux["speaker"] = tuple(position.get(u.speaker, -1) for u in utterances)
        for dim in ("valence", "activation"):
            values = [getattr(u, dim) for u in utterances]
            if values and all(v is not None for v in values):
                aux[dim] = tuple(values)
        if utterances and all(u.corpus == "iemocap" for u in utterances):
            aux["words"] = tuple(_words(u.path) for u in utterances)
        return LabeledSet(
            tuple(_as_matrix(stats.scale(self.feats[u.id])) for u in utterances),
            tuple(index[str(u.label)] for u in utterances),
            tuple(u.id for u in utterances),
            aux,
        )


@cache
def _words(path: Path) -> tuple[tuple[float, float], ...]:
    return word_spans(path)


def _as_matrix(feat: np.ndarray) -> np.ndarray:
    return feat[:, None] if feat.ndim == 1 else feat


def load_corpus(cfg: StudySections, sessions: Collection[int] | None = None,
                ids: Collection[str] | None = None) -> Corpus:
    """The labeled corpus of ``cfg`` with features (only ``sessions``, and only the utterances
    ``ids``, when given: what one node holds; only their features are read)."""
    prepared = prepared_labeled(cfg)
    rows = [r for r, u in enumerate(prepared.utterances)
            if (sessions is None or u.session in sessions) and (ids is None or u.id in ids)]
    feats = {prepared.utterances[r].id: prepared.feature(r) for r in rows}
    session_stats = {s: m for s, m in prepared.session_stats().items() if sessions is None or s in sessions}
    return Corpus([prepared.utterances[r] for r in rows], feats, cfg.data.classes, session_stats,
                  prepared.stats(rows), prepared.skip_counts())


class StreamedPatches:
    """Random ``size``-frame patches of random utterances of a prepared corpus, scaled by ``stats``,
    read from the memory-mapped feature cache: memory is one batch, whatever the corpus size.

    The random stream is :class:`common.views.PatchSampler`'s (row, then start), so pre-training
    draws the same patches as it did from features held in memory. Labels are all 0 (unlabeled).
    """

    def __init__(self, prepared: Prepared, stats: MinMax, size: int, seed: int = 0) -> None:
        self.prepared, self.stats, self.size = prepared, stats, size
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch_size: int) -> SerBatch:
        """(B, 1, F, size) patches in [-1, 1] and (B,) zeros."""
        rows = self.rng.integers(0, len(self.prepared), size=batch_size)
        x = np.stack([self._crop(int(r)) for r in rows])
        return torch.from_numpy(x).unsqueeze(1), torch.zeros(batch_size, dtype=torch.int64)

    def _crop(self, row: int) -> np.ndarray:
        feat = self.prepared.feature(row, mmap=True)  # (F, T) memmap: only the window is read
        n = feat.shape[1]
        if n < self.size:  # short clips: scaled whole, padded with the scaled minimum
            return random_patch(self.stats.scale(feat), self.size, self.rng, pad_value=-1.0)
        start = int(self.rng.integers(0, n - self.size + 1))
        return self.stats.scale(feat[:, start:start + self.size])


def unlabeled_patches(cfg: StudySections, size: int, seed: int) -> StreamedPatches:
    """Patches of the unlabeled corpus (``data.pretrain_*``) scaled by its own min/max (seed 000's
    DCGAN variants draw their unlabeled speech here)."""
    prepared = prepared_unlabeled(cfg)
    return StreamedPatches(prepared, prepared.stats(), size, seed)
