"""The five papers' feature extractors, each in torch/torchaudio and in librosa.

Every extractor is a frozen dataclass whose fields are its parameters (paper defaults), with two
implementations of the same computation:

- ``extractor(wav, device)`` / ``extractor.batch(wavs, device)``: torch/torchaudio, CPU or CUDA;
- ``extractor.reference(wav)``: librosa (numpy), the yardstick the tests hold the torch path to.

Both paths use the same framing: ``center=True`` with zero padding (:data:`PAD_MODE`), periodic
windows, so an utterance of ``T`` samples gives ``1 + T // hop_length`` frames. Zero padding also
makes batching exact: padding a shorter clip with zeros at the end leaves its first
``1 + T // hop_length`` frames unchanged, and utterance-global steps (top_db, VAD, means) run per
utterance after cropping.

Output for one utterance: float32 ``(n_features, n_frames)``, except ``mean_spectrum`` ``(259,)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import Field, asdict, dataclass, fields
from functools import lru_cache
from typing import Any, ClassVar, Final, Literal

import librosa
import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from numpy.lib.stride_tricks import sliding_window_view
from torch import Tensor, nn

from common.audio import SAMPLE_RATE

Backend = Literal["torch", "librosa"]  # which implementation computes features (config: features.backend)

FEATURE_VERSION = 2  # bump when an extractor's output changes for the same params: invalidates caches
PAD_MODE: Final = "constant"  # centre padding with zeros in torch and librosa alike (librosa >= 0.10 default)
_INT16_SCALE = 32768.0  # Kaldi computes energies on the int16 sample scale


class Extractor(ABC):
    """Base of every extractor: the torch path (single and batched), the librosa path, params."""

    name: ClassVar[str]
    # The ``tiny`` preset's parameters (the ``paper`` preset keeps the dataclass defaults).
    tiny: ClassVar[dict[str, int | float]] = {}
    atol: ClassVar[float]  # max |torch - reference| allowed by the tests, in output units
    # Every subclass is a dataclass with these STFT fields (plus its own); declared so that
    # dataclasses.asdict/fields accept any Extractor (the decorator sets it on each subclass).
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]
    n_fft: int
    win_length: int
    hop_length: int

    def params(self) -> dict[str, Any]:
        """The parameters as a JSON-able dict (part of the cache key)."""
        return asdict(self)

    def __call__(self, wav: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
        """Features of one 16 kHz utterance ``(T,)`` via torch on ``device`` ("cpu", "cuda[:N]", "auto")."""
        return self.batch([wav], device)[0]

    def batch(self, wavs: Sequence[np.ndarray], device: str | torch.device = "cpu") -> list[np.ndarray]:
        """Features of several utterances in one padded forward pass; same result as one by one."""
        if not wavs:
            return []
        clips = [self._fit(_as_wav(w)) for w in wavs]
        device = resolve_device(device)
        with torch.inference_mode():
            feats = self._torch(clips, device)
        return [f.to(torch.float32).cpu().numpy() for f in feats]

    def _torch(self, clips: Sequence[np.ndarray], device: torch.device) -> list[Tensor]:
        """The torch path on fitted clips: one zero-padded front-end pass, then per-utterance steps."""
        stacked = np.zeros((len(clips), max(len(c) for c in clips)), dtype=np.float32)  # (B, T_max)
        for row, clip in zip(stacked, clips, strict=True):
            row[: len(clip)] = clip
        spec = _frontend(self, device)(torch.from_numpy(stacked).to(device))  # (B, F, frames_max)
        return [self._finish(spec[i, :, : 1 + len(clip) // self.hop_length], clip) for i, clip in enumerate(clips)]

    def reference(self, wav: np.ndarray) -> np.ndarray:
        """Features of one utterance via librosa/numpy (reference for the torch path)."""
        return self._reference(self._fit(_as_wav(wav))).astype(np.float32, copy=False)

    # Hooks for subclasses.
    def _fit(self, wav: np.ndarray) -> np.ndarray:
        """Length policy applied before either path (identity unless the paper fixes a duration)."""
        return wav

    def _build_frontend(self) -> nn.Module:
        """Batched spectral front end: (B, T) -> (B, F, frames) (for the default :meth:`_torch`)."""
        raise NotImplementedError

    def _finish(self, spec: Tensor, wav: np.ndarray) -> Tensor:
        """Per-utterance steps on the cropped front-end output ``(F, frames)`` (default :meth:`_torch`)."""
        raise NotImplementedError

    @abstractmethod
    def _reference(self, wav: np.ndarray) -> np.ndarray:
        """The whole computation in librosa/numpy on the fitted clip."""

    def _spectrogram(self, power: float, window_fn: Callable[..., Tensor]) -> nn.Module:
        """torchaudio |STFT|^power with this extractor's framing: (B, T) -> (B, n_fft//2+1, frames)."""
        return torchaudio.transforms.Spectrogram(
            n_fft=self.n_fft, win_length=self.win_length, hop_length=self.hop_length,
            window_fn=window_fn, power=power, center=True, pad_mode=PAD_MODE,
        )

    def _librosa_spectrogram(self, wav: np.ndarray, power: float, window: str) -> np.ndarray:
        """librosa |STFT|^power with the same framing: (T,) -> (n_fft//2+1, frames)."""
        stft = librosa.stft(
            wav, n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
            window=window, center=True, pad_mode=PAD_MODE,
        )
        return np.abs(stft) ** power


