"""The SER network trainer (seed 002 §4.3): sliding-window evaluation, metrics, learning, model selection."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from common.features import patches
from common.metrics import classification_metrics
from common.models.sngan import GanSpec
from common.schema import load_config
from common.trainers.ser import SerCnnTrainer
from common.views import LabeledSet, PatchSampler

N_C = 4


def ser_trainer(patch: int = 32, hop: int = 32, **training) -> SerCnnTrainer:
    """The ser-cnn trainer at width 1/16 on ``patch``-square windows (``training`` overrides)."""
    return SerCnnTrainer(load_config(overrides={
        "features": {"params": {"n_mels": patch}, "patch_frames": patch, "window_hop": hop},
        "model": {"width": 0.0625, "n_z": 8}, "training": {"batch_size": 16, **training},
    }))


class MarkerNet(nn.Module):
    """Stub SER net: reads a marker (1000 x the window's top-left value) and answers a near one-hot
    logit vector for ``class_of(marker)``; remembers every window it saw and its mode."""

    def __init__(self, class_of: Callable[[int], int]) -> None:
        super().__init__()
        self.class_of = class_of
        self.markers: list[int] = []
        self.windows: list[np.ndarray] = []
        self.batch_sizes: list[int] = []
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dim() == 4 and x.shape[1] == 1
        self.batch_sizes.append(x.shape[0])
        self.modes.append(self.training)
        markers = [round(v * 1000) for v in x[:, 0, 0, 0].tolist()]
        self.markers += markers
        self.windows += list(x[:, 0].numpy().copy())
        classes = torch.tensor([self.class_of(m) for m in markers])
        return 50.0 * nn.functional.one_hot(classes, N_C).float()


def ramp(t: int, offset: int, rows: int = 8) -> np.ndarray:
    """(rows, t) features whose column j holds (offset + j) / 1000: each window's first column names its start."""
    return np.tile((offset + np.arange(t, dtype=np.float32)) / 1000, (rows, 1))


def stub_trainer(patch: int, class_of: Callable[[int], int], hop: int = 32) -> tuple[SerCnnTrainer, MarkerNet]:
    trainer = ser_trainer(patch, hop)
    trainer.net = MarkerNet(class_of)
    return trainer, trainer.net


def test_window_starts_of_the_sliding_evaluator() -> None:
    # T = 200, size 64, hop 32: starts 0, 32, 64, 96, 128 and the end-aligned 136.
    w = patches(ramp(200, 0), 64, hop=32)
    assert [round(v * 1000) for v in w[:, 0, 0]] == [0, 32, 64, 96, 128, 136]


def test_predict_proba_averages_window_probabilities() -> None:
    classes = {0: 0, 32: 1, 64: 2, 96: 3, 128: 0, 136: 1,  # file A, T = 200
               500: 2,  # file B, T = 40 < 64: one padded window
               700: 3, 732: 0}  # file C, T = 96: starts 0 and 32 (end-aligned)
    trainer, net = stub_trainer(64, classes.__getitem__)
    net.train()  # predict_proba must switch to eval mode itself
    feats = [ramp(200, 0), ramp(40, 500), ramp(96, 700)]
    probs = trainer.predict_proba(feats, chunk=4)  # windows split across chunks of 4

    assert net.markers == [0, 32, 64, 96, 128, 136, 500, 700, 732]
    assert net.batch_sizes == [4, 4, 1]
    assert net.modes == [False, False, False]
    # Window probabilities: softmax of 50 * one-hot, i.e. one-hot up to e^-50.
    on = 1 / (1 + 3 * math.exp(-50))
    off = (1 - on) / 3

    def onehot(c: int) -> np.ndarray:
        p = np.full(N_C, off)
        p[c] = on
        return p

    expected = np.stack([
        (onehot(0) + onehot(1) + onehot(2) + onehot(3) + onehot(0) + onehot(1)) / 6,  # [2, 2, 1, 1] / 6
        onehot(2),
        (onehot(3) + onehot(0)) / 2,
    ])
    assert probs.shape == (3, N_C)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    np.testing.assert_allclose(probs[0], [2 / 6, 2 / 6, 1 / 6, 1 / 6], atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    # The short file's single window: its 40 frames, then padding with -1 (the scaled minimum).
    short = net.windows[6]
    assert short.shape == (8, 64)
    np.testing.assert_allclose(short[:, :40], ramp(40, 500))
    assert np.all(short[:, 40:] == -1.0)
    # Every window is the matching slice of the file.
    np.testing.assert_allclose(net.windows[5], ramp(200, 0)[:, 136:200])


def test_predict_proba_matches_patches_for_another_hop() -> None:
    trainer, net = stub_trainer(32, lambda m: (m // 10) % N_C, hop=10)
    probs = trainer.predict_proba([ramp(75, 0)])
    starts = [round(v * 1000) for v in patches(ramp(75, 0), 32, hop=10)[:, 0, 0]]
    assert starts == [0, 10, 20, 30, 40, 43]
    assert net.markers == starts
    counts = np.bincount([(s // 10) % N_C for s in starts], minlength=N_C)
    np.testing.assert_allclose(probs[0], counts / len(starts), atol=1e-6)


def test_classification_metrics_by_hand() -> None:
    y_true = [0, 0, 1, 1, 2, 2, 3, 3]
    y_pred = [0, 0, 1, 0, 2, 3, 3, 3]
    m = classification_metrics(y_true, y_pred, N_C)
    # Per class (precision, recall, F1): 0: (2/3, 1, 0.8); 1: (1, 1/2, 2/3); 2: (1, 1/2, 2/3); 3: (2/3, 1, 0.8).
    assert m["f1_macro"] == pytest.approx((0.8 + 2 / 3 + 2 / 3 + 0.8) / 4)
    assert m["ua"] == pytest.approx((1 + 0.5 + 0.5 + 1) / 4)
    assert m["wa"] == pytest.approx(6 / 8)
    assert m["confusion"] == [[2, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 2]]


def test_ua_averages_recall_over_present_classes_only() -> None:
    # Class 3 never occurs: recalls 2/3, 1/2, 1 -> UA = 13/18; WA = 4/6.
    m = classification_metrics([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], N_C)
    assert m["ua"] == pytest.approx(13 / 18)
    assert m["wa"] == pytest.approx(4 / 6)
    assert m["confusion"][3] == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        classification_metrics([], [], N_C)


def test_evaluate_scores_file_level_predictions() -> None:
    trainer, _ = stub_trainer(32, lambda m: m // 100)
    y_pred = [0, 0, 1, 0, 2, 3, 3, 3]
    y_true = [0, 0, 1, 1, 2, 2, 3, 3]
    lengths = [20, 32, 50, 100, 33, 64, 90, 200]  # short, exact, and multi-window files
    feats = tuple(np.full((8, t), p / 10, dtype=np.float32) for p, t in zip(y_pred, lengths, strict=True))
    result = trainer.evaluate(LabeledSet(feats, tuple(y_true)))
    assert result == classification_metrics(y_true, y_pred, N_C)
    assert result["f1_macro"] == pytest.approx(0.7333333)
    assert (result["ua"], result["wa"]) == (pytest.approx(0.75), pytest.approx(0.75))


# ------------------------------------------------------------------------------------------
# Learning on a tiny synthetic set
# ------------------------------------------------------------------------------------------


def emotion_set(per_class: int, seed: int, t_range: tuple[int, int] = (40, 120)) -> LabeledSet:
    """Four "emotions" as distinct (32, T) patterns in [-1, 1] plus noise:
    low band, high band, temporal stripes, and a checkerboard."""
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for c in range(N_C):
        for _ in range(per_class):
            t = int(rng.integers(*t_range))
            f = np.full((32, t), -0.7, dtype=np.float32)
            phase = int(rng.integers(0, 8))
            if c == 0:
                f[2:10] = 0.7
            elif c == 1:
                f[22:30] = 0.7
            elif c == 2:
                f[:, (np.arange(t) + phase) % 8 < 4] = 0.7
            else:
                grid = ((np.arange(32)[:, None] // 4) + ((np.arange(t)[None, :] + phase) // 4)) % 2
                f[grid == 1] = 0.7
            f += 0.25 * rng.standard_normal(f.shape).astype(np.float32)
            feats.append(np.clip(f, -1, 1))
            labels.append(c)
    return LabeledSet(tuple(feats), tuple(labels))


def test_ser_trainer_learns_a_tiny_synthetic_set() -> None:
    spec = GanSpec(n_z=8, n_c=N_C, width=0.0625, patch=32)
    trainer = ser_trainer(ser_lr=1e-3, eval_every=50, seed=0)
    # Files shorter than a patch (padded with -1) in every split.
    train = emotion_set(6, seed=0, t_range=(20, 120))
    val, test = emotion_set(2, seed=1, t_range=(20, 150)), emotion_set(5, seed=2, t_range=(20, 150))
    before = trainer.evaluate(test)["f1_macro"]
    result = trainer.fit(PatchSampler(train, spec.patch, seed=0), validation=val, iterations=150)
    assert result.steps == 150
    assert [s for s, _ in result.evals] == [50, 100, 150]  # model selection on the validation set
    assert result.best_step in (50, 100, 150)
    after = trainer.evaluate(test)
    assert after["f1_macro"] >= 0.9, (before, after)
    assert before < 0.6  # it is the training that did it
    assert trainer.evaluate(val)["f1_macro"] == pytest.approx(result.best_score)  # best weights kept


class ScriptedScores:
    """Replaces ``trainer.evaluate``: scripted macro-F1s, and a copy of the weights at each call."""

    def __init__(self, trainer: SerCnnTrainer, scores: list[float]) -> None:
        self.trainer, self.scores, self.states = trainer, iter(scores), []

    def __call__(self, data: LabeledSet) -> dict[str, float]:
        self.states.append({k: v.clone() for k, v in self.trainer.net.state_dict().items()})
        return {"f1_macro": next(self.scores)}


def test_fit_keeps_the_best_validation_weights() -> None:
    spec = GanSpec(n_z=8, n_c=N_C, width=0.0625, patch=32)
    trainer = ser_trainer(ser_lr=1e-3, eval_every=5)
    scripted = ScriptedScores(trainer, [0.2, 0.9, 0.4, 0.3])
    trainer.evaluate = scripted
    data = emotion_set(1, seed=0)
    result = trainer.fit(PatchSampler(data, spec.patch, seed=0), validation=data, iterations=20)
    assert (result.best_step, result.best_score) == (10, 0.9)
    final = trainer.net.state_dict()
    assert all(torch.equal(final[k], scripted.states[1][k]) for k in final)  # restored to step 10
    assert any(not torch.equal(final[k], scripted.states[3][k]) for k in final)  # not the last weights


def test_fit_without_validation_keeps_the_last_weights() -> None:
    spec = GanSpec(n_z=8, n_c=N_C, width=0.0625, patch=32)
    trainer = ser_trainer(ser_lr=1e-3, eval_every=5)
    data = emotion_set(1, seed=0)
    result = trainer.fit(PatchSampler(data, spec.patch, seed=0), iterations=5)
    assert result.steps == 5 and result.evals == [] and result.best_step is None
    assert math.isfinite(result.last["loss"])
