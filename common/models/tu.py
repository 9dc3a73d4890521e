"""Seed 001 (Tu et al. 2019): TDNN + Bi-LSTM + statistics pooling, emotion and speaker heads, and the
gradient reversal layer of domain adversarial training (Fig. 1, Table 1, §2.1-2.2, §3.2).

Pure torch: sizes come in as arguments (the trainer reads them from ``model.tu``). The network takes
the platform's scaled windows ``(B, 1, F, T)`` and reads them as ``F``-dimensional frame sequences
(F = 39 for the paper's MFCC + delta + delta-delta, §3.1; 32 for the tiny log-mel).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

# Variance floor of the statistics pooling: keeps sqrt differentiable on constant inputs (a
# zero-padded or silent window); Kaldi's x-vector pooling floors the variance the same way.
VARIANCE_FLOOR = 1e-5


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``-lambda`` (§2.2, Ganin et al.)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = lambd
        return x.view_as(x)  # a new tensor (not ``x`` itself), so autograd records this node

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lambd * grad, None  # no gradient for lambda


def reverse_gradient(x: torch.Tensor, lambd: float) -> torch.Tensor:
    """``x`` unchanged; the gradient flowing back through it is scaled by ``-lambd``."""
    return _ReverseGradient.apply(x, lambd)


class GradientReversal(nn.Module):
    """The GRL between the embedding and the speaker head in DAT (§2.2, eq. 1): no parameters."""

    def __init__(self, lambd: float) -> None:
        super().__init__()
        self.lambd = float(lambd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, D), identity."""
        return reverse_gradient(x, self.lambd)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}"


def receptive_field(tdnn: Sequence[tuple[int, int, int]]) -> int:
    """Frames one output frame of the (unpadded) TDNN stack sees: 1 + sum (K - 1) * D (17 for Table 1)."""
    return 1 + sum((k - 1) * d for _, k, d in tdnn)


