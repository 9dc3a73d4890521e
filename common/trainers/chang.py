"""Seed 000 (Chang & Scherer 2017) trainers: BasicCNN, MultitaskCNN, BasicDCGAN, MultitaskDCGAN.

The primary task is 5-point valence (``model.chang.task = "valence"``): the annotators' mean as a
fuzzy one-hot target (§4) trained with cross-entropy against that distribution; the multitask
variants add activation the same way. With ``task = "emotion"`` the primary head predicts the
study's classes instead (GAN-synthetic data has emotion labels only). Training crops are centred
on a random point of a random word when a forced alignment exists, else on a voiced frame (§4);
under-represented levels are oversampled (§4); validation after every epoch, stopping after
``patience`` (5) evaluations below the best and restoring the best (§5).

The DCGAN variants alternate, every step, a discriminator update (real unlabeled crops vs
generated ones), a generator update and the classifier update (§3).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.audio import SAMPLE_RATE
from common.config import StudyConfig
from common.features import MinMax, build_extractor
from common.metrics import LIKERT, fuzzy_label, fuzzy_metrics
from common.models.chang import ChangNet, Discriminator, Generator
from common.trainers.base import KeepBest, Logs, LoopResult
from common.trainers.gan import Sampler
from common.trainers.supervised import NetTrainer, Validation, epochs_to_steps
from common.views import LabeledSet, PatchSampler, SerBatch


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a distribution (B, K): -sum_k t_k log softmax(z)_k, batch mean (§3)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def crop_spans(feat: np.ndarray, words: tuple[tuple[float, float], ...], hop: int) -> list[tuple[int, int]]:
    """Frame ranges a crop may be centred in: the words (seconds -> frames of ``hop`` samples), else
    every voiced frame (frame energy, the mean over rows, above the utterance's median)."""
    last = feat.shape[1] - 1
    spans = [(min(int(a * SAMPLE_RATE / hop), last), min(int(b * SAMPLE_RATE / hop), last)) for a, b in words]
    if spans:
        return spans
    energy = feat.mean(axis=0)
    return [(int(f), int(f)) for f in np.flatnonzero(energy > np.median(energy))]


class ChangTrainer(NetTrainer):
    """The family: heads by variant, fuzzy targets, word-centred crops, oversampling, patience."""

    multitask: ClassVar[bool] = False
    adversarial: ClassVar[bool] = False
    selection = "ua"  # §5: validation accuracy (unweighted per class) picks the epoch

    def build(self) -> nn.Module:
        c = self.cfg.model.chang
        self.valence = c.task == "valence"
        self.n_out = LIKERT if self.valence else len(self.cfg.data.classes)
        heads = {"primary": self.n_out, **({"activation": LIKERT} if self.multitask else {})}
        disc = Discriminator(self.rows, self.frames, c.channels, c.kernel, c.hidden, heads, self.adversarial)
        gen = Generator(self.rows, self.frames, c.channels, c.n_z) if self.adversarial else None
        return ChangNet(disc, gen)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["primary"]

    def optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.cfg.model.chang.lr, betas=(0.5, 0.999))  # DCGAN's Adam

    def lr_factor(self, step: int) -> float:
        return 1.0

    def sampler(self, data: LabeledSet, seed: int = 0) -> Sampler:
        """Word-centred crops, levels oversampled, fuzzy targets as ``aux``."""
        aux: dict[str, tuple[Any, ...]] = dict(data.aux)
        for dim in ("valence", "activation"):
            if dim in data.aux:
                aux[f"{dim}_fuzzy"] = tuple(fuzzy_label(v) for v in data.aux[dim])
        if self.valence and "valence_fuzzy" not in aux:
            raise ValueError("model.chang.task = \"valence\" needs the annotators' valence of every utterance "
                             "(IEMOCAP's EmoEvaluation); this data has none: set model.chang.task = \"emotion\"")
        data = replace(data, aux=aux)
        keys = [k for k in ("valence_fuzzy", "activation_fuzzy") if k in aux]
        levels = [int(np.argmax(f)) for f in aux["valence_fuzzy"]] if self.valence else list(data.labels)
        count = Counter(levels)
        weights = [1 / count[v] for v in levels] if self.cfg.model.chang.oversample else None
        hop = getattr(build_extractor(self.cfg.features.kind, **self.cfg.features.params), "hop_length", 256)
        words = aux.get("words", ((),) * len(data))
        spans = [crop_spans(f, w, hop) for f, w in zip(data.feats, words, strict=True)]
        return PatchSampler(data, self.frames, seed=seed, aux=keys, weights=weights, spans=spans)

    def eval_every(self, sample: Sampler) -> int:
        """One evaluation per epoch over the real training set (§5); the configured interval on
        other sources (a synthetic pool has no epochs)."""
        data = getattr(sample, "data", None)
        return epochs_to_steps(1, len(data), self.cfg.training.batch_size) if data else super().eval_every(sample)

    def keep_best(self) -> KeepBest:
        return KeepBest(self.net, patience=self.cfg.model.chang.patience)

    def loss(self, batch: SerBatch) -> tuple[torch.Tensor, Logs]:
        x, y = batch[0].to(self.device), batch[1].to(self.device)
        aux = {k: v.to(self.device) for k, v in batch[2].items()} if len(batch) == 3 else {}
        out = self.net(x)
        if self.valence:
            loss = soft_cross_entropy(out["primary"], aux["valence_fuzzy"])
        else:
            loss = F.cross_entropy(out["primary"], y)
        logs = {"loss": loss.item()}
        if self.multitask and "activation_fuzzy" in aux:  # absent on GAN-synthetic batches
            act = soft_cross_entropy(out["activation"], aux["activation_fuzzy"])
            loss, logs["activation"] = loss + act, act.item()
        return loss, logs

    def evaluate(self, data: LabeledSet) -> dict[str, Any]:
        """Valence: §5's split-label 5-class UA, 3-class pooled UA and Pearson r (plus macro-F1/WA);
        emotion: the platform's macro-F1, UA, WA."""
        if not self.valence:
            return super().evaluate(data)
        fuzzy = np.stack([fuzzy_label(v) for v in data.aux["valence"]])
        return fuzzy_metrics(fuzzy, self.predict_proba(data.feats))


