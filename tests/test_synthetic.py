"""The synthetic corpus writer: determinism, IEMOCAP/LibriSpeech layout and formats, encoded cues."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from common.audio import SAMPLE_RATE, load_audio
from common.corpora.synthetic import (
    CATEGORY_NAMES,
    DIALOGS,
    GENERATOR,
    MANIFEST_NAME,
    write_iemocap,
    write_librispeech,
)

SUMMARY = re.compile(
    r"^\[(\d+\.\d+) - (\d+\.\d+)\]\t(Ses\d\d[FM]_\S+)\t([a-z]{3})\t\[(\d+\.\d+), (\d+\.\d+), (\d+\.\d+)\]$"
)
HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"
TRANSCRIPT = re.compile(r"^(Ses\d\d[FM]_\S+_[FM]\d{3}) \[(\d{3}\.\d{4})-(\d{3}\.\d{4})\]: (.+)$")
WDSEG_ROW = re.compile(r"^\t(\d+)\t(\d+)\t(-\d+)\t(\S+)$")
NAME_OF = {name: code for code, name in CATEGORY_NAMES.items()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 utterances per dialog: 120 utterances, every 4-class label in every session."""
    return write_iemocap(tmp_path_factory.mktemp("syn"), seed=0, utterances_per_dialog=4)


@pytest.fixture(scope="module")
def manifest(corpus: Path) -> list[dict]:
    payload = json.loads((corpus / MANIFEST_NAME).read_text())
    assert payload["generator"] == GENERATOR and payload["seed"] == 0
    return payload["utterances"]


def blocks(text: str) -> list[list[str]]:
    """EmoEvaluation text -> list of blocks (summary line first), checking the header and blank lines."""
    lines = text.split("\n")
    assert lines[0] == HEADER and lines[1] == ""
    out: list[list[str]] = []
    for line in lines[2:]:
        if line.startswith("["):
            out.append([line])
        elif line:
            out[-1].append(line)
    return out


def f0_median(wav: np.ndarray) -> float:
    """Median F0 (Hz) of the voiced frames: normalized autocorrelation over 40 ms frames."""
    frame, hop = 640, 160
    frames = np.lib.stride_tricks.sliding_window_view(wav, frame)[::hop] * np.hanning(frame)
    loud = np.sqrt((frames**2).mean(axis=1))
    frames = frames[loud > 0.1 * loud.max()]
    spec = np.fft.rfft(frames, 2 * frame)
    ac = np.fft.irfft(np.abs(spec) ** 2)[:, :frame]
    ac /= ac[:, :1] + 1e-12
    lo, hi = SAMPLE_RATE // 500, SAMPLE_RATE // 60
    lag = lo + np.argmax(ac[:, lo:hi], axis=1)
    voiced = ac[np.arange(len(lag)), lag] > 0.5
    return float(np.median(SAMPLE_RATE / lag[voiced]))


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = write_iemocap(tmp_path / "a", seed=3, utterances_per_dialog=1)
    b = write_iemocap(tmp_path / "b", seed=3, utterances_per_dialog=1)
    c = write_iemocap(tmp_path / "c", seed=4, utterances_per_dialog=1)
    assert (a / MANIFEST_NAME).read_bytes() == (b / MANIFEST_NAME).read_bytes()
    emo = "Session5/dialog/EmoEvaluation/Ses05M_script01_1b.txt"
    assert (a / emo).read_bytes() == (b / emo).read_bytes()
    assert (a / MANIFEST_NAME).read_bytes() != (c / MANIFEST_NAME).read_bytes()
    rows_a = json.loads((a / MANIFEST_NAME).read_text())["utterances"]
    rows_c = {u["id"]: u for u in json.loads((c / MANIFEST_NAME).read_text())["utterances"]}
    for u in rows_a:
        assert (a / u["path"]).read_bytes() == (b / u["path"]).read_bytes()
        if u["id"] in rows_c:
            assert (a / u["path"]).read_bytes() != (c / rows_c[u["id"]]["path"]).read_bytes()


def test_rewrite_replaces_synthetic_but_never_a_real_corpus(tmp_path: Path) -> None:
    write_iemocap(tmp_path, seed=0, utterances_per_dialog=2)
    root = write_iemocap(tmp_path, seed=0, utterances_per_dialog=1)  # smaller: no stale files may remain
    assert len(list(root.glob("Session*/sentences/wav/*/*.wav"))) == 30
    real = tmp_path / "real"
    (real / "IEMOCAP_full_release" / "Session1").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        write_iemocap(real)


