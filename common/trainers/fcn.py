"""Seed 004 (Gans et al.) and Zhang et al. (2019): attention FCNs as SER trainers.

``fcn1d-attention``: the 1-D FCN + attention of seed 004 §2.2 on the utterance-mean spectrum
(``features.kind = "mean_spectrum"``, or the time-mean of any window). ``fcn2d-attention``: Zhang
et al.'s AlexNet-convolution FCN with attention over the positions of its last feature map.

Both: cross-entropy, Adam at ``model.fcn.lr`` (Fig. 3: 0.001) with Adam's default betas (the paper
names no others) and no decay. Fig. 3's batch of 51 and 200 epochs are ``training.batch_size`` and
``training.ser_iterations`` (see :func:`common.trainers.supervised.epochs_to_steps`). The networks end in
global attention pooling, so a file is scored in one pass over all its frames (``whole_utterance``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from common.models.fcn import AttentionFcn
from common.models.fcn import Fcn1dAttention as Fcn1dNet
from common.models.fcn import Fcn2dAttention as Fcn2dNet
from common.trainers.supervised import NetTrainer


class FcnTrainer(NetTrainer):
    """An attention FCN sized from ``model.fcn``: fields ``{prefix}channels``, ``{prefix}kernels``,
    ``{prefix}strides``, ``{prefix}pool_after``, the attention lambda ``lambda_field`` and ``padding``."""

    whole_utterance = True
    network: ClassVar[type[AttentionFcn]]
    prefix: ClassVar[str] = ""
    lambda_field: ClassVar[str] = "attention_lambda"

    def build(self) -> nn.Module:
        fcn = self.cfg.model.fcn
        layers = {k: getattr(fcn, self.prefix + k) for k in ("channels", "kernels", "strides", "pool_after")}
        return self.network(**layers, n_out=self.n_out, lam=getattr(fcn, self.lambda_field),
                            same=fcn.padding == "same")

    def optimizer(self, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
        """Adam at ``model.fcn.lr`` (seed 004 Fig. 3: 0.001), default betas."""
        return torch.optim.Adam(params, lr=self.cfg.model.fcn.lr)

    def lr_factor(self, step: int) -> float:
        """A constant learning rate (the paper gives no schedule)."""
        return 1.0


class Fcn1dAttention(FcnTrainer):
    """Seed 004 §2.2: 1-D FCN (5, 10, 20, 30 channels) + Dense/tanh + attention (lambda 0.8) + linear."""

    name = "fcn1d-attention"
    network = Fcn1dNet


class Fcn2dAttention(FcnTrainer):
    """Zhang et al. (2019): AlexNet's convolutions + attention over H' x W' positions (lambda 0.3) + linear."""

    name = "fcn2d-attention"
    network = Fcn2dNet
    prefix = "zhang_"
    lambda_field = "zhang_lambda"

    def build(self) -> nn.Module:
        if self.frames == 1:
            raise ValueError(f"training.trainer = {self.name!r} convolves over time and frequency; "
                             f"features.kind = {self.cfg.features.kind!r} has one frame: use \"logmel\"")
        return super().build()