def resolve_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, with "auto" meaning CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def compute(
    extractor: Extractor,
    wavs: Sequence[np.ndarray],
    backend: Backend = "torch",
    device: str | torch.device = "cpu",
) -> list[np.ndarray]:
    """Features of ``wavs`` by either implementation: torch (batched, on ``device``) or librosa."""
    if backend == "torch":
        return extractor.batch(wavs, device)
    if backend == "librosa":
        return [extractor.reference(w) for w in wavs]
    raise ValueError(f"unknown feature backend {backend!r}; valid: ['torch', 'librosa']")


@lru_cache(maxsize=32)
def _frontend(extractor: Extractor, device: torch.device) -> nn.Module:
    """One front-end module per (extractor, device): window and filterbank built once."""
    return extractor._build_frontend().to(device).eval()


@dataclass(frozen=True)
class _Mel(Extractor):
    """Shared power mel spectrogram: Hann window, Slaney mel scale and area normalisation."""

    n_mels: int = 128
    n_fft: int = 512
    win_length: int = 512
    hop_length: int = 256
    f_min: float = 0.0
    f_max: float = SAMPLE_RATE / 2

    def _build_frontend(self) -> nn.Module:
        # (B, T) -> (B, n_mels, frames); torchaudio's Slaney mel matches librosa's default (htk=False).
        return torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=self.n_fft, win_length=self.win_length,
            hop_length=self.hop_length, f_min=self.f_min, f_max=self.f_max, n_mels=self.n_mels,
            window_fn=torch.hann_window, power=2.0, center=True, pad_mode=PAD_MODE,
            norm="slaney", mel_scale="slaney",
        )

    def _librosa_mel(self, wav: np.ndarray) -> np.ndarray:
        """librosa power mel spectrogram, (n_mels, frames)."""
        return librosa.feature.melspectrogram(
            y=wav, sr=SAMPLE_RATE, n_fft=self.n_fft, hop_length=self.hop_length,
            win_length=self.win_length, window="hann", center=True, pad_mode=PAD_MODE, power=2.0,
            n_mels=self.n_mels, fmin=self.f_min, fmax=self.f_max, htk=False, norm="slaney",
        )


def _power_to_db(mel: Tensor, top_db: float) -> Tensor:
    """librosa.power_to_db(ref=1, amin=1e-10, top_db) of ONE utterance (F, frames).

    A 2-D input gets one cut-off for the whole utterance; torchaudio.transforms.MFCC would
    apply ``top_db`` across a whole (B, F, frames) batch, hence this per-utterance step.
    """
    return torchaudio.functional.amplitude_to_DB(mel, 10.0, 1e-10, 0.0, top_db)


