"""Seed 000 (Chang & Scherer 2017): four stride-2 convolutions shared by all four models.

BasicCNN / MultitaskCNN are the DCGAN discriminator's convolutions with a fully connected layer
and valence (+ activation) heads (§5 "Investigated Models": "built by taking the convolutional
layers from the discriminator component of the MultitaskDCGAN"); BasicDCGAN / MultitaskDCGAN
add the generator and the discriminator's real/fake output (§3). Sizes follow the DCGAN
discriminator the paper builds on (Radford et al. 2016); the paper lists none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn


class ConvStack(nn.Module):
    """(B, 1, F, T) -> (B, C4 * ceil(F/16) * ceil(T/16)): four k x k stride-2 convolutions,
    leaky ReLU 0.2, batch-norm on all but the first (DCGAN's discriminator)."""

    def __init__(self, channels: Sequence[int], kernel: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip((1, *channels[:-1]), channels, strict=True)):
            layers.append(nn.Conv2d(cin, cout, kernel, stride=2, padding=kernel // 2, bias=i == 0))
            if i:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)


class Discriminator(nn.Module):
    """The shared convolutions, a fully connected layer (ReLU) and one linear head per task;
    ``real`` (when asked for) reads the convolutions directly like DCGAN's discriminator."""

    def __init__(self, rows: int, frames: int, channels: Sequence[int], kernel: int, hidden: int,
                 heads: Mapping[str, int], real_fake: bool) -> None:
        super().__init__()
        self.convs = ConvStack(channels, kernel)
        with torch.no_grad():
            flat = self.convs.eval()(torch.zeros(1, 1, rows, frames)).shape[1]
        self.convs.train()
        self.fc = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in heads.items()})
        self.real = nn.Linear(flat, 1) if real_fake else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Task logits {head: (B, n)}."""
        h = self.fc(self.convs(x))
        return {name: head(h) for name, head in self.heads.items()}

    def realness(self, x: torch.Tensor) -> torch.Tensor:
        """Real/generated logit (B,)."""
        assert self.real is not None
        return self.real(self.convs(x)).squeeze(1)


class Generator(nn.Module):
    """DCGAN generator: z (B, n_z) -> (B, 1, F, T) in [-1, 1] through four stride-2 transposed
    convolutions (batch-norm + ReLU, tanh output), mirroring the discriminator's channels."""

    def __init__(self, rows: int, frames: int, channels: Sequence[int], n_z: int) -> None:
        super().__init__()
        self.rows, self.frames, self.n_z = rows, frames, n_z
        self.h, self.w = math.ceil(rows / 16), math.ceil(frames / 16)
        top = channels[-1]
        self.project = nn.Sequential(nn.Linear(n_z, top * self.h * self.w), nn.BatchNorm1d(top * self.h * self.w),
                                     nn.ReLU())
        layers: list[nn.Module] = []
        rev = (*channels[::-1], 1)
        for i, (cin, cout) in enumerate(zip(rev[:-1], rev[1:], strict=True)):
            layers.append(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=i == len(rev) - 2))
            layers += [nn.BatchNorm2d(cout), nn.ReLU()] if i < len(rev) - 2 else [nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(len(z), -1, self.h, self.w)
        return self.body(x)[:, :, : self.rows, : self.frames]  # (B, 1, 16h, 16w) cropped to (F, T)


class ChangNet(nn.Module):
    """One model of the family: the discriminator (always) and the generator (DCGAN variants)."""

    def __init__(self, disc: Discriminator, gen: Generator | None) -> None:
        super().__init__()
        self.disc, self.gen = disc, gen

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.disc(x)
