"""Readers for RAVDESS (labeled by file name), LibriSpeech and any folder of audio (unlabeled)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from common.audio import AudioError, is_audio_file, probe_duration
from common.corpora.base import Scan, Skip, Utterance
from common.corpora.synthetic.layouts import MANIFEST_NAME

# RAVDESS file names have seven two-digit fields (RAVDESS README; notes §3.1):
# modality-channel-emotion-intensity-statement-repetition-actor, e.g. 03-01-06-01-02-01-12.wav.
_RAVDESS = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
RAVDESS_EMOTIONS = {
    "01": "neu", "02": "cal", "03": "hap", "04": "sad", "05": "ang", "06": "fea", "07": "dis", "08": "sur",
}
# LibriSpeech: <speaker>/<chapter>/<speaker>-<chapter>-<utt4>.flac (notes §3.2).
_LIBRISPEECH = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def audio_files(root: Path, scan: Scan, ignore: Callable[[Path], bool]) -> Iterator[Path]:
    """Every audio file under ``root`` in sorted order; AppleDouble and other files are skips, and
    so is a folder named like an audio file (``x.wav/``): it is not a lost file but not audio either."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            if is_audio_file(path):
                scan.skipped.append(Skip(path, "not a file (a directory)", "not a file"))
        elif path.name.startswith("._"):
            scan.skipped.append(Skip(path, "AppleDouble metadata file", "AppleDouble file"))
        elif is_audio_file(path):
            yield path
        elif not ignore(path):
            scan.skipped.append(Skip(path, f"not an audio file ({path.suffix or 'no suffix'})", "not an audio file"))


def add_utterance(scan: Scan, path: Path, **fields: object) -> None:
    """Append the utterance at ``path`` with its header duration, or a skip with the reason."""
    try:
        duration = probe_duration(path)
    except AudioError as exc:
        scan.skipped.append(Skip(path, exc.reason))
        return
    fields = {"id": path.stem, **fields}  # the file stem unless the reader names it otherwise
    scan.utterances.append(Utterance(path=path, corpus=scan.corpus, duration=duration, **fields))  # type: ignore[arg-type]


def read_ravdess(root: Path, *, label_map: Mapping[str, str] | None = None) -> Scan:
    """Audio-only speech files of RAVDESS; speaker ``Actor_NN`` (odd actors male, even female)."""
    scan = Scan(corpus="ravdess", root=root)
    for path in audio_files(root, scan, ignore=lambda p: p.suffix.lower() in {".txt", ".md", ".pdf"}
                             or p.name == MANIFEST_NAME):  # fedser corpus synth --ravdess's ground truth
        m = _RAVDESS.match(path.stem)
        if m is None:
            scan.skipped.append(Skip(path, "file name is not the seven-field RAVDESS identifier", "bad file name"))
            continue
        modality, channel, emotion, _, _, _, actor = m.groups()
        if modality != "03" or channel != "01":
            scan.skipped.append(Skip(path, "not audio-only speech (modality 03, vocal channel 01)", "not speech audio"))
            continue
        raw = RAVDESS_EMOTIONS.get(emotion)
        if raw is None:
            scan.skipped.append(Skip(path, f"unknown RAVDESS emotion code {emotion}", "unknown label"))
            continue
        label = raw if label_map is None else label_map.get(raw)
        if label is None:  # e.g. calm under the 4-class map: the protocol, counted apart (not a skip)
            scan.exclude(raw)
            continue
        add_utterance(scan, path, speaker=f"Actor_{actor}", gender="M" if int(actor) % 2 else "F", label=label,
             raw_label=raw)
    return scan


def read_librispeech(root: Path) -> Scan:
    """LibriSpeech (any subset folder or the LibriSpeech root); transcripts from ``*.trans.txt``."""
    scan = Scan(corpus="librispeech", root=root)
    texts: dict[str, str] = {}
    for trans in sorted(root.rglob("*.trans.txt")):
        if trans.name.startswith("._"):
            continue
        for line in trans.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, text = line.partition(" ")
            texts[key] = text.strip()
    genders = librispeech_genders(root)
    # SPEAKERS.TXT, *.trans.txt and our synthetic manifest are metadata, not skips.
    for path in audio_files(root, scan, ignore=lambda p: p.suffix.lower() in {".txt", ".json"}):
        m = _LIBRISPEECH.match(path.stem)
        if m is None:
            scan.skipped.append(Skip(path, "file name is not <speaker>-<chapter>-<utterance>", "bad file name"))
            continue
        add_utterance(scan, path, speaker=m[1], gender=genders.get(m[1]), transcript=texts.get(path.stem))
    return scan


def librispeech_genders(root: Path) -> dict[str, str]:
    """Speaker id -> "F" or "M" from ``SPEAKERS.TXT`` (``ID | SEX | SUBSET | MINUTES | NAME``, ";"
    comments), in ``root`` or the LibriSpeech folder above a subset folder; {} when there is none."""
    found = next((d / "SPEAKERS.TXT" for d in (root, root.parent) if (d / "SPEAKERS.TXT").is_file()), None)
    if found is None:
        return {}
    genders = {}
    for line in found.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = [f.strip() for f in line.split("|")]
        if not line.startswith(";") and len(fields) >= 2 and fields[1] in {"F", "M"}:
            genders[fields[0]] = fields[1]
    return genders


def read_folder(root: Path) -> Scan:
    """Any folder of audio; the speaker is the file's parent folder name."""
    scan = Scan(corpus="folder", root=root)
    for path in audio_files(root, scan, ignore=lambda p: False):
        rel = path.relative_to(root).with_suffix("")
        add_utterance(scan, path, id=rel.as_posix().replace("/", "__"),
             speaker=path.parent.name if path.parent != root else "unknown")
    return scan
