"""The baseline GAN (seed 002 §2/§3.1 on [7]; BAGAN): networks, class latents, phases, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.config import TrainingConfig
from common.models.bagan import BaganGenerator, Decoder, Encoder, discriminator_from
from common.models.sngan import GanSpec
from common.synthesis import SyntheticPool
from common.trainers.bagan import autoencoder_step, class_gaussians, encode_classes, train_bagan
from common.trainers.base import run
from common.views import LabeledSet, PatchSampler

SPEC = GanSpec(n_z=16, n_c=4, width=0.125, patch=32)
CFG = TrainingConfig(batch_size=8, bagan_lr=2e-3, bagan_ae_iterations=40, bagan_gan_iterations=10)
CPU = torch.device("cpu")


def banded_set(n_per_class: int = 3, frames: int = 48, seed: int = 0) -> LabeledSet:
    """Class c lights up its own quarter of the frequency rows (time-invariant, so any patch shows it)."""
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for c in range(SPEC.n_c):
        for _ in range(n_per_class):
            x = np.full((SPEC.patch, frames), -0.8) + 0.1 * rng.standard_normal((SPEC.patch, frames))
            x[c * 8:(c + 1) * 8] += 1.4
            feats.append(np.clip(x, -1, 1).astype(np.float32))
            labels.append(c)
    return LabeledSet(tuple(feats), tuple(labels))


@pytest.fixture(scope="module")
def trained() -> BaganGenerator:
    """One end-to-end run of the three phases, shared by the tests that need a trained generator."""
    return train_bagan(SPEC, CFG, banded_set(), CPU)


def test_shapes_and_dcgan_style_modules() -> None:
    x = torch.rand(5, 1, SPEC.patch, SPEC.patch) * 2 - 1
    enc, dec = Encoder(SPEC, SPEC.n_z), Decoder(SPEC)
    assert enc(x).shape == (5, SPEC.n_z)
    out = dec(torch.randn(5, SPEC.n_z))
    assert out.shape == (5, 1, SPEC.patch, SPEC.patch) and out.abs().max() <= 1
    # §3.1: the baseline upsamples with transposed convolutions and uses batch-norm and dropout.
    modules = [type(m) for m in BaganGenerator(SPEC).modules()]
    assert modules.count(nn.ConvTranspose2d) == 4 and nn.Upsample not in modules and nn.BatchNorm2d in modules
    assert nn.Dropout in [type(m) for m in enc.modules()]
    disc = discriminator_from(enc)
    assert disc(x).shape == (5, SPEC.n_c + 1) and disc.head.out_features == SPEC.n_c + 1
    assert not any(hasattr(m, "parametrizations") for m in [*enc.modules(), *dec.modules()])  # no spectral norm


def test_autoencoder_phase_lowers_mse_and_discriminator_starts_from_encoder() -> None:
    torch.manual_seed(0)
    data = banded_set()
    enc, dec = Encoder(SPEC, SPEC.n_z), Decoder(SPEC)
    x, _ = PatchSampler(data, SPEC.patch, seed=1)(32)

    def mse() -> float:  # eval mode: no dropout, batch-norm running statistics
        auto = nn.Sequential(enc, dec).eval()
        with torch.no_grad():
            loss = F.mse_loss(auto(x), x).item()
        auto.train()
        return loss

    before = mse()
    result = run(autoencoder_step(enc, dec, PatchSampler(data, SPEC.patch), CFG, CPU), CFG.bagan_ae_iterations)
    assert result.steps == CFG.bagan_ae_iterations and "mse" in result.last
    assert mse() < 0.5 * before

    disc = discriminator_from(enc)
    trained_body = enc.body.state_dict()
    for name, tensor in disc.body.state_dict().items():
        assert torch.equal(tensor, trained_body[name]) and tensor.data_ptr() != trained_body[name].data_ptr()


def test_class_gaussians_match_numpy() -> None:
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((90, 5)) @ rng.standard_normal((5, 5))
    labels = np.repeat(np.arange(3), 30)
    mu, sigma = class_gaussians(torch.from_numpy(codes), torch.from_numpy(labels), n_c=3, ridge=1e-3)
    for c in range(3):
        own = codes[labels == c]
        # float64 vs float64 in another summation order: ~30 eps64 = 7e-15 relative (no entry is
        # below 0.03 in magnitude, so no cancellation); measured 9e-16.
        np.testing.assert_allclose(mu[c].numpy(), own.mean(axis=0), rtol=1e-10)
        np.testing.assert_allclose(sigma[c].numpy(), np.cov(own.T) + 1e-3 * np.eye(5), rtol=1e-10)
    with pytest.raises(ValueError, match="class 2"):
        class_gaussians(torch.from_numpy(codes[:61]), torch.from_numpy(labels[:61]), n_c=3)


def test_generate_is_decoder_of_class_gaussian() -> None:
    torch.manual_seed(0)
    gen = BaganGenerator(SPEC).eval()
    mu = torch.randn(SPEC.n_c, SPEC.n_z)
    a = torch.randn(SPEC.n_c, SPEC.n_z, SPEC.n_z)
    gen.set_class_latents(mu, a @ a.transpose(1, 2) + 0.1 * torch.eye(SPEC.n_z))
    classes = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        torch.testing.assert_close(gen.generate(torch.zeros(4, SPEC.n_z), classes), gen.decoder(mu[classes]))
        noise = torch.randn(4, SPEC.n_z)
        z = mu[classes] + (gen.chol[classes] @ noise.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(gen.generate(noise, classes), gen.decoder(z))


def test_encode_classes_rejects_a_missing_class() -> None:
    data = banded_set()
    rows = [i for i, y in enumerate(data.labels) if y != 3]
    partial = LabeledSet(tuple(data.feats[i] for i in rows), tuple(data.labels[i] for i in rows))
    codes, labels = encode_classes(Encoder(SPEC, SPEC.n_z), data, 10, 0, 8, CPU)
    assert codes.shape == (40, SPEC.n_z) and labels.tolist() == [c for c in range(4) for _ in range(10)]
    with pytest.raises(ValueError, match="class 3 has no training utterances"):
        encode_classes(Encoder(SPEC, SPEC.n_z), partial, 10, 0, 8, CPU)


def test_state_dict_restores_a_fresh_generator(trained: BaganGenerator) -> None:
    assert trained.mu.abs().sum() > 0 and not torch.equal(trained.chol[0], torch.eye(SPEC.n_z))
    fresh = BaganGenerator(SPEC)
    fresh.load_state_dict(trained.state_dict())
    fresh.eval()
    noise, classes = torch.randn(6, SPEC.n_z), torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        assert torch.equal(fresh.generate(noise, classes), trained.generate(noise, classes))


def test_synthetic_pool_draws_from_the_baseline(trained: BaganGenerator) -> None:
    pool = SyntheticPool([trained], per_class=5, n_classes=SPEC.n_c)
    x, y = pool.generate(range(len(pool)))
    assert x.shape == (20, 1, SPEC.patch, SPEC.patch) and x.abs().max() <= 1
    assert y.tolist() == [c for c in range(SPEC.n_c) for _ in range(5)]


def test_the_proposed_models_stage3_switches_do_not_reach_the_baseline() -> None:
    # A study that turns the switches on for its SN-cGAN trains the same BAGAN as one that does not.
    switches = {"finetune_class_ramp": 5, "finetune_augment": ("shift", "gain"), "finetune_mode_seeking": 1.0,
                "finetune_freeze_d": 2}
    on = train_bagan(SPEC, CFG.model_copy(update=switches), banded_set(), CPU)
    off = train_bagan(SPEC, CFG, banded_set(), CPU)
    assert all(torch.equal(a, b) for a, b in zip(on.state_dict().values(), off.state_dict().values(), strict=True))

