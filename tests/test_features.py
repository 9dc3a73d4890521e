"""Feature extractors (torch vs librosa reference), MinMax scaling, patches and the feature cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import torch

from common.audio import SAMPLE_RATE, load_audio, write_wav
from common.corpora.base import Utterance
from common.features import (
    EXTRACTORS,
    Extractor,
    FeatureCache,
    LogMel,
    MinMax,
    build_extractor,
    compute,
    content_hash,
    extract_corpus,
    kaldi_vad,
    patches,
    random_patch,
    resolve_device,
)
from common.features.extractors import Backend, kaldi_deltas, kaldi_deltas_reference, kaldi_mfcc_reference

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


def speech_like(seconds: float, seed: int = 0, amplitude: float = 0.3) -> np.ndarray:
    """A gliding harmonic tone (a vowel-ish chirp) with amplitude modulation and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 110.0 + 90.0 * t / t[-1]  # pitch glides 110 -> 200 Hz
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 20)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    wav = amplitude * voiced / 3 + 0.01 * amplitude * rng.standard_normal(t.size)
    return wav.astype(np.float32)


WAV = speech_like(2.5)  # 40000 samples

# Output shape for WAV, from each extractor's framing (center=True: 1 + T // hop frames; Kaldi's
# snip_edges for mfcc_vad: 1 + (T - 400) // 160).
EXPECTED_SHAPES = {
    "logmel": (128, 1 + 40000 // 256),
    "stft": (128, 1 + 40000 // 256),
    "mfcc_vad": (39, 1 + (40000 - 400) // 160),  # no silence in WAV, so VAD keeps every frame
    "mel6s": (128, 188),
    "mfcc6s": (40, 188),
    "mean_spectrum": (259,),
}


def test_registry_covers_every_extractor() -> None:
    assert set(EXTRACTORS) == set(EXPECTED_SHAPES)
    for name, cls in EXTRACTORS.items():
        assert cls.name == name


@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES))
def test_shape_and_dtype(name: str) -> None:
    feat = build_extractor(name)(WAV)
    assert feat.shape == EXPECTED_SHAPES[name]
    assert feat.dtype == np.float32
    assert np.isfinite(feat).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES))
def test_torch_matches_librosa_reference(name: str, device: str) -> None:
    extractor = build_extractor(name)
    ours, ref = extractor(WAV, device=device), extractor.reference(WAV)
    assert ours.shape == ref.shape
    # float32 torch vs the reference (librosa in float32; NumPy float64 for mfcc_vad): atol is each
    # extractor's documented round-off bound, in output units (measured 9-35x below it, also with
    # MKL_CBWR=COMPATIBLE, MKL_ENABLE_INSTRUCTIONS=AVX2 and ATEN_CPU_CAPABILITY=default/avx2).
    np.testing.assert_allclose(ours, ref, rtol=0, atol=extractor.atol)


@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES))
def test_batch_equals_one_by_one(name: str) -> None:
    # Different lengths: the batch is zero-padded, which must not change any utterance's features.
    wavs = [speech_like(1.1, seed=1), WAV, speech_like(0.3, seed=2, amplitude=0.01)]
    extractor = build_extractor(name)
    # float32 vs float32, the FFT batched differently: MKL (and cuFFT, pocketfft) may run a batch of 3
    # through other kernels than a single clip (with MKL_CBWR=COMPATIBLE here: 1 ulp apart, and 1 ulp
    # of mfcc6s's values of ~1000 is 6e-5). That is FFT round-off, which the logs amplify in
    # near-empty bins just as in the reference comparison, so the same bound: atol. A padding or
    # cropping mistake moves features by far more (padded frames sit at the floor, -14 in ln).
    for batched, wav in zip(extractor.batch(wavs), wavs, strict=True):
        np.testing.assert_allclose(batched, extractor(wav), rtol=0, atol=extractor.atol)


@pytest.mark.parametrize("seconds", [1.0, 7.5])
def test_six_second_features_have_fixed_width(seconds: float) -> None:
    wav = speech_like(seconds)
    assert build_extractor("mel6s")(wav).shape == (128, 188)
    assert build_extractor("mfcc6s")(wav).shape == (40, 188)


