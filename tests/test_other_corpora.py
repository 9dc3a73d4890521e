"""RAVDESS, LibriSpeech and plain-folder readers, and corpus auto-detection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

from common.audio import write_wav
from common.corpora import detect_corpus, read_corpus
from common.corpora.others import read_ravdess
from common.corpora.synthetic.ravdess import ravdess_names, write_ravdess
from simulations.papers import RAVDESS_COUNTS
from tests.conftest import tone


def test_ravdess_fields_speaker_gender_and_label_map(tmp_path: Path) -> None:
    actors = tmp_path / "Audio_Speech_Actors_01-24"
    for name in ["03-01-05-02-01-01-12", "03-01-03-01-02-02-07", "03-01-02-01-01-01-07", "01-01-05-01-01-01-01"]:
        write_wav(actors / f"Actor_{name[-2:]}" / f"{name}.wav", tone())
    write_wav(actors / "Actor_01" / "notes.wav", tone())
    (actors / "Actor_12" / "._03-01-05-02-01-01-12.wav").write_bytes(b"\x00\x05")
    assert detect_corpus(actors) == "ravdess"
    scan = read_corpus(actors, "ravdess")
    by_id = {u.id: u for u in scan.utterances}
    # 05 = angry, 03 = happy; 02 = calm is outside the 4-class map and is filtered.
    assert {k: (u.label, u.speaker, u.gender) for k, u in by_id.items()} == {
        "03-01-05-02-01-01-12": ("ang", "Actor_12", "F"),
        "03-01-03-01-02-02-07": ("hap", "Actor_07", "M"),
    }
    assert scan.skip_reasons() == {
        "AppleDouble metadata file": 1,
        "not audio-only speech (modality 03, vocal channel 01)": 1,
        "file name is not the seven-field RAVDESS identifier": 1,
    }
    assert scan.skip_counts() == {"AppleDouble file": 1, "not speech audio": 1, "bad file name": 1}
    assert scan.excluded == {"cal": 1}  # calm: left out by the 4-class map, not a skip


def test_librispeech_layout_and_transcripts(tmp_path: Path) -> None:
    chapter = tmp_path / "LibriSpeech" / "train-clean-100" / "19" / "198"
    chapter.mkdir(parents=True)
    for i in range(2):
        sf.write(chapter / f"19-198-{i:04d}.flac", tone(), 16_000)
    (chapter / "19-198.trans.txt").write_text("19-198-0000 NORTHANGER ABBEY\n19-198-0001 CHAPTER ONE\n")
    (tmp_path / "LibriSpeech" / "SPEAKERS.TXT").write_text(";ID |SEX| SUBSET |MINUTES| NAME\n"
                                                          "19   | F | train-clean-100  | 25.19 | Kara Shallenberg\n")
    root = tmp_path / "LibriSpeech"
    assert detect_corpus(root) == "librispeech"
    scan = read_corpus(root)
    assert [(u.id, u.speaker, u.gender, u.transcript, u.label) for u in scan.utterances] == [
        ("19-198-0000", "19", "F", "NORTHANGER ABBEY", None), ("19-198-0001", "19", "F", "CHAPTER ONE", None),
    ]
    assert scan.skipped == []
    # A subset folder finds SPEAKERS.TXT one level up.
    assert {u.gender for u in read_corpus(root / "train-clean-100", "librispeech").utterances} == {"F"}


def test_any_folder_of_audio_skips_non_audio_and_bad_files(tmp_path: Path) -> None:
    write_wav(tmp_path / "alice" / "a.wav", tone())
    (tmp_path / "bob").mkdir()
    sf.write(tmp_path / "bob" / "b.flac", tone(), 22_050)  # 8000 samples at another rate
    (tmp_path / "bob" / "readme.txt").write_text("hello")
    (tmp_path / "bob" / "broken.wav").write_bytes(b"RIFFjunk")
    (tmp_path / "bob" / "._b.flac").write_bytes(b"\x00")
    assert detect_corpus(tmp_path) == "folder"
    scan = read_corpus(tmp_path, "folder")
    assert [(u.id, u.speaker) for u in scan.utterances] == [("alice__a", "alice"), ("bob__b", "bob")]
    assert scan.utterances[1].duration == 8000 / 22_050
    reasons = scan.skip_reasons()
    assert reasons.pop("not an audio file (.txt)") == 1 and reasons.pop("AppleDouble metadata file") == 1
    assert list(reasons) == [next(r for r in reasons if r.startswith("unreadable audio"))]
    assert scan.skip_counts() == {"not an audio file": 1, "unreadable audio": 1, "AppleDouble file": 1}
    assert np.isfinite(scan.utterances[0].duration)


def test_a_folder_named_like_audio_is_a_skip_not_silence(tmp_path: Path) -> None:
    write_wav(tmp_path / "alice" / "a.wav", tone())
    (tmp_path / "alice" / "b.wav").mkdir()
    scan = read_corpus(tmp_path, "folder")
    assert [u.id for u in scan.utterances] == ["alice__a"]
    assert [(s.path, s.reason, s.kind) for s in scan.skipped] == [
        (tmp_path / "alice" / "b.wav", "not a file (a directory)", "not a file")]


def test_synthetic_ravdess_has_the_exact_speech_layout(tmp_path: Path) -> None:
    names = ravdess_names(7)
    assert len(names) == 60 and len(set(names)) == 60  # 8 emotions, neutral normal intensity only
    assert sum(code == "01" for _, code in names) == 4 and names[0][0] == "03-01-01-01-01-01-07"
    write_ravdess(tmp_path / "RAVDESS", actors=1)
    assert len(list((tmp_path / "RAVDESS" / "Actor_01").glob("*.wav"))) == 60
    scan = read_ravdess(tmp_path / "RAVDESS", label_map={"neu": "neu", "hap": "hap", "ang": "ang", "sad": "sad"})
    assert not scan.skipped and Counter(u.label for u in scan.utterances) == {"neu": 4, "hap": 8, "ang": 8, "sad": 8}
    # 24 actors x 28 = 672 files of the four classes: seed 004's 510 cannot be cut from them by a field.
    assert sum(RAVDESS_COUNTS.values()) == 672 and RAVDESS_COUNTS["neu"] == 96
