"""The base of every SER trainer: one network, one step built from a family's loss, the one loop.

A family (seed 002's CNN, the papers 000/001/003/004) subclasses :class:`NetTrainer` and supplies
``build`` (its network, sized from the config) and, where it differs from plain cross-entropy with
Adam, ``loss`` / ``optimizer`` / ``lr_factor`` / ``sampler`` / ``evaluate``. Fitting, FedProx,
model selection, early stopping and file-level scoring live here once.

Every network takes scaled feature windows ``(B, 1, F, T)`` — the platform's log-mel patches, which
is what the GAN-synthetic pools produce, or the paper's own features (``features.kind``) — and
returns class scores ``(B, N_out)`` from :meth:`NetTrainer.logits`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.config import Section, StudySections
from common.features import extractor_for, feature_rows, patches
from common.metrics import classification_metrics
from common.models.sngan import settle_spectral_norms
from common.privacy import DpPlan, noisy_gradient, private_plan
from common.trainers.base import Hook, KeepBest, Logs, LoopResult, run
from common.views import LabeledSet, PatchSampler, PoissonPatchSampler, Sampler, SerBatch

# Model selection: a held-out set, or a function scoring the current weights (in the federated
# regimes the held-out session's node scores them, so its data never leaves it).
Validation = LabeledSet | Callable[[], float] | None


def proximal_term(net: nn.Module, mu: float) -> Callable[[], torch.Tensor | float]:
    """FedProx's mu/2 ||w - w_0||^2 with w_0 the weights now (the global model of the round)."""
    if mu <= 0:
        return lambda: 0.0
    start = [p.detach().clone() for p in net.parameters()]
    return lambda: mu / 2 * sum(((p - p0) ** 2).sum() for p, p0 in zip(net.parameters(), start, strict=True))


def input_shape(cfg: StudySections) -> tuple[int, int]:
    """(F, T) of one network input: feature rows and window frames (1 for utterance-level vectors)."""
    extractor = extractor_for(cfg.features.kind, cfg.features.params)
    rows = feature_rows(extractor)
    return rows, 1 if cfg.features.kind == "mean_spectrum" else cfg.features.patch_frames


