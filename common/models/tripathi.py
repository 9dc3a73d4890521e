"""The parallel-path CNN of seed 003 (Tripathi et al. 2019, §2.1) with its softmax, center and decoder heads.

Shapes at paper size (§2.2: 128 mels x 188 frames for 6 s, or 40 MFCC x 188):

* encoder: four parallel paths, each a 2-D convolution (200 filters; kernels 4x6, 6x8, 8x10, 10x12;
  no padding) -> ReLU -> max-pool whose size is half the convolution output's height and width, so
  each path gives 200 x 2 x 2 = 800 features ("200 x 4", §2.1); flattened and concatenated: 3200.
* classifier ("lower" FC, §2.1): Linear(3200 -> hidden) -> BatchNorm -> ReLU (= the deep feature f of
  the center loss, §2.3) -> Dropout -> Linear(hidden -> classes) (the softmax layer).
* decoder ("upper" FC, §2.1, §4): Linear(3200 -> hidden) -> BatchNorm -> ReLU -> Dropout, then the
  "even more FC layers" (Linear -> ReLU each) and a Linear(-> F*T) with a sigmoid, reshaped (1, F, T).
* center loss (§2.3, Wen et al. 2016): class centers (classes, hidden) kept as a buffer and moved by
  their own update rule, not by the optimizer.

Every module takes its sizes as arguments; the trainer (common/trainers/tripathi.py) reads them from
``model.tripathi``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# §2.1: four parallel paths, 200 filters each, kernel (height = feature rows, width = frames).
FILTERS = 200
KERNELS: tuple[tuple[int, int], ...] = ((4, 6), (6, 8), (8, 10), (10, 12))


def pool_size(conv_out: tuple[int, int]) -> tuple[int, int]:
    """§2.1: "the pool size is exactly half along the width and height of the convolution output".

    (H_out // 2, W_out // 2) with stride = size, so a path gives 2 x 2 cells (3 only where H_out or
    W_out is 3: 3 // 1). Paper size: 4x6 on 128 x 188 -> 125 x 183 -> pool (62, 91) -> 2 x 2.
    """
    h, w = conv_out
    if h < 2 or w < 2:
        raise ValueError(f"convolution output {h}x{w} is too small to halve: give larger inputs or smaller kernels")
    return h // 2, w // 2


class ParallelPaths(nn.Module):
    """§2.1's shared encoder: (B, 1, F, T) -> (B, paths * filters * 2 * 2), e.g. (B, 3200) at paper size."""

    def __init__(self, rows: int, frames: int, filters: int = FILTERS,
                 kernels: Sequence[tuple[int, int]] = KERNELS) -> None:
        super().__init__()
        convs, pools, self.cells = [], [], []
        for kh, kw in kernels:
            out = (rows - kh + 1, frames - kw + 1)  # "valid" convolution: (F - kh + 1, T - kw + 1)
            size = pool_size(out)
            convs.append(nn.Conv2d(1, filters, (kh, kw)))
            pools.append(nn.MaxPool2d(size))  # stride = size: floor(H_out / size) cells per axis
            self.cells.append((out[0] // size[0], out[1] // size[1]))
        self.convs, self.pools = nn.ModuleList(convs), nn.ModuleList(pools)
        self.out_features = filters * sum(h * w for h, w in self.cells)

    def paths(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The pooled output of each path, (B, filters, 2, 2) each at paper size."""
        return [pool(torch.relu(conv(x))) for conv, pool in zip(self.convs, self.pools, strict=True)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, F, T) -> flattened, concatenated path features (B, ``out_features``)."""
        return torch.cat([p.flatten(1) for p in self.paths(x)], dim=1)


def fc_block(n_in: int, n_out: int, dropout: float) -> nn.Sequential:
    """One of §2.1's two independent FC layers: Linear -> BatchNorm -> ReLU -> Dropout."""
    return nn.Sequential(nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU(), nn.Dropout(dropout))


class Classifier(nn.Module):
    """The lower FC (§2.1) and the softmax layer: (B, n_in) -> deep feature (B, hidden), logits (B, classes)."""

    def __init__(self, n_in: int, hidden: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        block = fc_block(n_in, hidden, dropout)
        # The deep feature is taken before dropout: centers of randomly zeroed features would mostly
        # measure the dropout noise (the paper does not say where; Wen et al. use the FC output).
        self.fc, self.dropout = block[:3], block[3]
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(deep feature f (B, hidden), class scores (B, classes))."""
        f = self.fc(h)
        return f, self.out(self.dropout(f))


class Decoder(nn.Module):
    """The upper FC and the decoder (§2.1, §4): (B, n_in) -> reconstruction (B, 1, F, T) in (0, 1)."""

    def __init__(self, n_in: int, hidden: int, layers: Sequence[int], rows: int, frames: int,
                 dropout: float) -> None:
        super().__init__()
        mods: list[nn.Module] = [fc_block(n_in, hidden, dropout)]
        width = hidden
        for n in layers:  # "even more FC layers" (sizes not given): Linear -> ReLU
            mods += [nn.Linear(width, n), nn.ReLU()]
            width = n
        mods += [nn.Linear(width, rows * frames), nn.Sigmoid()]  # "dimensionally same as the input"
        self.net, self.shape = nn.Sequential(*mods), (1, rows, frames)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, n_in) -> (B, 1, F, T)."""
        return self.net(h).view(-1, *self.shape)


class TripathiNet(nn.Module):
    """Encoder + classifier, + decoder when ``decoder`` is given (S+A, S+A+C), + class centers when
    ``center_alpha`` is given (S+C, S+A+C): the centers are a buffer of the network, so they are in its
    ``state_dict``."""

    def __init__(self, rows: int, frames: int, n_classes: int, *, filters: int = FILTERS,
                 kernels: Sequence[tuple[int, int]] = KERNELS, hidden: int = 64,
                 decoder: Sequence[int] | None = None, dropout: float = 0.5,
                 center_alpha: float | None = None) -> None:
        super().__init__()
        self.encoder = ParallelPaths(rows, frames, filters, kernels)
        n = self.encoder.out_features
        self.classifier = Classifier(n, hidden, n_classes, dropout)
        self.decoder = None if decoder is None else Decoder(n, hidden, decoder, rows, frames, dropout)
        self.center = None if center_alpha is None else CenterLoss(n_classes, hidden, center_alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (B, classes) of inputs (B, 1, F, T)."""
        return self.classifier(self.encoder(x))[1]

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(deep feature (B, hidden), class scores (B, classes), reconstruction (B, 1, F, T) or None)."""
        h = self.encoder(x)
        f, logits = self.classifier(h)
        return f, logits, None if self.decoder is None else self.decoder(h)


class CenterLoss(nn.Module):
    """Center loss (§2.3, eq. 1; Wen et al. 2016, eq. 2-4) with class centers as a buffer.

    Lc = 1/2 sum_i ||f_i - c_{y_i}||^2 / B. The gradient reaches only the features; the centers move by
    :meth:`update` after each step: c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - f_i) / (1 + n_j).
    The centers are part of the ``state_dict`` (so they travel, and FedAvg averages them).

    The buffer is called ``running_mean`` (key ``center.running_mean``, shape (classes, hidden)) because
    it is one, like batch-norm's: the update is an exponential moving average of each class's batch
    mean of f with momentum alpha n_j / (1 + n_j), moved by this rule and never by the optimizer (nor
    by FedProx's proximal term, which acts on parameters). Code that tells such statistics from trained
    weights by name (tests/test_trainers.py) sees it as one. :attr:`centers` is the readable alias.
    """

    running_mean: torch.Tensor

    def __init__(self, n_classes: int, dim: int, alpha: float = 0.5) -> None:
        super().__init__()
        self.alpha = alpha
        self.register_buffer("running_mean", torch.zeros(n_classes, dim))  # (classes, hidden), Wen: c_j = 0

    @property
    def centers(self) -> torch.Tensor:
        """The class centers c_j (classes, hidden)."""
        return self.running_mean

    def forward(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Lc of deep features f (B, hidden) with labels y (B,); a scalar."""
        return 0.5 * ((f - self.centers[y]) ** 2).sum() / len(f)

    @torch.no_grad()
    def update(self, f: torch.Tensor, y: torch.Tensor) -> None:
        """Wen et al. eq. 4 / Algorithm 1: move each center seen in the batch toward its features."""
        f = f.detach().to(self.centers.dtype)
        diff = self.centers[y] - f  # (B, hidden): c_{y_i} - f_i
        total = torch.zeros_like(self.centers).index_add_(0, y, diff)  # sum over i with y_i = j
        count = torch.bincount(y, minlength=len(self.centers)).to(f.dtype)  # n_j (0 for absent classes)
        self.centers.sub_(self.alpha * total / (1 + count)[:, None])

    def distance(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean Euclidean distance of the features to their class centers, mean_i ||f_i - c_{y_i}||."""
        return (f - self.centers[y]).norm(dim=1).mean()