def _cepstra(mel: Tensor, n_mfcc: int, top_db: float) -> Tensor:
    """MFCC of one utterance as librosa computes them: orthonormal DCT-II of dB mel, (n_mfcc, frames)."""
    dct = _dct_matrix(n_mfcc, mel.shape[0], mel.device)  # (n_mels, n_mfcc)
    return dct.T @ _power_to_db(mel, top_db)


@lru_cache(maxsize=16)
def _dct_matrix(n_mfcc: int, n_mels: int, device: torch.device) -> Tensor:
    return torchaudio.functional.create_dct(n_mfcc, n_mels, norm="ortho").to(device)


def _librosa_cepstra(mel: np.ndarray, n_mfcc: int, top_db: float) -> np.ndarray:
    """librosa MFCC from a power mel spectrogram, (n_mfcc, frames)."""
    return librosa.feature.mfcc(S=librosa.power_to_db(mel, top_db=top_db), n_mfcc=n_mfcc, norm="ortho")


@dataclass(frozen=True)
class LogMel(_Mel):
    """Log power mel spectrogram, seed 002 §4.2 (Eskimez et al. 2020).

    128 mels, 32 ms Hann window (512), 16 ms hop (256), 512-point FFT at 16 kHz;
    ``log(max(mel, floor))``. Torch vs librosa: max |diff| <= ``atol`` = 2e-3 (natural-log units;
    measured 2.2e-4 on speech-like audio). The difference is float32 FFT rounding, largest near the floor.
    """

    name: ClassVar[str] = "logmel"
    tiny: ClassVar[dict[str, int | float]] = {"n_mels": 32}
    atol: ClassVar[float] = 2e-3
    floor: float = 1e-6

    def _finish(self, spec: Tensor, wav: np.ndarray) -> Tensor:
        return torch.log(spec.clamp_min(self.floor))

    def _reference(self, wav: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(self._librosa_mel(wav), self.floor))


@dataclass(frozen=True)
class Mel6s(_Mel):
    """dB mel spectrogram of a clip padded/cropped to 6 s, seed 003 §2.2 (Tripathi et al. 2019).

    librosa-style: 128 mels, 2048-point Hann window and FFT, hop 512; ``power_to_db`` (ref 1,
    top_db 80). 6 s at 16 kHz = 96000 samples -> 1 + 96000 // 512 = 188 frames.
    Torch vs librosa: max |diff| <= ``atol`` = 1e-2 dB (measured 1.6e-3 dB).
    """

    name: ClassVar[str] = "mel6s"
    tiny: ClassVar[dict[str, int | float]] = {"n_mels": 32}
    atol: ClassVar[float] = 1e-2
    n_fft: int = 2048
    win_length: int = 2048
    hop_length: int = 512
    duration: float = 6.0  # §2.2: "limit its duration to 6 seconds ... shorter ... are zero-padded"
    top_db: float = 80.0  # librosa.power_to_db default

    def _fit(self, wav: np.ndarray) -> np.ndarray:
        n = round(self.duration * SAMPLE_RATE)
        out = np.zeros(n, dtype=np.float32)
        out[: min(n, len(wav))] = wav[:n]
        return out

    def _finish(self, spec: Tensor, wav: np.ndarray) -> Tensor:
        return _power_to_db(spec, self.top_db)

    def _reference(self, wav: np.ndarray) -> np.ndarray:
        return librosa.power_to_db(self._librosa_mel(wav), top_db=self.top_db)


