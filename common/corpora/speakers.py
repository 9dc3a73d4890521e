"""Readers for the corpora with many speakers: CREMA-D (91 actors) and MSP-Podcast (over a
thousand podcast speakers). Both yield sessions, so the leave-one-session-out folds, the partitions
and the federated regimes' evaluating nodes work on them unchanged:

- CREMA-D has no sessions: fedser assigns each actor to one of five speaker-independent groups,
  ``(ActorID - 1001) % 5 + 1`` (by id, so a copy missing some actors keeps every other actor's
  group); leave-one-group-out is then 5-fold speaker-independent cross-validation.
- MSP-Podcast's own partition (``Split_Set``) becomes the session: :data:`MSP_SPLITS`, used by
  ``folds.scheme = "split"`` (train on Train, select on Development, test on Test1/Test2).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from pathlib import Path

from common.corpora.base import Scan, Skip
from common.corpora.others import add_utterance, audio_files
from common.corpora.synthetic.layouts import MANIFEST_NAME

# CREMA-D: AudioWAV/<ActorID>_<Sentence>_<Emotion>_<Level>.wav, e.g. 1001_DFA_ANG_XX.wav
# (CREMA-D README: 12 sentences, six emotions, levels LO/MD/HI/XX).
_CREMAD = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
CREMAD_EMOTIONS = {"ANG": "ang", "DIS": "dis", "FEA": "fea", "HAP": "hap", "NEU": "neu", "SAD": "sad"}
CREMAD_GROUPS = 5

# MSP-Podcast Labels/labels_consensus.csv EmoClass codes (the corpus's documentation; X: no agreement).
MSP_EMOTIONS = {"A": "ang", "S": "sad", "H": "hap", "U": "sur", "F": "fea", "D": "dis", "C": "con", "N": "neu",
                "O": "oth", "X": "xxx"}
MSP_SPLITS = {"Train": 1, "Development": 2, "Test1": 3, "Test2": 4, "Test3": 5}
MSP_COLUMNS = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")
MSP_LABELS = Path("Labels") / "labels_consensus.csv"
_GENDER = {"Male": "M", "Female": "F"}


def is_cremad_name(stem: str) -> bool:
    """Whether a file stem is a CREMA-D name (what detect_corpus looks at)."""
    return _CREMAD.match(stem) is not None


def cremad_group(actor: str) -> int:
    """The speaker-independent group (fedser's session, 1..5) of a CREMA-D actor id."""
    return (int(actor) - 1001) % CREMAD_GROUPS + 1


def _mapped(scan: Scan, raw: str, label_map: Mapping[str, str] | None) -> str | None:
    """``raw`` through the label map; a raw label it leaves out is counted as excluded (not a skip)."""
    label = raw if label_map is None else label_map.get(raw)
    if label is None:
        scan.exclude(raw)
    return label


def read_cremad(root: Path, *, label_map: Mapping[str, str] | None = None) -> Scan:
    """CREMA-D's audio files anywhere under ``root`` (the release keeps them in ``AudioWAV/``);
    speakers are the actor ids, genders from ``VideoDemographics.csv`` when it is there."""
    scan = Scan(corpus="cremad", root=root)
    genders: dict[str, str] = {}
    demographics = root / "VideoDemographics.csv"
    if demographics.is_file():
        with demographics.open(newline="", encoding="utf-8-sig", errors="replace") as f:  # -sig: a BOM is not a column
            genders = {row["ActorID"]: _GENDER[row["Sex"]] for row in csv.DictReader(f)
                       if row.get("ActorID") and row.get("Sex") in _GENDER}
    for path in audio_files(root, scan, ignore=lambda p: p.suffix.lower() in {".csv", ".txt", ".md"}
                             or p.name == MANIFEST_NAME):
        m = _CREMAD.match(path.stem)
        if m is None:
            scan.skipped.append(Skip(path, "file name is not <ActorID>_<Sentence>_<Emotion>_<Level>", "bad file name"))
            continue
        actor, _, emotion, _ = m.groups()
        if emotion not in CREMAD_EMOTIONS:
            scan.skipped.append(Skip(path, f"unknown CREMA-D emotion code {emotion}", "unknown label"))
            continue
        raw = CREMAD_EMOTIONS[emotion]
        if (label := _mapped(scan, raw, label_map)) is not None:
            add_utterance(scan, path, speaker=actor, session=cremad_group(actor), gender=genders.get(actor), label=label,
                 raw_label=raw)
    return scan


def _score(value: str) -> float | None:
    """An attribute score (1-7) of the consensus file; None when blank."""
    return float(value) if value.strip() else None


def read_msppodcast(root: Path, *, label_map: Mapping[str, str] | None = None) -> Scan:
    """MSP-Podcast: ``Audios/`` and ``Labels/labels_consensus.csv`` (one row per file: emotion
    class, arousal/valence/dominance, speaker, gender, split). Unknown speakers are kept as the
    speaker ``Unknown`` of their split."""
    labels = root / MSP_LABELS
    if not labels.is_file():
        raise FileNotFoundError(f"{labels}: MSP-Podcast's consensus labels are missing; give the corpus root "
                                "(the folder holding Audios/ and Labels/)")
    scan = Scan(corpus="msppodcast", root=root)
    audio = {p.name: p for p in audio_files(root / "Audios", scan, ignore=lambda p: False)} \
        if (root / "Audios").is_dir() else {}
    with labels.open(newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MSP_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{labels}: no column {', '.join(missing)}; is this MSP-Podcast's labels_consensus.csv?")
        seen: set[str] = set()
        for line, row in enumerate(reader, start=2):
            name = (row["FileName"] or "").strip()
            where = labels.with_name(f"{labels.name}:{line}")
            if name and name in seen:  # one utterance per file: a second row for it is not a second utterance
                scan.skipped.append(Skip(where, f"malformed row: a second row for {name}", "malformed label line"))
                continue
            seen.add(name)
            try:
                valence, activation, dominance = (_score(row[k]) for k in ("EmoVal", "EmoAct", "EmoDom"))
            except (ValueError, AttributeError):
                scan.skipped.append(Skip(where, f"malformed row for {name or '?'}: non-numeric attribute score",
                                         "malformed label line"))
                continue
            code, split = (row["EmoClass"] or "").strip(), (row["Split_Set"] or "").strip()
            if not name or code not in MSP_EMOTIONS:
                scan.skipped.append(Skip(where, f"unknown MSP-Podcast emotion class {code!r} for {name or '?'}",
                                         "unknown label"))
                continue
            if split not in MSP_SPLITS:
                scan.skipped.append(Skip(where, f"unknown Split_Set {split!r} for {name}", "unknown split"))
                continue
            if name not in audio:
                scan.skipped.append(Skip(root / "Audios" / name, "missing audio file (listed in labels_consensus.csv)"))
                continue
            raw = MSP_EMOTIONS[code]
            if (label := _mapped(scan, raw, label_map)) is None:
                continue
            speaker = (row["SpkrID"] or "").strip() or "Unknown"
            add_utterance(scan, audio[name], speaker=speaker, session=MSP_SPLITS[split],
                 gender=_GENDER.get((row["Gender"] or "").strip()), label=label, raw_label=raw,
                 valence=valence, activation=activation, dominance=dominance)
    for name in sorted(set(audio) - seen):
        scan.skipped.append(Skip(audio[name], "unlabeled audio file (no row in labels_consensus.csv)", "unlabeled file"))
    return scan
