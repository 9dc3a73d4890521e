"""The SER network of seed 002 §4.3 as a trainer: fit on any batch source, file-level evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common.config import TrainingConfig
from common.features import patches
from common.metrics import classification_metrics
from common.models.sngan import GanSpec, ser_network
from common.trainers.base import KeepBest, LoopResult, run
from common.trainers.gan import Sampler
from common.views import LabeledSet

# Model selection: a held-out set, or a function scoring the current weights (in the federated
# regimes the held-out session's node scores them, so its data never leaves it).
Validation = LabeledSet | Callable[[], float] | None


def scorer(trainer: SerCnnTrainer, validation: Validation) -> Callable[[], float] | None:
    """Macro-F1 on ``validation`` as the loop's evaluation (None when there is nothing to select on)."""
    if validation is None or trainer.cfg.eval_every <= 0:
        return None
    if callable(validation):
        return validation
    if not len(validation):
        return None
    return lambda: trainer.evaluate(validation)["f1_macro"]


def proximal_term(net: torch.nn.Module, mu: float) -> Callable[[], torch.Tensor | float]:
    """FedProx's mu/2 ||w - w_0||^2 with w_0 the weights now (the global model of the round)."""
    if mu <= 0:
        return lambda: 0.0
    start = [p.detach().clone() for p in net.parameters()]
    return lambda: mu / 2 * sum(((p - p0) ** 2).sum() for p, p0 in zip(net.parameters(), start, strict=True))


class SerCnnTrainer:
    """The discriminator architecture with an N_c head, trained from scratch (§4.3).

    Adam (beta 0.5, 0.99) at ``ser_lr`` decayed x``ser_lr_decay`` every ``ser_lr_decay_every``
    iterations (§4.4); model selection by macro-F1 on the validation set when one is given.
    """

    name = "ser-cnn"

    def __init__(self, spec: GanSpec, cfg: TrainingConfig, device: torch.device | str = "cpu",
                 window_hop: int = 32) -> None:
        self.spec, self.cfg, self.device, self.window_hop = spec, cfg, torch.device(device), window_hop
        with torch.random.fork_rng():  # seeded initialization without resetting the caller's RNG
            torch.manual_seed(cfg.seed)
            self.net = ser_network(spec).to(self.device)

    def fit(self, sample: Sampler, validation: Validation = None, iterations: int | None = None,
            progress: bool = False, *, lr: float | None = None, proximal_mu: float = 0.0) -> LoopResult:
        """Train for ``iterations`` (default ``cfg.ser_iterations``) batches from ``sample``.

        ``lr`` overrides the starting rate (FedAvg rounds continue the decay schedule);
        ``proximal_mu`` > 0 adds FedProx's mu/2 ||w - w_start||^2 (Li et al. 2020, eq. 2).
        """
        cfg = self.cfg
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.ser_lr if lr is None else lr, betas=cfg.betas)
        decay = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.ser_lr_decay_every, gamma=cfg.ser_lr_decay)
        prox = proximal_term(self.net, proximal_mu)

        def step(_: int) -> dict[str, float]:
            self.net.train()
            x, y = sample(cfg.batch_size)
            loss = F.cross_entropy(self.net(x.to(self.device)), y.to(self.device))
            opt.zero_grad(set_to_none=True)
            (loss + prox()).backward()
            opt.step()
            decay.step()
            return {"loss": loss.item()}

        score = scorer(self, validation)
        return run(
            step, cfg.ser_iterations if iterations is None else iterations, desc="ser",
            evaluate=score, eval_every=cfg.eval_every if score else 0,
            hooks=[KeepBest(self.net)] if score else [], progress=progress,
        )

    @torch.no_grad()
    def predict_proba(self, feats: Sequence[np.ndarray], chunk: int = 256) -> np.ndarray:
        """Per-file class probabilities (N, N_c): sliding windows with a hop of 32 frames, the
        window probabilities averaged (§4.3)."""
        if not feats:
            raise ValueError("no files to score")
        self.net.eval()
        size = self.spec.patch
        windows = [patches(f, size, self.window_hop, pad_value=-1.0) for f in feats]  # each (n_i, F, size)
        flat = np.concatenate(windows)
        probs = torch.cat([
            F.softmax(self.net(torch.from_numpy(flat[i:i + chunk]).unsqueeze(1).to(self.device)), dim=1).cpu()
            for i in range(0, len(flat), chunk)
        ]).numpy()
        bounds = np.cumsum([0, *(len(w) for w in windows)])
        return np.stack([probs[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])

    def evaluate(self, data: LabeledSet) -> dict[str, Any]:
        """File-level macro-F1, UA, WA and confusion matrix on ``data``."""
        pred = self.predict_proba(data.feats).argmax(axis=1)
        return classification_metrics(list(data.labels), pred.tolist(), self.spec.n_c)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The network weights."""
        return self.net.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the network weights."""
        self.net.load_state_dict(state)
