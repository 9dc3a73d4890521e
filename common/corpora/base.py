"""The one record type every corpus reader yields, and the result of a corpus scan."""

from __future__ import annotations

from collections import Counter
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


@dataclass(frozen=True)
class Skip:
    """A file or entry a reader left out, and why (shown to the user, counted per reason)."""

    path: Path
    reason: str


@dataclass
class Scan:
    """What a reader found: the kept utterances and every skip with its reason."""

    corpus: str
    root: Path
    utterances: list[Utterance] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)

    def skip_counts(self) -> dict[str, int]:
        """Number of skips per reason, most frequent first."""
        return dict(Counter(s.reason for s in self.skipped).most_common())