def _masked_norm(norm: nn.Module, h: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """BatchNorm over channels of (B, C, T) frames counting only ``valid`` ones (B, T) (None: all):
    a padded frame neither enters the batch statistics nor gets a value (it stays 0)."""
    if valid is None:
        return norm(h)
    frames = h.transpose(1, 2)  # (B, T, C)
    out = torch.zeros_like(frames)
    out[valid] = norm(frames[valid])  # (N_valid, C)
    return out.transpose(1, 2)


def _valid(frames: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """(B, length) mask of each sequence's first ``frames`` (B,) positions; None for None."""
    if frames is None:
        return None
    return torch.arange(length, device=frames.device)[None, :] < frames[:, None]


def _reversal(lengths: torch.Tensor | None, length: int, batch: int, device: torch.device) -> torch.Tensor:
    """(B, T) frame indices reading each sequence's first ``lengths`` frames backwards and leaving
    its padding in place (an involution: applying it twice restores the order)."""
    t = torch.arange(length, device=device).expand(batch, length)
    if lengths is None:
        return t.flip(1)
    n = lengths.to(device)[:, None]
    return torch.where(t < n, n - 1 - t, t)


def _take(seq: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Frames of (B, T, C) in ``order`` (B, T)."""
    return seq.gather(1, order.unsqueeze(2).expand(-1, -1, seq.shape[2]))


class Embedding(nn.Module):
    """The embedding sub-network (Fig. 1, Table 1 "Embedding sub-network" + "Statistics Pooling").

    (B, 1, F, T) -> TDNN layers (Conv1d N-K-D, BatchNorm, ReLU; §3.2) -> (B, C, T') with
    T' = T - (receptive field - 1) (no padding: every frame has its full context, as in Kaldi's
    x-vector TDNN the paper builds on) -> Bi-LSTM (N cells per direction) -> dropout -> FC to
    ``embedding`` dims (BatchNorm, ReLU: "FC layers (except for output layers) are followed by ReLU
    ... batch normalization", §3.2) -> (B, E, T') -> mean and standard deviation over time -> (B, 2E).

    Whole utterances of different lengths (§2.1: X_i is d x l_i) come padded in one batch with their
    true ``frames`` (B,): each layer then sees only a sequence's own frames — BatchNorm statistics
    over valid frames, the Bi-LSTM over each sequence's own frames both ways, pooling over the l_i - (context - 1) valid
    outputs — so an utterance gets the same embedding alone or padded beside a longer one.

    BatchNorm sits between each affine map and its ReLU (Ioffe & Szegedy's placement). The paper
    names both without an order; ReLU-then-BatchNorm (Kaldi's order) made the eval-mode outputs of the
    small heads diverge from the training-mode ones (nearly dead ReLU units whose running statistics
    misrepresent every single batch), and the tiny contract set then failed in 5 of 6 seeds.
    """

    def __init__(self, n_in: int, tdnn: Sequence[tuple[int, int, int]], lstm: int, embedding: int,
                 dropout: float) -> None:
        super().__init__()
        self.convs, self.norms = nn.ModuleList(), nn.ModuleList()
        channels = n_in
        for out, kernel, dilation in tdnn:  # Table 1: "TDNN N-K-D" = N outputs, K x 1 kernel, dilation D
            self.convs.append(nn.Conv1d(channels, out, kernel, dilation=dilation))
            self.norms.append(nn.BatchNorm1d(out))
            channels = out
        self.context = receptive_field(tdnn)
        self.shrink = [(kernel - 1) * dilation for _, kernel, dilation in tdnn]  # frames each layer drops
        # Table 1: "Bi-LSTM N", as two one-way LSTMs: the reverse one reads each sequence's own frames
        # backwards (padding stays behind), which torch's packed sequences do as well but, on CPU,
        # with a per-frame backward pass ~10x slower (measured: 0.64 s per tiny batch of 32 utterances).
        self.lstm = nn.LSTM(channels, lstm, batch_first=True)
        self.lstm_reverse = nn.LSTM(channels, lstm, batch_first=True)
        self.dropout = nn.Dropout(dropout)  # §3.2: 0.5 keep probability, on the RNN
        # §3.2: an FC after the Bi-LSTM "to increase the feature dimension" before pooling.
        self.fc = nn.Linear(2 * lstm, embedding)
        self.fc_norm = nn.BatchNorm1d(embedding)
        self.dim = 2 * embedding  # Table 1: "256-dim mean + 256-dim std"

    def frames(self, x: torch.Tensor, frames: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Frame-level features (B, E, T') of windows (B, 1, F, T) and each one's valid outputs (B,)
        (None when ``frames`` is: every frame of every window counts)."""
        if x.shape[-1] < self.context:
            raise ValueError(f"{x.shape[-1]} frames is shorter than the TDNN context of {self.context} frames")
        h = x.flatten(1, 2) if x.dim() == 4 else x  # (B, F, T)
        lengths = None if frames is None else frames.to(x.device).clamp(self.context, x.shape[-1])
        for conv, norm, shrink in zip(self.convs, self.norms, self.shrink, strict=True):
            h = conv(h)  # (B, C, T - (K - 1) D): a valid convolution shortens every sequence alike
            lengths = None if lengths is None else lengths - shrink
            h = torch.relu(_masked_norm(norm, h, _valid(lengths, h.shape[-1])))
        out = self.bilstm(h.transpose(1, 2), lengths)  # (B, T', 2N)
        h = self.fc(self.dropout(out)).transpose(1, 2)  # (B, T', E) -> (B, E, T')
        return torch.relu(_masked_norm(self.fc_norm, h, _valid(lengths, h.shape[-1]))), lengths

    def bilstm(self, seq: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """The Bi-LSTM over (B, T, C) sequences of ``lengths`` (B,) valid frames (None: all): (B, T, 2N),
        forward outputs then backward ones, as ``nn.LSTM(bidirectional=True)`` lays them out."""
        flip = _reversal(lengths, seq.shape[1], seq.shape[0], seq.device)  # (B, T) frame order, read backwards
        backward = self.lstm_reverse(_take(seq, flip))[0]
        return torch.cat([self.lstm(seq)[0], _take(backward, flip)], dim=2)  # the order flipped back

    def forward(self, x: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """Utterance embeddings e (B, 2E) of windows (B, 1, F, T): statistics pooling over time (§2.1),
        over each window's valid outputs when its true ``frames`` (B,) are given."""
        h, lengths = self.frames(x, frames)
        if lengths is None:
            mean = h.mean(dim=2)
            var = h.var(dim=2, unbiased=False)
        else:
            mask = (torch.arange(h.shape[-1], device=h.device)[None, :] < lengths[:, None]).unsqueeze(1).to(h.dtype)
            count = lengths.to(h.dtype).unsqueeze(1)  # (B, 1)
            mean = (h * mask).sum(dim=2) / count
            var = (((h - mean.unsqueeze(2)) * mask) ** 2).sum(dim=2) / count
        return torch.cat([mean, var.clamp_min(VARIANCE_FLOOR).sqrt()], dim=1)


def head(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    """Table 1's "FC D1-D2-D3-D4": two hidden layers (BatchNorm, ReLU; §3.2), a linear output.

    (B, D1) -> (B, D2) -> (B, D3) -> (B, D4) scores.
    """
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
        nn.Linear(hidden, n_out),
    )


class TuNet(nn.Module):
    """Embedding sub-network with an emotion head and (optionally) a speaker head (Fig. 1).

    ``speakers`` = 0: no speaker head (SER only). ``reversal`` = lambda > 0 puts a gradient reversal
    layer in front of the speaker head (DAT, §2.2); None connects it directly (MTL, CGT).
    """

    def __init__(self, n_in: int, n_emotions: int, speakers: int, *, tdnn: Sequence[tuple[int, int, int]],
                 lstm: int, embedding: int, head_hidden: int, dropout: float,
                 reversal: float | None = None) -> None:
        super().__init__()
        self.embed = Embedding(n_in, tdnn, lstm, embedding, dropout)
        self.emotion = head(self.embed.dim, head_hidden, n_emotions)  # Table 1: FC 512-64-64-4
        self.speaker = head(self.embed.dim, head_hidden, speakers) if speakers else None  # FC 512-64-64-8
        self.reversal: nn.Module = nn.Identity() if reversal is None else GradientReversal(reversal)

    def forward(self, x: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """Emotion scores (B, N_emotions) of windows (B, 1, F, T) (true lengths ``frames`` (B,) if padded)."""
        return self.emotion(self.embed(x, frames))

    def both(self, x: torch.Tensor, frames: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Emotion scores (B, N_emotions) and speaker scores (B, N_speakers) (None without a speaker head)
        from one pass of the embedding network."""
        e = self.embed(x, frames)
        return self.emotion(e), None if self.speaker is None else self.speaker(self.reversal(e))
