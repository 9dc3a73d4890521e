"""The baseline GAN of seed 002's Table 2: Chatziagapi et al. 2019 [7], after BAGAN.

Seed 002 §2 describes [7]: an autoencoder trained with a reconstruction loss initializes the
generator (decoder) and the discriminator (encoder); each class is a Gaussian N(mu_c, Sigma_c)
fitted to the latent codes of its real samples, and generation samples that Gaussian. This is
BAGAN (Mariani et al. 2018, arXiv 1803.09655); the networks follow the design of its reference
code (IBM/BAGAN ``balancing_gan.py``), written here in our own PyTorch:

* encoder ("reconstructor"): a conv stack with LeakyReLU and Dropout 0.3, stride-2 downsampling,
  then a Dense layer to the latent size;
* decoder = generator: Dense -> reshape -> x2 upsampling stages -> a last convolution with tanh;
* discriminator: the encoder body (copied from the trained encoder) with a Dense head of
  N_c + 1 outputs, the last one meaning "fake".

Seed 002 §3.1 names what separates the baseline from the proposed GAN (common.models.sngan): the
baseline upsamples with transposed convolutions (hence its checkerboard artifacts) and uses
batch-normalization and dropout, without spectral normalization. The networks here are therefore
DCGAN-style [17]: ``nn.ConvTranspose2d`` upsampling with batch-norm in the decoder, dropout in
the encoder/discriminator, no spectral norm. Sizes come from the same :class:`GanSpec` as the
proposed GAN (patch side, N_z, N_c, width multiplier), so both generators are interchangeable
in a synthetic pool.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from common.models.sngan import LEAK, GanSpec

# Neither seed 002 nor [7] gives layer sizes for the baseline; for width 1 we use the DCGAN
# channel progression (Radford et al. 2016) over four x2 stages, 4x4 kernels with stride 2.
ENC_CHANNELS = (64, 128, 256, 512)  # each conv halves the map: P -> P/16 = spec.base
DEC_CHANNELS = (512, 256, 128, 64, 32)  # Dense reshapes to 512 x base x base; four x2 stages
DROPOUT = 0.3  # IBM/BAGAN: Dropout(0.3) after every encoder convolution


class Encoder(nn.Module):
    """Patch (B, 1, P, P) -> (B, outputs): the encoder (outputs = N_z) or discriminator (N_c + 1)."""

    def __init__(self, spec: GanSpec, outputs: int) -> None:
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        in_ch = 1
        for out_ch in (spec.ch(c) for c in ENC_CHANNELS):
            layers += [nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1), nn.LeakyReLU(LEAK), nn.Dropout(DROPOUT)]
            in_ch = out_ch
        self.body = nn.Sequential(*layers, nn.Flatten())  # (B, C * base * base)
        self.head = nn.Linear(in_ch * spec.base * spec.base, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, P, P) -> (B, outputs); linear outputs (latent code or logits)."""
        return self.head(self.body(x))


def discriminator_from(encoder: Encoder) -> Encoder:
    """A discriminator whose body starts as a copy of ``encoder``'s, with a fresh N_c + 1 head."""
    disc = Encoder(encoder.spec, encoder.spec.n_c + 1)  # the last output is "fake"
    disc.body.load_state_dict(encoder.body.state_dict())  # a copy: the encoder itself stays as trained
    return disc


class Decoder(nn.Module):
    """Latent code (B, N_z) -> patch (B, 1, P, P) in [-1, 1] through transposed convolutions."""

    def __init__(self, spec: GanSpec) -> None:
        super().__init__()
        self.spec = spec
        c = [spec.ch(x) for x in DEC_CHANNELS]
        layers: list[nn.Module] = [
            nn.Linear(spec.n_z, c[0] * spec.base * spec.base),
            nn.Unflatten(1, (c[0], spec.base, spec.base)),  # (B, C0, base, base)
            nn.BatchNorm2d(c[0]), nn.ReLU(),
        ]
        for in_ch, out_ch in pairwise(c):  # each stage doubles the side
            layers += [nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU()]
        layers += [nn.Conv2d(c[-1], 1, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, N_z) -> (B, 1, P, P)."""
        return self.net(z)


class BaganGenerator(nn.Module):
    """The decoder plus one latent Gaussian per class: x = decoder(mu_c + L_c noise), Sigma_c = L_c L_c^T.

    ``mu`` (N_c, N_z) and ``chol`` (N_c, N_z, N_z) are buffers, so ``state_dict()`` restores the
    whole generator and the optimizer of the adversarial phase never moves them (BAGAN keeps the
    class Gaussians fixed). Until :meth:`set_class_latents` they are N(0, I).
    """

    mu: torch.Tensor  # buffers (register_buffer)
    chol: torch.Tensor

    def __init__(self, spec: GanSpec) -> None:
        super().__init__()
        self.spec = spec
        self.decoder = Decoder(spec)
        self.register_buffer("mu", torch.zeros(spec.n_c, spec.n_z))
        self.register_buffer("chol", torch.eye(spec.n_z).repeat(spec.n_c, 1, 1))

    @property
    def n_z(self) -> int:
        """Noise dimension (= the latent size)."""
        return self.spec.n_z

    def set_class_latents(self, mu: torch.Tensor, sigma: torch.Tensor) -> None:
        """Store means (N_c, N_z) and the Cholesky factors of covariances (N_c, N_z, N_z)."""
        # float64 Cholesky: near-singular covariances (few codes per class) stay factorizable.
        chol = torch.linalg.cholesky(sigma.to(torch.float64))
        self.mu.copy_(mu.to(self.mu))
        self.chol.copy_(chol.to(self.chol))

    def forward(self, noise: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """(B, N_z) noise, (B, N_c) one-hot condition -> (B, 1, P, P).

        The call signature of the proposed generator, so the conditional fine-tuning step of
        common.trainers.gan drives both; the condition picks the class Gaussian.
        """
        mean = condition @ self.mu  # (B, N_z)
        spread = torch.einsum("bk,kij,bj->bi", condition, self.chol, noise)  # L_c noise, (B, N_z)
        return self.decoder(mean + spread)

    def generate(self, noise: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Class-conditional samples (B, 1, P, P) from noise (B, N_z) and class indices (B,)."""
        return self(noise, F.one_hot(classes, self.spec.n_c).to(noise.dtype))
