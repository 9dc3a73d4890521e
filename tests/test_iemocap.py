"""The IEMOCAP reader on real-format files: parsing, speakers, subsets, skips, known totals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.corpora import read_corpus
from common.corpora.check import summarize
from common.corpora.iemocap import (
    CLASSES_4,
    KNOWN_PER_SESSION,
    EmoEvaluationError,
    dialog_of,
    parse_emo_evaluation,
    read_iemocap,
    speaker_of,
)
from tests.conftest import EMO_IMPRO01, tone


def test_parse_header_blocks_and_annotator_lines() -> None:
    blocks = parse_emo_evaluation(EMO_IMPRO01)
    # The "% [START_TIME - END_TIME] ..." header has brackets too but is not an utterance.
    assert [b.utterance for b in blocks] == [
        "Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses01F_impro01_F001", "Ses01F_impro01_M001",
        "Ses01F_impro01_F002",
    ]
    first = blocks[0]
    assert (first.start, first.end, first.label) == (6.2901, 8.2357, "neu")
    assert (first.valence, first.activation, first.dominance) == (2.5, 2.5, 2.5)
    assert first.categorical["E2"] == ("Neutral",)
    assert first.categorical["F1"] == ("Neutral",)
    # "dom  2;" has a double space in the real files.
    assert first.dimensional == {"E3": (3.0, 2.0, 2.0), "E4": (2.0, 3.0, 3.0), "F1": (3.0, 2.0, 1.0)}
    # Several labels on one annotator line.
    assert blocks[1].categorical["E3"] == ("Happiness", "Excited")
    assert blocks[1].categorical["M1"] == ("Neutral", "Anger")
    assert blocks[2].label == "xxx"


def test_malformed_summary_line_names_file_and_line() -> None:
    text = "% header\n\n[1.0 - x]\tSes01F_impro01_F000\tneu\t[2.5, 2.5, 2.5]\n"
    with pytest.raises(EmoEvaluationError, match=r"dialog\.txt:3: malformed summary line"):
        parse_emo_evaluation(text, "dialog.txt")


@pytest.mark.parametrize(
    ("utterance", "speaker", "dialog"),
    [
        ("Ses01F_impro01_F000", "Ses01F", "Ses01F_impro01"),
        ("Ses01F_impro01_M000", "Ses01M", "Ses01F_impro01"),  # the dialog prefix is not the speaker
        ("Ses02M_script02_2_F049", "Ses02F", "Ses02M_script02_2"),
        ("Ses03M_impro05a_F000", "Ses03F", "Ses03M_impro05a"),
        ("Ses05M_script01_1b_M000", "Ses05M", "Ses05M_script01_1b"),
    ],
)
def test_speaker_from_utterance_suffix(utterance: str, speaker: str, dialog: str) -> None:
    assert speaker_of(utterance) == speaker
    assert dialog_of(utterance) == dialog


def test_reader_maps_labels_filters_and_counts_skips(iemocap_tree: Path) -> None:
    scan = read_iemocap(iemocap_tree)
    by_id = {u.id: u for u in scan.utterances}
    # exc -> hap; xxx and fru dropped; the ang utterance's wav is missing (a skip, not a filter).
    assert sorted(by_id) == [
        "Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses03M_impro05a_F000", "Ses03M_impro05a_M000",
        "Ses05M_script01_1b_F000", "Ses05M_script01_1b_M000",
    ]
    m000 = by_id["Ses01F_impro01_M000"]
    assert (m000.label, m000.raw_label, m000.speaker, m000.gender, m000.session) == ("hap", "exc", "Ses01M", "M", 1)
    assert m000.improvised and not by_id["Ses05M_script01_1b_F000"].improvised
    assert by_id["Ses03M_impro05a_F000"].speaker == "Ses03F"
    assert by_id["Ses01F_impro01_F000"].duration == pytest.approx(0.5)
    assert by_id["Ses01F_impro01_F000"].path.name == "Ses01F_impro01_F000.wav"
    reasons = scan.skip_counts()
    assert reasons == {"AppleDouble metadata file": 1, "missing audio file": 1}
    missing = next(s for s in scan.skipped if s.reason == "missing audio file")
    assert missing.path.name == "Ses01F_impro01_F002.wav"


def test_subsets_and_custom_label_map(iemocap_tree: Path) -> None:
    impro = read_iemocap(iemocap_tree, subset="improvised")
    scripted = read_iemocap(iemocap_tree, subset="scripted")
    assert all(u.improvised for u in impro.utterances) and len(impro.utterances) == 4
    assert [u.id for u in scripted.utterances] == ["Ses05M_script01_1b_F000", "Ses05M_script01_1b_M000"]
    # A 5-class map that keeps frustration and leaves excited out.
    five = read_iemocap(iemocap_tree, label_map={"neu": "neu", "hap": "hap", "ang": "ang", "sad": "sad", "fru": "fru"})
    labels = {u.id: u.label for u in five.utterances}
    assert labels["Ses01F_impro01_M001"] == "fru" and "Ses01F_impro01_M000" not in labels


def test_unreadable_wav_is_a_skip_with_reason(iemocap_tree: Path) -> None:
    wav = iemocap_tree / "Session3" / "sentences" / "wav" / "Ses03M_impro05a" / "Ses03M_impro05a_F000.wav"
    wav.write_bytes(b"RIFF\x00\x00garbage")
    scan = read_iemocap(iemocap_tree)
    skip = next(s for s in scan.skipped if s.path == wav)
    assert skip.reason.startswith("unreadable audio")


def test_not_a_corpus_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no Session1..Session5 folders"):
        read_iemocap(tmp_path)


def _complete_copy(root: Path, subset_table: dict[int, dict[str, int]]) -> None:
    """Label files with IEMOCAP's known per-session counts; every wav is a hard link to one clip."""
    from common.audio import write_wav

    clip = root / "clip.wav"
    write_wav(clip, tone(0.3))
    for session, counts in subset_table.items():
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        n = 0
        for label, count in counts.items():
            for i in range(count):
                # Split hap between hap and exc as the real corpus does; add dropped labels too.
                raw = "exc" if label == "hap" and i % 2 else label
                lines += [f"[{n}.0000 - {n}.5000]\tSes0{session}F_impro01_{'FM'[n % 2]}{n:03d}\t{raw}"
                          "\t[2.5000, 2.5000, 2.5000]", ""]
                n += 1
        lines += [f"[{n}.0000 - {n}.5000]\tSes0{session}F_impro01_F{n:03d}\tfru\t[2.0000, 3.0000, 3.0000]", ""]
        edir = root / f"Session{session}" / "dialog" / "EmoEvaluation"
        edir.mkdir(parents=True)
        (edir / f"Ses0{session}F_impro01.txt").write_text("\n".join(lines))
        wdir = root / f"Session{session}" / "sentences" / "wav" / f"Ses0{session}F_impro01"
        wdir.mkdir(parents=True)
        for i in range(n + 1):
            os.link(clip, wdir / f"Ses0{session}F_impro01_{'FM'[i % 2]}{i:03d}.wav")


def test_check_matches_known_totals_on_a_complete_copy_and_flags_a_gap(tmp_path: Path) -> None:
    root = tmp_path / "IEMOCAP_full_release"
    _complete_copy(root, KNOWN_PER_SESSION["improvised"])
    report = summarize(read_corpus(root, subset="improvised"), classes=CLASSES_4, subset="improvised")
    assert report["utterances"] == 2943
    assert report["reference"].startswith("IEMOCAP known totals (2943")
    assert report["deviations"] == []
    next((root / "Session2" / "sentences" / "wav").rglob("*M001.wav")).unlink()
    report = summarize(read_corpus(root, subset="improvised"), classes=CLASSES_4, subset="improvised")
    assert report["utterances"] == 2942
    assert report["skipped_by_reason"] == {"missing audio file": 1}
    assert "total: found 2942, expected 2943" in report["deviations"]
    assert any(d.startswith("Session2 ") for d in report["deviations"])
