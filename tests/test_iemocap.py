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
    KNOWN_TOTALS,
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
    assert scan.skip_counts() == {"AppleDouble file": 1, "missing audio file": 1}
    assert scan.skip_reasons() == {"AppleDouble metadata file": 1, "missing audio file": 1}
    missing = next(s for s in scan.skipped if s.reason == "missing audio file")
    assert missing.path.name == "Ses01F_impro01_F002.wav"
    # xxx and fru are IEMOCAP labels the 4-class map leaves out: counted apart, not skips.
    assert scan.excluded == {"xxx": 1, "fru": 1}


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


# IEMOCAP's four-class counts (exc merged into hap) as the literature publishes them, independent of
# the per-session table in common/corpora/iemocap.py: all sessions 1,708 neutral, 1,636 happy + excited,
# 1,103 angry, 1,084 sad (5,531); improvised 1,099 / 947 / 289 / 608 (2,943).
PUBLISHED = {"all": {"neu": 1708, "hap": 1636, "ang": 1103, "sad": 1084},
             "improvised": {"neu": 1099, "hap": 947, "ang": 289, "sad": 608}}


@pytest.mark.parametrize("subset", ["all", "improvised"])
def test_the_known_table_adds_up_to_the_published_counts(subset: str) -> None:
    table = KNOWN_PER_SESSION[subset]
    assert {c: sum(t[c] for t in table.values()) for c in CLASSES_4} == PUBLISHED[subset]
    assert KNOWN_TOTALS[subset] == sum(PUBLISHED[subset].values())  # 5,531 / 2,943
    assert KNOWN_TOTALS["scripted"] == KNOWN_TOTALS["all"] - KNOWN_TOTALS["improvised"]


def test_a_complete_copy_of_all_sessions_reads_as_5531(tmp_path: Path) -> None:
    root = tmp_path / "IEMOCAP_full_release"
    _complete_copy(root, KNOWN_PER_SESSION["all"])
    report = summarize(read_corpus(root), classes=CLASSES_4, subset="all")
    assert report["utterances"] == 5531 and report["deviations"] == []
    assert report["per_label"] == PUBLISHED["all"]


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


def test_check_with_an_unknown_label_deviates_and_says_why(tmp_path: Path) -> None:
    root = tmp_path / "IEMOCAP_full_release"
    _complete_copy(root, KNOWN_PER_SESSION["improvised"])
    evals = root / "Session4" / "dialog" / "EmoEvaluation" / "Ses04F_impro01.txt"
    lines = evals.read_text().splitlines()
    number = next(i for i, line in enumerate(lines, 1) if "\tsad\t" in line)
    lines[number - 1] = lines[number - 1].replace("\tsad\t", "\txyz\t")
    evals.write_text("\n".join(lines))
    report = summarize(read_corpus(root, subset="improvised"), classes=CLASSES_4, subset="improvised",
                       read_samples=False)
    # The dropped fru lines stay what they were: the protocol, not skips, not deviations.
    assert report["excluded_by_label_map"] == {"fru": 5}
    assert report["skipped_by_kind"] == {"unknown label": 1}
    assert report["skipped"][0]["reason"].startswith(f"Ses04F_impro01.txt:{number}: label 'xyz'")
    assert report["deviations"] == ["total: found 2942, expected 2943", "Session4 sad: found 80, expected 81"]


# ------------------------------------------------------------------------------ skips (issue 13)


def _rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_a_malformed_line_costs_its_utterance_not_the_dialog(iemocap_tree: Path) -> None:
    evals = iemocap_tree / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    _rewrite(evals, "[6.2901 - 8.2357]", "[6.2901 - oops]")
    scan = read_iemocap(iemocap_tree)
    ids = {u.id for u in scan.utterances}
    assert "Ses01F_impro01_F000" not in ids
    assert "Ses01F_impro01_M000" in ids  # the rest of the dialog is still read
    bad = [s for s in scan.skipped if s.kind == "malformed label line"]
    assert len(bad) == 1 and bad[0].path == evals
    assert bad[0].reason.startswith("Ses01F_impro01.txt:3: malformed summary line: '[6.2901 - oops]")


