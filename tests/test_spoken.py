"""The espeak-ng + sox IEMOCAP-format corpus: read by the real reader, planned labels, 16 kHz mono
16-bit audio, deterministic, atomic, and emotion audible in its prosody."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from common.config import CLASSES_4, DEFAULT_LABEL_MAP
from common.corpora import read_corpus
from common.corpora.check import summarize
from common.corpora.iemocap import word_spans
from common.corpora.synthetic import DIALOGS, MANIFEST_NAME, SPOKEN_GENERATOR, spoken, write_spoken_iemocap
from common.corpora.synthetic.layouts import _plan_session
from tests.conftest import unavailable


@pytest.fixture(autouse=True, scope="module")
def _speech_programs() -> None:
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        unavailable("the spoken corpus needs the espeak-ng and sox programs (apt-get install espeak-ng sox)")

PER_DIALOG = 3  # 90 utterances: every 4-class label in every session, ~5 s on 2 cores


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_spoken_iemocap(tmp_path_factory.mktemp("spoken") / "corpus", seed=0, utterances_per_dialog=PER_DIALOG)


@pytest.fixture(scope="module")
def manifest(corpus: Path) -> list[dict]:
    payload = json.loads((corpus / MANIFEST_NAME).read_text())
    assert payload["generator"] == SPOKEN_GENERATOR and payload["seed"] == 0
    return payload["utterances"]


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def test_the_reader_reads_every_utterance_with_the_planned_labels(corpus: Path, manifest: list[dict]) -> None:
    planned = {p.utt_id: p for s in DIALOGS for p in _plan_session(s, PER_DIALOG, 0)}
    assert [(r["id"], r["speaker"], r["raw_label"]) for r in manifest] == [
        (p.utt_id, p.speaker, p.label) for p in planned.values()]
    scan = read_corpus(corpus, "iemocap")
    assert scan.skipped == []
    kept = {r["id"]: DEFAULT_LABEL_MAP[r["raw_label"]] for r in manifest if r["raw_label"] in DEFAULT_LABEL_MAP}
    assert {u.id: u.label for u in scan.utterances} == kept
    assert sum(scan.excluded.values()) == len(manifest) - len(kept)
    by_id = {r["id"]: r for r in manifest}
    for u in scan.utterances:
        assert u.speaker == planned[u.id].speaker and u.session == planned[u.id].session
        assert u.transcript == by_id[u.id]["transcript"] and u.duration == pytest.approx(by_id[u.id]["duration"])
    for s in DIALOGS:  # every session has the four classes
        assert {u.label for u in scan.utterances if u.session == s} == set(CLASSES_4)
    report = summarize(scan, classes=CLASSES_4)  # what `fedser corpus check` prints
    assert report["skipped"] == [] and report["deviations"] == []
    assert report["reference"] == "synthetic corpus manifest"


def test_audio_is_16k_mono_16bit_speech_with_parseable_word_alignments(corpus: Path, manifest: list[dict]) -> None:
    voices = {r["speaker"]: r["voice"] for r in manifest}
    assert len(set(voices.values())) == 10  # one distinct espeak-ng voice per actor
    for r in manifest:
        wav = corpus / r["path"]
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames / info.samplerate == pytest.approx(r["duration"]) and 0.8 < r["duration"] < 6.0
        audio, _ = sf.read(str(wav), dtype="float32")
        assert 0.05 < np.abs(audio).max() < 1.0 and np.abs(audio[:800]).max() < 0.01  # speech after a quiet lead
        spans = word_spans(wav)
        assert len(spans) == len(r["transcript"].split())
        assert all(a < b for a, b in spans) and all(b0 <= a1 for (_, b0), (a1, _) in zip(spans, spans[1:], strict=False))
        assert spans[0][0] > 0 and spans[-1][1] < r["duration"]


def test_same_seed_same_bytes_at_any_worker_count_other_seed_differs(tmp_path: Path) -> None:
    a = write_spoken_iemocap(tmp_path / "a", seed=5, utterances_per_dialog=1, workers=1)
    b = write_spoken_iemocap(tmp_path / "b", seed=5, utterances_per_dialog=1, workers=2)
    c = write_spoken_iemocap(tmp_path / "c", seed=6, utterances_per_dialog=1, workers=2)
    assert digest(a) == digest(b) != digest(c)
    assert write_spoken_iemocap(a, seed=5, utterances_per_dialog=1) == a and digest(a) == digest(b)  # rewrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary folder left


def _active_db(audio: np.ndarray) -> float:
    frames = audio[: len(audio) // 160 * 160].reshape(-1, 160).astype(np.float64)
    db = 10 * np.log10((frames**2).mean(axis=1) + 1e-12)
    return float(10 * np.log10(np.mean(10 ** (db[db > db.max() - 30] / 10))))


def _f0_semitones(audio: np.ndarray) -> float:
    """Median F0 (semitones re 100 Hz) of the loud frames (torchaudio's NCCF pitch detector: plain
    torch, where librosa's YIN first spends ~15 s compiling its numba kernels)."""
    import torchaudio.functional as AF

    f0 = AF.detect_pitch_frequency(torch.from_numpy(audio), 16000, frame_time=0.01, freq_low=60, freq_high=500).numpy()
    frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))  # per 10 ms
    at = np.minimum((np.arange(len(f0)) * len(audio) / len(f0) / 160).astype(int), len(rms) - 1)  # f0 frame -> rms frame
    return float(np.median(12 * np.log2(f0[rms[at] > 0.3 * rms.max()] / 100)))


