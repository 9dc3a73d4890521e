"""Who is speaking: speaker-gender attacks on what nodes send — generators (gan-federated) and
FedAvg updates (fedavg and the other strategies, :class:`UpdateAttack`).

Eyes-off keeps speech at the node; the generator leaves it. Feng et al. (2021, "Attribute Inference
Attack of Speech Emotion Recognition in Federated Learning Settings") infer a client's gender from
its shared updates; this is the same question asked of a generator. The attacker (the server, or
anyone holding the generator) has public speech with known gender (the pre-training corpus, public
by assumption as in seed 002) and nothing of the node's:

1. it trains a gender classifier (seed 002's SER network with a two-way head, the audit
   classifier's schedule) on public patches scaled as the generator's training data;
2. it scores a generator by the classifier's mean P(female) over ``audit.samples_per_class``
   generated samples of every emotion;
3. over nodes that each hold one speaker (``federation.partition = "speaker"``), the attack's
   figures are the ROC AUC of that score against the nodes' true genders (chance 0.5), a 95 %
   bootstrap interval over nodes, the accuracy of thresholding it at 0.5 beside its chance (the
   larger gender's share of nodes), and the advantage: the mean over nodes of 2 P(true gender) - 1
   (0: the attacker knows nothing, 1: certain and right). The AUC measures how well the score
   separates the genders in any direction, which a classifier trained on noise may do by chance;
   the accuracy and the advantage measure what the attacker actually knows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from common.audit import classifier, generated
from common.config import StudySections
from common.data import Prepared, prepared_unlabeled
from common.features import MinMax
from common.features.windows import patches
from common.models.sngan import Discriminator, GanSpec, Generator
from common.pipeline import fedgan_round
from common.schema import StudyConfig
from common.synthesis import ClassConditionalGenerator
from common.trainers.ser import SerCnnTrainer
from common.trainers.supervised import NetTrainer
from common.views import LabeledSet

GENDERS = ("F", "M")  # the classifier's classes: index 0 = female


def public_genders(cfg: StudySections, stats: MinMax, per_gender: int, seed: int) -> LabeledSet:
    """Up to ``per_gender`` utterances of each gender of the pre-training corpus, scaled by ``stats``
    (the generator's scaling): label 0 = F, 1 = M."""
    prepared, chosen = _public(cfg, per_gender, seed)
    feats = tuple(stats.scale(prepared.feature(r)) for r, _ in chosen)
    return LabeledSet(feats, tuple(label for _, label in chosen), tuple(prepared.utterances[r].id for r, _ in chosen))


def shadow_clients(cfg: StudySections, stats: MinMax, per_gender: int, seed: int) -> list[tuple[str, LabeledSet]]:
    """The attacker's shadow clients for the attack on updates: each speaker of :func:`public_genders`'
    utterances as one client, with its gender ("F"/"M"). Labels are placeholders (the public
    speech has no emotion labels; :class:`UpdateAttack` gives the global model's own)."""
    prepared, chosen = _public(cfg, per_gender, seed)
    by_speaker: dict[str, list[int]] = {}
    for r, _ in chosen:
        by_speaker.setdefault(prepared.utterances[r].speaker, []).append(r)
    return [(str(prepared.utterances[rows[0]].gender), LabeledSet(
        tuple(stats.scale(prepared.feature(r)) for r in rows), (0,) * len(rows), tuple(prepared.utterances[r].id for r in rows)))
        for _, rows in sorted(by_speaker.items())]


def _public(cfg: StudySections, per_gender: int, seed: int) -> tuple[Prepared, list[tuple[int, int]]]:
    # (row, label 0 = F / 1 = M) of up to per_gender random utterances of each gender.
    prepared = prepared_unlabeled(cfg)
    rows = {g: [r for r, u in enumerate(prepared.utterances) if u.gender == g] for g in GENDERS}
    if not all(rows.values()):
        counts = {g: len(r) for g, r in rows.items()}
        raise ValueError(f"the gender attack needs public speech of both genders; the pre-training corpus "
                         f"({cfg.data.pretrain_root or 'the embedded synthetic LibriSpeech'}) has {counts} "
                         "(LibriSpeech: SPEAKERS.TXT; IEMOCAP: the speaker ids); set audit.gender_attack = false")
    rng = np.random.default_rng(seed)
    return prepared, [(int(r), label) for label, g in enumerate(GENDERS) for r in rng.permutation(rows[g])[:per_gender]]


def gender_classifier(cfg: StudySections, public: LabeledSet, seed: int) -> SerCnnTrainer:
    """The attacker's gender classifier, trained on ``public`` (labels 0 = F, 1 = M)."""
    two_way = cfg.model_copy(update={"data": cfg.data.model_copy(update={"classes": GENDERS})})
    clf = classifier(two_way, seed)
    clf.fit(clf.sampler(public, seed=seed))
    return clf


def female_score(clf: SerCnnTrainer, gen: ClassConditionalGenerator, cfg: StudySections, seed: int) -> float:
    """Mean P(female) the classifier gives ``gen``'s samples of every emotion class."""
    x, _ = generated(gen, cfg.audit.samples_per_class, len(cfg.data.classes), seed)  # (N, F, P)
    clf.net.eval()
    with torch.no_grad():
        probs = np.concatenate([clf._probs(x[i : i + 256]) for i in range(0, len(x), 256)])  # (N, 2)
    return float(probs[:, 0].mean())


def gender_attack(scores: Mapping[str, float], genders: Mapping[str, str], resamples: int = 2000,
                  seed: int = 0) -> dict[str, float]:
    """The attack's figures over nodes: ``scores`` (P(female) per node) against ``genders`` ("F"/"M").

    ``gender_auc`` with ``gender_auc_low``/``_high`` (percentile bootstrap over nodes, resamples
    holding both genders), ``gender_accuracy`` at 0.5 and ``gender_chance`` (the larger gender's
    share), ``gender_advantage`` (mean 2 P(true gender) - 1; chance 0), ``gender_nodes``. Empty when the nodes are not of both genders.
    """
    names = sorted(n for n in scores if genders.get(n) in GENDERS)
    female = np.asarray([genders[n] == "F" for n in names])
    score = np.asarray([scores[n] for n in names])
    if female.all() or not female.any():
        return {}
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(resamples):
        pick = rng.integers(0, len(names), len(names))
        if female[pick].any() and not female[pick].all():
            aucs.append(_auc(female[pick], score[pick]))
    return {"gender_auc": _auc(female, score),
            "gender_auc_low": float(np.percentile(aucs, 2.5)), "gender_auc_high": float(np.percentile(aucs, 97.5)),
            "gender_accuracy": float(np.mean((score >= 0.5) == female)),
            "gender_advantage": float(np.mean(np.where(female, score, 1 - score) * 2 - 1)),
            "gender_chance": float(max(female.mean(), 1 - female.mean())), "gender_nodes": float(len(names))}


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney probability that a positive outscores a negative (ties count
    half); a few nodes, so all pairs."""
    pos, neg = score[positive][:, None], score[~positive][None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def first_layer(net: nn.Module) -> tuple[str, ...]:
    """The state-dict names of ``net``'s first convolution or linear layer's parameters: the
    update features of the attack on updates (Feng et al. 2021 find most of the gender leakage in
    the first layer)."""
    for name, module in net.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            return tuple(f"{name}.{p}" for p, _ in module.named_parameters())
    raise ValueError(f"{type(net).__name__} has no convolution or linear layer to read updates from")


# One shadow client's round: (the global weights sent, its speech, round, seed) -> its weights after.
ShadowRound = Callable[[Mapping[str, torch.Tensor], LabeledSet, int, int], Mapping[str, torch.Tensor]]


class UpdateAttack:
    """Feng et al. (2021)'s shadow-model attribute inference on the updates nodes send, by the server
    in one fold: each round it sees the weights it sent and each node's reply. The attacker

    1. trains shadow clients (:func:`shadow_clients`, public speakers of known gender) one round
       each from the same weights, as the nodes train (``shadow_round``: the protocol is public,
       DP-SGD included), on the labels the global model gives their speech
       (:func:`ser_update_attack`, :func:`fedgan_update_attack`);
    2. fits a logistic regression from the shadow updates of the first layer that reads the data
       (``names``; after - before, standardized) to gender;
    3. scores each node by its mean P(female) over the rounds it answered.
    """

    def __init__(self, shadow_round: ShadowRound, names: Sequence[str], shadows: Sequence[tuple[str, LabeledSet]],
                 seed: int) -> None:
        self.shadow_round, self.names, self.shadows, self.seed = shadow_round, tuple(names), list(shadows), seed
        self.sent: dict[int, dict[str, torch.Tensor]] = {}  # round -> the weights sent
        self.updates: dict[str, list[np.ndarray]] = {}  # node -> first-layer update per round

    def observe(self, round_: int, sent: Mapping[str, torch.Tensor], reply: Mapping[str, torch.Tensor], node: str) -> None:
        """One node's reply to round ``round_``'s weights ``sent``."""
        self.sent.setdefault(round_, dict(sent))
        self.updates.setdefault(node, []).append(self.features(sent, reply))

    def features(self, before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]) -> np.ndarray:
        """The first layer's update, flattened (D,)."""
        return torch.cat([(after[n] - before[n]).flatten() for n in self.names]).double().numpy()

    def scores(self) -> dict[str, float]:
        """Each observed node's mean P(female) under the classifier fitted on the shadow updates."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x, female = [], []
        for round_, sent in sorted(self.sent.items()):
            for i, (gender, data) in enumerate(self.shadows):
                x.append(self.features(sent, self.shadow_round(sent, data, round_, self.seed + 7919 * round_ + i)))
                female.append(gender == "F")
        if len(set(female)) < 2:
            return {}
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(np.stack(x), female)
        return {node: float(clf.predict_proba(np.stack(rows))[:, 1].mean()) for node, rows in self.updates.items()}


def ser_update_attack(build: Callable[[], NetTrainer], local_round: Callable[[NetTrainer, LabeledSet, int, int], object],
                      shadows: Sequence[tuple[str, LabeledSet]], seed: int) -> UpdateAttack:
    """The attack on SER updates (FedAvg and the other strategies): a shadow client is a fresh
    trainer (``build``) with the sent weights, its speech labelled by that model's predictions (the
    public speech has no emotion labels; Feng et al. had labelled shadow data), one ``local_round``;
    the features are the SER network's first layer."""
    def shadow_round(sent: Mapping[str, torch.Tensor], data: LabeledSet, round_: int, seed: int) -> dict[str, torch.Tensor]:
        shadow = build()
        shadow.load_state_dict(dict(sent))
        labels = tuple(int(c) for c in shadow.predict_proba(data.feats).argmax(axis=1))
        local_round(shadow, LabeledSet(data.feats, labels, data.ids), round_, seed)
        return shadow.state_dict()

    return UpdateAttack(shadow_round, first_layer(build().net), shadows, seed)


