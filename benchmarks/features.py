"""Feature-extraction throughput: torch vs librosa, one by one vs batched, cold vs cached.

    python benchmarks/features.py [--corpus PATH] [--limit N] [--extractors logmel,stft] [--device cuda]

Without ``--corpus`` it benchmarks a generated corpus in a temporary folder (the synthetic IEMOCAP
writer when available, numpy speech-like clips otherwise). All rows are measured in one run, side
by side, on the same decoded audio; "cold"/"cached" go through FeatureCache (file hashing, audio
decoding and .npy I/O included) in a fresh temporary cache folder. Each row is the best of
``--repeat`` runs.

Both libraries run on ONE thread unless ``--threads`` says otherwise (torch intra-op threads, and
the BLAS/OpenMP pools librosa uses, via threadpoolctl): on the 2-core dev machine torch's OpenMP pool
and OpenBLAS's pool spin against each other once both have run in a process, and rows then varied
up to 10x between runs. One thread each gives stable per-core ratios.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from common.audio import SAMPLE_RATE, AudioError, load_audio, write_wav  # noqa: E402
from common.corpora import Utterance, read_corpus  # noqa: E402
from common.features import EXTRACTORS, Extractor, FeatureCache, build_extractor, extract_corpus  # noqa: E402


def generate_corpus(out: Path, n_clips: int) -> Path:
    """A corpus to benchmark on: the synthetic IEMOCAP if its writer exists, else numpy clips."""
    try:
        from common.corpora.synthetic import write_iemocap
    except ImportError:
        rng = np.random.default_rng(0)
        for i in range(n_clips):
            seconds = rng.uniform(2.0, 8.0)  # IEMOCAP utterances are mostly 2-8 s
            t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
            phase = 2 * np.pi * np.cumsum(rng.uniform(90, 250) + 50 * np.sin(t)) / SAMPLE_RATE
            voiced = sum(np.sin(k * phase) / k for k in range(1, 20)) * (0.6 + 0.4 * np.sin(8 * t))
            write_wav(out / f"clip{i:04d}.wav", 0.1 * voiced + 0.003 * rng.standard_normal(t.size))
        return out
    return write_iemocap(out, seed=0)


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Fastest of ``repeat`` timed calls of ``fn`` (after one untimed warm-up): the least disturbed run."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def chunks(items: list[np.ndarray], size: int) -> list[list[np.ndarray]]:
    """``items`` cut into consecutive lists of at most ``size``."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def bench_extractor(
    extractor: Extractor,
    utts: list[Utterance],
    wavs: list[np.ndarray],
    devices: list[str],
    batch: int,
    repeat: int,
) -> list[tuple[str, float]]:
    """(row label, best seconds for all clips) for every path of one extractor."""
    rows = [("librosa reference", best_of(lambda: [extractor.reference(w) for w in wavs], repeat))]
    for device in devices:
        one = best_of(lambda d=device: [extractor(w, d) for w in wavs], repeat)
        batched = best_of(lambda d=device: [extractor.batch(c, d) for c in chunks(wavs, batch)], repeat)
        rows += [(f"torch {device} one by one", one), (f"torch {device} batch {batch}", batched)]
    with tempfile.TemporaryDirectory() as tmp:
        caches = [FeatureCache(Path(tmp) / str(i)) for i in range(repeat + 1)]  # +1: best_of's warm-up
        fresh = iter(caches)
        cold = best_of(lambda: extract_corpus(utts, extractor, next(fresh), device=devices[-1]), repeat)
        rows.append((f"cache cold ({devices[-1]}, incl. decode)", cold))
        warm = best_of(lambda: extract_corpus(utts, extractor, caches[0], device=devices[-1]), repeat)
        rows.append(("cache warm (all hits)", warm))
        assert caches[0].hits == repeat * len(utts) + len(utts), caches[0].hits
    return rows


def main() -> None:
    """Parse arguments, prepare the corpus, print the throughput table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="corpus root (any layout read_corpus detects)")
    parser.add_argument("--limit", type=int, default=60, help="number of utterances (default 60)")
    parser.add_argument("--extractors", default=",".join(EXTRACTORS), help="comma-separated names")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per row; the best is shown")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.corpus or generate_corpus(Path(tmp) / "corpus", args.limit)
        utts: list[Utterance] = []
        wavs: list[np.ndarray] = []
        for utt in read_corpus(root).utterances:
            if len(utts) == args.limit:
                break
            try:
                wavs.append(load_audio(utt.path))
            except AudioError:
                continue
            utts.append(utt)
        audio_s = sum(len(w) for w in wavs) / SAMPLE_RATE
        devices = ["cpu"] if args.device == "cpu" else ["cpu", args.device]
        print(f"{len(wavs)} utterances, {audio_s:.1f} s of audio from {root}")
        print(f"torch {torch.__version__}, {args.threads} thread(s) per library, devices: {devices}\n")
        print(f"{'extractor':<14} {'path':<34} {'utt/s':>9} {'audio s/s':>10} {'vs librosa':>10}")
        for name in args.extractors.split(","):
            rows = bench_extractor(build_extractor(name), utts, wavs, devices, args.batch_size, args.repeat)
            librosa_s = rows[0][1]
            for label, seconds in rows:
                print(
                    f"{name:<14} {label:<34} {len(wavs) / seconds:>9.1f} {audio_s / seconds:>10.0f} "
                    f"{librosa_s / seconds:>9.1f}x"
                )


if __name__ == "__main__":
    main()