def test_emotion_is_audible_in_level_pitch_and_rate(corpus: Path, manifest: list[dict]) -> None:
    """Per speaker, ang is louder than sad, hap/ang higher than sad, sad slower than the rest. Without
    the emotion styles (every utterance spoken as neu) each of these differences vanishes."""
    rows = [r for r in manifest if r["raw_label"] in ("neu", "hap", "exc", "ang", "sad")]
    feats = {}
    for r in rows:
        audio, _ = sf.read(str(corpus / r["path"]), dtype="float32")
        feats[r["id"]] = (_active_db(audio), _f0_semitones(audio), len(r["transcript"].split()) / r["duration"])
    speaker_mean = {s: np.mean([feats[r["id"]] for r in rows if r["speaker"] == s], axis=0)
                    for s in {r["speaker"] for r in rows}}
    by_class: dict[str, list[np.ndarray]] = {}
    for r in rows:
        by_class.setdefault(DEFAULT_LABEL_MAP[r["raw_label"]], []).append(
            np.asarray(feats[r["id"]]) - speaker_mean[r["speaker"]])
    mean = {c: np.mean(v, axis=0) for c, v in by_class.items()}
    assert Counter(len(v) >= 10 for v in by_class.values()) == Counter({True: 4})
    level, pitch, rate = 0, 1, 2
    assert mean["ang"][level] - mean["sad"][level] > 6.0  # dB
    assert mean["ang"][level] > mean["neu"][level] > mean["sad"][level]
    assert mean["hap"][pitch] - mean["sad"][pitch] > 2.0  # semitones
    assert mean["ang"][pitch] - mean["sad"][pitch] > 2.0
    assert mean["neu"][pitch] > mean["sad"][pitch]
    assert mean["sad"][rate] < min(mean[c][rate] for c in ("neu", "hap", "ang")) - 0.2  # words/s
    # ... yet neighbouring classes overlap on each cue, as in real speech
    assert max(f[level] for f in by_class["neu"]) > min(f[level] for f in by_class["ang"])
    assert max(f[pitch] for f in by_class["neu"]) > min(f[pitch] for f in by_class["hap"])


def test_a_failed_write_leaves_nothing_and_a_foreign_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a fedser synthetic corpus"):
        write_spoken_iemocap(real, utterances_per_dialog=1)
    assert [p.name for p in real.iterdir()] == ["keep.txt"]

    calls = Counter[str]()
    speak = spoken._speak

    def flaky(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 7:
            raise RuntimeError("sox failed (exit 2): simulated")
        return speak(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(spoken, "_speak", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        write_spoken_iemocap(tmp_path / "out", utterances_per_dialog=1)
    assert [p.name for p in tmp_path.iterdir()] == ["real"]  # no half-written corpus, no temp folder


def test_a_missing_program_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spoken.shutil, "which", lambda name: None if name == "sox" else "/usr/bin/" + name)
    with pytest.raises(spoken.MissingProgramError) as err:
        write_spoken_iemocap(tmp_path / "out")
    assert "sox" in str(err.value) and "apt-get install espeak-ng sox" in str(err.value)
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()
    assert spoken.main([str(tmp_path / "out")]) == 2
