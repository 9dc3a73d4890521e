"""The one record type every corpus reader yields, the result of a corpus scan, and its skips."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Gender = Literal["F", "M"]


@dataclass(frozen=True)
class Utterance:
    """One utterance of one corpus: where its audio is and what is known about it.

    ``label`` is the class after the label map (``None`` for unlabeled corpora);
    ``raw_label`` is what the corpus itself says (e.g. IEMOCAP's ``exc``).
    ``valence``/``activation``/``dominance`` are IEMOCAP's evaluator means on the 1–5 scale.
    """

    id: str
    path: Path
    corpus: str
    speaker: str
    session: int | None = None
    gender: Gender | None = None
    label: str | None = None
    raw_label: str | None = None
    valence: float | None = None
    activation: float | None = None
    dominance: float | None = None
    improvised: bool | None = None
    duration: float | None = None
    transcript: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings)."""
        row = asdict(self)
        row["path"] = str(self.path)
        return row

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Utterance:
        """Inverse of :meth:`to_json`."""
        return cls(**{**row, "path": Path(row["path"])})


# Skip categories: short, stable strings, the keys of ``skip_counts()`` (what the CLI and MLflow
# report). A Skip's ``reason`` keeps the detail (file, line, library message); its ``kind`` is one
# of these. Readers name the kind; a Skip built from a reason alone (an AudioError's, or a manifest
# written before kinds existed) gets it from the reason's opening words (_KIND_OF_REASON).
SKIP_KINDS: tuple[str, ...] = (
    "missing EmoEvaluation",  # a session without dialog/EmoEvaluation: its utterances are unlabeled
    "unreadable label file",  # an EmoEvaluation .txt that cannot be read (OSError)
    "empty label file",       # an EmoEvaluation .txt without a single summary line
    "malformed label line",   # a summary line of an EmoEvaluation file that does not parse
    "unknown label",          # a label that is neither the corpus's own nor in the label map
    "not a label file",       # a non-.txt file in EmoEvaluation/
    "AppleDouble file",       # macOS ._* metadata beside the real files
    "not an audio file",      # a non-audio file in an audio folder
    "bad file name",          # an audio file whose name does not follow the corpus's scheme
    "not speech audio",       # RAVDESS video or song files
    "missing audio file",
    "unlabeled file",         # an audio file the corpus's label table does not list (MSP-Podcast)
    "unknown split",          # a Split_Set value MSP-Podcast does not define
    "not a file",             # e.g. a directory named like a wav
    "unreadable audio",
    "empty audio",
    "non-finite samples",     # NaN or Inf samples
    "too short",
    "other",
)
_KIND_OF_REASON: tuple[tuple[str, str], ...] = (
    ("missing audio file", "missing audio file"),
    ("not a file", "not a file"),
    ("unreadable audio", "unreadable audio"),
    ("empty audio", "empty audio"),
    ("audio contains NaN or Inf", "non-finite samples"),
    ("too short", "too short"),
    ("AppleDouble", "AppleDouble file"),
    ("not an audio file", "not an audio file"),
    ("not an EmoEvaluation", "not a label file"),
    ("file name is not", "bad file name"),
    ("not audio-only speech", "not speech audio"),
    ("unknown RAVDESS emotion", "unknown label"),
    ("missing EmoEvaluation", "missing EmoEvaluation"),  # manifests written before kinds existed
    ("unparseable EmoEvaluation", "malformed label line"),  # idem (the whole file was dropped then)
)


def skip_kind(reason: str) -> str:
    """The category (one of :data:`SKIP_KINDS`) of a skip reason, from its opening words."""
    return next((kind for prefix, kind in _KIND_OF_REASON if reason.startswith(prefix)), "other")


@dataclass(frozen=True)
class Skip:
    """A file, line or entry a reader left out: ``reason`` in full (shown to the user), ``kind``
    its category (counted; one of :data:`SKIP_KINDS`, derived from ``reason`` when not given)."""

    path: Path
    reason: str
    kind: str = ""

    def __post_init__(self) -> None:
        if not self.kind:
            object.__setattr__(self, "kind", skip_kind(self.reason))


def count_skips(skips: Iterable[Skip], by: Literal["kind", "reason"] = "kind") -> dict[str, int]:
    """Number of ``skips`` per kind (or per full reason), most frequent first."""
    return dict(Counter(getattr(s, by) for s in skips).most_common())


def skip_summary(counts: Mapping[str, int]) -> str:
    """One line for logs and run tags: "skipped 14 entries: 11 too short, 2 unreadable audio,
    1 unknown label" (most frequent first), or "skipped nothing". An entry is mostly an
    utterance, sometimes a file (an AppleDouble file) or a whole session (missing EmoEvaluation)."""
    counts = {k: n for k, n in counts.items() if n}
    if not counts:
        return "skipped nothing"
    parts = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    total = sum(counts.values())
    return f"skipped {total} {'entry' if total == 1 else 'entries'}: {parts}"


@dataclass
class Scan:
    """What a reader found: the kept utterances, every skip with its reason, and how many
    utterances the label map left out on purpose, per raw label (``excluded``; not skips)."""

    corpus: str
    root: Path
    utterances: list[Utterance] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)

    def skip_counts(self) -> dict[str, int]:
        """Number of skips per kind (:data:`SKIP_KINDS`), most frequent first."""
        return count_skips(self.skipped)

    def skip_reasons(self) -> dict[str, int]:
        """Number of skips per full reason, most frequent first."""
        return count_skips(self.skipped, by="reason")

    def exclude(self, raw_label: str) -> None:
        """Count one utterance the label map leaves out (its ``raw_label`` maps to no class)."""
        self.excluded[raw_label] = self.excluded.get(raw_label, 0) + 1
