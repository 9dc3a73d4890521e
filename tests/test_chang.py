"""Seed 000 (Chang & Scherer 2017): fuzzy labels, the split-label accuracy rule, word-centred crops,
oversampling, early stopping with a patience of 5 epochs, the alternating DCGAN updates, sizes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from common.metrics import fuzzy_label, fuzzy_metrics, resolve
from common.models.chang import ConvStack
from common.schema import load_config
from common.trainers.chang import crop_spans, soft_cross_entropy
from common.trainers.registry import build_trainer
from common.views import LabeledSet
from tests.test_ser import emotion_set

SMALL = {
    "features": {"params": {"n_mels": 32}, "patch_frames": 32},
    "model": {"chang": {"channels": [4, 8, 8, 8], "hidden": 16, "n_z": 8, "lr": 2e-3, "unlabeled": "train"}},
    "training": {"batch_size": 16, "eval_every": 50},
}


def chang(name: str, **chang_cfg) -> object:
    over = {**SMALL, "model": {"chang": {**SMALL["model"]["chang"], **chang_cfg}}, "training": {
        **SMALL["training"], "trainer": name}}
    return build_trainer(load_config(overrides=over))


def valence_set(per_class: int, seed: int) -> LabeledSet:
    """emotion_set's four patterns as valence levels 1, 2, 4, 5 (annotator means, some split)."""
    data = emotion_set(per_class, seed)
    rng = np.random.default_rng(seed)
    level = {0: 1.0, 1: 2.0, 2: 4.0, 3: 5.0}
    valence = tuple(level[y] + (0.5 if y in (0, 2) and rng.random() < 0.3 else 0.0) for y in data.labels)
    activation = tuple(3.0 for _ in data.labels)
    return replace(data, aux={"valence": valence, "activation": activation})


def test_fuzzy_labels_put_the_mean_between_its_two_levels() -> None:
    np.testing.assert_allclose(fuzzy_label(4.5), [0, 0, 0, 0.5, 0.5])
    np.testing.assert_allclose(fuzzy_label(3.0), [0, 0, 1, 0, 0])
    np.testing.assert_allclose(fuzzy_label(5.0), [0, 0, 0, 0, 1])
    np.testing.assert_allclose(fuzzy_label(2 + 1 / 3), [0, 2 / 3, 1 / 3, 0, 0], atol=1e-6)
    with pytest.raises(ValueError, match="outside the 1..5 scale"):
        fuzzy_label(0.5)


def test_a_split_label_accepts_either_level_and_nothing_else() -> None:
    split = fuzzy_label(4.5)
    assert resolve(split, 3) == 3 and resolve(split, 4) == 4  # levels 4 and 5 (0-based 3, 4)
    assert resolve(split, 2) == 3  # wrong: scored against the first of the two
    assert resolve(fuzzy_label(3 + 2 / 3), 2) == 3  # not split: 2/3 on level 4 is the answer
    fuzzy = np.stack([fuzzy_label(4.5), fuzzy_label(4.5), fuzzy_label(1.0), fuzzy_label(3.0)])
    probs = np.eye(5)[[3, 4, 0, 1]]  # 4 and 5 both right for the split labels; 2 for 3 is wrong
    m = fuzzy_metrics(fuzzy, probs)
    assert m["wa"] == pytest.approx(3 / 4)
    # Resolved truths: 4, 5, 1, 3 -> per-class recall 1, 1, 1, 0 over the four present levels.
    assert m["ua"] == pytest.approx(3 / 4)
    # Pooled 1-2 / 3 / 4-5: the prediction 2 for a 3 stays wrong, the rest right.
    assert m["ua3"] == pytest.approx(2 / 3) and m["wa3"] == pytest.approx(3 / 4)


def test_pearson_r_uses_the_expected_value_of_the_prediction() -> None:
    fuzzy = np.stack([fuzzy_label(v) for v in (1.0, 2.0, 4.0, 5.0)])
    probs = np.array([[0.5, 0.5, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0.5, 0.5, 0], [0, 0, 0, 0, 1.0]])
    expected = probs @ np.arange(1, 6)  # 1.5, 2, 3.5, 5
    assert fuzzy_metrics(fuzzy, probs)["pearson_r"] == pytest.approx(np.corrcoef(expected, [1, 2, 4, 5])[0, 1])


def test_soft_cross_entropy_is_cross_entropy_for_one_hot_targets() -> None:
    logits = torch.randn(6, 5)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    torch.testing.assert_close(soft_cross_entropy(logits, torch.eye(5)[y]), torch.nn.functional.cross_entropy(logits, y))


