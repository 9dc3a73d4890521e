"""Seed 000 (Chang & Scherer 2017) trainers: BasicCNN, MultitaskCNN, BasicDCGAN, MultitaskDCGAN.

The primary task is 5-point valence (``model.chang.task = "valence"``): the annotators' mean as a
fuzzy one-hot target (§4) trained with cross-entropy against that distribution; the multitask
variants add activation the same way. With ``task = "emotion"`` the primary head predicts the
study's classes instead (GAN-synthetic data has emotion labels only). Training crops are centred
on a random point of a random word when a forced alignment exists, else on a voiced frame (§4);
under-represented levels are oversampled (§4); validation after every epoch, stopping after
``patience`` (5) evaluations below the best and restoring the best (§5).

The DCGAN variants alternate, every step, a discriminator update (real unlabeled crops vs
generated ones), a generator update and the classifier update (§3). The multitask variants swap the
classifier's target every step: valence, then activation, then valence... (§3: "iteratively running
the generator, discriminator, valence classifier, and activation classifier"; §7 names it "the
alternating update strategy ... The iterative swapping of target tasks valence/activation").
Unlabeled speech is AMI and IEMOCAP at once (§4): the pre-training corpus (``data.pretrain_*``, e.g.
AMI as a folder) and the fold's own training audio, never the held-out session's (§5: speaker
independence).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from common.audio import SAMPLE_RATE
from common.config import Section, StudySections
from common.data import unlabeled_patches
from common.features import extractor_for
from common.metrics import LIKERT, fuzzy_label, fuzzy_metrics
from common.models.chang import ChangNet, Discriminator, Generator
from common.privacy import DpPlan
from common.trainers.base import KeepBest, Logs, LoopResult
from common.trainers.supervised import NetTrainer, Validation
from common.views import LabeledSet, PatchSampler, Sampler, SerBatch


class ChangConfig(Section):
    """``[model.chang]``: seed 000 (Chang & Scherer 2017), BasicCNN to MultitaskDCGAN.

    The paper tuned sizes by random search and does not list them; the four stride-2 layers follow
    the DCGAN discriminator it builds on (Radford et al. 2016: 5x5 kernels, 64-512 channels,
    batch-norm, leaky ReLU 0.2, Adam 2e-4 with beta1 0.5).
    """

    tiny: ClassVar[dict[str, Any]] = {"channels": [8, 16, 32, 64], "hidden": 32, "n_z": 16, "lr": 1e-3}

    # "valence": the paper's 5-point fuzzy valence (+ activation for the multitask variants);
    # "emotion": the platform's classes, e.g. to train on GAN-synthetic data (which has no valence).
    task: Literal["valence", "emotion"] = "valence"
    channels: tuple[int, int, int, int] = (64, 128, 256, 512)
    kernel: int = Field(5, ge=1)
    hidden: int = Field(256, ge=1, description="the fully connected layer before the task heads")
    n_z: int = Field(100, ge=1, description="DCGAN generator noise size")
    lr: float = Field(2e-4, gt=0)
    # §5: validation accuracy after every epoch; stop after 5 consecutive epochs below the best.
    patience: int = Field(5, ge=1)
    oversample: bool = True  # §4: oversample under-represented valence levels
    # Where the DCGAN variants draw unlabeled speech (§4: "audio from the AMI and IEMOCAP datasets"):
    # the pre-training corpus (data.pretrain_*: AMI with pretrain_corpus = "folder") and/or the
    # labeled training set's own audio without labels (the fold's training sessions; at a federated
    # node its own session). With both, each batch element comes from a source chosen in proportion
    # to its number of utterances (the paper does not say how it mixed them: as if pooled).
    unlabeled: tuple[Literal["pretrain", "train"], ...] = ("pretrain", "train")

    @field_validator("unlabeled", mode="before")
    @classmethod
    def _sources(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("unlabeled")
    @classmethod
    def _some(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError(f"name each source once, one or both of 'pretrain', 'train'; got {list(value)}")
        return value


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a distribution (B, K): -sum_k t_k log softmax(z)_k, batch mean (§3)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class Union:
    """Batches of unlabeled patches from several samplers: each element's source drawn in proportion
    to ``sizes`` (utterances per source), as if the sources were one pooled corpus."""

    def __init__(self, samplers: Sequence[Sampler], sizes: Sequence[int], seed: int = 0) -> None:
        self.samplers = list(samplers)
        self.p = np.asarray(sizes, dtype=float) / np.sum(sizes)
        self.rng = np.random.default_rng(seed)
        self.drawn = np.zeros(len(self.samplers), dtype=np.int64)  # patches per source so far

    def __call__(self, batch_size: int) -> SerBatch:
        counts = self.rng.multinomial(batch_size, self.p)
        self.drawn += counts
        parts = [sample(int(n))[0] for sample, n in zip(self.samplers, counts, strict=True) if n]
        return torch.cat(parts), torch.zeros(batch_size, dtype=torch.int64)


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
    """Heads by variant, fuzzy targets, word-centred crops, oversampling, patience.

    ``multitask``: the activation head beside valence (MultitaskCNN/DCGAN); ``adversarial``: the
    classifier shares its convolutions with a DCGAN discriminator trained on unlabeled speech, and
    every step first updates the discriminator and the generator (BasicDCGAN/MultitaskDCGAN, §3).
    """

    family = "chang"
    Config = ChangConfig
    hp: ChangConfig
    net: ChangNet
    selection = "ua"  # §5: validation accuracy (unweighted per class) picks the epoch

    def __init__(self, cfg: StudySections, device: torch.device | str = "cpu", *, name: str = "",
                 multitask: bool = False, adversarial: bool = False) -> None:
        self.multitask, self.adversarial = multitask, adversarial
        self.steps = 0  # classifier updates so far: the multitask variants' target alternates with it
        super().__init__(cfg, device, name=name)

    def build(self) -> ChangNet:
        c = self.hp
        self.valence = c.task == "valence"
        self.n_out = LIKERT if self.valence else len(self.cfg.data.classes)
        heads = {"primary": self.n_out, **({"activation": LIKERT} if self.multitask else {})}
        disc = Discriminator(self.rows, self.frames, c.channels, c.kernel, c.hidden, heads, self.adversarial)
        gen = Generator(self.rows, self.frames, c.channels, c.n_z) if self.adversarial else None
        return ChangNet(disc, gen)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["primary"]

    def optimizer(self, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.hp.lr, betas=(0.5, 0.999))  # DCGAN's Adam

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
        weights = [1 / count[v] for v in levels] if self.hp.oversample else None
        hop = getattr(extractor_for(self.cfg.features.kind, self.cfg.features.params), "hop_length", 256)
        words = aux.get("words", ((),) * len(data))
        spans = [crop_spans(f, w, hop) for f, w in zip(data.feats, words, strict=True)]
        return PatchSampler(data, self.frames, seed=seed, aux=keys, weights=weights, spans=spans)

    def eval_every(self, sample: Sampler) -> int:
        """One evaluation per epoch over the real training set (§5); the configured interval on
        other sources (a synthetic pool has no epochs)."""
        return self.epoch_steps(sample) or super().eval_every(sample)

    def keep_best(self) -> KeepBest:
        return KeepBest(self.net, patience=self.hp.patience)

    def loss(self, batch: SerBatch) -> tuple[torch.Tensor, Logs]:
        gan = self._gan_step() if self.adversarial else {}
        x, y = batch[0].to(self.device), batch[1].to(self.device)
        aux = {k: v.to(self.device) for k, v in batch[2].items()} if len(batch) == 3 else {}
        out = self.net(x)
        self.steps += 1
        # Multitask: every second update trains the activation head instead (§3, §7); batches
        # without activation (GAN-synthetic) always train the primary task.
        if self.multitask and "activation_fuzzy" in aux and self.steps % 2 == 0:
            loss = soft_cross_entropy(out["activation"], aux["activation_fuzzy"])
            return loss, {"loss": loss.item(), "activation": loss.item(), "task": 1.0, **gan}
        if self.valence:
            loss = soft_cross_entropy(out["primary"], aux["valence_fuzzy"])
        else:
            loss = F.cross_entropy(out["primary"], y)
        return loss, {"loss": loss.item(), "task": 0.0, **gan}

    def fit(self, sample: Sampler, validation: Validation = None, iterations: int | None = None,
            progress: bool = False, *, start_step: int = 0, proximal_mu: float = 0.0,
            private: DpPlan | None = None) -> LoopResult:
        """The base loop; the DCGAN variants first update the discriminator and the generator (§3).
        (``private`` never comes: :meth:`private_sampler` refuses this family's own loss.)"""
        if not self.adversarial:
            return super().fit(sample, validation, iterations, progress, start_step=start_step,
                               proximal_mu=proximal_mu, private=private)
        net, lr = self.net, self.hp.lr
        assert net.gen is not None and net.disc.real is not None
        self._d_opt = torch.optim.Adam([*net.disc.convs.parameters(), *net.disc.real.parameters()], lr=lr,
                                       betas=(0.5, 0.999))
        self._g_opt = torch.optim.Adam(net.gen.parameters(), lr=lr, betas=(0.5, 0.999))
        self._unlabeled = self.unlabeled(sample)
        return super().fit(sample, validation, iterations, progress, start_step=start_step, proximal_mu=proximal_mu,
                           private=private)

    def unlabeled(self, sample: Sampler) -> Sampler:
        """The unlabeled speech of ``model.chang.unlabeled``: the pre-training corpus, the training
        set's own crops (``sample``: only the fold's training sessions, or a node's own), or both."""
        seed = self.cfg.training.seed + 1
        sources: dict[str, tuple[Sampler, int]] = {}
        if "pretrain" in self.hp.unlabeled:
            stream = unlabeled_patches(self.cfg, self.frames, seed=seed)
            sources["pretrain"] = stream, len(stream.prepared)
        if "train" in self.hp.unlabeled:
            data = getattr(sample, "data", None)
            sources["train"] = sample, len(data) if data is not None else 0  # 0: a synthetic pool, no size
        if len(sources) == 1:
            return next(iter(sources.values()))[0]
        sizes = [n for _, n in sources.values()]
        return Union([s for s, _ in sources.values()], sizes if all(sizes) else [1] * len(sizes), seed=seed)

    def _gan_step(self) -> Logs:
        """One discriminator and one generator update with the cross-entropy losses of §2."""
        net, b = self.net, self.cfg.training.batch_size
        assert net.gen is not None  # fit() set up the adversarial variant, which has a generator
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

    def evaluate(self, data: LabeledSet) -> dict[str, Any]:
        """Valence: §5's split-label 5-class UA, 3-class pooled UA and Pearson r (plus macro-F1/WA);
        emotion: the platform's macro-F1, UA, WA."""
        if not self.valence:
            return super().evaluate(data)
        fuzzy = np.stack([fuzzy_label(v) for v in data.aux["valence"]])
        return fuzzy_metrics(fuzzy, self.predict_proba(data.feats))