class BasicCnn(ChangTrainer):
    """BasicCNN: the convolutions, a fully connected layer, the valence head."""

    name = "chang-cnn"


class MultitaskCnn(ChangTrainer):
    """MultitaskCNN: BasicCNN plus the activation head."""

    name = "chang-multitask-cnn"
    multitask = True


class BasicDcgan(ChangTrainer):
    """BasicDCGAN: the valence classifier on a DCGAN discriminator trained on unlabeled speech."""

    name = "chang-dcgan"
    adversarial = True

    def fit(self, sample: Sampler, validation: Validation = None, iterations: int | None = None,
            progress: bool = False, *, start_step: int = 0, proximal_mu: float = 0.0) -> LoopResult:
        """The base loop; each step first updates the discriminator and the generator (§3)."""
        net, lr = self.net, self.cfg.model.chang.lr
        assert net.gen is not None and net.disc.real is not None
        self._d_opt = torch.optim.Adam([*net.disc.convs.parameters(), *net.disc.real.parameters()], lr=lr,
                                       betas=(0.5, 0.999))
        self._g_opt = torch.optim.Adam(net.gen.parameters(), lr=lr, betas=(0.5, 0.999))
        unlabeled = _unlabeled(self.cfg, self.frames) if self.cfg.model.chang.unlabeled == "pretrain" else None
        self._unlabeled = unlabeled or sample
        return super().fit(sample, validation, iterations, progress, start_step=start_step, proximal_mu=proximal_mu)

    def loss(self, batch: SerBatch) -> tuple[torch.Tensor, Logs]:
        gan = self._gan_step()
        loss, logs = super().loss(batch)
        return loss, {**logs, **gan}

    def _gan_step(self) -> Logs:
        """One discriminator and one generator update with the cross-entropy losses of §2."""
        net, b = self.net, self.cfg.training.batch_size
        real = self._unlabeled(b)[0].to(self.device)
        z = torch.randn(b, net.gen.n_z, device=self.device)
        fake = net.gen(z)
        ones, zeros = torch.ones(b, device=self.device), torch.zeros(b, device=self.device)
        d_loss = (F.binary_cross_entropy_with_logits(net.disc.realness(real), ones)
                  + F.binary_cross_entropy_with_logits(net.disc.realness(fake.detach()), zeros))
        self._d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self._d_opt.step()
        g_loss = F.binary_cross_entropy_with_logits(net.disc.realness(fake), ones)  # generated called real
        self._g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        self._g_opt.step()
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item()}


class MultitaskDcgan(BasicDcgan):
    """MultitaskDCGAN: BasicDCGAN plus the activation head (the paper's full model, Fig. 1)."""

    name = "chang-multitask-dcgan"
    multitask = True


_UNLABELED: dict[str, LabeledSet] = {}


def _unlabeled_set(cfg: StudyConfig) -> LabeledSet:
    """The unlabeled corpus (``data.pretrain_*``: LibriSpeech, AMI or any folder), scaled to
    [-1, 1] by its own min/max; read and featurized once per process."""
    from common.data import pretrain_scan
    from common.pipeline import extract

    key = cfg.data.model_dump_json() + cfg.features.model_dump_json()
    if key in _UNLABELED:
        return _UNLABELED[key]
    feats = list(extract(cfg, pretrain_scan(cfg).utterances).values())
    if not feats:
        raise ValueError(f"model.chang.unlabeled = \"pretrain\": no usable audio in the unlabeled corpus "
                         f"{cfg.data.pretrain_root or '(embedded synthetic)'}; set data.pretrain_root or "
                         "model.chang.unlabeled = \"train\"")
    stats = MinMax.combine(*(MinMax.empty().update(f) for f in feats))
    _UNLABELED[key] = LabeledSet(tuple(stats.scale(f) for f in feats), (0,) * len(feats))
    return _UNLABELED[key]


def _unlabeled(cfg: StudyConfig, frames: int) -> Sampler:
    return PatchSampler(_unlabeled_set(cfg), frames, seed=cfg.training.seed + 1)