def test_annotator_lines_of_a_malformed_block_attach_to_nothing() -> None:
    problems: list[EmoEvaluationError] = []
    text = EMO_IMPRO01.replace("[10.0100 - 11.3925]", "[10.0100 11.3925]")
    blocks = parse_emo_evaluation(text, "d.txt", problems)
    assert [str(p).split(": ")[0] for p in problems] == ["d.txt:12"]
    assert "Ses01F_impro01_M000" not in [b.utterance for b in blocks]
    # The broken block's "C-M1: Neutral; Anger;" must not land on the block above it.
    assert set(blocks[0].categorical) == {"E2", "E3", "E4", "F1"}
    assert blocks[1].line == 19


@pytest.mark.parametrize("word", ["xyz", "happy"])
def test_an_unknown_label_is_a_skip_naming_file_and_line(iemocap_tree: Path, word: str) -> None:
    evals = iemocap_tree / "Session3" / "dialog" / "EmoEvaluation" / "Ses03M_impro05a.txt"
    _rewrite(evals, "\tsad\t", f"\t{word}\t")
    scan = read_iemocap(iemocap_tree)
    assert "Ses03M_impro05a_F000" not in {u.id for u in scan.utterances}
    unknown = [s for s in scan.skipped if s.kind == "unknown label"]
    assert [s.reason for s in unknown] == [
        f"Ses03M_impro05a.txt:3: label '{word}' of Ses03M_impro05a_F000 is not an IEMOCAP label and not in the label map"
    ]
    assert scan.skip_counts()["unknown label"] == 1
    assert scan.excluded == {"xxx": 1, "fru": 1}  # deliberate exclusions are still not skips


def test_a_custom_map_that_leaves_out_neu_excludes_it_without_skipping(iemocap_tree: Path) -> None:
    scan = read_iemocap(iemocap_tree, label_map={"ang": "ang", "sad": "sad"})
    assert scan.excluded == {"neu": 2, "exc": 1, "xxx": 1, "fru": 1, "hap": 1}
    assert "unknown label" not in scan.skip_counts()


def test_a_directory_named_like_a_wav_is_not_a_missing_file(iemocap_tree: Path) -> None:
    wav = iemocap_tree / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_F000.wav"
    wav.unlink()
    wav.mkdir()
    scan = read_iemocap(iemocap_tree)
    skip = next(s for s in scan.skipped if s.path == wav)
    assert (skip.reason, skip.kind) == ("not a file (a directory)", "not a file")


def test_a_session_without_emo_evaluation_is_a_counted_skip(iemocap_tree: Path) -> None:
    session = iemocap_tree / "Session3"
    (session / "dialog" / "EmoEvaluation").rename(session / "dialog" / "EmoEvaluation.bak")
    scan = read_iemocap(iemocap_tree)
    assert {u.session for u in scan.utterances} == {1, 5}
    skip = next(s for s in scan.skipped if s.kind == "missing EmoEvaluation")
    assert skip.path == session
    assert skip.reason == "no dialog/EmoEvaluation folder: its utterances (2 wavs) are unlabeled"


def test_a_non_utf8_byte_spoils_only_its_line(iemocap_tree: Path) -> None:
    evals = iemocap_tree / "Session5" / "dialog" / "EmoEvaluation" / "Ses05M_script01_1b.txt"
    data = evals.read_bytes()
    # A bad byte in the M000 label, and one in an annotator's comment (harmless).
    evals.write_bytes(data.replace(b"\tang\t", b"\ta\xffg\t").replace(b"Neutral;\t()", b"Neutral;\t(\xe9)"))
    scan = read_iemocap(iemocap_tree)
    ids = {u.id for u in scan.utterances}
    assert "Ses05M_script01_1b_F000" in ids and "Ses05M_script01_1b_M000" not in ids
    assert [s.reason.split(": ")[0] for s in scan.skipped if s.kind == "malformed label line"] == [
        "Ses05M_script01_1b.txt:6"]


def test_an_empty_label_file_is_a_skip(iemocap_tree: Path) -> None:
    evals = iemocap_tree / "Session5" / "dialog" / "EmoEvaluation" / "Ses05M_script01_1b.txt"
    evals.write_text("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n")
    scan = read_iemocap(iemocap_tree)
    assert [(s.path, s.kind) for s in scan.skipped if s.kind == "empty label file"] == [(evals, "empty label file")]
