"""Who is speaking: a speaker-gender attack on the generators nodes send (gan-federated).

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

from collections.abc import Mapping

import numpy as np
import torch

from common.audit import classifier, generated
from common.config import StudySections
from common.data import prepared_unlabeled
from common.features import MinMax
from common.synthesis import ClassConditionalGenerator
from common.trainers.ser import SerCnnTrainer
from common.views import LabeledSet

GENDERS = ("F", "M")  # the classifier's classes: index 0 = female


def public_genders(cfg: StudySections, stats: MinMax, per_gender: int, seed: int) -> LabeledSet:
    """Up to ``per_gender`` utterances of each gender of the pre-training corpus, scaled by ``stats``
    (the generator's scaling): label 0 = F, 1 = M."""
    prepared = prepared_unlabeled(cfg)
    rows = {g: [r for r, u in enumerate(prepared.utterances) if u.gender == g] for g in GENDERS}
    if not all(rows.values()):
        counts = {g: len(r) for g, r in rows.items()}
        raise ValueError(f"the gender attack needs public speech of both genders; the pre-training corpus "
                         f"({cfg.data.pretrain_root or 'the embedded synthetic LibriSpeech'}) has {counts} "
                         "(LibriSpeech: SPEAKERS.TXT; IEMOCAP: the speaker ids); set audit.gender_attack = false")
    rng = np.random.default_rng(seed)
    chosen = [(int(r), label) for label, g in enumerate(GENDERS) for r in rng.permutation(rows[g])[:per_gender]]
    feats = tuple(stats.scale(prepared.feature(r)) for r, _ in chosen)
    return LabeledSet(feats, tuple(label for _, label in chosen), tuple(prepared.utterances[r].id for r, _ in chosen))


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