def fedgan_update_attack(cfg: StudyConfig, steps: int, shadows: Sequence[tuple[str, LabeledSet]],
                         seed: int) -> UpdateAttack:
    """The attack on FedGAN's updates (gan-fedavg; the state observed is ``generator.*`` and
    ``discriminator.*``): a shadow client loads the sent networks, labels its speech by the
    discriminator's class head (:func:`discriminator_labels`) and runs one node round
    (``fedgan_round``, ``steps`` steps, fresh Adam: a node's kept moments never leave it); the
    features are the discriminator's first layer, the one layer that reads the node's speech."""
    spec = GanSpec.of(cfg)

    def shadow_round(sent: Mapping[str, torch.Tensor], data: LabeledSet, round_: int, seed: int) -> dict[str, torch.Tensor]:
        gen, disc = Generator(spec), Discriminator(spec, head=spec.n_c + 1)
        gen.load_state_dict(_part(sent, "generator."))
        disc.load_state_dict(_part(sent, "discriminator."))
        labels = discriminator_labels(disc, spec.n_c, data.feats, cfg.features.window_hop)
        fedgan_round(cfg, gen, disc, LabeledSet(data.feats, labels, data.ids), seed=seed, round_=round_, steps=steps)
        return {**{f"generator.{k}": v.cpu() for k, v in gen.state_dict().items()},
                **{f"discriminator.{k}": v.cpu() for k, v in disc.state_dict().items()}}  # what a node sends

    names = [f"discriminator.{n}" for n in first_layer(Discriminator(spec, head=spec.n_c + 1))]
    return UpdateAttack(shadow_round, names, shadows, seed)


def _part(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


@torch.no_grad()
def discriminator_labels(disc: Discriminator, n_classes: int, feats: Sequence[np.ndarray], hop: int) -> tuple[int, ...]:
    """Per utterance, the emotion class stage 3's discriminator finds likeliest (the first
    ``n_classes`` of its N_c + 1 outputs, softmax averaged over the utterance's (F, patch) windows)."""
    disc.eval()
    labels = []
    for feat in feats:
        x = torch.from_numpy(np.ascontiguousarray(patches(feat, disc.spec.patch, hop, pad_value=-1.0))).unsqueeze(1)
        labels.append(int(torch.softmax(disc(x)[:, :n_classes], dim=1).mean(0).argmax()))  # x: (n, 1, F, P)
    disc.train()
    return tuple(labels)
