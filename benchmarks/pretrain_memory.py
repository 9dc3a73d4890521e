"""Peak resident memory of GAN pre-training (``fedser pretrain``) on N vs 10xN unlabeled clips.

    python benchmarks/pretrain_memory.py [--clips 500] [--seconds 3] [--iterations 30]
                                         [--work-dir /tmp/fedser-pretrain-memory] [--repo DIR]

Pre-training streams patches from the memory-mapped feature cache (common/data.py
``StreamedPatches``), so its peak RSS should not grow with the corpus: the bar is a 10xN/N ratio
<= 1.2 at the same number of iterations.

Two unlabeled "folder" corpora of deterministic 16 kHz mono clips (harmonic tones with random
pitch plus noise) are generated once under ``--work-dir/corpora``; the first N clips of the 10xN
corpus are the N corpus's (hard links). Each corpus is pre-trained twice, each time in a fresh
Python process: "cold" on an emptied work_dir (scan, feature extraction into the cache, the
embedded labeled corpus written, then training) and "warm" on the same work_dir (cached features:
training alone). The child reports its own peak RSS (``VmHWM`` of /proc/self/status) and, sampled
every 20 ms, the peaks of its anonymous and file-backed resident memory (``RssAnon``/``RssFile``:
memory-mapped cache entries count as the latter while mapped).

Config: preset "tiny" with paper-size log-mel features (128 mels, 128-frame patches), model width
0.0625 and ``--iterations`` autoencoder and WGAN-GP iterations each.

``--repo DIR`` runs the children with ``PYTHONPATH=DIR`` and cwd DIR: the same measurement on
another checkout (e.g. a ``git worktree`` of an older commit; ``common.schema.load_config`` is used
when it exists, else ``common.config.load_config``). Run it with ``nice``: the children use every core.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from common.audio import SAMPLE_RATE, write_wav  # noqa: E402

MARKER = "PRETRAIN_MEMORY "

# Runs in the child: pre-train with the config at argv[1], then print its memory peaks as JSON.
CHILD = r"""
import json, sys, threading, time
from pathlib import Path

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])  # kB
    return out

peaks = {"RssAnon": 0, "RssFile": 0}
done = threading.Event()

def sample():
    while not done.is_set():
        now = status()
        for key in peaks:
            peaks[key] = max(peaks[key], now.get(key, 0))
        done.wait(0.02)

threading.Thread(target=sample, daemon=True).start()
start = time.perf_counter()
try:
    from common.schema import load_config
except ImportError:  # older checkouts: the config module loads the full schema itself
    from common.config import load_config
from common.pipeline import pretrain

path = pretrain(load_config(Path(sys.argv[1])))
seconds = time.perf_counter() - start
done.set()
end = status()
print("PRETRAIN_MEMORY " + json.dumps({
    "vmhwm_kb": end["VmHWM"], "rss_end_kb": end["VmRSS"], "peak_anon_kb": max(peaks["RssAnon"], end["RssAnon"]),
    "peak_file_kb": max(peaks["RssFile"], end["RssFile"]), "seconds": seconds, "checkpoint": str(path),
}), flush=True)
"""


def clip(index: int, seconds: float, seed: int) -> np.ndarray:
    """Clip ``index``: a few harmonics of a random, slowly wobbling pitch plus noise (deterministic)."""
    rng = np.random.default_rng([seed, index])
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = rng.uniform(80.0, 400.0) * (1.0 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.5, 4.0) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    tone = sum(rng.uniform(0.2, 1.0) / k * np.sin(k * phase) for k in range(1, 6))
    noise = np.convolve(rng.standard_normal(t.size), np.ones(4) / 4, mode="same")  # gently low-passed
    return (0.15 * tone / 2.5 + 0.02 * noise).astype(np.float32)


def corpus(work: Path, clips: int, seconds: float, seed: int, first: Path | None = None) -> Path:
    """The folder corpus of ``clips`` clips under ``work/corpora`` (written once, atomically);
    clips already in ``first`` (a smaller corpus of the same seed and length) are hard-linked."""
    root = work / "corpora" / f"clips{clips}-{seconds:g}s-seed{seed}"
    if root.is_dir():
        return root
    tmp = root.with_name(root.name + ".writing")
    shutil.rmtree(tmp, ignore_errors=True)
    for i in range(clips):
        name = f"spk{i % 50:02d}/clip{i:06d}.wav"
        source = first / name if first is not None else None
        target = tmp / name
        if source is not None and source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
                continue
            except OSError:
                pass
        write_wav(target, clip(i, seconds, seed))
    tmp.rename(root)
    return root


def write_config(path: Path, work_dir: Path, corpus_root: Path, iterations: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""\
name = "pretrain-memory"
preset = "tiny"
work_dir = {json.dumps(str(work_dir))}

[data]
pretrain_corpus = "folder"
pretrain_root = {json.dumps(str(corpus_root))}

[features]
params = {{n_mels = 128}}
patch_frames = 128

[model]
width = 0.0625

[training]
ae_iterations = {iterations}
gan_iterations = {iterations}
""", encoding="utf-8")
    return path


