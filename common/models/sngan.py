"""The spectral-normalized conditional GAN of seed 002 (Eskimez et al. 2020, Table 1) and its SER net.

Generator: FC(N_z+N_c -> 4096) -> FC(-> 32768) -> reshape 512x8x8 -> nine 3x3 convolutions with
nearest-neighbour x2 upsampling after every second one -> tanh, output 1x128x128 (§3.1).
Discriminator: eight 3x3 convolutions, stride 2 on every second -> FC 4096 -> head (§3.1).
Spectral normalization on every layer of both; no batch-norm, no dropout (§3.1).

``width`` multiplies every channel and hidden size and ``patch`` sets the spectrogram side, so the
``tiny`` preset keeps the structure of Table 1 at a CPU-friendly size; ``width=1, patch=128`` is
exactly Table 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from common.config import StudySections

# Table 1: output channels of the generator's eight hidden convolutions and the
# discriminator's eight convolutions (filter size 3 everywhere).
GEN_CHANNELS = (512, 512, 256, 256, 128, 128, 64, 64)
DISC_CHANNELS = (64, 64, 128, 128, 256, 256, 512, 512)
HIDDEN = 4096  # Table 1: the first generator FC and the discriminator's FC
LEAK = 0.2  # the paper says "leaky ReLU" without a slope; 0.2 is the DCGAN convention [17]
# Convolution weights are kept channels-last (NHWC): oneDNN's CPU kernels for the one-channel first
# and last convolutions (1 -> C, C -> 1) run 2-2.5x faster in that layout, a whole tiny-preset GAN
# step ~18 % faster (benchmarks/gan.py); the numbers are the same convolutions in another summation order.
CHANNELS_LAST = torch.channels_last


@dataclass(frozen=True)
class GanSpec:
    """Everything needed to rebuild the networks (stored in checkpoints)."""

    n_z: int = 128  # §4.4
    n_c: int = 4  # §4.4: neutral, angry, sad, happy
    width: float = 1.0
    patch: int = 128  # §4.2: 128x128 log-mel patches

    def __post_init__(self) -> None:
        if self.patch % 16:
            raise ValueError(f"patch must be a multiple of 16 (four x2 stages), got {self.patch}")

    def ch(self, channels: int) -> int:
        """A Table 1 channel count scaled by the width multiplier (at least 1)."""
        return max(1, round(channels * self.width))

    @property
    def base(self) -> int:
        """Side of the generator's first feature map (8 for 128x128 patches)."""
        return self.patch // 16

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def of(cls, cfg: StudySections) -> GanSpec:
        """The sizes a study asks for: the preset's width and N_z, square ``features.patch_frames`` patches."""
        n_rows = cfg.features.params.get("n_mels", 128) if cfg.features.kind == "logmel" else None
        if n_rows is not None and n_rows != cfg.features.patch_frames:
            raise ValueError(f"the GAN needs square patches: features.params.n_mels = {n_rows} but "
                             f"features.patch_frames = {cfg.features.patch_frames}; make them equal")
        return cls(n_z=cfg.model.n_z, n_c=len(cfg.data.classes), width=cfg.model.width,
                   patch=cfg.features.patch_frames)


def _sn(layer: nn.Module) -> nn.Module:
    return spectral_norm(layer)


@torch.no_grad()
def settle_spectral_norms(net: nn.Module, iterations: int = 300) -> None:
    """Power-iterate each spectral-normalized weight of ``net`` ``iterations`` times. Eval mode
    divides by the sigma of the stored (u, v) as they are; after weights are *set* (an average of
    iterates) rather than trained, those vectors belong to other weights until they are re-fit."""
    mode = net.training
    net.train()
    for module in net.modules():
        if parametrize.is_parametrized(module, "weight"):
            for _ in range(iterations):
                module.weight  # noqa: B018  (in training mode each access runs one power iteration)
    net.train(mode)


class Generator(nn.Module):
    """z (B, N_z) and condition c (B, N_c) -> spectrogram patch (B, 1, patch, patch) in [-1, 1]."""

    def __init__(self, spec: GanSpec) -> None:
        super().__init__()
        self.spec = spec
        c = [spec.ch(x) for x in GEN_CHANNELS]
        self.fc = nn.Sequential(
            _sn(nn.Linear(spec.n_z + spec.n_c, spec.ch(HIDDEN))), nn.LeakyReLU(LEAK),
            _sn(nn.Linear(spec.ch(HIDDEN), c[0] * spec.base * spec.base)), nn.LeakyReLU(LEAK),
        )
        layers: list[nn.Module] = []
        in_ch = c[0]
        for i, out_ch in enumerate(c):
            layers += [_sn(nn.Conv2d(in_ch, out_ch, 3, padding=1)), nn.LeakyReLU(LEAK)]
            if i % 2 == 1:  # after every second convolution (§3.1); nearest avoids checkerboards
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            in_ch = out_ch
        layers += [_sn(nn.Conv2d(in_ch, 1, 3, padding=1)), nn.Tanh()]  # the ninth convolution
        self.convs = nn.Sequential(*layers)
        self.to(memory_format=CHANNELS_LAST)  # type: ignore[call-overload]  # (torch 2.11 stubs lack it)

    @property
    def n_z(self) -> int:
        """Noise dimension."""
        return self.spec.n_z

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """(B, N_z), (B, N_c) -> (B, 1, patch, patch)."""
        h = self.fc(torch.cat([z, c], dim=1))  # (B, C0 * base * base)
        h = h.view(-1, self.spec.ch(GEN_CHANNELS[0]), self.spec.base, self.spec.base)
        return self.convs(h)

    def generate(self, noise: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Class-conditional samples: the one-hot condition is concatenated to the noise (§3.1)."""
        return self(noise, torch.nn.functional.one_hot(classes, self.spec.n_c).to(noise.dtype))


class Discriminator(nn.Module):
    """Spectrogram patch (B, 1, patch, patch) -> (B, head) through the body of Table 1.

    The head size names the stage: N_z (autoencoder encoder), 1 (WGAN-GP critic),
    N_c + 1 (conditional fine-tuning, the last output is "fake"), N_c (the SER network, §4.3).
    """

    def __init__(self, spec: GanSpec, head: int) -> None:
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        in_ch = 1
        for i, out_ch in enumerate(spec.ch(x) for x in DISC_CHANNELS):
            stride = 2 if i % 2 == 1 else 1  # every second convolution halves the map (§3.1)
            layers += [_sn(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)), nn.LeakyReLU(LEAK)]
            in_ch = out_ch
        self.convs = nn.Sequential(*layers)
        flat = in_ch * spec.base * spec.base  # 512 * 8 * 8 = 32768 in Table 1
        self.fc = nn.Sequential(nn.Flatten(), _sn(nn.Linear(flat, spec.ch(HIDDEN))), nn.LeakyReLU(LEAK))
        self.head = _sn(nn.Linear(spec.ch(HIDDEN), head))
        self.to(memory_format=CHANNELS_LAST)  # type: ignore[call-overload]  # (torch 2.11 stubs lack it)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, P, P) -> (B, hidden): the body without the head."""
        return self.fc(self.convs(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, P, P) -> (B, head) logits."""
        return self.head(self.features(x))

    def replace_head(self, outputs: int) -> None:
        """A fresh last layer with ``outputs`` units (stage changes keep the body, §3.2)."""
        self.head = _sn(nn.Linear(self.spec.ch(HIDDEN), outputs))


def ser_network(spec: GanSpec) -> Discriminator:
    """The SER network of §4.3: the discriminator architecture with an N_c head, trained from scratch."""
    return Discriminator(spec, head=spec.n_c)
