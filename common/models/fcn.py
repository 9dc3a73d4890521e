"""Attention-based fully convolutional networks: seed 004 (Gans et al.) and Zhang et al. (2019).

Both networks are a stack of convolutions (ReLU; 3/2 max-pools after some layers) whose last
feature map is read as a set of annotations ``A = {a_1, ..., a_L}, a_i in R^C`` (seed 004 eq. 1),
pooled by a scaled-softmax attention (eq. 2-4) into one utterance vector ``c in R^C`` and classified
by one linear layer:

- :class:`Fcn1dAttention` (seed 004 §2.2): the utterance-mean spectrum, four 1-D convolutions
  (5, 10, 20, 30 channels; kernels 11, 5, 3, 3; strides 4, 1, 1, 1), then a position-wise Dense
  layer with tanh; attention over the L positions along frequency (lambda 0.8).
- :class:`Fcn2dAttention` (Zhang et al. 2019): AlexNet's five 2-D convolutions on a (F, T)
  spectrogram window; attention over the H' x W' positions of the last feature map (lambda 0.3).

Inputs are always ``(B, 1, F, T)``. Modules take sizes as arguments; ``common.trainers.fcn`` reads
them from ``model.fcn``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

POOL = 3, 2  # seed 004 §2.2: "all of the maxpool layers are identical": pool size 3, stride 2 (AlexNet's)
ALEXNET_PADDING = (2, 2, 1, 1, 1)  # AlexNet's convolution paddings (Krizhevsky et al. 2012), Zhang et al.'s FCN


class ScaledSoftmaxAttention(nn.Module):
    """Attention pooling of seed 004 eq. 2-4 (Zhang et al. 2019), a weighted mean of the annotations.

    e_i = u^T tanh(W a_i + b)                      (eq. 2)   W: (H, C), b: (H,), u: (H,)
    alpha_i = exp(lambda e_i) / sum_k exp(lambda e_k)   (eq. 3)   lambda < 1 flattens the weights
    c = sum_i alpha_i a_i                          (eq. 4)

    ``hidden`` is H, the size of the importance projection (neither paper states it; default C).
    """

    def __init__(self, channels: int, lam: float, hidden: int | None = None) -> None:
        super().__init__()
        if lam <= 0:
            raise ValueError(f"attention lambda must be > 0, got {lam}")
        self.lam = lam
        self.proj = nn.Linear(channels, hidden or channels)  # W, b of eq. 2
        self.u = nn.Parameter(torch.empty(hidden or channels))  # u of eq. 2 (no bias)
        nn.init.normal_(self.u, std=(hidden or channels) ** -0.5)

    def scores(self, a: torch.Tensor) -> torch.Tensor:
        """Importance e (B, L) of annotations a (B, L, C) (eq. 2)."""
        return torch.tanh(self.proj(a)) @ self.u

    def forward(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Annotations a (B, L, C) -> utterance vector c (B, C) and weights alpha (B, L)."""
        alpha = torch.softmax(self.lam * self.scores(a), dim=1)  # eq. 3
        c = torch.einsum("bl,blc->bc", alpha, a)  # eq. 4
        return c, alpha


def conv_stack(dim: int, channels: Sequence[int], kernels: Sequence[int], strides: Sequence[int],
               paddings: Sequence[int], pool_after: Sequence[int], pool_padding: int = 0) -> nn.Sequential:
    """Convolutions (``dim`` = 1 or 2, one input channel) with ReLU, and a 3/2 max-pool after the
    layers listed in ``pool_after`` (0-based)."""
    if not len(channels) == len(kernels) == len(strides) == len(paddings):
        raise ValueError("channels, kernels, strides and paddings need one entry per layer")
    bad = [i for i in pool_after if not 0 <= i < len(channels)]
    if bad:
        raise ValueError(f"pool_after {bad}: no such layer (0..{len(channels) - 1})")
    conv, pool = (nn.Conv1d, nn.MaxPool1d) if dim == 1 else (nn.Conv2d, nn.MaxPool2d)
    layers: list[nn.Module] = []
    for i, (c_in, c_out, k, s, p) in enumerate(zip((1, *channels[:-1]), channels, kernels, strides, paddings,
                                                   strict=True)):
        layers += [conv(c_in, c_out, k, stride=s, padding=p), nn.ReLU()]
        if i in pool_after:
            layers.append(pool(*POOL, padding=pool_padding))
    return nn.Sequential(*layers)