def test_layout_and_manifest(corpus: Path, manifest: list[dict]) -> None:
    assert "seed 0" in (corpus / "Documentation" / "README.txt").read_text()
    assert len(manifest) == 5 * 6 * 4
    assert len({u["id"] for u in manifest}) == len(manifest)
    assert {u["speaker"] for u in manifest} == {f"Ses0{s}{g}" for s in range(1, 6) for g in "FM"}
    for session, dialogs in DIALOGS.items():
        prefixes = {(d[5], "_impro" in d) for d in dialogs}
        assert prefixes == {("F", True), ("F", False), ("M", True), ("M", False)}
        for dialog in dialogs:
            assert (corpus / f"Session{session}" / "dialog" / "EmoEvaluation" / f"{dialog}.txt").is_file()
            assert (corpus / f"Session{session}" / "dialog" / "transcriptions" / f"{dialog}.txt").is_file()
    dialogs = {u["dialog"] for u in manifest}
    assert {"Ses03M_impro05a", "Ses03M_impro05b", "Ses05M_script01_1b"} <= dialogs
    for u in manifest:
        dialog, suffix = u["id"].rsplit("_", 1)
        assert dialog == u["dialog"] and re.fullmatch(r"[FM]\d{3}", suffix)
        # the utterance suffix names the speaker, not the dialog prefix (IEMOCAP README)
        assert u["speaker"] == f"Ses0{u['session']}{suffix[0]}" and u["gender"] == suffix[0]
        assert u["improvised"] == ("_impro" in dialog)
        assert u["path"] == f"Session{u['session']}/sentences/wav/{dialog}/{u['id']}.wav"
        info = sf.info(str(corpus / u["path"]))
        assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
        assert info.frames / info.samplerate == u["duration"]
        assert 1.5 <= u["duration"] <= 4.5
        wdseg = corpus / f"Session{u['session']}" / "sentences" / "ForcedAlignment" / dialog / f"{u['id']}.wdseg"
        assert wdseg.is_file()


def test_emo_evaluation_format_and_consistency(corpus: Path, manifest: list[dict]) -> None:
    by_id = {u["id"]: u for u in manifest}
    seen = []
    for path in sorted(corpus.glob("Session*/dialog/EmoEvaluation/*.txt")):
        previous_end = 0.0
        for block in blocks(path.read_text()):
            m = SUMMARY.match(block[0])
            assert m, block[0]
            start, end, utt, label = float(m[1]), float(m[2]), m[3], m[4]
            v, a, d = (float(x) for x in m.groups()[4:])
            u = by_id[utt]
            seen.append(utt)
            # end = round(start + duration, 4): one 4-decimal rounding, <= 5e-5.
            assert start > previous_end and end - start == pytest.approx(u["duration"], abs=1e-4)
            previous_end = end
            assert (label, v, a, d) == (u["raw_label"], u["valence"], u["activation"], u["dominance"])
            cats = [line for line in block if line.startswith("C-E")]
            dims = [line for line in block if line.startswith("A-E")]
            own = u["gender"]
            assert any(line.startswith(f"C-{own}1:\t") for line in block)
            assert any(line.startswith(f"A-{own}1:\t") for line in block)
            assert not any(line.startswith(f"C-{'M' if own == 'F' else 'F'}1:") for line in block)
            # summary label = majority of the C-E evaluators, xxx when there is none
            votes = Counter(
                NAME_OF[name.strip()] for line in cats for name in line.split("\t")[1].split(";") if name.strip()
            )
            top, count = votes.most_common(1)[0]
            majority = top if count * 2 > len(cats) and list(votes.values()).count(count) == 1 else "xxx"
            assert label == majority, block
            # summary V/A/D = mean of the A-E evaluators ("val 3; act 2; dom  2;"), self-evaluation excluded
            values = []
            for line in dims:
                dm = re.fullmatch(r"A-E\d:\tval (\d); act (\d); dom  (\d);\t\(.*\)", line)
                assert dm, line
                values.append([int(x) for x in dm.groups()])
            assert np.allclose(np.mean(values, axis=0), (v, a, d), atol=5e-5)  # means written to 4 decimals
    assert sorted(seen) == sorted(by_id)
    halves = [u["valence"] for u in manifest if u["valence"] % 1 == 0.5]
    assert halves, "two-evaluator sessions give half-integer means"


