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
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from common.config import Section, StudySections
from common.models.fcn import Fcn1dAttention, Fcn2dAttention
from common.trainers.supervised import NetTrainer


class FcnConfig(Section):
    """``[model.fcn]``: seed 004 (Gans et al.) 1-D FCN + attention; Zhang et al. (2019) 2-D attention FCN."""

    tiny: ClassVar[dict[str, Any]] = {"padding": "same", "zhang_channels": [8, 16, 24, 24, 16], "lr": 1e-2}

    channels: tuple[int, ...] = (5, 10, 20, 30)
    kernels: tuple[int, ...] = (11, 5, 3, 3)
    strides: tuple[int, ...] = (4, 1, 1, 1)
    pool_after: tuple[int, ...] = (0, 1, 3)  # max-pool 3/2 after these layers (AlexNet's places)
    attention_lambda: float = Field(0.8, gt=0, description="scaled softmax (Zhang et al.: 0.3)")
    # "valid": no padding (the 259-value mean spectrum); "same": k // 2, for short inputs.
    padding: Literal["valid", "same"] = "valid"
    lr: float = Field(1e-3, gt=0)
    # Zhang et al. 2019: AlexNet's five convolutions (with AlexNet's paddings), attention lambda 0.3.
    zhang_channels: tuple[int, ...] = (96, 256, 384, 384, 256)
    zhang_kernels: tuple[int, ...] = (11, 5, 3, 3, 3)
    zhang_strides: tuple[int, ...] = (4, 1, 1, 1, 1)
    zhang_pool_after: tuple[int, ...] = (0, 1)
    zhang_lambda: float = Field(0.3, gt=0)

    @model_validator(mode="after")
    def _layers(self) -> FcnConfig:
        for prefix in ("", "zhang_"):
            sizes = {len(getattr(self, f"{prefix}{k}")) for k in ("channels", "kernels", "strides")}
            if len(sizes) != 1:
                raise ValueError(f"{prefix}channels, {prefix}kernels and {prefix}strides need one entry per layer")
        return self


class FcnTrainer(NetTrainer):
    """An attention FCN sized from ``model.fcn``: ``dims = 1``, seed 004 §2.2's 1-D FCN (5, 10, 20,
    30 channels) + Dense/tanh + attention (lambda 0.8) + linear; ``dims = 2``, Zhang et al.'s
    AlexNet convolutions + attention over H' x W' positions (lambda 0.3) + linear, sized by the
    ``zhang_*`` fields."""

    family = "fcn"
    Config = FcnConfig
    hp: FcnConfig
    whole_utterance = True

    def __init__(self, cfg: StudySections, device: torch.device | str = "cpu", *, name: str = "",
                 dims: Literal[1, 2] = 1) -> None:
        self.dims = dims
        super().__init__(cfg, device, name=name)

    def build(self) -> nn.Module:
        fcn, prefix = self.hp, "zhang_" if self.dims == 2 else ""
        if self.dims == 2 and self.frames == 1:
            raise ValueError(f"training.trainer = {self.name!r} convolves over time and frequency; "
                             f"features.kind = {self.cfg.features.kind!r} has one frame: use \"logmel\"")
        network = Fcn2dAttention if self.dims == 2 else Fcn1dAttention
        layers = {k: getattr(fcn, prefix + k) for k in ("channels", "kernels", "strides", "pool_after")}
        return network(**layers, n_out=self.n_out, lam=fcn.zhang_lambda if self.dims == 2 else fcn.attention_lambda,
                       same=fcn.padding == "same")

    def optimizer(self, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
        """Adam at ``model.fcn.lr`` (seed 004 Fig. 3: 0.001), default betas."""
        return torch.optim.Adam(params, lr=self.hp.lr)

    def lr_factor(self, step: int) -> float:
        """A constant learning rate (the paper gives no schedule)."""
        return 1.0