def test_stft_rows_span_up_to_nyquist() -> None:
    # Seed 000 asks for 0-11 kHz; at 16 kHz the filterbank stops at 8 kHz, and every row is used.
    fb = build_extractor("stft")._filterbank()  # (513, 128)
    assert fb.shape == (513, 128)
    assert (fb.sum(dim=0) > 0).all()


def test_vad_drops_a_silent_middle_segment() -> None:
    quiet = WAV.copy()
    quiet[16000:32000] = 0.0  # 1 s of digital silence = 100 frames at a 10 ms hop
    kept = build_extractor("mfcc_vad")(quiet).shape[1]
    full = build_extractor("mfcc_vad")(WAV).shape[1]
    assert full == 1 + (len(WAV) - 400) // 160
    # ±2 frames of context keep a few frames at the edges of the silence; the rest are dropped.
    assert full - 100 <= kept <= full - 90


def test_vad_keeps_everything_when_nothing_is_voiced() -> None:
    assert kaldi_vad(np.zeros(50)).all()
    assert build_extractor("mfcc_vad")(np.zeros(8000, dtype=np.float32)).shape == (39, 48)


# Seed 001's Kaldi MFCC of a 440 Hz sine (amplitude 0.5, 0.5 s), frame 0, C0..C12, in float64 end
# to end. C0 is the frame's log-energy, checkable by hand: 400 samples hold exactly 11 periods, so no
# DC, and the energy is 400 * (0.5 * 32768)^2 / 2 -> ln = 24.706438. C1..C12 were computed once with
# the NumPy reference (kaldi_mfcc_reference, float64, written from Kaldi's sources) from the float64
# sine, and rounded to 4 decimals.
SINE_FRAME_0 = [24.7064, 85.0028, 19.2453, -7.4576, -54.7498, -69.5890, -75.8778, -53.0934, -27.4288, 3.3891,
                20.0930, 28.1837, 22.6246]
SINE_C0 = float(np.log(400 * (0.5 * 32768) ** 2 / 2))  # exact, 24.706438
# Kaldi's cepstral lifter 1 + (Q/2) sin(pi k / Q), Q = 22: C_k is multiplied by up to 12 (k = 11).
# torchaudio builds the mel banks, DCT matrix and lifter in float32 whatever the input's dtype:
# bank weights up to 3e-6 off (mel(f) ~ 2840 in float32), so ln E_j is off by ~1e-5, and through the
# DCT (a row's L1 norm <= sqrt(23)) and the lifter by <= 12 * sqrt(23) * 1e-5 = 6e-4 in C_k
# (measured 9e-5 on the sine, 2.2e-4 on speech-like audio, alike on every CPU path tried).
KALDI_TABLES_ATOL = 1e-3


