"""Audio I/O: soundfile in, 16 kHz mono float32 out, bad clips rejected with a reason."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

SAMPLE_RATE = 16_000  # every corpus is brought to IEMOCAP's rate (seed 002 §4.1)
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3"})


class AudioError(ValueError):
    """A clip that cannot be used; ``reason`` is short and meant to be counted."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def is_audio_file(path: Path) -> bool:
    """True for audio files, False for AppleDouble (``._x.wav``) and hidden files."""
    return path.suffix.lower() in AUDIO_SUFFIXES and not path.name.startswith(".")


def probe_duration(path: Path) -> float:
    """Duration in seconds from the file header only; AudioError if missing or unreadable."""
    if not path.is_file():
        raise AudioError(path, "missing audio file")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(path, f"unreadable audio ({_short(exc)})") from None
    if info.frames == 0:
        raise AudioError(path, "empty audio (0 samples)")
    return info.frames / info.samplerate


def load_audio(path: Path, sample_rate: int = SAMPLE_RATE, min_duration: float = 0.1) -> np.ndarray:
    """Read ``path`` as mono float32 at ``sample_rate``; shape (T,).

    Channels are averaged (mix-down), the rate is converted with a polyphase filter.
    Raises :class:`AudioError` for missing, unreadable, empty, non-finite or too-short clips.
    """
    if not path.is_file():
        raise AudioError(path, "missing audio file")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(path, f"unreadable audio ({_short(exc)})") from None
    if data.size == 0:
        raise AudioError(path, "empty audio (0 samples)")
    if not np.isfinite(data).all():
        raise AudioError(path, "audio contains NaN or Inf samples")
    wav = data.mean(axis=1)
    if rate != sample_rate:
        wav = resample(wav, rate, sample_rate)
    duration = wav.shape[0] / sample_rate
    if duration < min_duration:
        raise AudioError(path, f"too short ({duration:.3f} s < {min_duration} s minimum)")
    return wav.astype(np.float32, copy=False)


def resample(wav: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Polyphase resampling by the reduced ratio ``new_rate/orig_rate``; shape (T,) -> (T',)."""
    g = gcd(orig_rate, new_rate)
    return resample_poly(wav, new_rate // g, orig_rate // g).astype(np.float32)


def write_wav(path: Path, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write 16-bit PCM, creating parent folders (IEMOCAP and RAVDESS ship 16-bit wavs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(wav, -1.0, 1.0), sample_rate, subtype="PCM_16")


def _short(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
