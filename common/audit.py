"""Know your generators: quality and privacy figures of one class-conditional generator.

Every regime that makes generators audits each one with :func:`audit_generator` against the real
utterances it was fine-tuned on (``members``) and utterances of the same speakers it never saw
(``held_out``; :func:`members_of` holds back ``audit.holdout`` of them, by a hash of each id).

Quality (Shmelkov et al. 2018, "How good is my GAN?"):

- ``gan_test``: accuracy of a classifier trained on real member data on generated samples of each
  class (the conditioning class is the label): are the samples recognisably of their class?
- ``gan_train``: macro-F1 on the held-out utterances of a classifier trained only on generated
  samples; ``real_train`` is the same classifier trained on the members, the ceiling it is read against;
- ``fd``: class-conditional Fréchet distance (Heusel et al. 2017) between member and generated
  patches in the embedding of the real-trained classifier (its hidden layer), averaged over
  classes; ``fd_real`` is the same distance between member and held-out real patches (the floor
  sampling noise alone gives at these sample sizes);
- ``diversity``: mean pairwise distance of generated patches of a class over that of real member
  patches of the class, averaged over classes (1 = as diverse as the data; near 0 = mode collapse);
  ``diversity_generated`` is the numerator alone (the one figure needing no real data).

Privacy (in the scaled log-mel patch space itself, where a copied patch is at distance 0 and an
embedding cannot hide it):

- ``ct``: Meehan et al. 2020's data-copying statistic C_T: the training patches are cut into
  ``audit.cells`` k-means cells; in each cell the distances of generated samples to their nearest
  training patch are compared with those of held-out patches by a Mann-Whitney U z-score, and the
  z-scores are averaged weighted by the cell's share of held-out patches. C_T << 0: generated
  samples sit closer to the training data than unseen data does (copying); >> 0: underfitting.
- ``mia_auc`` / ``mia_tpr_1fpr``: a distance-based membership-inference attack (in the spirit of
  Chen et al. 2020's GAN-leaks, full black-box): an utterance's score is minus the distance of its
  closest window to the closest generated sample; members are as many member utterances as there
  are held-out ones (drawn at random), non-members the held-out ones; the ROC AUC and the true-
  positive rate at 1 % false positives (0 false positives when there are fewer than 100 non-members).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import NamedTuple, cast

import numpy as np
import torch
from scipy.stats import mannwhitneyu
from sklearn.cluster import KMeans
from sklearn.metrics import roc_auc_score, roc_curve

from common.config import StudySections
from common.features.windows import patches, random_patch
from common.models.sngan import Discriminator
from common.synthesis import ClassConditionalGenerator, SyntheticPool
from common.trainers.ser import SerCnnTrainer
from common.views import LabeledSet, subset

log = logging.getLogger(__name__)

# What audit_generator returns, in the report's column order.
AUDIT_KEYS = ("gan_test", "gan_train", "real_train", "fd", "fd_real", "diversity", "ct", "mia_auc",
              "mia_tpr_1fpr", "diversity_generated")

def held_back(utterance_id: str, fraction: float, seed: int) -> bool:
    """Whether ``utterance_id`` is held back from generator training: a hash of (seed, id), so a
    node decides it for its own utterances exactly as the central study does for the same ones."""
    digest = hashlib.sha256(f"{seed}:{utterance_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def classifier(cfg: StudySections, seed: int) -> SerCnnTrainer:
    """A fresh audit classifier: seed 002's SER network (whatever the study's trainer), trained
    ``audit.iterations`` steps without model selection, on the CPU."""
    training = cfg.training.model_copy(update={"ser_iterations": cfg.audit.iterations, "eval_every": 0, "seed": seed})
    torch.manual_seed(seed)
    return SerCnnTrainer(cfg.model_copy(update={"training": training}), "cpu")


def reference_classifier(cfg: StudySections, members: LabeledSet, seed: int = 0) -> SerCnnTrainer:
    """The classifier trained on real member data (gan_test, real_train and the Fréchet embedding)."""
    ref = classifier(cfg, seed)
    ref.fit(ref.sampler(members, seed=seed))
    return ref


def fake_trained_classifier(cfg: StudySections, gen: ClassConditionalGenerator, seed: int = 0) -> SerCnnTrainer:
    """The classifier trained on ``gen``'s samples only (GAN-train). It needs no real data, so
    whoever holds the generator can train it once for every node that audits it."""
    on_fake = classifier(cfg, seed + 1)
    on_fake.fit(SyntheticPool([gen], cfg.audit.samples_per_class, len(cfg.data.classes), seed=seed + 2).sampler(seed=seed))
    return on_fake


def generated(gen: ClassConditionalGenerator, per_class: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` samples of every class: x (N, F, P) float32, y (N,)."""
    pool = SyntheticPool([gen], per_class, n_classes, seed=seed)
    xs, ys = [], []
    for start in range(0, len(pool), 256):
        x, y = pool.generate(range(start, min(start + 256, len(pool))))
        xs.append(x[:, 0].numpy())
        ys.append(y.numpy())
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def real_patches(data: LabeledSet, per_class: int, size: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random (F, size) crops of random utterances, ``per_class`` per class present: x (N, F, P), y (N,)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(data.labels)
    xs, ys = [], []
    for c in range(n_classes):
        rows = np.flatnonzero(labels == c)
        if not len(rows):
            continue
        for r in rng.choice(rows, size=per_class):
            xs.append(random_patch(data.feats[r], size, rng, pad_value=-1.0))
            ys.append(c)
    return np.asarray(xs, dtype=np.float32), np.asarray(ys)


def _embed(ref: SerCnnTrainer, x: np.ndarray) -> np.ndarray:
    """(N, F, P) patches -> (N, hidden) features of the reference network (its body without the head)."""
    net = cast(Discriminator, ref.net)  # seed 002's SER network: the discriminator with an N_c head
    net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(x), 256):
            out.append(net.features(torch.from_numpy(x[start : start + 256]).unsqueeze(1)).numpy())
    return np.concatenate(out).astype(np.float64)