def test_kaldi_mfcc_of_a_sine_against_reference_values() -> None:
    # Compared in float64, input included. A pure sine is ill-conditioned for float32: 13 of the 23
    # mel bands hold only the window's leakage, 1e-9 to 1e-13 of the frame's energy, while float32
    # round-off puts 1e-15 to 1e-14 of it (~12 eps32^2 per FFT bin) into every band. Those bands'
    # energies, hence logs, are off by ~2 sqrt(round-off / energy), up to tens of %, and the lifter
    # multiplies C11 by 12: float32 paths (MKL's FFT with MKL_CBWR=COMPATIBLE or
    # MKL_ENABLE_INSTRUCTIONS=AVX2, MKL on AMD) spread over 0.04 on frame 0's C1..C12, 0.35 over all
    # frames. Rounding the sine to float32 alone moves them by 0.006. In float64 the round-off is
    # ~1e-31 of the energy, and the same logs are good to ~1e-9.
    t = np.arange(8000) / SAMPLE_RATE
    sine = 0.5 * np.sin(2 * np.pi * 440 * t)  # float64, never rounded to float32
    extractor = build_extractor("mfcc_vad")
    assert SINE_FRAME_0[0] == pytest.approx(SINE_C0, abs=5e-5)  # the pinned C0 is the exact one, rounded
    # The float64 reference against the pinned values: 4-decimal rounding (<= 5e-5) plus float64
    # round-off (~1e-9 here).
    np.testing.assert_allclose(kaldi_mfcc_reference(extractor, sine)[:, 0], SINE_FRAME_0, rtol=0, atol=6e-5)
    # Our Kaldi path (torchaudio's compliance MFCC, deltas, VAD) fed float64 computes in float64,
    # except for torchaudio's float32 tables (KALDI_TABLES_ATOL).
    ours = extractor._torch([sine], torch.device("cpu"))[0].numpy()
    assert ours.dtype == np.float64 and ours.shape == (39, 48)  # 1 + (8000 - 400) // 160 frames, all voiced
    np.testing.assert_allclose(ours[:13, 0], SINE_FRAME_0, rtol=0, atol=KALDI_TABLES_ATOL)
    np.testing.assert_allclose(ours, extractor._reference(sine), rtol=0, atol=KALDI_TABLES_ATOL)  # Δ, ΔΔ, VAD too
    # A steady tone: frames 5 hops (800 samples, 22 periods) apart see the same samples (up to float64
    # rounding of the phase, ~1e-16, which the leakage bands amplify to ~1e-9); frames 5..40 have
    # their Δ and ΔΔ windows (+-4 frames) inside the utterance, so those are alike too.
    alike = ours[:, 5:41:5]
    np.testing.assert_allclose(alike, np.repeat(alike[:, :1], alike.shape[1], axis=1), rtol=0, atol=1e-6)
    # The product path (float32) on C0, which is well-conditioned: the sine holds all the frame's
    # energy, and a float32 sum of 400 squares is within 400 eps32 = 5e-5 (relative) of the exact one.
    np.testing.assert_allclose(extractor(sine)[0], SINE_C0, rtol=0, atol=1e-4)


def test_deltas_have_kaldis_edges() -> None:
    """add-deltas (window 2) on the ramp x_t = t, 5 frames, computed by hand from Kaldi's formula:
    order i at frame t = sum_k s_i[k] x[clamp(t + k)], s_1 = [-2, -1, 0, 1, 2] / 10 and
    s_2 = s_1 * s_1 = [4, 4, 1, -4, -10, -4, 1, 4, 4] / 100. At t = 0 the ΔΔ reads x clamped at 0:
    (-10 * 0 - 4 * 1 + 1 * 2 + 4 * 3 + 4 * 4) / 100 = 0.26 (the Δ filter applied twice to Δ
    replicated at the edge would give 0.13); at t = 1: (-10 + -8 + 3 + 16 + 16) / 100 = 0.17."""
    delta = [0.5, 0.8, 1.0, 0.8, 0.5]
    delta2 = [0.26, 0.17, 0.0, -0.17, -0.26]
    ramp = torch.arange(5, dtype=torch.float64)[None]  # (1 coefficient, 5 frames)
    d1, d2 = kaldi_deltas(ramp, 2)
    np.testing.assert_allclose(d1[0].numpy(), delta, rtol=0, atol=1e-12)
    np.testing.assert_allclose(d2[0].numpy(), delta2, rtol=0, atol=1e-12)
    r1, r2 = kaldi_deltas_reference(ramp.numpy(), 2)
    np.testing.assert_allclose(r1[0], delta, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r2[0], delta2, rtol=0, atol=1e-12)