def run_child(python: str, repo: Path, config: Path) -> dict[str, float]:
    """Pre-train in a fresh process; its memory peaks and the wall seconds of the whole process."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    start = time.perf_counter()
    proc = subprocess.run([python, "-c", CHILD, str(config)], cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"pre-training failed (exit {proc.returncode}) with {config}")
    return {**json.loads(lines[-1][len(MARKER):]), "wall": wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=500, help="N: clips of the small corpus (the large has 10xN)")
    ap.add_argument("--factor", type=int, default=10, help="the large corpus has factor x N clips")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each clip")
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated clips")
    ap.add_argument("--iterations", type=int, default=30, help="autoencoder and WGAN-GP iterations each")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/fedser-pretrain-memory"))
    ap.add_argument("--repo", type=Path, default=ROOT, help="checkout whose code pre-trains (PYTHONPATH, cwd)")
    ap.add_argument("--label", help="name of this checkout's run folders (default: the --repo folder name)")
    ap.add_argument("--python", default=sys.executable, help="interpreter of the children")
    ap.add_argument("--max-ratio", type=float, default=1.2, help="exit 1 when a 10xN/N peak ratio exceeds this")
    args = ap.parse_args(argv)

    work, repo = args.work_dir.resolve(), args.repo.resolve()
    label = re.sub(r"[^A-Za-z0-9._-]", "_", args.label or repo.name)
    sizes = (args.clips, args.factor * args.clips)
    small = corpus(work, sizes[0], args.seconds, args.seed)
    roots = {sizes[0]: small, sizes[1]: corpus(work, sizes[1], args.seconds, args.seed, first=small)}
    print(f"repo {repo}; corpora {sizes[0]} and {sizes[1]} clips of {args.seconds:g} s; "
          f"{args.iterations}+{args.iterations} iterations; {os.cpu_count()} CPUs", flush=True)

    results: dict[tuple[str, int], dict[str, float]] = {}
    for n in sizes:
        run_dir = work / "runs" / label / f"clips{n}"
        shutil.rmtree(run_dir, ignore_errors=True)  # cold: no manifest, no feature cache
        config = write_config(work / "runs" / label / f"clips{n}.toml", run_dir, roots[n], args.iterations)
        for phase in ("cold", "warm"):
            results[phase, n] = r = run_child(args.python, repo, config)
            print(f"  {phase} {n}: peak RSS {r['vmhwm_kb'] / 1024:.0f} MiB, {r['wall']:.1f} s", flush=True)

    mib = 1024.0
    print(f"\n{'pass':<5} {'clips':>6} {'peak RSS MiB':>13} {'anon MiB':>9} {'file MiB':>9} {'wall s':>7}")
    for (phase, n), r in results.items():
        print(f"{phase:<5} {n:>6} {r['vmhwm_kb'] / mib:>13.1f} {r['peak_anon_kb'] / mib:>9.1f} "
              f"{r['peak_file_kb'] / mib:>9.1f} {r['wall']:>7.1f}")
    ratios = {phase: results[phase, sizes[1]]["vmhwm_kb"] / results[phase, sizes[0]]["vmhwm_kb"]
              for phase in ("cold", "warm")}
    for phase, ratio in ratios.items():
        verdict = "ok" if ratio <= args.max_ratio else "FAIL"
        print(f"ratio {phase} {sizes[1]}/{sizes[0]}: {ratio:.3f} ({verdict}, bar {args.max_ratio:g})")
    print(json.dumps({
        "repo": str(repo), "clips": list(sizes), "seconds": args.seconds, "iterations": args.iterations,
        "cpus": os.cpu_count(), "ratio_cold": round(ratios["cold"], 4), "ratio_warm": round(ratios["warm"], 4),
        "runs": [{"pass": phase, "clips": n, "peak_rss_mib": round(r["vmhwm_kb"] / mib, 1),
                  "peak_anon_mib": round(r["peak_anon_kb"] / mib, 1),
                  "peak_file_mib": round(r["peak_file_kb"] / mib, 1), "wall_s": round(r["wall"], 1)}
                 for (phase, n), r in results.items()],
    }))
    return 0 if max(ratios.values()) <= args.max_ratio else 1


if __name__ == "__main__":
    raise SystemExit(main())
