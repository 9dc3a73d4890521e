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
    _require_file(path)
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
    _require_file(path)
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


def verify_samples(path: Path, block_frames: int = 1 << 16) -> float:
    """Read every sample of ``path`` once, a block at a time (memory: one block), and return its
    duration in seconds; AudioError if missing, unreadable, empty or holding NaN/Inf samples.

    What a header probe cannot see: ``fedser corpus check`` runs this on every kept utterance.
    """
    _require_file(path)
    frames, rate = 0, 0
    try:
        rate = sf.info(str(path)).samplerate
        for block in sf.blocks(str(path), blocksize=block_frames, dtype="float32", always_2d=True):
            if not np.isfinite(block).all():
                raise AudioError(path, "audio contains NaN or Inf samples")
            frames += block.shape[0]
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(path, f"unreadable audio ({_short(exc)})") from None
    if frames == 0:
        raise AudioError(path, "empty audio (0 samples)")
    return frames / rate


def resample(wav: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Polyphase resampling by the reduced ratio ``new_rate/orig_rate``; shape (T,) -> (T',)."""
    g = gcd(orig_rate, new_rate)
    return resample_poly(wav, new_rate // g, orig_rate // g).astype(np.float32)


def write_wav(path: Path, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write 16-bit PCM, creating parent folders (IEMOCAP and RAVDESS ship 16-bit wavs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(wav, -1.0, 1.0), sample_rate, subtype="PCM_16")


def _require_file(path: Path) -> None:
    """AudioError unless ``path`` is a regular file (a folder named ``x.wav`` is not missing)."""
    if path.is_file():
        return
    if path.is_dir():
        raise AudioError(path, "not a file (a directory)")
    if path.exists():
        raise AudioError(path, "not a file (not a regular file)")
    raise AudioError(path, "missing audio file")


def _short(exc: Exception) -> str:
    """The library's message on one line, whole (libsndfile's name the path and the format)."""
    return " ".join(str(exc).split()) or type(exc).__name__
