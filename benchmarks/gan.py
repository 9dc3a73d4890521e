"""GAN and SER costs: streamed-pool memory, and generator/discriminator step times per batch.

    python benchmarks/gan.py [--device cpu|cuda|all] [--skip-paper] [--iterations 50] [--threads 1]

(a) Peak RSS of SER training (tiny spec, ``--iterations`` batches of the tiny preset's size) on a streamed synthetic
    pool of 1.6K samples and of 160K samples, each in a fresh subprocess (``ru_maxrss`` and
    VmHWM). The pool generates each batch on demand, so both runs should peak alike (goal: the
    160K run within 1.2x of the 1.6K run); materialized, the 160K pool alone would be ~2.6 GB.
(b) Forward+backward time per batch of the generator and of the discriminator (critic head) at the
    ``tiny`` preset's size (width 1/8, 32x32 patches, N_z 32, batch 32) and the ``paper`` size (Table 1:
    width 1, 128x128, N_z 128, batch 32), both read from the presets, plus one whole WGAN-GP step (critic step with gradient
    penalty, then generator step) where affordable: on CPU only at the tiny size.

Runs on ONE torch thread unless ``--threads`` says otherwise: on the 2-core dev machine a busy
neighbour makes a 2-thread OpenMP pool spin, and timings then vary several-fold between runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from common.models.sngan import Discriminator, GanSpec, Generator  # noqa: E402
from common.schema import load_config  # noqa: E402

# The presets' own sizes and batches, read from them (so "tiny" is what the tiny preset trains).
SIZES = {preset: (GanSpec.of(cfg), cfg.training.batch_size)
         for preset, cfg in ((p, load_config(overrides={"preset": p})) for p in ("tiny", "paper"))}
POOLS = (1_600, 160_000)


# ------------------------------------------------------------------------------------------
# (a) memory of SER training on a streamed pool
# ------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def rss_child(pool_size: int, iterations: int) -> None:
    """In a fresh process: SER training on a streamed pool; print the memory figures as JSON."""
    from common.synthesis import SyntheticPool
    from common.trainers.ser import SerCnnTrainer

    spec, batch = SIZES["tiny"]
    cfg = load_config(overrides={"training": {"batch_size": batch}, "features": {
        "params": {"n_mels": spec.patch}, "patch_frames": spec.patch}, "model": {"width": spec.width, "n_z": spec.n_z}})
    torch.manual_seed(0)
    gen = Generator(spec)
    pool = SyntheticPool([gen], per_class=pool_size // spec.n_c, n_classes=spec.n_c, seed=0)
    trainer = SerCnnTrainer(cfg)
    trainer.fit(pool.sampler(seed=0), iterations=1)  # warm-up: allocator and autograd caches
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    result = trainer.fit(pool.sampler(seed=1), iterations=iterations)
    print(json.dumps({
        "pool": len(pool), "iterations": result.steps, "seconds": time.perf_counter() - start,
        "rss_before_kib": before, "vmhwm_kib": _status_kib("VmHWM"),
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,  # KiB on Linux
    }))


def bench_memory(iterations: int, threads: int) -> None:
    print(f"(a) peak memory of SER training, tiny spec, {iterations} iterations of batch "
          f"{SIZES['tiny'][1]}, streamed pool (fresh process each)")
    runs = []
    for size in POOLS:
        out = subprocess.run(
            [sys.executable, __file__, "--child-rss", str(size), "--iterations", str(iterations),
             "--threads", str(threads)],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    spec = SIZES["tiny"][0]
    for r in runs:
        materialized = r["pool"] * spec.patch * spec.patch * 4 / 2**20
        print(f"  pool {r['pool']:>7,}: peak RSS {r['maxrss_kib'] / 1024:7.1f} MiB (VmHWM "
              f"{r['vmhwm_kib'] / 1024:.1f} MiB), RSS before training {r['rss_before_kib'] / 1024:.1f} MiB, "
              f"{r['seconds']:.1f} s; materialized it would be {materialized:,.0f} MiB")
    small, large = runs
    ratio = large["maxrss_kib"] / small["maxrss_kib"]
    print(f"  ratio 160K / 1.6K peak RSS: {ratio:.3f}x (goal <= 1.2x: {'met' if ratio <= 1.2 else 'NOT met'})")
    growth = [(r["maxrss_kib"] - r["rss_before_kib"]) / 1024 for r in runs]
    print(f"  growth during training: {growth[0]:.1f} MiB vs {growth[1]:.1f} MiB\n")


# ------------------------------------------------------------------------------------------
# (b) step times
# ------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    """Median seconds of ``repeat`` calls after one untimed warm-up."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def bench_steps(name: str, device: torch.device, repeat: int) -> list[tuple[str, float]]:
    """(row label, seconds per batch) for one size on one device."""
    from common.trainers.gan import wgan_gp_step

    spec, batch = SIZES[name]
    torch.manual_seed(0)
    gen, critic = Generator(spec).to(device).train(), Discriminator(spec, head=1).to(device).train()
    z = torch.randn(batch, spec.n_z, device=device)
    c = torch.nn.functional.one_hot(torch.arange(batch, device=device) % spec.n_c, spec.n_c).float()
    x = torch.rand(batch, 1, spec.patch, spec.patch, device=device) * 2 - 1

    def g_step() -> None:
        gen.zero_grad(set_to_none=True)
        gen(z, c).mean().backward()

    def d_step() -> None:
        critic.zero_grad(set_to_none=True)
        critic(x).mean().backward()

    rows = [("generator fwd+bwd", timed(g_step, device, repeat)),
            ("discriminator fwd+bwd", timed(d_step, device, repeat))]
    if device.type == "cuda" or name == "tiny":
        cfg = load_config(overrides={"training": {"batch_size": batch}, "features": {
        "params": {"n_mels": spec.patch}, "patch_frames": spec.patch}, "model": {"width": spec.width, "n_z": spec.n_z}})
        step = wgan_gp_step(gen, critic, lambda b: (x[:b], torch.zeros(b, dtype=torch.long)), cfg, device)
        rows.append(("whole WGAN-GP step (D + GP, G)", timed(lambda: step(0), device, repeat)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="all", choices=["all", "cpu", "cuda"],
                        help="all = CPU, and CUDA when available (default)")
    parser.add_argument("--skip-paper", action="store_true", help="time only the tiny size")
    parser.add_argument("--skip-memory", action="store_true", help="skip the pool-memory runs (a)")
    parser.add_argument("--iterations", type=int, default=50, help="SER iterations per memory run")
    parser.add_argument("--repeat", type=int, default=5, help="timed batches per row (paper on CPU: 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--child-rss", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child_rss is not None:
        rss_child(args.child_rss, args.iterations)
        return

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    devices = {"all": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []),
               "cpu": ["cpu"], "cuda": ["cuda"]}[args.device]
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), devices: {devices}\n")
    if not args.skip_memory:
        bench_memory(args.iterations, args.threads)

    print("(b) step time per batch")
    print(f"  {'size':<6} {'batch':>5} {'device':<7} {'step':<32} {'ms/batch':>10} {'samples/s':>10}")
    for name in ["tiny"] + ([] if args.skip_paper else ["paper"]):
        batch = SIZES[name][1]
        for dev in devices:
            device = torch.device(dev)
            repeat = 2 if (name == "paper" and dev == "cpu") else args.repeat
            for label, seconds in bench_steps(name, device, repeat):
                print(f"  {name:<6} {batch:>5} {dev:<7} {label:<32} {seconds * 1e3:>10.1f} "
                      f"{batch / seconds:>10.1f}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the networks of this size are gone with bench_steps' frame


if __name__ == "__main__":
    main()
