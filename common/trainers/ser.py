"""The SER network of seed 002 §4.3 as a trainer: fit on any batch source, file-level evaluation."""

from __future__ import annotations

from collections.abc import Sequence
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

    def fit(self, sample: Sampler, validation: LabeledSet | None = None, iterations: int | None = None,
            progress: bool = False) -> LoopResult:
        """Train for ``iterations`` (default ``cfg.ser_iterations``) batches from ``sample``."""
        cfg = self.cfg
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.ser_lr, betas=cfg.betas)
        decay = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.ser_lr_decay_every, gamma=cfg.ser_lr_decay)

        def step(_: int) -> dict[str, float]:
            self.net.train()
            x, y = sample(cfg.batch_size)
            loss = F.cross_entropy(self.net(x.to(self.device)), y.to(self.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            decay.step()
            return {"loss": loss.item()}

        select = validation is not None and len(validation) > 0 and cfg.eval_every > 0
        return run(
            step, cfg.ser_iterations if iterations is None else iterations, desc="ser",
            evaluate=(lambda: self.evaluate(validation)["f1_macro"]) if select else None,  # type: ignore[arg-type]
            eval_every=cfg.eval_every, hooks=[KeepBest(self.net)] if select else [], progress=progress,
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