class NetTrainer:
    """One network fitted by :func:`common.trainers.base.run` on batches from any sampler.

    A family with hyper-parameters of its own declares their section: ``Config`` (a
    :class:`common.config.Section`, with its ``tiny`` sizes) under ``[model.<family>]``; the study
    schema adds it, and the trainer reads it as ``self.hp``. Variants of a family are registry
    entries with keyword arguments (common/trainers/registry.py), not subclasses.
    """

    family: ClassVar[str | None] = None
    Config: ClassVar[type[Section] | None] = None
    # The score model selection maximizes (a key of :meth:`evaluate`).
    selection: ClassVar[str] = "f1_macro"
    # Networks with global pooling score a whole file in one pass instead of averaging windows.
    whole_utterance: ClassVar[bool] = False

    def __init__(self, cfg: StudySections, device: torch.device | str = "cpu", *, name: str = "") -> None:
        self.cfg, self.device, self.name = cfg, torch.device(device), name or type(self).__name__
        self.hp: Any = cfg.model.section(self.Config) if self.Config is not None else None
        self.rows, self.frames = input_shape(cfg)
        self.n_out = len(cfg.data.classes)
        with torch.random.fork_rng():  # seeded initialization without resetting the caller's RNG
            torch.manual_seed(cfg.training.seed)
            self.net = self.build().to(self.device)

    # --- what a family supplies -----------------------------------------------------------------

    def build(self) -> nn.Module:
        """The network for inputs (B, 1, ``rows``, ``frames``) and ``n_out`` classes."""
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (B, N_out) of the primary task."""
        return self.net(x)

    def loss(self, batch: SerBatch) -> tuple[torch.Tensor, Logs]:
        """The training loss of one batch and what to log (default: cross-entropy)."""
        x, y = batch[0].to(self.device), batch[1].to(self.device)
        loss = F.cross_entropy(self.logits(x), y)
        return loss, {"loss": loss.item()}

    def optimizer(self, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
        """Adam (beta 0.5, 0.99) at ``training.ser_lr`` (seed 002 §4.4)."""
        t = self.cfg.training
        return torch.optim.Adam(params, lr=t.ser_lr, betas=t.betas)

    def lr_factor(self, step: int) -> float:
        """Learning-rate multiplier after ``step`` steps (seed 002: x``ser_lr_decay`` every N)."""
        t = self.cfg.training
        return t.ser_lr_decay ** (step // t.ser_lr_decay_every)

    def sampler(self, data: LabeledSet, seed: int = 0) -> Sampler:
        """Training batches from real data: random windows of ``frames`` frames."""
        return PatchSampler(data, self.frames, seed=seed)

    def private_sampler(self, data: LabeledSet, seed: int = 0) -> PoissonPatchSampler:
        """DP-SGD's batches (``training.dp``): a Poisson draw of utterances, one window of each.

        Only a family whose step is the base one (cross-entropy of ``net`` on random windows) and
        whose network has no batch norm (its batch statistics mix utterances) trains privately."""
        custom = [m for m in ("loss", "logits", "sampler") if getattr(type(self), m) is not getattr(NetTrainer, m)]
        norms = [type(m).__name__ for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if custom or norms:
            why = f"its own {', '.join(custom)}" if custom else f"batch norm ({norms[0]})"
            raise ValueError(f"training.dp: the trainer {self.name} has {why}, and DP-SGD needs per-utterance "
                             "gradients of the cross-entropy on windows; train ser-cnn privately or remove training.dp")
        return PoissonPatchSampler(data, self.frames, seed=seed)

    def eval_every(self, sample: Sampler) -> int:
        """Steps between validations (``training.eval_every``)."""
        return self.cfg.training.eval_every

    def epoch_steps(self, sample: Sampler) -> int | None:
        """Steps of one pass over the sampler's real utterances; None for a source without epochs
        (a synthetic pool)."""
        data = getattr(sample, "data", None)
        return epochs_to_steps(1, len(data), self.cfg.training.batch_size) if data else None

    def iterations(self, sample: Sampler) -> int:
        """Steps of a fit that names none (``training.ser_iterations``; a family counting epochs
        over real data derives them from the sampler's data)."""
        return self.cfg.training.ser_iterations

    def whole_frames(self) -> int:
        """The fewest frames of a whole-utterance pass: shorter files are padded to it with -1."""
        return self.frames

    def keep_best(self) -> KeepBest:
        """Model selection (and early stopping, with a patience)."""
        return KeepBest(self.net)

    def hooks(self) -> list[Hook]:
        """Further loop hooks of the family (none by default)."""
        return []

    # --- the same for every family --------------------------------------------------------------

    def fit(self, sample: Sampler, validation: Validation = None, iterations: int | None = None,
            progress: bool = False, *, start_step: int = 0, proximal_mu: float = 0.0,
            private: DpPlan | None = None) -> LoopResult:
        """Train for ``iterations`` (default :meth:`iterations`) batches from ``sample``.

        ``start_step``: steps already done elsewhere (FedAvg rounds continue the lr schedule);
        ``proximal_mu`` > 0 adds FedProx's mu/2 ||w - w_start||^2 (Li et al. 2020, eq. 2);
        ``private`` (``training.dp``, a FedAvg node): DP-SGD (common/privacy.py) on the batches of
        :meth:`private_sampler`; the proximal term holds no data and keeps its exact gradient.
        """
        params = list(self.net.parameters())
        opt = self.optimizer(params)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: self.lr_factor(start_step + s))
        prox = proximal_term(self.net, proximal_mu)

        def step(_: int) -> Logs:
            self.net.train()
            opt.zero_grad(set_to_none=True)
            if private is None:
                loss, logs = self.loss(sample(self.cfg.training.batch_size))
                (loss + prox()).backward()
            else:
                x, y = sample(self.cfg.training.batch_size)[:2]
                settle_spectral_norms(self.net, iterations=1)  # the power iteration a training-mode pass does
                logs = {"loss": noisy_gradient(self.net, params, F.cross_entropy, x.to(self.device), y.to(self.device),
                                               private)}
                extra = prox()
                if isinstance(extra, torch.Tensor):
                    extra.backward()
            opt.step()
            schedule.step()
            return logs

        score = self._scorer(validation)
        every = self.eval_every(sample) if score else 0
        return run(step, self.iterations(sample) if iterations is None else iterations, desc=self.name,
                   evaluate=score, eval_every=every, hooks=[*([self.keep_best()] if score else []), *self.hooks()],
                   progress=progress)

    def _scorer(self, validation: Validation) -> Callable[[], float] | None:
        if validation is None or self.cfg.training.eval_every <= 0:
            return None
        if callable(validation):
            return validation
        if not len(validation):
            return None
        return lambda: float(self.evaluate(validation)[self.selection])

    @torch.no_grad()
    def predict_proba(self, feats: Sequence[np.ndarray], chunk: int = 256) -> np.ndarray:
        """Per-file class probabilities (N, N_out): the window probabilities averaged (seed 002 §4.3,
        hop ``features.window_hop``), or one pass over the whole file (``whole_utterance``)."""
        if not feats:
            raise ValueError("no files to score")
        self.net.eval()
        if self.whole_utterance:
            return np.concatenate([self._probs(patches(f, max(self.whole_frames(), f.shape[1]), 1, -1.0))
                                   for f in feats])
        windows = [patches(f, self.frames, self.cfg.features.window_hop, pad_value=-1.0) for f in feats]
        flat = np.concatenate(windows)  # (sum n_i, F, frames)
        probs = np.concatenate([self._probs(flat[i:i + chunk]) for i in range(0, len(flat), chunk)])
        bounds = np.cumsum([0, *(len(w) for w in windows)])
        return np.stack([probs[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])

    def _probs(self, windows: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(windows)).unsqueeze(1).to(self.device)
        return F.softmax(self.logits(x), dim=1).cpu().numpy()

    def evaluate(self, data: LabeledSet) -> dict[str, Any]:
        """File-level macro-F1, UA, WA and confusion matrix on ``data``."""
        pred = self.predict_proba(data.feats).argmax(axis=1)
        return classification_metrics(list(data.labels), pred.tolist(), self.n_out)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The network weights (what FedAvg averages and what travels)."""
        return self.net.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the network weights."""
        self.net.load_state_dict(state)


def epochs_to_steps(epochs: float, n: int, batch_size: int) -> int:
    """Iterations of ``epochs`` passes over ``n`` utterances (papers count epochs, the loop steps)."""
    return max(1, math.ceil(epochs * n / batch_size))


def fedavg_round(trainer: NetTrainer, data: LabeledSet, *, round_: int, seed: int,
                 proximal_mu: float = 0.0) -> tuple[LoopResult, DpPlan | None]:
    """One FedAvg round at a node (fedavg and the other strategies): ``federation.local_iterations``
    steps on ``data`` from the trainer's (received) weights, the centralized lr schedule continued in
    local steps (seed 002 §4.4). With ``training.dp``: DP-SGD, its noise fitted to all the fold's
    rounds, so after round r the node has spent ``plan.epsilon(r x local)``. Also the shadow
    clients' round in the attack on updates (common/attacks.py): the attacker knows the protocol."""
    cfg = trainer.cfg
    local = cfg.federation.local_iterations
    torch.manual_seed(seed)
    private = private_plan(cfg.training, len(data), cfg.federation.rounds * local)
    sample = trainer.sampler(data, seed=seed) if private is None else trainer.private_sampler(data, seed=seed)
    result = trainer.fit(sample, None, iterations=local, start_step=(round_ - 1) * local, proximal_mu=proximal_mu,
                         private=private)
    return result, private
