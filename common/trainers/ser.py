"""The SER network of seed 002 §4.3 as a trainer (the platform's default, ``ser-cnn``)."""

from __future__ import annotations

from torch import nn

from common.models.sngan import GanSpec, ser_network
from common.trainers.supervised import NetTrainer


class SerCnnTrainer(NetTrainer):
    """The discriminator architecture with an N_c head, trained from scratch (§4.3).

    Adam (beta 0.5, 0.99) at ``ser_lr`` decayed x``ser_lr_decay`` every ``ser_lr_decay_every``
    iterations (§4.4); model selection by macro-F1 on the validation set when one is given;
    file scores average the windows (hop ``features.window_hop``, 32 in §4.3).
    """

    def build(self) -> nn.Module:
        self.spec = GanSpec.of(self.cfg)
        return ser_network(self.spec)