def test_crops_are_centred_in_words_else_on_voiced_frames() -> None:
    feat = np.full((4, 100), -1.0, dtype=np.float32)
    feat[:, 60:70] = 1.0  # the only loud frames
    # Words at 0.1-0.2 s and 0.5-0.6 s; frames of 256 samples at 16 kHz (62.5 / s).
    assert crop_spans(feat, ((0.1, 0.2), (0.5, 0.6)), 256) == [(6, 12), (31, 37)]
    assert crop_spans(feat, (), 256) == [(f, f) for f in range(60, 70)]
    trainer = chang("chang-cnn", task="emotion", oversample=False)
    data = LabeledSet((feat,), (0,), aux={"words": ((),)})
    x = trainer.sampler(data, seed=0)(64)[0]  # (64, 1, 4, 32) crops centred on frames 60..69
    assert x.shape == (64, 1, 4, 32)
    assert (x[:, 0, 0] == 1.0).sum(dim=1).min() >= 10  # every crop holds the whole voiced stretch


def test_under_represented_valence_levels_are_oversampled() -> None:
    data = valence_set(1, seed=0)
    feats = data.feats + tuple(np.zeros_like(data.feats[3]) for _ in range(9))
    valence = data.aux["valence"][:3] + (5.0,) * 10  # levels 1, 2, 4 once, level 5 ten times
    skewed = LabeledSet(feats, (0, 1, 2) + (3,) * 10, aux={"valence": valence})
    for oversample, low, high in ((True, 0.2, 0.3), (False, 0.0, 0.12)):
        trainer = chang("chang-cnn", oversample=oversample)
        fuzzy = trainer.sampler(skewed, seed=0)(4000)[2]["valence_fuzzy"]
        share = float((fuzzy[:, 0] > 0.4).float().mean())  # level 1: 1 of 13 utterances
        assert low < share < high, (oversample, share)


def test_valence_task_learns_a_tiny_set() -> None:
    trainer = chang("chang-cnn")
    train, test = valence_set(6, seed=0), valence_set(4, seed=2)
    trainer.fit(trainer.sampler(train, seed=0), iterations=150)
    m = trainer.evaluate(test)
    assert set(m) >= {"ua", "ua3", "pearson_r", "f1_macro", "wa", "confusion"}
    assert np.asarray(m["confusion"]).shape == (5, 5)
    assert m["ua"] >= 0.9 and m["pearson_r"] > 0.9


def test_multitask_variants_also_learn_activation() -> None:
    trainer = chang("chang-multitask-cnn")
    out = trainer.net(torch.zeros(2, 1, 32, 32))
    assert set(out) == {"primary", "activation"} and out["activation"].shape == (2, 5)
    batch = trainer.sampler(valence_set(2, seed=0))(8)
    loss, logs = trainer.loss(batch)
    assert logs["task"] == 0.0 and "activation" not in logs  # the first update: valence
    loss, logs = trainer.loss(batch)
    assert logs["task"] == 1.0 and logs["activation"] == loss.item()  # the second: activation
    assert set(chang("chang-cnn").net(torch.zeros(2, 1, 32, 32))) == {"primary"}


def test_multitask_updates_alternate_between_valence_and_activation() -> None:
    """§3 / §7: the target swaps every update; each head moves only on its own steps."""
    trainer = chang("chang-multitask-cnn")
    heads = trainer.net.disc.heads
    sample = trainer.sampler(valence_set(2, seed=0))
    for step in range(1, 5):
        before = {name: [p.detach().clone() for p in heads[name].parameters()] for name in ("primary", "activation")}
        trainer.fit(sample, iterations=1)
        moved = {name: any(not torch.equal(p, q) for p, q in zip(heads[name].parameters(), before[name], strict=True))
                 for name in before}
        assert moved == {"primary": step % 2 == 1, "activation": step % 2 == 0}, step
    # GAN-synthetic batches have no activation: every update trains the primary head.
    x, y = torch.zeros(4, 1, 32, 32), torch.zeros(4, dtype=torch.long)
    emotion = chang("chang-multitask-cnn", task="emotion")
    assert [emotion.loss((x, y))[1]["task"] for _ in range(3)] == [0.0, 0.0, 0.0]


def test_valence_task_without_valence_is_refused() -> None:
    with pytest.raises(ValueError, match='set model.chang.task = "emotion"'):
        chang("chang-cnn").sampler(emotion_set(1, seed=0))


