"""Audio loading: resampling, mono mix-down and clear rejections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from common.audio import AudioError, is_audio_file, load_audio, probe_duration


def test_stereo_44k1_is_mixed_down_and_resampled(tmp_path: Path) -> None:
    rate, seconds = 44_100, 1.0
    t = np.arange(int(rate * seconds)) / rate
    left, right = np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t + np.pi)  # cancel when mixed
    stereo = np.stack([0.5 * left + 0.2, 0.5 * right + 0.2], axis=1)
    sf.write(tmp_path / "s.wav", stereo, rate, subtype="FLOAT")
    wav = load_audio(tmp_path / "s.wav")
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert wav.shape[0] == 16_000
    # The two tones cancel, the DC offset survives: the mix-down is the channel mean. Away from the
    # edges only resample_poly's passband ripple and float32 rounding remain (measured 1.2e-5); a
    # sum instead of a mean, or a lost channel, is off by 0.2 or more.
    assert np.allclose(wav[1000:-1000], 0.2, atol=1e-2)


def test_resampled_tone_keeps_its_frequency(tmp_path: Path) -> None:
    rate = 48_000
    t = np.arange(rate) / rate
    sf.write(tmp_path / "t.flac", 0.5 * np.sin(2 * np.pi * 1000 * t), rate)
    wav = load_audio(tmp_path / "t.flac")
    spectrum = np.abs(np.fft.rfft(wav))
    assert np.argmax(spectrum) * 16_000 / len(wav) == pytest.approx(1000, abs=2)  # 1 Hz bins: an integer bin


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: sf.write(p, np.array([0.1, np.nan, 0.2] * 2000, np.float32), 16_000, subtype="FLOAT"),
         "audio contains NaN or Inf samples"),
        (lambda p: sf.write(p, np.zeros(0, np.float32), 16_000), "empty audio (0 samples)"),
        (lambda p: sf.write(p, np.zeros(160, np.float32), 16_000), "too short (0.010 s < 0.1 s minimum)"),
        (lambda p: p.write_bytes(b"not audio at all"), "unreadable audio"),
        (lambda p: None, "missing audio file"),
    ],
)
def test_bad_clips_are_rejected_with_a_reason(tmp_path: Path, make, reason: str) -> None:
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError) as info:
        load_audio(path)
    assert info.value.reason.startswith(reason)
    assert str(path) in str(info.value)


def test_probe_reads_only_the_header(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", np.zeros(8000, np.float32), 16_000)
    assert probe_duration(tmp_path / "a.wav") == 0.5
    assert is_audio_file(Path("x/a.WAV")) and not is_audio_file(Path("x/._a.wav"))
    assert not is_audio_file(Path("x/a.txt"))
