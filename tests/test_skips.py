"""Skip kinds, the one-line skip summary, and whole one-line reasons (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.audio import AudioError, load_audio, probe_duration
from common.corpora import SKIP_KINDS, Skip, count_skips, skip_kind, skip_summary


def test_summary_line_counts_kinds_most_frequent_first() -> None:
    counts = {"unknown label": 1, "too short": 11, "unreadable audio": 2, "not a file": 0}
    assert skip_summary(counts) == "skipped 14 entries: 11 too short, 2 unreadable audio, 1 unknown label"
    assert skip_summary({"too short": 1}) == "skipped 1 entry: 1 too short"
    assert skip_summary({}) == "skipped nothing" == skip_summary({"too short": 0})


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("missing audio file", "missing audio file"),
        ("not a file (a directory)", "not a file"),
        ("unreadable audio (Error opening 'x.wav': Format not recognised.)", "unreadable audio"),
        ("empty audio (0 samples)", "empty audio"),
        ("audio contains NaN or Inf samples", "non-finite samples"),
        ("too short (< 0.25 s)", "too short"),
        ("too short (0.010 s < 0.1 s minimum)", "too short"),
        ("AppleDouble metadata file", "AppleDouble file"),
        # reasons of manifests written before skips had kinds
        ("missing EmoEvaluation folder", "missing EmoEvaluation"),
        ("unparseable EmoEvaluation file (x.txt:3: malformed summary line: '[')", "malformed label line"),
        ("something new", "other"),
    ],
)
def test_a_skip_without_kind_gets_it_from_its_reason(reason: str, kind: str) -> None:
    assert skip_kind(reason) == kind in SKIP_KINDS
    assert Skip(Path("x"), reason).kind == kind
    assert Skip(Path("x"), reason, "unknown label").kind == "unknown label"  # a given kind wins


def test_count_skips_by_kind_or_reason() -> None:
    skips = [Skip(Path("a"), "too short (< 0.25 s)"), Skip(Path("b"), "too short (< 0.25 s)"),
             Skip(Path("c"), "t.txt:4: label 'xyz' ...", "unknown label")]
    assert count_skips(skips) == {"too short": 2, "unknown label": 1}
    assert count_skips(skips, by="reason") == {"too short (< 0.25 s)": 2, "t.txt:4: label 'xyz' ...": 1}


def test_unreadable_audio_keeps_the_whole_library_message_on_one_line(tmp_path: Path) -> None:
    folder = tmp_path / ("d" * 70) / ("e" * 70)
    folder.mkdir(parents=True)
    path = folder / "x.wav"
    path.write_bytes(b"RIFF\x00\x00garbage")
    for read in (probe_duration, load_audio):
        with pytest.raises(AudioError) as info:
            read(path)
        reason = info.value.reason
        assert len(reason) > 120 and "\n" not in reason
        assert str(path) in reason and reason.endswith(")")  # the message after the path is there too


@pytest.mark.parametrize("read", [probe_duration, load_audio])
def test_a_directory_named_like_a_wav_is_not_a_file(tmp_path: Path, read) -> None:
    (tmp_path / "x.wav").mkdir()
    with pytest.raises(AudioError, match=r"not a file \(a directory\)"):
        read(tmp_path / "x.wav")
    with pytest.raises(AudioError, match="missing audio file"):
        read(tmp_path / "y.wav")


def test_a_multi_line_library_message_becomes_one_whole_line(tmp_path: Path, monkeypatch) -> None:
    import common.audio as audio

    (tmp_path / "x.wav").write_bytes(b"RIFF")
    message = "Error opening 'x.wav':\n  " + "Format not recognised. " * 8

    def fail(*args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(audio.sf, "info", fail)
    with pytest.raises(AudioError) as info:
        probe_duration(tmp_path / "x.wav")
    assert info.value.reason == f"unreadable audio ({' '.join(message.split())})"