def test_transcriptions_and_alignments(corpus: Path, manifest: list[dict]) -> None:
    by_id = {u["id"]: u for u in manifest}
    lines = [
        line for path in corpus.glob("Session*/dialog/transcriptions/*.txt") for line in path.read_text().splitlines()
    ]
    assert len(lines) == len(manifest)
    for line in lines:
        m = TRANSCRIPT.match(line)
        assert m, line
        u = by_id[m[1]]
        assert m[4] == u["transcript"]
        words = re.findall(r"[A-Za-z]+", u["transcript"])
        wdseg = (corpus / u["path"]).parent.parent.parent / "ForcedAlignment" / u["dialog"] / f"{u['id']}.wdseg"
        text = wdseg.read_text().split("\n")
        assert text[0] == "\tSFrm\tEFrm\tSegAScr\tWord"
        rows = [WDSEG_ROW.match(row) for row in text[1:-2]]
        assert all(rows), text
        assert [r[4] for r in rows] == ["<s>", *(w.upper() for w in words), "</s>"]
        frames = [(int(r[1]), int(r[2])) for r in rows]
        assert frames[0][0] == 0 and frames[-1][1] == int(u["duration"] * 100) - 1
        assert all(s <= e for s, e in frames) and all(b[0] == a[1] + 1 for a, b in pairwise(frames))
        assert text[-2] == f" Total Score: {sum(int(r[3]) for r in rows)}" and text[-1] == ""


def test_every_session_has_the_four_classes(manifest: list[dict]) -> None:
    four = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}
    for session in range(1, 6):
        counts = Counter(four[u["raw_label"]] for u in manifest if u["session"] == session and u["raw_label"] in four)
        assert min(counts[c] for c in ("neu", "hap", "ang", "sad")) >= 3, counts
    labels = Counter(u["raw_label"] for u in manifest)
    assert sum(labels[c] for c in ("neu", "hap", "exc", "ang", "sad")) >= 0.6 * len(manifest)


def test_speaker_pitch_follows_the_utterance_suffix(corpus: Path, manifest: list[dict]) -> None:
    # Session 1 pooled over F- and M-prefixed dialogs: the suffix letter decides the voice.
    f0 = defaultdict(list)
    for u in manifest:
        if u["session"] == 1:
            f0[u["gender"]].append(f0_median(load_audio(corpus / u["path"])))
    assert np.median(f0["F"]) > 1.4 * np.median(f0["M"]), f0


def test_emotion_is_encoded_in_energy_and_pitch(corpus: Path, manifest: list[dict]) -> None:
    rms_db: dict[str, list[float]] = defaultdict(list)
    pitch: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for u in manifest:
        wav = load_audio(corpus / u["path"])
        rms_db[u["raw_label"]].append(20 * np.log10(np.sqrt(np.mean(wav**2))))
        pitch[u["raw_label"]].append((u["speaker"], f0_median(wav)))
    assert np.mean(rms_db["ang"]) > np.mean(rms_db["sad"]) + 8.0
    assert np.mean(rms_db["neu"]) > np.mean(rms_db["sad"]) + 3.0
    # pitch relative to each speaker's median, so the gender mix of a label cannot decide it
    speaker_median = {
        s: np.median([f for values in pitch.values() for spk, f in values if spk == s])
        for s in {u["speaker"] for u in manifest}
    }
    rel = {k: np.mean([np.log2(f / speaker_median[s]) for s, f in v]) for k, v in pitch.items()}
    assert rel["hap"] > rel["sad"] + 0.3 and rel["exc"] > rel["neu"] > rel["sad"], rel


def test_librispeech_layout(tmp_path: Path) -> None:
    root = write_librispeech(tmp_path, seed=1, speakers=3, chapters=2, utterances_per_chapter=2)
    assert root == tmp_path / "LibriSpeech"
    speakers_txt = (root / "SPEAKERS.TXT").read_text().splitlines()
    assert any(line.startswith(";ID  |SEX| SUBSET") for line in speakers_txt)
    rows = [line for line in speakers_txt if not line.startswith(";")]
    assert len(rows) == 3
    for row in rows:
        spk, sex, subset, minutes, name = (x.strip() for x in row.split("|"))
        assert sex in "FM" and subset == "train-clean-100" and float(minutes) > 0 and name
        chapters = sorted((root / subset / spk).iterdir())
        assert len(chapters) == 2
        for chapter in chapters:
            trans = chapter / f"{spk}-{chapter.name}.trans.txt"
            entries = dict(line.split(" ", 1) for line in trans.read_text().splitlines())
            flacs = sorted(chapter.glob("*.flac"))
            assert [f.stem for f in flacs] == sorted(entries) == [f"{spk}-{chapter.name}-{k:04d}" for k in range(2)]
            assert all(text == text.upper() and re.fullmatch(r"[A-Z' ]+", text) for text in entries.values())
            for flac in flacs:
                info = sf.info(str(flac))
                assert (info.format, info.samplerate, info.channels) == ("FLAC", SAMPLE_RATE, 1)
                assert 2.0 <= info.frames / info.samplerate <= 6.0
    ids = {line.split("|")[0].strip() for line in rows}
    assert not ids & {f"Ses0{s}{g}" for s in range(1, 6) for g in "FM"}
