"""IEMOCAP_full_release reader: EmoEvaluation parsing, label map, subsets, true speakers.

Layout (IEMOCAP README; notes/ser-anchors-and-iemocap.md §2.1):
``SessionN/dialog/EmoEvaluation/<dialog>.txt`` holds the gold labels and
``SessionN/sentences/wav/<dialog>/<utt>.wav`` the utterance audio (16 kHz).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from common.audio import AudioError, is_audio_file, probe_duration
from common.config import CLASSES_4 as CLASSES_4  # re-exported: where readers and tests look for it
from common.config import DEFAULT_LABEL_MAP
from common.corpora.base import Scan, Skip, Utterance

Subset = Literal["improvised", "scripted", "all"]
# DEFAULT_LABEL_MAP (common/config.py): exc is merged into hap, everything else (fru, sur, fea, dis,
# oth, xxx) is dropped: the de-facto protocol of seed 002 §4.1 and of every peer toolkit (notes §0.2).

# Known totals of a complete copy under the default label map (notes §2.4, from EmoBox's list).
KNOWN_TOTALS: dict[Subset, int] = {"all": 5531, "improvised": 2943, "scripted": 2588}
KNOWN_PER_SESSION: dict[Subset, dict[int, dict[str, int]]] = {
    "all": {
        1: {"neu": 384, "hap": 278, "ang": 229, "sad": 194},
        2: {"neu": 362, "hap": 327, "ang": 137, "sad": 197},
        3: {"neu": 320, "hap": 286, "ang": 240, "sad": 305},
        4: {"neu": 258, "hap": 303, "ang": 327, "sad": 143},
        5: {"neu": 384, "hap": 442, "ang": 170, "sad": 245},
    },
    "improvised": {
        1: {"neu": 223, "hap": 132, "ang": 62, "sad": 104},
        2: {"neu": 217, "hap": 191, "ang": 22, "sad": 100},
        3: {"neu": 198, "hap": 149, "ang": 90, "sad": 190},
        4: {"neu": 174, "hap": 195, "ang": 84, "sad": 81},
        5: {"neu": 287, "hap": 280, "ang": 31, "sad": 133},
    },
}

# The label codes of IEMOCAP's summary lines (IEMOCAP README; notes §2.2). A code outside this
# vocabulary (a typo such as ``happy``) is an "unknown label" skip; one inside it that the label
# map leaves out (``fru``, ``xxx``, ... under the 4-class map) is the protocol, not a skip.
IEMOCAP_LABELS: frozenset[str] = frozenset({"ang", "hap", "exc", "sad", "neu", "fru", "sur", "fea", "dis", "oth", "xxx"})

# "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]". The header line
# "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]" also has brackets, so anchor on "^\[".
# The label is any word here: whether it is one IEMOCAP uses is the reader's question.
_SUMMARY = re.compile(
    r"^\[(?P<start>\d+(?:\.\d+)?) - (?P<end>\d+(?:\.\d+)?)\]\t(?P<utt>Ses(?P<session>\d\d)[FM]_\S+)\t"
    r"(?P<label>[A-Za-z]+)\t\[(?P<v>\d+(?:\.\d+)?), (?P<a>\d+(?:\.\d+)?), (?P<d>\d+(?:\.\d+)?)\]\s*$"
)
# "C-E2:\tNeutral; Anger;\t()" (categorical) and "A-E3:\tval 3; act 2; dom  2;\t()" (dimensional).
_EVALUATOR = re.compile(r"^(?P<kind>[CA])-(?P<who>[A-Z]\d+):\s*(?P<body>[^\t]*)(?:\t(?P<comment>.*))?$")
_DIMENSION = re.compile(r"(val|act|dom)\s+(\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class Evaluation:
    """One utterance block of an EmoEvaluation file."""

    utterance: str
    start: float
    end: float
    label: str
    valence: float
    activation: float
    dominance: float
    # annotator -> labels, e.g. {"E2": ("Neutral",), "F1": ("Neutral", "Anger")}
    categorical: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # annotator -> (val, act, dom)
    dimensional: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    line: int = 0  # the summary line's number in its file (1-based)


class EmoEvaluationError(ValueError):
    """A line of an EmoEvaluation file that looks like data but does not parse."""


def parse_emo_evaluation(
    text: str, source: str = "<string>", problems: list[EmoEvaluationError] | None = None
) -> list[Evaluation]:
    """Parse one ``EmoEvaluation/<dialog>.txt``; annotator lines attach to the block above them.

    A summary line that does not parse raises :class:`EmoEvaluationError` (``source:line: ...``),
    or, when a ``problems`` list is given, is appended to it and left out with its annotator
    lines, so that one bad line costs one utterance, not the dialog.
    """
    blocks: list[Evaluation] = []
    current: Evaluation | None = None  # the block annotator lines attach to (None after a bad line)
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("%"):
            continue  # blank separators and the "% [START_TIME - END_TIME] ..." header
        if line.startswith("["):
            m = _SUMMARY.match(line)
            if m is None:
                error = EmoEvaluationError(f"{source}:{number}: malformed summary line: {line!r}")
                if problems is None:
                    raise error
                problems.append(error)
                current = None
                continue
            current = Evaluation(
                utterance=m["utt"], start=float(m["start"]), end=float(m["end"]), label=m["label"],
                valence=float(m["v"]), activation=float(m["a"]), dominance=float(m["d"]), line=number,
            )
            blocks.append(current)
            continue
        m = _EVALUATOR.match(line)
        if m is None or current is None:
            continue  # free-text lines outside any block carry no labels
        body = m["body"]
        if m["kind"] == "C":
            current.categorical[m["who"]] = tuple(x.strip() for x in body.split(";") if x.strip())
        else:
            dims = dict(_DIMENSION.findall(body))
            if len(dims) == 3:
                current.dimensional[m["who"]] = (
                    float(dims["val"]), float(dims["act"]), float(dims["dom"])
                )
    return blocks


def speaker_of(utterance: str) -> str:
    """True speaker: session + the F/M letter of the utterance's own suffix.

    ``Ses01F_impro01_M000`` is spoken by ``Ses01M``; the dialog prefix only names who wore the
    motion-capture markers (the speaker-id trap of notes §0.3).
    """
    suffix = utterance.rsplit("_", 1)[1]
    return utterance[:5] + suffix[0]


def dialog_of(utterance: str) -> str:
    """``Ses05M_script01_1b_F000`` -> ``Ses05M_script01_1b``."""
    return utterance.rsplit("_", 1)[0]


def is_improvised(utterance: str) -> bool:
    """Improvised dialogs are named ``…_impro…``; all others are scripted."""
    return "_impro" in utterance


_NOT_WORDS = {"<s>", "</s>", "<sil>"}


def word_spans(wav: Path) -> tuple[tuple[float, float], ...]:
    """(start, end) seconds of each spoken word of an IEMOCAP utterance, from its forced alignment
    ``sentences/ForcedAlignment/<dialog>/<utt>.wdseg`` (frames of 10 ms; silence markers left out);
    () when there is no alignment. Seed 000 centres its training crops on these words."""
    path = wav.parent.parent.parent / "ForcedAlignment" / wav.parent.name / f"{wav.stem}.wdseg"
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ()
    spans = []
    for line in lines:
        parts = line.split()
        if len(parts) == 4 and parts[0].isdigit() and parts[1].isdigit() and parts[3] not in _NOT_WORDS:
            spans.append((int(parts[0]) / 100, (int(parts[1]) + 1) / 100))
    return tuple(spans)


def _in_subset(utterance: str, subset: Subset) -> bool:
    return subset == "all" or is_improvised(utterance) == (subset == "improvised")


def _transcripts(session_dir: Path, dialog: str) -> dict[str, str]:
    """``Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.`` -> {utt: text}; {} if absent."""
    path = session_dir / "dialog" / "transcriptions" / f"{dialog}.txt"
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        head, sep, text = line.partition(":")
        if sep and head.split(" ", 1)[0].startswith("Ses"):
            out[head.split(" ", 1)[0]] = text.strip()
    return out


def _sessions(root: Path) -> Iterator[tuple[int, Path]]:
    for n in range(1, 6):
        session_dir = root / f"Session{n}"
        if session_dir.is_dir():
            yield n, session_dir


def read_iemocap(
    root: Path,
    *,
    label_map: Mapping[str, str] = DEFAULT_LABEL_MAP,
    subset: Subset = "all",
    sessions: tuple[int, ...] | None = None,
) -> Scan:
    """Read IEMOCAP_full_release at ``root`` into a :class:`Scan`.

    Utterances outside ``subset`` are filtered; those whose IEMOCAP label the label map leaves
    out are counted in ``Scan.excluded`` (the protocol, not a loss). Everything else that is left
    out is a skip with its reason: a session without EmoEvaluation folder, AppleDouble and other
    non-label files, each malformed summary line (file and line number), each label that is not
    IEMOCAP's, and each missing, non-file or unreadable wav.
    """
    scan = Scan(corpus="iemocap", root=root)
    found = list(_sessions(root))
    if not found:
        raise FileNotFoundError(
            f"{root}: no Session1..Session5 folders; point to the IEMOCAP_full_release folder"
        )
    for number, session_dir in found:
        if sessions is not None and number not in sessions:
            continue
        eval_dir = session_dir / "dialog" / "EmoEvaluation"
        if not eval_dir.is_dir():
            wavs = sum(1 for p in (session_dir / "sentences" / "wav").rglob("*.wav") if is_audio_file(p))
            scan.skipped.append(Skip(
                session_dir, f"no dialog/EmoEvaluation folder: its utterances ({wavs} wavs) are unlabeled",
                "missing EmoEvaluation"))
            continue
        for eval_file in sorted(eval_dir.iterdir()):
            if not eval_file.is_file():
                continue  # Categorical/, Attribute/, Self-evaluation/ sub-folders
            if eval_file.name.startswith("._"):
                scan.skipped.append(Skip(eval_file, "AppleDouble metadata file", "AppleDouble file"))
                continue
            if eval_file.suffix != ".txt" or eval_file.name.startswith("."):
                scan.skipped.append(Skip(eval_file, "not an EmoEvaluation .txt file", "not a label file"))
                continue
            _read_dialog(scan, session_dir, number, eval_file, label_map, subset)
    return scan


def _read_dialog(
    scan: Scan, session_dir: Path, session: int, eval_file: Path, label_map: Mapping[str, str], subset: Subset
) -> None:
    """The utterances of one EmoEvaluation file; a bad line is one skip, the rest of the file is read."""
    try:
        data = eval_file.read_bytes()
    except OSError as exc:
        scan.skipped.append(Skip(eval_file, f"unreadable EmoEvaluation file ({exc.strerror or exc})",
                                 "unreadable label file"))
        return
    # A stray non-UTF-8 byte spoils its own line only: a summary line holding it fails to parse.
    problems: list[EmoEvaluationError] = []
    blocks = parse_emo_evaluation(data.decode("utf-8", errors="replace"), eval_file.name, problems)
    scan.skipped.extend(Skip(eval_file, str(p), "malformed label line") for p in problems)
    if not blocks and not problems:
        scan.skipped.append(Skip(eval_file, "EmoEvaluation file without a summary line", "empty label file"))
        return
    texts = _transcripts(session_dir, eval_file.stem)
    for block in blocks:
        if not _in_subset(block.utterance, subset):
            continue
        label = label_map.get(block.label)
        if label is None:
            # IEMOCAP's own labels that the map leaves out (fru, sur, xxx, ... under the 4-class
            # map) are the protocol: counted apart, not skips, so a complete copy still shows
            # "skipped: none" and the known totals (which leave them out too) still apply. Any
            # other word is a damaged or foreign label: a skip naming file and line.
            if block.label in IEMOCAP_LABELS:
                scan.exclude(block.label)
            else:
                scan.skipped.append(Skip(
                    eval_file, f"{eval_file.name}:{block.line}: label {block.label!r} of {block.utterance} "
                    "is not an IEMOCAP label and not in the label map", "unknown label"))
            continue
        _add(scan, session_dir, session, block, label, texts.get(block.utterance))


def _add(scan: Scan, session_dir: Path, session: int, block: Evaluation, label: str, text: str | None) -> None:
    utt = block.utterance
    wav = session_dir / "sentences" / "wav" / dialog_of(utt) / f"{utt}.wav"
    try:
        duration = probe_duration(wav)
    except AudioError as exc:
        scan.skipped.append(Skip(wav, exc.reason))
        return
    speaker = speaker_of(utt)
    scan.utterances.append(
        Utterance(
            id=utt, path=wav, corpus="iemocap", speaker=speaker, session=session,
            gender="F" if speaker.endswith("F") else "M", label=label, raw_label=block.label,
            valence=block.valence, activation=block.activation, dominance=block.dominance,
            improvised=is_improvised(utt), duration=duration, transcript=text,
        )
    )