def test_kaldi_mfcc_float32_path_agrees_with_the_reference_on_a_well_conditioned_signal() -> None:
    """The product's float32 path against the float64 reference on the sine plus noise in every mel band."""
    t = np.arange(8000) / SAMPLE_RATE
    rng = np.random.default_rng(0)
    # AR(1) noise with Kaldi's pre-emphasis coefficient: pre-emphasis turns it back into white noise
    # (std 0.02), so every FFT bin holds some after it, the lowest bands included.
    noise = scipy.signal.lfilter([1.0], [1.0, -0.97], 0.02 * rng.standard_normal(t.size))
    wav = (0.5 * np.sin(2 * np.pi * 440 * t) + noise).astype(np.float32)
    extractor = build_extractor("mfcc_vad")
    ours, ref = extractor(wav), extractor.reference(wav)
    assert ours.shape == ref.shape == (39, 48)
    # Tolerance: (1) float32 round-off in DC removal, pre-emphasis, window and the 512-point FFT is
    # white noise of ~sqrt(3 + log2 512) eps32 = 4e-7 of the frame's rms in every FFT bin, so a band
    # holding a share s of the frame's energy gets a relative error of ~2 * 4e-7 / sqrt(s) in its
    # energy, i.e. in its log. After pre-emphasis the sine has amplitude 0.086 (rms 0.061) and the
    # noise rms 0.02: the noise is 10 % of the energy, and the narrowest band (weights summing to
    # 2.7 of 257 bins) holds s >= 0.1 * 2.7 / 257 = 1e-3 -> 2.6e-5 rms, <= 1.1e-4 at 4 sigma; the
    # orthonormal DCT keeps that size and the lifter multiplies it by up to 12: <= 1.3e-3.
    # (2) torchaudio's float32 tables: KALDI_TABLES_ATOL. Together 2.3e-3; measured 2.4e-4 (MKL's
    # AVX-512, AVX2 and COMPATIBLE paths, ATEN_CPU_CAPABILITY default/avx2/avx512 alike), of which
    # (1) is 4e-5.
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1.3e-3 + KALDI_TABLES_ATOL)


def test_build_extractor_overrides_and_errors() -> None:
    extractor = build_extractor("logmel", n_mels=64)
    assert extractor.params()["n_mels"] == 64
    assert extractor(WAV).shape[0] == 64
    json.dumps(extractor.params())  # JSON-able: it is part of the cache key
    with pytest.raises(ValueError, match="valid names.*logmel"):
        build_extractor("spectrogram")
    with pytest.raises(ValueError, match="unknown parameter.*n_mel'"):
        build_extractor("logmel", n_mel=64)


def test_backends_and_devices_by_name() -> None:
    extractor = LogMel()
    by_torch, by_librosa = compute(extractor, [WAV], "torch")[0], compute(extractor, [WAV], "librosa")[0]
    np.testing.assert_allclose(by_torch, by_librosa, rtol=0, atol=extractor.atol)
    with pytest.raises(ValueError, match="unknown feature backend"):
        compute(extractor, [WAV], "numpy")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_minmax_combine_equals_minmax_of_concatenation() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.normal(loc, 3.0, size=(8, 20)) for loc in (-5.0, 0.0, 7.0)]
    per_node = [MinMax().update(p) for p in parts]
    combined = MinMax.combine(*per_node)
    everything = np.concatenate([p.ravel() for p in parts])
    assert (combined.lo, combined.hi) == (everything.min(), everything.max())
    assert MinMax.combine(MinMax.empty(), combined) == combined  # the empty statistic is the identity
    assert MinMax.from_dict(json.loads(json.dumps(combined.to_dict()))) == combined


def test_minmax_scale_and_unscale() -> None:
    stats = MinMax(-10.0, 30.0)
    x = np.array([-10.0, 10.0, 30.0, 50.0])
    y = stats.scale(x)
    np.testing.assert_allclose(y, [-1.0, 0.0, 1.0, 1.0])  # 50 is clipped; exact in binary floating point
    # unscale returns float32: within an ulp of 30 (1.9e-6) of the inputs.
    np.testing.assert_allclose(stats.unscale(y[:3]), x[:3], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="range"):
        MinMax().scale(x)


def test_patches_cover_the_utterance_with_end_aligned_last_window() -> None:
    feat = np.arange(200, dtype=np.float32)[None, :].repeat(3, axis=0)  # (F=3, T=200), value = frame
    out = patches(feat, size=128, hop=32)
    assert out.shape == (4, 3, 128)
    assert [int(p[0, 0]) for p in out] == [0, 32, 64, 72]
    assert patches(feat[:, :128]).shape == (1, 3, 128)


def test_short_utterance_is_padded_to_one_window() -> None:
    feat = np.linspace(-4.0, 2.0, 3 * 50, dtype=np.float32).reshape(3, 50)
    out = patches(feat, size=128)
    assert out.shape == (1, 3, 128)
    np.testing.assert_array_equal(out[0, :, :50], feat)
    assert (out[0, :, 50:] == feat.min()).all()
    assert (patches(feat, size=128, pad_value=-9.0)[0, :, 50:] == -9.0).all()