def _gan_test(ref: SerCnnTrainer, fake: np.ndarray, fake_y: np.ndarray) -> float:
    """Accuracy of ``ref`` on generated patches (N, F, P) labelled by their condition ``fake_y``."""
    ref.net.eval()
    with torch.no_grad():
        predicted = np.concatenate([ref._probs(fake[i : i + 256]).argmax(1) for i in range(0, len(fake), 256)])
    return float(np.mean(predicted == fake_y))


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``a`` (N, D) and ``b`` (M, D).

    With X, Y the centred rows over sqrt(N - 1), sqrt(M - 1): cov_a = X'X, cov_b = Y'Y, and
    tr sqrt(cov_a cov_b) is the sum of the singular values of X Y' (N x M): no D x D matrix square
    root (D = 4096 at the paper's width), and exact for the rank-deficient covariances of N < D.
    """
    mu = a.mean(0) - b.mean(0)
    x = (a - a.mean(0)) / np.sqrt(max(len(a) - 1, 1))
    y = (b - b.mean(0)) / np.sqrt(max(len(b) - 1, 1))
    cross = np.linalg.svd(x @ y.T, compute_uv=False).sum()
    return float(mu @ mu + (x * x).sum() + (y * y).sum() - 2 * cross)


def class_frechet(a: np.ndarray, ya: np.ndarray, b: np.ndarray, yb: np.ndarray) -> float:
    """:func:`frechet` per class present in both, averaged."""
    shared = sorted(set(ya.tolist()) & set(yb.tolist()))
    return float(np.mean([frechet(a[ya == c], b[yb == c]) for c in shared]))


def mean_pairwise(x: np.ndarray) -> float:
    """Mean L2 distance over the distinct pairs of rows of ``x`` (N, D)."""
    d = torch.cdist(torch.from_numpy(x), torch.from_numpy(x))
    n = len(x)
    return float(d.sum() / (n * (n - 1))) if n > 1 else 0.0


def nearest(queries: np.ndarray, refs: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Distance of each row of ``queries`` (N, D) to its nearest row of ``refs`` (M, D)."""
    r = torch.from_numpy(np.ascontiguousarray(refs, dtype=np.float32))
    out = [torch.cdist(torch.from_numpy(np.ascontiguousarray(queries[i : i + chunk], dtype=np.float32)), r).min(1).values
           for i in range(0, len(queries), chunk)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def data_copying(train: np.ndarray, test: np.ndarray, gen: np.ndarray, cells: int, seed: int,
                 min_count: int = 5) -> float:
    """Meehan et al. 2020's C_T over ``cells`` k-means cells of ``train`` (rows are flattened patches).

    Per cell, U counts pairs (generated, test) where the generated sample is farther from the
    training set than the test sample (ties 1/2); Z_U = (U - mn/2) / sqrt(mn(m+n+1)/12). Cells with
    fewer than ``min_count`` test or generated samples are left out (their paper's threshold);
    NaN when none is left.
    """
    km = KMeans(n_clusters=min(cells, len(train)), n_init=4, random_state=seed).fit(train)
    d_test, d_gen = nearest(test, train), nearest(gen, train)
    c_test, c_gen = km.predict(test), km.predict(gen)
    z, weight = [], []
    for c in range(km.n_clusters):
        p, q = d_test[c_test == c], d_gen[c_gen == c]
        m, n = len(p), len(q)
        if m < min_count or n < min_count:
            continue
        u = mannwhitneyu(q, p, alternative="two-sided").statistic  # pairs with d_gen > d_test (+ ties/2)
        z.append((u - m * n / 2) / np.sqrt(m * n * (m + n + 1) / 12))
        weight.append(m / len(test))
    return float(np.average(z, weights=weight)) if z else float("nan")


def membership(members: LabeledSet, held_out: LabeledSet, gen: np.ndarray, size: int, hop: int,
               seed: int) -> tuple[float, float]:
    """(ROC AUC, TPR at 1 % FPR) of the distance attack: members (as many as held-out, at random)
    against held-out utterances, each scored by minus its closest window's distance to ``gen``."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(members), size=min(len(members), len(held_out)), replace=False)
    flat = gen.reshape(len(gen), -1)

    def score(feat: np.ndarray) -> float:
        windows = patches(feat, size, hop, pad_value=-1.0)
        return -float(nearest(windows.reshape(len(windows), -1), flat).min())

    pos = [score(members.feats[i]) for i in chosen]
    neg = [score(f) for f in held_out.feats]
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    s = np.r_[pos, neg]
    fpr, tpr, _ = roc_curve(y, s)
    return float(roc_auc_score(y, s)), float(tpr[fpr <= 0.01].max())


def audit_generator(cfg: StudySections, gen: ClassConditionalGenerator, members: LabeledSet, held_out: LabeledSet,
                    reference: SerCnnTrainer | None = None, seed: int = 0,
                    on_fake: SerCnnTrainer | None = None) -> dict[str, float]:
    """Every figure of the module docstring for ``gen``, trained on ``members`` (never on ``held_out``).

    ``reference``: an already trained :func:`reference_classifier` on ``members`` (a node audits
    several generators against the same data); ``on_fake``: :func:`fake_trained_classifier` of
    ``gen`` (one generator audited at several nodes); each trained here when None.
    """
    if not len(members):
        raise ValueError("the audit needs the generator's training utterances; none were given")
    classes, n = len(cfg.data.classes), cfg.audit.samples_per_class
    size = gen.spec.patch  # type: ignore[attr-defined]  # both generator families carry their GanSpec
    ref = reference or reference_classifier(cfg, members, seed)
    fake, fake_y = generated(gen, n, classes, seed)
    real, real_y = real_patches(members, n, size, classes, seed)

    gan_test = _gan_test(ref, fake, fake_y)
    present = sorted(set(real_y.tolist()))
    diversity_fake = float(np.mean([mean_pairwise(fake[fake_y == c].reshape(-1, size * size)) for c in present]))
    diversity_real = float(np.mean([mean_pairwise(real[real_y == c].reshape(-1, size * size)) for c in present]))
    emb_real = _embed(ref, real)
    figures = {
        "gan_test": gan_test,
        "fd": class_frechet(emb_real, real_y, _embed(ref, fake), fake_y),
        "diversity": diversity_fake / diversity_real if diversity_real > 0 else float("nan"),
        "diversity_generated": diversity_fake,
    }
    if not len(held_out):  # a node too small to hold any utterance back: no unseen data to compare with
        return {k: figures.get(k, float("nan")) for k in AUDIT_KEYS}
    on_fake = on_fake or fake_trained_classifier(cfg, gen, seed)
    unseen, unseen_y = real_patches(held_out, n, size, classes, seed + 1)
    hop = cfg.features.window_hop
    train_windows = np.concatenate([patches(f, size, hop, pad_value=-1.0) for f in members.feats])
    test_windows = np.concatenate([patches(f, size, hop, pad_value=-1.0) for f in held_out.feats])
    auc, tpr = membership(members, held_out, fake, size, max(1, hop // 4), seed)
    figures |= {
        "gan_train": float(on_fake.evaluate(held_out)["f1_macro"]),
        "real_train": float(ref.evaluate(held_out)["f1_macro"]),
        "fd_real": class_frechet(emb_real, real_y, _embed(ref, unseen), unseen_y),
        "ct": data_copying(train_windows.reshape(len(train_windows), -1), test_windows.reshape(len(test_windows), -1),
                           fake.reshape(len(fake), -1), cfg.audit.cells, seed),
        "mia_auc": auc,
        "mia_tpr_1fpr": tpr,
    }
    return {k: figures[k] for k in AUDIT_KEYS}


class GeneratorSplit(NamedTuple):
    """A generator's data: what it trains on, what selects among its iterates, what audits it."""

    members: LabeledSet
    selection: LabeledSet  # empty unless ``training.finetune_select_every``
    held_out: LabeledSet


# Held-back utterances that select generators (the rest audit them), by a second hash.
SELECTION_SHARE = 0.5


def generator_split(data: LabeledSet, cfg: StudySections, hold_back: bool = True) -> GeneratorSplit:
    """``data`` for a generator: ``audit.holdout`` of it held back (when ``hold_back`` and the audit
    or generator selection is on), and with selection on, half of that for selection, so that the
    audit's figures stay unbiased by the choice. Without holding back the generator trains on all
    of ``data``, which also stands in as its held-out set (the audit is off)."""
    selecting = cfg.training.finetune_select_every > 0
    if not hold_back or not (cfg.audit.enabled or selecting):
        return GeneratorSplit(data, subset(data, []), data)
    members, held_out = members_of(data, cfg.audit.holdout, cfg.training.seed)
    if not selecting:
        return GeneratorSplit(members, subset(held_out, []), held_out)
    audit_half, selection = members_of(held_out, SELECTION_SHARE, cfg.training.seed + 1)
    return GeneratorSplit(members, selection, audit_half)


# A generator may win the selection only if the real-trained classifier recognises at least this
# share of its samples' classes: the class-blind start of stage 3 can have the lowest Fréchet
# distance (it copies the pooled distribution) while being useless for SER.
SELECTION_MIN_GAN_TEST = 0.5


def selection_score(cfg: StudySections, gen: ClassConditionalGenerator, ref: SerCnnTrainer,
                    selection: LabeledSet, seed: int = 0) -> float:
    """Higher is better: minus the class-conditional Fréchet distance between ``gen``'s samples and
    patches of the ``selection`` utterances in ``ref``'s embedding (the audit's), -inf while
    GAN-test is below 0.5. Never scored against members: that would reward copying.

    The generator is scored in eval mode (spectral norm's power iteration frozen) and torch's
    random state is restored, so selecting never changes the training run it selects from."""
    classes, n = len(cfg.data.classes), cfg.audit.samples_per_class
    size = gen.spec.patch  # type: ignore[attr-defined]
    net = cast(torch.nn.Module, gen)
    training = net.training
    net.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            fake, fake_y = generated(gen, n, classes, seed)
    finally:
        net.train(training)
    if _gan_test(ref, fake, fake_y) < SELECTION_MIN_GAN_TEST:
        return float("-inf")
    real, real_y = real_patches(selection, n, size, classes, seed + 3)
    return -class_frechet(_embed(ref, real), real_y, _embed(ref, fake), fake_y)


def selector(cfg: StudySections, split: GeneratorSplit, reference: SerCnnTrainer | None = None,
             seed: int = 0) -> Callable[[ClassConditionalGenerator], float] | None:
    """The score :func:`common.pipeline.finetune` selects with, or None when selection is off or
    no utterance was held back for it (a logged skip). ``reference``: the audit's classifier on
    ``split.members`` when already trained (trained here otherwise)."""
    if not cfg.training.finetune_select_every:
        return None
    if not len(split.selection):
        log.warning("generator selection skipped: none of %d utterances was held back for it "
                    "(raise audit.holdout); the last iterate is kept", len(split.members))
        return None
    if reference is None:
        with torch.random.fork_rng(devices=[]):  # the fine-tuning's random stream stays its own
            reference = reference_classifier(cfg, split.members, seed)
    ref = reference
    return lambda gen: selection_score(cfg, gen, ref, split.selection, seed)


def members_of(data: LabeledSet, fraction: float, seed: int) -> tuple[LabeledSet, LabeledSet]:
    """``data`` split by :func:`held_back` on its utterance ids: (members, held_out)."""
    if len(data.ids) != len(data):
        raise ValueError("splitting members needs utterance ids in the labeled set")
    rows = range(len(data))
    out = [i for i in rows if fraction > 0 and held_back(data.ids[i], fraction, seed)]
    keep = sorted(set(rows) - set(out))
    return subset(data, keep), subset(data, out)

