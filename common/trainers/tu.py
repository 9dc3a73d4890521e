"""Seed 001 (Tu et al. 2019) as trainers: SER only, multi-task with speaker recognition (MTL),
domain adversarial training (DAT, eq. 1) and cross-gradient training (CGT, eq. 2-4).

One network (:class:`common.models.tu.TuNet`) for all four; the variants differ only in whether a
speaker head exists, whether a gradient reversal layer sits in front of it, and (CGT) the loss.
SGD with Nesterov momentum at a constant rate (§3.2). The paper's schedule on real data: whole
utterances in padded batches with their true lengths (§2.1: X_i is d x l_i; statistics pooling spans
the utterance), ``model.tu.epochs`` passes (§3.2: "All experiments run 100 epochs"), a validation
after every epoch, and the epoch with the best validation accuracy kept (§3.2; Table 2 reports
accuracy, our ``wa``). Scoring is one pass over each whole utterance.

On GAN-synthetic pools (fixed-size generated patches, no epochs) training uses the pool's patches
and ``training.ser_iterations``/``eval_every``; ``model.tu.crops = true`` trains on random
``features.patch_frames`` crops of real data instead of whole utterances (the pre-issue-15 behaviour).

Speaker labels come as the batch's third element ``aux["speaker"]`` (B,): each utterance's index
among the fold's training speakers, -1 where unknown. Unknown speakers (and batches with no speaker
labels at all, e.g. GAN-synthetic samples) contribute to the emotion terms only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from common.config import Section, StudySections
from common.models.tu import TuNet, receptive_field
from common.trainers.base import Logs
from common.trainers.supervised import NetTrainer
from common.views import LabeledSet, PatchSampler, Sampler, SerBatch, UtteranceSampler

UNKNOWN = -1  # speaker index of an utterance without a (training) speaker label


class TuConfig(Section):
    """``[model.tu]``: seed 001 (Tu et al. 2019) Table 1, IEMOCAP column; SGD with Nesterov momentum (§3.2)."""

    tiny: ClassVar[dict[str, Any]] = {"tdnn": [[32, 5, 2], [16, 3, 4]], "lstm": 16, "embedding": 32,
                                      "head_hidden": 16, "lr": 1e-2, "epochs": 50}

    tdnn: tuple[tuple[int, int, int], ...] = ((128, 5, 2), (64, 3, 4))  # (channels, kernel, dilation)
    lstm: int = Field(64, ge=1, description="Bi-LSTM cells per direction")
    embedding: int = Field(256, ge=1, description="FC after the Bi-LSTM; pooling gives 2x this")
    head_hidden: int = Field(64, ge=1, description="FC 512-64-64-N: both hidden layers")
    speakers: int = Field(8, ge=1, description="speaker head outputs: the training speakers of a fold")
    dropout: float = Field(0.5, ge=0, lt=1, description="on the Bi-LSTM output (0.5 keep probability)")
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    # §3.2: "All experiments run 100 epochs, and the epoch with the best performance on validation
    # set is saved". Real training data only; a synthetic pool has no epochs (training.ser_iterations).
    epochs: int = Field(100, ge=1)
    # False (the paper): whole utterances per batch (§2.1). True: random features.patch_frames crops.
    # The paper gives no batch size for whole utterances: training.batch_size (32) is used.
    crops: bool = False
    # Not given in the paper: lambda of the gradient reversal (eq. 1); CrossGrad's epsilon and
    # alpha (eq. 2-4; Shankar et al. 2018 use alpha = 0.5).
    dat_lambda: float = Field(0.1, ge=0)
    cgt_epsilon: float = Field(0.5, ge=0)
    cgt_alpha: float = Field(0.5, ge=0, le=1)


Objective = Literal["ser", "mtl", "dat", "cgt"]


class TuTrainer(NetTrainer):
    """One network for the four objectives of Table 2 (``objective``):

    - ``ser`` (SER_only): the embedding and emotion sub-networks, emotion cross-entropy alone;
    - ``mtl`` (SER_SR_MTL): emotion and speaker heads trained jointly, L_y + L_s (§2.1, [18]);
    - ``dat`` (SER_SR_DAT, §2.2, eq. 1): the speaker head behind a gradient reversal layer of
      ``tu.dat_lambda``;
    - ``cgt`` (SER_SR_CGT, §2.3, Shankar et al. 2018): each task trains on inputs perturbed along
      the other task's input gradient (:meth:`cross_gradient_loss`).
    """

    family = "tu"
    Config = TuConfig
    hp: TuConfig
    net: TuNet
    whole_utterance = True
    selection = "wa"  # §3.2 keeps the epoch of best validation performance; Table 2 is accuracy

    def __init__(self, cfg: StudySections, device: torch.device | str = "cpu", *, name: str = "",
                 objective: Objective = "mtl") -> None:
        self.objective = objective
        # The speaker classification sub-network (Fig. 1, right) exists for all but SER_only.
        self.speaker_head = objective != "ser"
        super().__init__(cfg, device, name=name)

    def build(self) -> TuNet:
        """TuNet sized by ``model.tu`` (Table 1) for ``rows``-dimensional frames."""
        t = self.hp
        tdnn = [(n, k, d) for n, k, d in t.tdnn]
        self.context = receptive_field(tdnn)
        if t.crops and self.frames < self.context:
            raise ValueError(f"features.patch_frames = {self.frames} is shorter than the TDNN context of "
                             f"{receptive_field(tdnn)} frames (model.tu.tdnn)")
        return TuNet(self.rows, self.n_out, t.speakers if self.speaker_head else 0, tdnn=tdnn, lstm=t.lstm,
                     embedding=t.embedding, head_hidden=t.head_hidden, dropout=t.dropout,
                     reversal=t.dat_lambda if self.objective == "dat" else None)

    def optimizer(self, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
        """SGD at ``tu.lr`` with Nesterov momentum ``tu.momentum`` (§3.2: 1e-3, 0.9)."""
        t = self.hp
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, nesterov=t.momentum > 0)

    def lr_factor(self, step: int) -> float:
        """Constant: the paper gives no decay (§3.2)."""
        return 1.0

    def whole_frames(self) -> int:
        """Whole utterances are padded to the TDNN context only (crops: to ``patch_frames``, as trained)."""
        return self.frames if self.hp.crops else self.context

    def sampler(self, data: LabeledSet, seed: int = 0) -> Sampler:
        """Whole utterances (or, with ``crops``, random windows), with each utterance's speaker index
        when the set has them (and the model a speaker head)."""
        aux = []
        if self.speaker_head and "speaker" in data.aux:
            self._check_speakers(torch.as_tensor(data.aux["speaker"]), "the training set")
            aux = ["speaker"]
        if self.hp.crops:
            return PatchSampler(data, self.frames, seed=seed, aux=aux)
        return UtteranceSampler(data, self.context, seed=seed, aux=aux)

    def iterations(self, sample: Sampler) -> int:
        """``tu.epochs`` passes over real data (§3.2); ``training.ser_iterations`` on a synthetic pool."""
        epoch = self.epoch_steps(sample)
        return self.hp.epochs * epoch if epoch else super().iterations(sample)

    def eval_every(self, sample: Sampler) -> int:
        """A validation after every epoch over real data (§3.2); ``training.eval_every`` otherwise."""
        return self.epoch_steps(sample) or super().eval_every(sample)

    # --- the pieces of the losses ---------------------------------------------------------------

    def targets(self, batch: SerBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Inputs x (B, 1, F, T), emotions y (B,), speakers s (B,) (-1 = unknown) on the device, and
        the true frame counts (B,) of padded whole utterances (None for windows)."""
        x, y = batch[0].to(self.device), batch[1].to(self.device)
        aux = batch[2] if len(batch) > 2 else {}
        if "speaker" in aux:
            s = aux["speaker"].to(self.device).long().reshape(-1)
            self._check_speakers(s, "the batch")
        else:  # GAN-synthetic samples, or a set without speakers: emotion terms only
            s = torch.full_like(y, UNKNOWN, dtype=torch.long)
        return x, y, s, aux.get("frames")

    def _check_speakers(self, s: torch.Tensor, where: str) -> None:
        n = self.hp.speakers
        if s.numel() and int(s.max()) >= n:
            raise ValueError(f"model.tu.speakers = {n} but {where} has speaker index {int(s.max())}; set "
                             "model.tu.speakers to the number of training speakers of a fold")
        if s.numel() and int(s.min()) < UNKNOWN:
            raise ValueError(f"{where} has speaker index {int(s.min())}; expected 0..{n - 1}, or -1 for unknown")

    def terms(self, x: torch.Tensor, y: torch.Tensor, s: torch.Tensor,
              frames: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Emotion and speaker cross-entropies L_y, L_s of one forward pass on ``x`` (padded whole
        utterances: their true ``frames``).

        L_s covers the samples with a known speaker only; with none (or no speaker head) it is 0,
        still attached to the graph so that gradients of it are zeros rather than errors.
        """
        emotion, speaker = self.net.both(x, frames)
        l_y = F.cross_entropy(emotion, y)
        if speaker is None:
            return l_y, emotion.sum() * 0.0
        if not bool((s != UNKNOWN).any()):
            return l_y, speaker.sum() * 0.0
        return l_y, F.cross_entropy(speaker, s, ignore_index=UNKNOWN)

    def loss(self, batch: SerBatch) -> tuple[torch.Tensor, Logs]:
        """L_y + L_s (L_s = 0 without a speaker head). Under DAT the reversal layer turns the
        embedding's share into eq. 1's L_y - lambda L_s while the speaker head still minimizes L_s."""
        if self.objective == "cgt":
            return self.cross_gradient_loss(batch)
        l_y, l_s = self.terms(*self.targets(batch))
        loss = l_y + l_s
        return loss, {"loss": loss.item(), "emotion": l_y.item(), "speaker": l_s.item()}

    def cross_gradient_loss(self, batch: SerBatch) -> tuple[torch.Tensor, Logs]:
        """CGT's eq. 4 on one batch; eq. 2-3 from the same forward pass as L_y(X), L_s(X).

        X^s = X + eps grad_X L_s (eq. 2), X^y = X + eps grad_X L_y (eq. 3), both from the current
        weights and detached; the loss is (1 - alpha)(L_y(X) + L_s(X)) + alpha (L_y(X^s) + L_s(X^y))
        (eq. 4), with eps = ``tu.cgt_epsilon`` and alpha = ``tu.cgt_alpha``. The gradients are of each
        utterance's own loss (eq. 2-3 are per utterance i), i.e. of the batch sum, so eps does not
        shrink with the batch.
        """
        x, y, s, frames = self.targets(batch)
        x = x.detach().requires_grad_(True)
        l_y, l_s = self.terms(x, y, s, frames)
        # The batch means times their counts are the per-utterance sums (ignored speakers count 0).
        sums = (l_s * (s != UNKNOWN).sum(), l_y * len(y))
        g_s, g_y = (torch.autograd.grad(total, x, retain_graph=True)[0] for total in sums)
        eps, alpha = self.hp.cgt_epsilon, self.hp.cgt_alpha
        x_s, x_y = (x + eps * g_s).detach(), (x + eps * g_y).detach()  # eq. 2, eq. 3
        l_y_xs, _ = self.terms(x_s, y, s, frames)  # emotion loss on the speaker-perturbed input
        _, l_s_xy = self.terms(x_y, y, s, frames)  # speaker loss on the emotion-perturbed input
        loss = (1 - alpha) * (l_y + l_s) + alpha * (l_y_xs + l_s_xy)
        return loss, {"loss": loss.item(), "emotion": l_y.item(), "speaker": l_s.item(),
                      "emotion_xs": l_y_xs.item(), "speaker_xy": l_s_xy.item()}