def test_random_patch_is_a_window_of_the_input() -> None:
    feat = np.arange(300, dtype=np.float32)[None, :].repeat(2, axis=0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        patch = random_patch(feat, 128, rng)
        assert patch.shape == (2, 128)
        start = int(patch[0, 0])
        np.testing.assert_array_equal(patch, feat[:, start : start + 128])


@pytest.fixture
def wav_file(tmp_path: Path) -> Path:
    path = tmp_path / "audio" / "a.wav"
    write_wav(path, speech_like(1.0))
    return path


def _get(cache: FeatureCache, path: Path, extractor: Extractor, backend: Backend = "torch") -> np.ndarray:
    """One file's features through the cache (the corpus path, for one utterance)."""
    utt = Utterance(id="a", path=path, corpus="folder", speaker="s")
    feats, skipped = extract_corpus([utt], extractor, cache, backend=backend)
    assert not skipped
    return feats["a"]


def test_cache_hit_returns_the_same_array(tmp_path: Path, wav_file: Path) -> None:
    cache, extractor = FeatureCache(tmp_path / "cache"), LogMel()
    first = _get(cache, wav_file, extractor)
    second = _get(cache, wav_file, extractor)
    assert (cache.misses, cache.hits) == (1, 1)
    np.testing.assert_array_equal(first, second)
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1


def test_cache_misses_on_changed_params_or_audio(tmp_path: Path, wav_file: Path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    _get(cache, wav_file, LogMel())
    _get(cache, wav_file, LogMel(n_mels=64))
    write_wav(wav_file, speech_like(1.0, seed=5))  # same path, new content
    _get(cache, wav_file, LogMel())
    assert (cache.misses, cache.hits) == (3, 0)


def test_cache_keys_backends_apart(tmp_path: Path, wav_file: Path) -> None:
    cache, extractor = FeatureCache(tmp_path / "cache"), LogMel()
    by_torch = _get(cache, wav_file, extractor)
    by_librosa = _get(cache, wav_file, extractor, backend="librosa")
    assert (cache.misses, cache.hits) == (2, 0)
    np.testing.assert_allclose(by_torch, by_librosa, rtol=0, atol=extractor.atol)


def test_cache_ignores_leftover_tmp_and_repairs_damaged_entries(tmp_path: Path, wav_file: Path) -> None:
    cache, extractor = FeatureCache(tmp_path / "cache"), LogMel()
    key = cache.key(content_hash(wav_file), extractor)
    entry = tmp_path / "cache" / key[:2] / f"{key}.npy"
    entry.parent.mkdir(parents=True)
    (entry.parent / f"{key}.abc123.tmp").write_bytes(b"half a write")  # a crash mid-store
    fresh = _get(cache, wav_file, extractor)
    assert (cache.misses, cache.hits) == (1, 0)
    entry.write_bytes(entry.read_bytes()[:-1000])  # short, as after a power loss
    np.testing.assert_array_equal(_get(cache, wav_file, extractor), fresh)
    np.testing.assert_array_equal(_get(cache, wav_file, extractor), fresh)
    assert (cache.misses, cache.hits) == (2, 1)


def test_extract_corpus_skips_unusable_clips_with_reasons(tmp_path: Path, wav_file: Path) -> None:
    broken = tmp_path / "audio" / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav")
    utts = [
        Utterance(id=name, path=path, corpus="test", speaker="s1")
        for name, path in [("good", wav_file), ("broken", broken), ("gone", tmp_path / "gone.wav")]
    ]
    cache, calls = FeatureCache(tmp_path / "cache"), []
    features, skipped = extract_corpus(
        utts, LogMel(), cache, batch_size=2, progress=lambda done, total: calls.append((done, total))
    )
    assert list(features) == ["good"]
    np.testing.assert_array_equal(features["good"], LogMel()(load_audio(wav_file)))
    assert sorted((s.path.name, s.reason.split(" (")[0]) for s in skipped) == [
        ("broken.wav", "unreadable audio"),
        ("gone.wav", "missing audio file"),
    ]
    assert calls == [(2, 3), (3, 3)]
    again, _ = extract_corpus(utts, LogMel(), cache)
    assert cache.hits == 1
    np.testing.assert_array_equal(again["good"], features["good"])