class AttentionFcn(nn.Module):
    """Shared part: ``features`` -> annotations (B, L, C) -> attention -> linear classifier (B, N_out).

    Subclasses supply :meth:`annotations`; :meth:`forward` returns class scores, :meth:`attend`
    also the attention weights.
    """

    def __init__(self, channels: int, n_out: int, lam: float) -> None:
        super().__init__()
        self.attention = ScaledSoftmaxAttention(channels, lam)
        self.classifier = nn.Linear(channels, n_out)

    def annotations(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs (B, 1, F, T) -> annotations (B, L, C) (seed 004 eq. 1)."""
        raise NotImplementedError

    def attend(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class scores (B, N_out) and attention weights alpha (B, L)."""
        c, alpha = self.attention(self.annotations(x))
        return self.classifier(c), alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (B, N_out) of inputs (B, 1, F, T)."""
        return self.attend(x)[0]


class Fcn1dAttention(AttentionFcn):
    """Seed 004 §2.2: 1-D FCN over the utterance-mean spectrum + Dense/tanh + attention + linear.

    (B, 1, F, T) -mean over T-> (B, 1, F) -conv stack-> (B, C, L) -Dense+tanh per position-> (B, L, C).
    The time-mean is the paper's utterance-mean spectrum (the identity for a ``mean_spectrum``
    input, T = 1), so the network cannot see the order of frames.

    Paper size on the 259-value spectrum with valid padding (pools after layers 0, 1, 3):
    259 -conv k11 s4-> 63 -pool-> 31 -conv k5-> 27 -pool-> 13 -conv k3-> 11 -conv k3-> 9 -pool-> 4,
    so L = 4 annotations of C = 30 (the "4" in the paper's "u ... of size (batch size x 4 x 1)" is
    likely this L). Parameters for 4 classes: convolutions 60 + 260 + 620 + 1830 = 2770, Dense 30x30+30
    = 930, attention W, b, u 900 + 30 + 30 = 960, classifier 30x4+4 = 124: 4784 in all.
    """

    def __init__(self, channels: Sequence[int], kernels: Sequence[int], strides: Sequence[int], n_out: int,
                 lam: float = 0.8, pool_after: Sequence[int] = (0, 1, 3), same: bool = False) -> None:
        super().__init__(channels[-1], n_out, lam)
        self.features = conv_stack(1, channels, kernels, strides, [k // 2 if same else 0 for k in kernels],
                                   pool_after, pool_padding=1 if same else 0)
        # "The final component of the FCN is a Dense layer with a tanh activation" (§2.2): applied to
        # each position's C channels (a Keras Dense on (B, L, C)); its width is not given: C.
        self.dense = nn.Linear(channels[-1], channels[-1])

    def annotations(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, F, T) -> (B, L, C)."""
        h = self.features(x.mean(dim=3))  # (B, 1, F) -> (B, C, L)
        return torch.tanh(self.dense(h.transpose(1, 2)))  # (B, L, C)


class Fcn2dAttention(AttentionFcn):
    """Zhang et al. (2019): AlexNet's five convolutions + attention over positions + linear.

    (B, 1, F, T) -conv stack-> (B, C, H', W') -> annotations (B, H'W', C): each position of the last
    feature map is one a_i. Paddings: AlexNet's (2, 2, 1, 1, 1) and unpadded pools, or ``same``
    (k // 2, pools padded by 1) for small windows. At paper size on a 128 x 128 window:
    128 -conv k11 s4 p2-> 31 -pool-> 15 -conv k5 p2-> 15 -pool-> 7 -conv k3 p1 (x3)-> 7: a 7 x 7 grid,
    L = 49 annotations of C = 256. Parameters for 4 classes: convolutions 11712 + 614656 + 885120 + 1327488
    + 884992 = 3723968, attention W, b, u 65536 + 256 + 256 = 66048, classifier 256x4+4 = 1028: 3791044 in all.
    """

    def __init__(self, channels: Sequence[int], kernels: Sequence[int], strides: Sequence[int], n_out: int,
                 lam: float = 0.3, pool_after: Sequence[int] = (0, 1), same: bool = False) -> None:
        super().__init__(channels[-1], n_out, lam)
        if not same and len(kernels) != len(ALEXNET_PADDING):
            raise ValueError(f"AlexNet's paddings are for its {len(ALEXNET_PADDING)} convolutions, got "
                             f"{len(kernels)} layers: use padding 'same'")
        paddings = [k // 2 for k in kernels] if same else ALEXNET_PADDING
        self.features = conv_stack(2, channels, kernels, strides, paddings, pool_after,
                                   pool_padding=1 if same else 0)

    def annotations(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, F, T) -> (B, H'W', C)."""
        return self.features(x).flatten(2).transpose(1, 2)
