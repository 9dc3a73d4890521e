"""Streamed synthetic pools (seed 002 §4.5): per-index determinism, index layout, bounded memory."""

from __future__ import annotations

import time
import tracemalloc

import pytest
import torch

from common.models.sngan import GanSpec, Generator
from common.synthesis import SyntheticPool

SPEC = GanSpec(n_z=8, n_c=4, width=0.0625, patch=32)


@pytest.fixture(scope="module")
def generators() -> list[Generator]:
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        out.append(Generator(SPEC))
    return out


class Counting:
    """Wraps a generator: counts the samples it is asked for (and the calls), keeps the noise."""

    def __init__(self, inner) -> None:
        self.inner, self.n_z = inner, inner.n_z
        self.samples, self.calls, self.largest_call = 0, 0, 0
        self.noise: list[torch.Tensor] = []

    def generate(self, noise: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        self.samples += noise.shape[0]
        self.calls += 1
        self.largest_call = max(self.largest_call, noise.shape[0])
        self.noise.append(noise.clone())
        return self.inner.generate(noise, classes)

    def eval(self) -> Counting:
        self.inner.eval()
        return self


class NoiseEcho:
    """A generator whose output is a strong, known function of its noise and class."""

    n_z = 8

    def generate(self, noise: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        rows = noise.repeat_interleave(SPEC.patch // self.n_z, dim=1)  # (B, P)
        cols = torch.linspace(0.1, 1.0, SPEC.patch)
        return torch.tanh(rows[:, None, :, None] * cols + classes.float()[:, None, None, None])

    def eval(self) -> NoiseEcho:
        return self


def test_pool_puts_generators_in_eval_mode(generators) -> None:
    for g in generators:
        g.train()
    SyntheticPool(generators, per_class=3, n_classes=4)
    assert not any(g.training for g in generators)


def test_same_index_same_sample_in_any_batch_and_any_pool(generators) -> None:
    pool = SyntheticPool(generators, per_class=5, n_classes=4, seed=7)
    assert len(pool) == 2 * 4 * 5
    i = 27  # generator 1, class 1, k = 2
    alone_x, alone_y = pool.generate([i])
    batch = [3, 39, i, 0, 12, i, 21]  # both generators, repeated index, any order
    batch_x, batch_y = pool.generate(batch)
    assert batch_x.shape == (len(batch), 1, SPEC.patch, SPEC.patch)
    for row in (2, 5):
        # float32, the generator on a batch of 7 vs 1 (other convolution blocking): round-off, a few
        # ulps of samples in [-1, 1] (measured <= 6e-8 on AVX-512, AVX2 and scalar kernels).
        assert torch.allclose(batch_x[row], alone_x[0], atol=1e-5)
    assert batch_y.tolist() == [pool.key(j)[1] for j in batch]
    # Again after other calls (frozen spectral-norm estimates), and in a fresh pool.
    pool.generate(list(range(len(pool))))
    again_x, _ = pool.generate([i])
    fresh_x, _ = SyntheticPool(generators, per_class=5, n_classes=4, seed=7).generate([i])
    assert torch.allclose(again_x, alone_x, atol=1e-5)
    assert torch.allclose(fresh_x, alone_x, atol=1e-5)


def test_sample_is_its_generator_applied_to_its_noise_seed_and_class(generators) -> None:
    pool = SyntheticPool(generators, per_class=5, n_classes=4, seed=3)
    for i in (0, 7, 26, 39):
        g, c, noise_seed = pool.key(i)
        noise = torch.randn(SPEC.n_z, generator=torch.Generator().manual_seed(noise_seed))
        with torch.no_grad():
            expected = generators[g].generate(noise[None], torch.tensor([c]))
        x, y = pool.generate([i])
        assert torch.allclose(x, expected, atol=1e-5)
        assert y.tolist() == [c]


def test_index_layout(generators) -> None:
    n_classes, per_class = 4, 5
    pool = SyntheticPool(generators, per_class=per_class, n_classes=n_classes)
    seen = []
    for g in range(2):
        for c in range(n_classes):
            for k in range(per_class):
                i = (g * n_classes + c) * per_class + k
                assert pool.key(i)[:2] == (g, c)
                seen.append(i)
    assert seen == list(range(len(pool)))
    _, labels = pool.generate(seen)
    assert labels.tolist() == [c for _g in range(2) for c in range(n_classes) for _k in range(per_class)]
    for bad in (-1, len(pool)):
        with pytest.raises(IndexError):
            pool.key(bad)


def test_noise_depends_on_seed_and_index() -> None:
    a = SyntheticPool([NoiseEcho()], per_class=5, n_classes=4, seed=0)
    b = SyntheticPool([NoiseEcho()], per_class=5, n_classes=4, seed=1)
    seeds_a = [a.key(i)[2] for i in range(len(a))]
    assert len(set(seeds_a)) == len(a)  # every index its own noise
    assert all(a.key(i)[2] != b.key(i)[2] for i in range(len(a)))
    xa, _ = a.generate([0, 1, 5])
    xb, _ = b.generate([0, 1, 5])
    assert (xa - xb).abs().amax(dim=(1, 2, 3)).min() > 0.1  # other seed: other samples
    assert (xa[0] - xa[1]).abs().max() > 0.1  # neighbouring indices differ too
    xa2, _ = SyntheticPool([NoiseEcho()], per_class=5, n_classes=4, seed=0).generate([0, 1, 5])
    assert torch.equal(xa, xa2)


def test_noise_is_fixed_per_index_in_any_batch() -> None:
    echo = Counting(NoiseEcho())
    pool = SyntheticPool([echo], per_class=10, n_classes=4, seed=11)
    alone, _ = pool.generate([17])
    batch, labels = pool.generate([3, 17, 39, 17])
    assert torch.equal(echo.noise[1][1], echo.noise[0][0]) and torch.equal(echo.noise[1][3], echo.noise[0][0])
    assert torch.allclose(batch[1], alone[0], atol=1e-6) and torch.allclose(batch[3], alone[0], atol=1e-6)
    assert labels.tolist() == [0, 1, 3, 1]


def test_the_generators_differ(generators) -> None:
    pool = SyntheticPool(generators, per_class=5, n_classes=4, seed=0)
    # Same class and noise position k, different generator: different samples.
    x, y = pool.generate([0, 20])
    assert y.tolist() == [0, 0]
    assert not torch.allclose(x[0], x[1], atol=1e-3)


def test_rejects_empty_or_bad_sizes(generators) -> None:
    with pytest.raises(ValueError):
        SyntheticPool([], per_class=1, n_classes=4)
    with pytest.raises(ValueError):
        SyntheticPool(generators, per_class=0, n_classes=4)
    with pytest.raises(ValueError):
        SyntheticPool(generators, per_class=1, n_classes=0)


@pytest.mark.timeout(60)
def test_huge_pool_is_never_materialized(generators) -> None:
    """~1.2e13 samples (48 PB of patches): only what the sampler asks for is ever generated."""
    wrapped = [Counting(generators[0]), Counting(generators[1]), Counting(generators[0])]
    start = time.perf_counter()
    pool = SyntheticPool(wrapped, per_class=10**12, n_classes=4, seed=0)
    assert len(pool) == 3 * 4 * 10**12
    assert time.perf_counter() - start < 1.0
    assert sum(w.samples for w in wrapped) == 0  # nothing generated ahead

    sample = pool.sampler(seed=5)
    sample(4)  # warm-up: first-call allocations of torch and numpy are not the pool's
    baseline = sum(w.samples for w in wrapped)
    tracemalloc.start()
    try:
        first = tracemalloc.get_traced_memory()[0]
        batches, batch_size = 6, 16
        for _ in range(batches):
            x, y = sample(batch_size)
            assert x.shape == (batch_size, 1, SPEC.patch, SPEC.patch)
            assert y.shape == (batch_size,)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(w.samples for w in wrapped) - baseline == batches * batch_size
    assert max(w.largest_call for w in wrapped) <= batch_size
    assert peak - first < 4 * 2**20, f"{(peak - first) / 2**20:.1f} MiB traced while sampling"
    assert time.perf_counter() - start < 30


def test_sampler_draws_indices_in_range_and_yields_batches(generators, monkeypatch) -> None:
    pool = SyntheticPool(generators, per_class=10**9, n_classes=4, seed=0)
    drawn: list[list[int]] = []
    real_generate = pool.generate

    def spy(indices):
        drawn.append(list(indices))
        return real_generate(indices)

    monkeypatch.setattr(pool, "generate", spy)
    sample = pool.sampler(seed=0)
    for _ in range(4):
        x, y = sample(16)
        assert x.shape == (16, 1, SPEC.patch, SPEC.patch) and x.dtype == torch.float32
        assert y.shape == (16,) and y.dtype == torch.int64
        assert y.tolist() == [pool.key(i)[1] for i in drawn[-1]]
        assert x.abs().max() <= 1
    flat = [i for batch in drawn for i in batch]
    assert len(flat) == 64
    assert all(isinstance(i, int) and 0 <= i < len(pool) for i in flat)
    # Uniform over the whole pool: both generators and every class show up.
    assert {pool.key(i)[0] for i in flat} == {0, 1}
    assert {pool.key(i)[1] for i in flat} == {0, 1, 2, 3}
    # Same seed -> same stream of indices; another seed -> another stream.
    again = pool.sampler(seed=0)
    again(16)
    assert drawn[-1] == drawn[0]
    pool.sampler(seed=1)(16)
    assert drawn[-1] != drawn[0]
