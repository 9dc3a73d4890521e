"""Training of the baseline GAN (seed 002 §2 on [7]; BAGAN, Mariani et al. 2018, arXiv 1803.09655).

Three phases, following the IBM/BAGAN design (written in our own code):

1. autoencoder on the emotion data itself (not on an unlabeled corpus: seed 002 §3.2 names this
   as the difference), MSE reconstruction as BAGAN's ``mean_squared_error``;
2. class-conditional latent: per class c, the mean and covariance of the encoder codes of real
   class-c patches;
3. adversarial fine-tuning: the discriminator (encoder body + N_c + 1 head) classifies real
   patches into their class and fakes into class N_c; the generator (the decoder, fed
   z ~ N(mu_c, Sigma_c) with uniformly drawn c) wants D to answer c. This is exactly the
   conditional step of the proposed GAN (common.trainers.gan), reused with BAGAN's learning rate.

Every phase is a step function run by :func:`common.trainers.base.run`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.config import TrainingConfig
from common.models.bagan import BaganGenerator, Decoder, Encoder, discriminator_from
from common.models.sngan import GanSpec
from common.trainers.base import Step, run
from common.trainers.gan import STAGE3_SWITCHES_OFF, adam, conditional_step, labeled_batch
from common.views import LabeledSet, PatchSampler, Sampler, subset

LATENT_SAMPLES = 256  # patches encoded per class to fit its Gaussian
RIDGE = 1e-4  # added to every covariance diagonal: Cholesky works with fewer codes than N_z


def autoencoder_step(encoder: Encoder, decoder: Decoder, sample: Sampler, cfg: TrainingConfig,
                     device: torch.device) -> Step:
    """Phase 1: x -> encoder -> z -> decoder -> x~, MSE(x~, x), Adam at ``cfg.bagan_lr``."""
    opt = adam([*encoder.parameters(), *decoder.parameters()], cfg.bagan_lr, cfg)

    def step(_: int) -> dict[str, float]:
        x, _y = labeled_batch(sample(cfg.batch_size))
        x = x.to(device)  # (B, 1, P, P)
        loss = F.mse_loss(decoder(encoder(x)), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"mse": loss.item()}

    return step


@torch.no_grad()
def encode_classes(encoder: Encoder, data: LabeledSet, per_class: int, seed: int, batch_size: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (N_c * per_class, N_z) of random patches of each class, and their labels; dropout off."""
    encoder.eval()
    codes, labels = [], []
    for c in range(encoder.spec.n_c):
        rows = [i for i, y in enumerate(data.labels) if y == c]
        if not rows:
            raise ValueError(f"class {c} has no training utterances; the baseline GAN fits one Gaussian per class")
        x, _y = labeled_batch(PatchSampler(subset(data, rows), encoder.spec.patch, seed=seed)(per_class))
        codes += [encoder(chunk.to(device)) for chunk in x.split(batch_size)]
        labels.append(torch.full((per_class,), c))
    return torch.cat(codes), torch.cat(labels).to(device)


def class_gaussians(codes: torch.Tensor, labels: torch.Tensor, n_c: int,
                    ridge: float = RIDGE) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean (N_c, N_z) and unbiased covariance + ridge * I (N_c, N_z, N_z), in float64."""
    codes = codes.to(torch.float64)  # (N, N_z)
    eye = torch.eye(codes.shape[1], dtype=torch.float64, device=codes.device)
    means, covs = [], []
    for c in range(n_c):
        own = codes[labels == c]  # (N_c_codes, N_z)
        if len(own) < 2:
            raise ValueError(f"class {c} has {len(own)} codes; a covariance needs at least 2")
        means.append(own.mean(0))
        covs.append(torch.cov(own.T) + ridge * eye)  # torch.cov: variables in rows, ddof 1 as np.cov
    return torch.stack(means), torch.stack(covs)


def train_bagan(spec: GanSpec, cfg: TrainingConfig, train: LabeledSet, device: torch.device | str,
                progress: bool = False) -> BaganGenerator:
    """All three phases on ``train``; returns the generator on the CPU in eval mode."""
    device = torch.device(device)
    torch.manual_seed(cfg.seed)  # network init and latent noise come from torch's global RNG
    sample = PatchSampler(train, spec.patch, seed=cfg.seed)
    encoder, gen = Encoder(spec, spec.n_z).to(device).train(), BaganGenerator(spec).to(device).train()
    run(autoencoder_step(encoder, gen.decoder, sample, cfg, device), cfg.bagan_ae_iterations,
        desc="bagan-autoencoder", progress=progress)
    codes, labels = encode_classes(encoder, train, LATENT_SAMPLES, cfg.seed, cfg.batch_size, device)
    gen.set_class_latents(*class_gaussians(codes, labels, spec.n_c))
    disc = discriminator_from(encoder).to(device).train()
    # IBM/BAGAN trains G and D with one Adam learning rate; the conditional step reads g_lr/d_lr.
    # The proposed model's stage-3 switches are not BAGAN's: the baseline stays as published.
    adversarial = cfg.model_copy(update={
        "g_lr": cfg.bagan_lr, "d_lr": cfg.bagan_lr, **STAGE3_SWITCHES_OFF})
    # gen is a ConditionalGenerator (gen(noise, one-hot), gen.spec); disc(x) -> (B, N_c + 1) logits.
    run(conditional_step(gen, disc, sample, adversarial, device), cfg.bagan_gan_iterations,
        desc="bagan-adversarial", progress=progress)
    return gen.cpu().eval()