@dataclass(frozen=True)
class Mfcc6s(Mel6s):
    """40 MFCC of a clip padded/cropped to 6 s, seed 003 §2.2: same STFT/mel as :class:`Mel6s`.

    ``librosa.feature.mfcc`` (DCT-II, ortho, of the dB mel) -> (40, 188).
    Torch vs librosa: max |diff| <= ``atol`` = 1e-2 (measured 1.3e-3; values span a few hundred).
    """

    name: ClassVar[str] = "mfcc6s"
    tiny: ClassVar[dict[str, int | float]] = {"n_mfcc": 20}
    atol: ClassVar[float] = 1e-2
    n_mfcc: int = 40

    def _finish(self, spec: Tensor, wav: np.ndarray) -> Tensor:
        return _cepstra(spec, self.n_mfcc, self.top_db)

    def _reference(self, wav: np.ndarray) -> np.ndarray:
        return _librosa_cepstra(self._librosa_mel(wav), self.n_mfcc, self.top_db)


@dataclass(frozen=True)
class MfccVad(Extractor):
    """13 MFCC + Δ + ΔΔ (39) with energy VAD as Kaldi computes them: seed 001 §3.1 (Tu et al. 2019,
    "13-dimensional MFCC together with first and second order derivatives are extracted with Kaldi.
    Simple energy-based voice activity detection is used to remove silences").

    ``compute-mfcc-feats`` with its defaults: 25 ms frames (400) every 10 ms (160), ``snip_edges``
    (1 + (T - 400) // 160 frames), per-frame DC removal, raw log-energy, pre-emphasis 0.97, Povey
    window, 512-point FFT, 23 triangular bins on Kaldi's mel scale (1127 ln(1 + f/700)) from 20 Hz to
    Nyquist, natural log, orthonormal DCT-II, cepstral lifter 22, C0 replaced by the log-energy
    (``--use-energy``), on the int16 sample scale Kaldi reads wav files in. One departure: dither off
    (Kaldi's default is 1.0, random noise) for deterministic features, hence the energy floor of 1.0
    Kaldi's documentation suggests for dither 0. Δ and ΔΔ: ``add-deltas``' window 2, edges as Kaldi's
    (:func:`kaldi_deltas`: the cepstra replicated, then the order-2 filter). VAD: ``compute-vad`` on
    the log-energy column (:func:`kaldi_vad`,
    the VoxCeleb/SRE recipe settings).

    torch path: ``torchaudio.compliance.kaldi.mfcc``; reference: an independent NumPy implementation
    of the same recipe (:meth:`_reference`). Max |diff| <= ``atol`` = 2e-3 (float32 vs float64 logs).
    """

    name: ClassVar[str] = "mfcc_vad"
    atol: ClassVar[float] = 2e-3
    n_mels: int = 23
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    f_min: float = 20.0
    n_mfcc: int = 13
    lifter: float = 22.0
    preemphasis: float = 0.97
    energy_floor: float = 1.0
    delta_width: int = 5  # Kaldi add-deltas --delta-window=2
    vad_threshold: float = 5.5
    vad_mean_scale: float = 0.5
    vad_context: int = 2
    vad_proportion: float = 0.12

    def _fit(self, wav: np.ndarray) -> np.ndarray:
        """Clips shorter than one frame are zero-padded to it (snip_edges would give no frame)."""
        return np.pad(wav, (0, max(0, self.win_length - len(wav))))

    def _torch(self, clips: Sequence[np.ndarray], device: torch.device) -> list[Tensor]:
        """Kaldi's frames are per utterance (no centring to batch over): one call per clip."""
        out = []
        for clip in clips:
            ceps = torchaudio.compliance.kaldi.mfcc(
                torch.from_numpy(clip * _INT16_SCALE).to(device)[None], sample_frequency=SAMPLE_RATE,
                frame_length=1000 * self.win_length / SAMPLE_RATE, frame_shift=1000 * self.hop_length / SAMPLE_RATE,
                num_mel_bins=self.n_mels, num_ceps=self.n_mfcc, low_freq=self.f_min, high_freq=0.0,
                cepstral_lifter=self.lifter, preemphasis_coefficient=self.preemphasis, dither=0.0,
                energy_floor=self.energy_floor, use_energy=True, raw_energy=True, window_type="povey",
                snip_edges=True, remove_dc_offset=True, round_to_power_of_two=True,
            ).T  # (frames, 13) -> (13, frames)
            d1, d2 = kaldi_deltas(ceps, self.delta_width // 2)
            voiced = torch.from_numpy(self._vad(ceps[0].double().cpu().numpy())).to(device)
            out.append(torch.cat([ceps, d1, d2])[:, voiced])  # (39, voiced frames)
        return out

    def _vad(self, log_energy: np.ndarray) -> np.ndarray:
        return kaldi_vad(log_energy, self.vad_threshold, self.vad_mean_scale, self.vad_context, self.vad_proportion)

    def _reference(self, wav: np.ndarray) -> np.ndarray:
        ceps = kaldi_mfcc_reference(self, wav)  # (13, frames)
        d1, d2 = kaldi_deltas_reference(ceps, self.delta_width // 2)
        return np.concatenate([ceps, d1, d2])[:, self._vad(ceps[0])]


def kaldi_deltas(ceps: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """Δ and ΔΔ of ``ceps`` (C, T) as Kaldi's ``add-deltas`` computes them: every order reads the
    *cepstra* at frames clamped to [0, T - 1]. Padding the cepstra by 2 x ``window`` replicated frames
    and applying the Δ filter twice gives exactly that (each output frame of the crop reads only
    padded frames, never a second edge rule), which torchaudio's own padding per call would not."""
    pad = 2 * window
    padded = F.pad(ceps[None], (pad, pad), mode="replicate")[0]  # (C, T + 2 pad)
    d1 = torchaudio.functional.compute_deltas(padded, win_length=2 * window + 1)
    d2 = torchaudio.functional.compute_deltas(d1, win_length=2 * window + 1)
    return d1[:, pad:-pad], d2[:, pad:-pad]


def kaldi_deltas_reference(ceps: np.ndarray, window: int, order: int = 2) -> list[np.ndarray]:
    """Kaldi's ``DeltaFeatures`` (feature-functions.cc) in NumPy float64, literally: scales[0] = [1];
    scales[i] = sum_j j * scales[i - 1] shifted by j, over j in [-window, window], divided by
    sum_j j^2; output order i at frame t = sum_k scales[i][k] * ceps[clamp(t + k, 0, T - 1)]."""
    scales = [np.ones(1)]
    for _ in range(order):
        prev = scales[-1]
        cur = np.zeros(len(prev) + 2 * window)
        for j in range(-window, window + 1):
            cur[j + window:j + window + len(prev)] += j * prev
        scales.append(cur / sum(j * j for j in range(-window, window + 1)))
    frames = ceps.shape[1]
    out = []
    for s in scales[1:]:
        reach = (len(s) - 1) // 2
        idx = np.clip(np.arange(frames)[:, None] + np.arange(-reach, reach + 1)[None], 0, frames - 1)  # (T, taps)
        out.append(np.einsum("ctk,k->ct", ceps[:, idx], s))
    return out


def kaldi_mfcc_reference(x: MfccVad, wav: np.ndarray) -> np.ndarray:
    """Kaldi ``compute-mfcc-feats`` in NumPy (float64), written from Kaldi's feature-window.cc,
    mel-computations.cc and feature-mfcc.cc, not from torchaudio: (n_mfcc, frames)."""
    signal = wav.astype(np.float64) * _INT16_SCALE
    frames = sliding_window_view(signal, x.win_length)[:: x.hop_length]  # snip_edges: whole frames only
    frames = frames - frames.mean(axis=1, keepdims=True)  # remove_dc_offset
    log_energy = np.log(np.maximum(np.einsum("ij,ij->i", frames, frames), x.energy_floor))  # raw energy
    emphasized = frames - x.preemphasis * np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    n = np.arange(x.win_length)
    povey = (0.5 - 0.5 * np.cos(2 * np.pi * n / (x.win_length - 1))) ** 0.85
    power = np.abs(np.fft.rfft(emphasized * povey, n=x.n_fft)) ** 2  # (frames, n_fft/2 + 1)

    def mel(f: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    nyquist = SAMPLE_RATE / 2
    lo, hi = mel(x.f_min), mel(nyquist)
    edges = lo + (hi - lo) * np.arange(x.n_mels + 2) / (x.n_mels + 1)  # equally spaced in mel
    bins = mel(np.arange(x.n_fft // 2) * SAMPLE_RATE / x.n_fft)  # Kaldi drops the Nyquist bin
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    banks = np.clip(np.minimum((bins - left) / (centre - left), (right - bins) / (right - centre)), 0, None)
    mel_energy = power[:, : x.n_fft // 2] @ banks.T  # (frames, n_mels)
    log_mel = np.log(np.maximum(mel_energy, np.finfo(np.float32).eps))
    k, j = np.arange(x.n_mfcc)[:, None], np.arange(x.n_mels)[None, :]
    dct = np.sqrt(2.0 / x.n_mels) * np.cos(np.pi / x.n_mels * (j + 0.5) * k)
    dct[0] = np.sqrt(1.0 / x.n_mels)  # orthonormal DCT-II, Kaldi's ComputeDctMatrix
    ceps = log_mel @ dct.T  # (frames, n_mfcc)
    ceps *= 1.0 + 0.5 * x.lifter * np.sin(np.pi * np.arange(x.n_mfcc) / x.lifter)
    ceps[:, 0] = log_energy  # use_energy
    return ceps.T


@dataclass(frozen=True)
class Stft(Extractor):
    """Log-magnitude spectrogram with 128 rows, seed 000 "Pre-processing" (Chang & Scherer 2017).

    1024-sample (64 ms) Hann window and FFT; the hop is not in the paper, 256 is our choice. The
    paper's 128 rows cover 0-11 kHz, which needs a rate above 22 kHz: at 16 kHz everything above
    Nyquist is empty, so the rows span 0-min(f_max, 8 kHz). The 513 FFT bins are reduced to 128
    rows by a linear-frequency triangular filterbank (torchaudio ``linear_fbanks``; the librosa path
    applies the same matrix to librosa's STFT). Natural log of the filtered magnitude with a floor.
    Torch vs librosa: max |diff| <= ``atol`` = 2e-4 (natural-log units; measured 2.4e-5).
    """

    name: ClassVar[str] = "stft"
    tiny: ClassVar[dict[str, int | float]] = {"n_bins": 32}
    atol: ClassVar[float] = 2e-4
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 256
    n_bins: int = 128
    f_max: float = 11_000.0
    floor: float = 1e-6

    def _filterbank(self) -> Tensor:
        """(n_fft//2+1, n_bins) triangular filters, evenly spaced over 0-min(f_max, sr/2)."""
        return torchaudio.functional.linear_fbanks(
            n_freqs=self.n_fft // 2 + 1, f_min=0.0, f_max=min(self.f_max, SAMPLE_RATE / 2),
            n_filter=self.n_bins, sample_rate=SAMPLE_RATE,
        )

    def _build_frontend(self) -> nn.Module:
        return nn.Sequential(self._spectrogram(1.0, torch.hann_window), _FilterBank(self._filterbank()))

    def _finish(self, spec: Tensor, wav: np.ndarray) -> Tensor:
        return torch.log(spec.clamp_min(self.floor))

    def _reference(self, wav: np.ndarray) -> np.ndarray:
        magnitude = self._librosa_spectrogram(wav, 1.0, "hann")  # (513, frames)
        return np.log(np.maximum(self._filterbank().numpy().T @ magnitude, self.floor))


class _FilterBank(nn.Module):
    """Apply an (n_freqs, n_filters) matrix to (..., n_freqs, frames) -> (..., n_filters, frames)."""

    fb: Tensor  # a buffer (register_buffer)

    def __init__(self, fb: Tensor) -> None:
        super().__init__()
        self.register_buffer("fb", fb)

    def forward(self, spec: Tensor) -> Tensor:
        return (spec.transpose(-1, -2) @ self.fb).transpose(-1, -2)


@dataclass(frozen=True)
class MeanSpectrum(Extractor):
    """Utterance-mean log power spectrum, 259 values, seed 004 §2.1 (Gans et al.).

    The paper averages "frequency values ... given by the mel-spectrogram" over time into 259
    values, computed with scipy's ``signal.spectrogram`` and a Hamming window. 259 values are the
    one-sided bins of a 516-point FFT, so: 516-sample Hamming window and FFT, 50 % hop (258),
    natural log of the power with a floor, mean over all frames -> (259,).
    Torch vs librosa: max |diff| <= ``atol`` = 2e-4 (natural-log units; measured 1.9e-5).
    """

    name: ClassVar[str] = "mean_spectrum"
    atol: ClassVar[float] = 2e-4
    n_fft: int = 516
    win_length: int = 516
    hop_length: int = 258
    floor: float = 1e-6

    def _build_frontend(self) -> nn.Module:
        return self._spectrogram(2.0, torch.hamming_window)

    def _finish(self, spec: Tensor, wav: np.ndarray) -> Tensor:
        return torch.log(spec.clamp_min(self.floor)).mean(dim=-1)

    def _reference(self, wav: np.ndarray) -> np.ndarray:
        power = self._librosa_spectrogram(wav, 2.0, "hamming")  # (259, frames)
        return np.log(np.maximum(power, self.floor)).mean(axis=-1)


EXTRACTORS: dict[str, type[Extractor]] = {
    cls.name: cls for cls in (LogMel, Stft, MfccVad, Mel6s, Mfcc6s, MeanSpectrum)
}


def feature_rows(extractor: Extractor) -> int:
    """Rows F of the extractor's (F, T) output (the length of ``mean_spectrum``'s vector)."""
    if isinstance(extractor, MfccVad):
        return 3 * extractor.n_mfcc  # MFCC + deltas + delta-deltas
    if isinstance(extractor, Mfcc6s):
        return extractor.n_mfcc
    if isinstance(extractor, _Mel):
        return extractor.n_mels
    if isinstance(extractor, Stft):
        return extractor.n_bins
    if isinstance(extractor, MeanSpectrum):
        return extractor.n_fft // 2 + 1
    raise TypeError(f"no row count known for extractor {extractor.name!r}")


@lru_cache(maxsize=32)
def _extractor(name: str, params: tuple[tuple[str, int | float], ...]) -> Extractor:
    return build_extractor(name, **dict(params))


def extractor_for(name: str, params: Mapping[str, int | float]) -> Extractor:
    """:func:`build_extractor`, built once per process for each (name, params)."""
    return _extractor(name, tuple(sorted(params.items())))


def build_extractor(name: str, **params: Any) -> Extractor:
    """The extractor registered as ``name`` with ``params`` overriding its paper defaults."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; valid names: {sorted(EXTRACTORS)}")
    cls = EXTRACTORS[name]
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for extractor {name!r}; valid: {valid}")
    return cls(**params)


def kaldi_vad(
    log_energy: np.ndarray,
    threshold: float = 5.5,
    mean_scale: float = 0.5,
    context: int = 2,
    proportion: float = 0.12,
) -> np.ndarray:
    """Kaldi ``compute-vad`` on a log-energy column (frames,): frame t is voiced when at least
    ``proportion`` of the frames within ±``context`` exceed ``threshold + mean_scale *
    mean(log_energy)``. No voiced frame -> keep all (an utterance is never emptied)."""
    above = (log_energy > threshold + mean_scale * log_energy.mean()).astype(np.float64)
    window = 2 * context + 1
    num = sliding_window_view(np.pad(above, context), window).sum(axis=1)
    den = sliding_window_view(np.pad(np.ones_like(above), context), window).sum(axis=1)
    voiced = num >= den * proportion
    return voiced if voiced.any() else np.ones_like(voiced)


def _as_wav(wav: np.ndarray) -> np.ndarray:
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1 or wav.size == 0:
        raise ValueError(f"expected a non-empty mono waveform (T,), got shape {wav.shape}")
    return wav