def test_early_stopping_after_five_epochs_below_the_best_restores_the_best() -> None:
    trainer = chang("chang-cnn")
    data = valence_set(4, seed=0)  # 16 utterances / batch 16: one epoch = 1 step
    scores, states = iter([0.3, 0.6, 0.5, 0.55, 0.4, 0.59, 0.58, 0.9, 0.1]), []

    def score() -> float:
        states.append({k: v.clone() for k, v in trainer.state_dict().items()})
        return next(scores)

    result = trainer.fit(trainer.sampler(data), score, iterations=100)
    # Best 0.6 after epoch 2, then five epochs below it: stop after epoch 7, never see the 0.9.
    assert result.stopped_early and [s for s, _ in result.evals] == [1, 2, 3, 4, 5, 6, 7]
    assert result.best_step == 2
    for k, v in trainer.state_dict().items():
        torch.testing.assert_close(v, states[1][k])


def test_dcgan_variants_alternate_discriminator_generator_and_classifier_updates() -> None:
    trainer = chang("chang-dcgan")
    net = trainer.net
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = trainer.fit(trainer.sampler(valence_set(2, seed=0)), iterations=3)
    assert {"loss", "d_loss", "g_loss"} <= set(result.last)
    moved = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("gen.") for k in moved)  # the generator trained
    assert any(k.startswith("disc.real.") for k in moved)  # the real/generated output trained
    assert any(k.startswith("disc.heads.primary") for k in moved)  # the valence classifier trained
    assert net.gen(torch.randn(3, 8)).shape == (3, 1, 32, 32)


def test_dcgan_draws_unlabeled_speech_from_the_pretraining_corpus(tmp_path) -> None:
    over = {**SMALL, "work_dir": str(tmp_path), "data": {"synthetic": {"pretrain_speakers": 2}},
            "model": {"chang": {**SMALL["model"]["chang"], "unlabeled": "pretrain"}},
            "training": {**SMALL["training"], "trainer": "chang-dcgan"}}
    trainer = build_trainer(load_config(overrides=over))
    result = trainer.fit(trainer.sampler(valence_set(2, seed=0)), iterations=2)
    assert result.steps == 2
    assert (tmp_path / "corpora").is_dir()  # the embedded LibriSpeech-layout corpus was read


def test_dcgan_unlabeled_speech_is_the_pretraining_corpus_and_the_training_set_at_once(tmp_path) -> None:
    over = {**SMALL, "work_dir": str(tmp_path), "data": {"synthetic": {"pretrain_speakers": 2}},
            "model": {"chang": {**SMALL["model"]["chang"], "unlabeled": ["pretrain", "train"]}},
            "training": {**SMALL["training"], "trainer": "chang-dcgan"}}
    trainer = build_trainer(load_config(overrides=over))
    train = valence_set(2, seed=0)
    union = trainer.unlabeled(trainer.sampler(train))
    x, y = union(400)
    assert x.shape == (400, 1, 32, 32) and not y.any()
    pretrain = len(union.samplers[0].prepared)
    share = union.drawn[1] / union.drawn.sum()  # the training set's share, in proportion to its size
    assert share == pytest.approx(len(train) / (len(train) + pretrain), abs=0.06)
    assert union.drawn.min() > 0
    assert load_config(overrides={"model": {"chang": {"unlabeled": "train"}}}).model.chang.unlabeled == ("train",)


def test_paper_sizes_four_stride_two_layers() -> None:
    cfg = load_config(overrides={"preset": "paper", "features": {"kind": "stft", "patch_frames": 128},
                                 "training": {"trainer": "chang-multitask-dcgan"}})
    trainer = build_trainer(cfg)
    convs = [m for m in trainer.net.disc.convs.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (64, (5, 5), (2, 2)), (128, (5, 5), (2, 2)), (256, (5, 5), (2, 2)), (512, (5, 5), (2, 2))]
    # 128 x 128 spectrogram crops (§4: 128 rows) -> 512 x 8 x 8 after four halvings.
    assert ConvStack((64, 128, 256, 512), 5)(torch.zeros(1, 1, 128, 128)).shape == (1, 512 * 8 * 8)
    out = trainer.net(torch.zeros(2, 1, 128, 128))
    assert out["primary"].shape == (2, 5) and out["activation"].shape == (2, 5)
    assert trainer.net.gen(torch.randn(2, 100)).shape == (2, 1, 128, 128)
    # All four models share the same convolutions (§5 "for fairness").
    basic = build_trainer(cfg.with_trainer("chang-cnn"))
    assert {k: v.shape for k, v in basic.net.disc.convs.state_dict().items()} == {
        k: v.shape for k, v in trainer.net.disc.convs.state_dict().items()}
