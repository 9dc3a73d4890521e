"""Corpus readers: one per corpus, all yielding :class:`Utterance` records in a :class:`Scan`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from common.config import LABELED_CORPORA, CorpusKind
from common.corpora.base import SKIP_KINDS, Scan, Skip, Utterance, count_skips, skip_kind, skip_summary
from common.corpora.iemocap import DEFAULT_LABEL_MAP, Subset, read_iemocap
from common.corpora.others import read_folder, read_librispeech, read_ravdess
from common.corpora.speakers import MSP_LABELS, is_cremad_name, read_cremad, read_msppodcast

LABELED: frozenset[str] = frozenset(LABELED_CORPORA)

__all__ = [
    "CorpusKind", "Scan", "Skip", "Utterance", "detect_corpus", "read_corpus", "DEFAULT_LABEL_MAP",
    "SKIP_KINDS", "count_skips", "skip_kind", "skip_summary",
]


def detect_corpus(root: Path) -> CorpusKind:
    """Guess a corpus kind from its layout (``SessionN/`` -> IEMOCAP, and so on)."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder; give the corpus root folder")
    if any((root / f"Session{n}").is_dir() for n in range(1, 6)):
        return "iemocap"
    if (root / MSP_LABELS).is_file():
        return "msppodcast"
    if (root / "AudioWAV").is_dir():
        return "cremad"
    first = next((p for p in sorted(root.rglob("*")) if p.suffix in {".wav", ".flac"}
                  and not p.name.startswith(".")), None)
    if first is not None and first.suffix == ".flac" and first.stem.count("-") == 2:
        return "librispeech"
    if first is not None and first.stem.count("-") == 6:
        return "ravdess"
    if first is not None and is_cremad_name(first.stem):
        return "cremad"
    return "folder"


def read_corpus(
    root: Path,
    kind: CorpusKind | Literal["auto"] = "auto",
    *,
    label_map: Mapping[str, str] = DEFAULT_LABEL_MAP,
    subset: Subset = "all",
) -> Scan:
    """Read the corpus at ``root``; ``label_map`` and ``subset`` apply where a corpus has them."""
    resolved: CorpusKind = detect_corpus(root) if kind == "auto" else kind
    readers: dict[str, Callable[[], Scan]] = {
        "iemocap": lambda: read_iemocap(root, label_map=label_map, subset=subset),
        "ravdess": lambda: read_ravdess(root, label_map=label_map),
        "cremad": lambda: read_cremad(root, label_map=label_map),
        "msppodcast": lambda: read_msppodcast(root, label_map=label_map),
        "librispeech": lambda: read_librispeech(root),
        "folder": lambda: read_folder(root),
    }
    try:
        reader = readers[resolved]
    except KeyError:
        raise ValueError(f"unknown corpus kind {resolved!r}; choose from {sorted(readers)}") from None
    return reader()
