"""Content-addressed on-disk feature cache and corpus-wide extraction through it."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from common.audio import AudioError, load_audio
from common.corpora.base import Skip, Utterance
from common.features.extractors import FEATURE_VERSION, Backend, Extractor, compute, resolve_device


def content_hash(path: Path) -> str:
    """sha256 of the file at ``path`` (what feature cache keys and corpus manifests record)."""
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        raise AudioError(path, "missing audio file") from None


class FeatureCache:
    """Features on disk at ``root/<key[:2]>/<key>.npy``, keyed by audio content and extractor params.

    Entries are written to a temporary file and renamed into place, so a crashed process leaves at
    most a stray ``*.tmp`` file, never a truncated entry. There is no fsync (it was 2/3 of the cold
    cost in benchmarks/features.py): after a power loss an entry may be empty or short, which
    ``np.load`` rejects, and an unreadable entry counts as a miss and is rewritten.
    ``hits`` and ``misses`` count lookups.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(audio: str, extractor: Extractor, backend: Backend = "torch") -> str:
        """sha256 over the audio's content hash (:func:`content_hash`), extractor name, sorted params,
        backend and FEATURE_VERSION.

        The backend is part of the key: the two implementations agree only within ``atol``.
        """
        spec = {"audio": audio, "extractor": extractor.name, "params": extractor.params(),
                "backend": backend, "version": FEATURE_VERSION}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def load(self, key: str, mmap: bool = False) -> np.ndarray | None:
        """The stored array for ``key`` (a hit), or None (a miss); memory-mapped read-only when
        ``mmap`` (only the pages a caller slices are read)."""
        try:
            array = np.load(self._entry(key), allow_pickle=False, mmap_mode="r" if mmap else None)
        except (OSError, ValueError, EOFError):  # absent, or damaged outside our atomic writes
            self.misses += 1
            return None
        self.hits += 1
        return array

    def store(self, key: str, array: np.ndarray) -> None:
        """Write ``array`` under ``key`` atomically (temporary file + os.replace)."""
        entry = self._entry(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=f"{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, array, allow_pickle=False)
            os.replace(tmp, entry)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _entry(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"


def extract_corpus(
    utterances: Iterable[Utterance],
    extractor: Extractor,
    cache: FeatureCache,
    device: str | torch.device = "cpu",
    backend: Backend = "torch",
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    keys: Sequence[str] | None = None,
) -> tuple[dict[str, np.ndarray], list[Skip]]:
    """Features for every loadable utterance, by id, and a Skip (with AudioError's reason) per other.

    ``keys``: the utterances' cache keys when known (a corpus manifest has the content hashes);
    else each file is hashed here.

    Cache misses are computed ``batch_size`` at a time by :func:`compute` with ``backend``; the
    default batches 16 on CUDA and none on CPU, where padded batches were slower
    (benchmarks/features.py). ``progress(done, total)`` is called after each batch.
    """
    if batch_size is None:
        batch_size = 16 if resolve_device(device).type == "cuda" else 1
    utterances = list(utterances)
    features: dict[str, np.ndarray] = {}
    skipped: list[Skip] = []
    for start in range(0, len(utterances), batch_size):
        todo: list[tuple[str, str, np.ndarray]] = []  # (id, key, wav) of the misses
        for i, utt in enumerate(utterances[start : start + batch_size], start):
            try:
                key = keys[i] if keys is not None else cache.key(content_hash(utt.path), extractor, backend)
                cached = cache.load(key)
                if cached is None:
                    todo.append((utt.id, key, load_audio(utt.path)))
                else:
                    features[utt.id] = cached
            except AudioError as exc:
                skipped.append(Skip(utt.path, exc.reason))
        computed = compute(extractor, [wav for _, _, wav in todo], backend, device)
        for (utt_id, key, _), feat in zip(todo, computed, strict=True):
            cache.store(key, feat)
            features[utt_id] = feat
        if progress is not None:
            progress(min(start + batch_size, len(utterances)), len(utterances))
    return {u.id: features[u.id] for u in utterances if u.id in features}, skipped
