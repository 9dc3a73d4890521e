"""The SER trainer contract, run over every registered trainer: fit, evaluate, weights through
Flower's ArrayRecord, learning a tiny set, training on GAN-synthetic batches, remote model
selection, FedProx's proximal term."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from common.models.sngan import GanSpec, Generator
from common.schema import load_config
from common.synthesis import SyntheticPool
from common.trainers.registry import TRAINERS, build_trainer
from common.trainers.supervised import proximal_term
from common.views import LabeledSet
from tests.test_ser import emotion_set as patterns


def emotion_set(per_class: int, seed: int) -> LabeledSet:
    """test_ser's four patterns (low band, high band, temporal stripes, checkerboard) with a weak
    band of its own for the two temporal classes, so that a model of the utterance-mean spectrum
    (seed 004) has a cue too: stripes and checkerboard have the same time-mean."""
    data = patterns(per_class, seed)
    feats = []
    for f, y in zip(data.feats, data.labels, strict=True):
        f = f.copy()
        if y >= 2:
            rows = slice(12, 16) if y == 2 else slice(16, 20)
            f[rows] = np.clip(f[rows] + 0.6, -1, 1)
        feats.append(f)
    return LabeledSet(tuple(feats), data.labels)

# Every trainer on 32 x 32 log-mel windows: the shape of the tiny GAN's synthetic samples.
SMALL = {
    "features": {"params": {"n_mels": 32}, "patch_frames": 32},
    "model": {"width": 0.0625, "n_z": 8, "chang": {"task": "emotion", "unlabeled": "train"}},
    "training": {"batch_size": 16, "ser_lr": 1e-3, "eval_every": 50, "ser_lr_decay_every": 10_000},
}


def small_cfg(trainer: str, **training):
    return load_config(overrides={**SMALL, "training": {**SMALL["training"], "trainer": trainer, **training}})


# State that moves without any optimizer step: spectral-norm power iterations, batch-norm statistics.
BUFFERS = re.compile(r"(_u|_v|running_mean|running_var|num_batches_tracked)$")


def params(trainer) -> torch.Tensor:
    """The trainable weights, flattened."""
    return torch.cat([v.flatten().float() for k, v in trainer.state_dict().items() if not BUFFERS.search(k)])


@pytest.fixture(params=sorted(TRAINERS))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def _full_variants() -> list[str]:
    """One trainer per network (class, and dims for the FCNs): the variant that switches on the
    most of its family's options (its paper's full model), so every loss term trains in a
    "learns" test; every variant still runs fit, selection and FedProx below."""
    best: dict[tuple[type, object], str] = {}
    for n, e in sorted(TRAINERS.items()):
        key = (e.cls, e.options.get("dims"))
        if key not in best or sum(map(bool, e.options.values())) > sum(map(bool, TRAINERS[best[key]].options.values())):
            best[key] = n
    return sorted(best.values())


def test_unknown_trainer_is_refused_with_the_registered_names() -> None:
    from common.config import ConfigError

    with pytest.raises(ConfigError, match="training.trainer: unknown trainer; registered: chang-cnn, "):
        load_config(overrides={"training": {"trainer": "nope"}})


@pytest.mark.parametrize("name", _full_variants())
def test_learns_a_tiny_set_and_evaluates(name: str) -> None:
    trainer = build_trainer(small_cfg(name))
    train, test = emotion_set(6, seed=0), emotion_set(4, seed=2)
    before = trainer.evaluate(test)
    trainer.fit(trainer.sampler(train, seed=0), iterations=150)
    after = trainer.evaluate(test)
    assert set(after) >= {"f1_macro", "ua", "wa", "confusion"}
    assert np.asarray(after["confusion"]).sum() == len(test)
    assert after["f1_macro"] >= 0.9 > before["f1_macro"]


def test_weights_round_trip_through_an_array_record(name: str) -> None:
    cfg = small_cfg(name)
    trained = build_trainer(cfg)
    trained.fit(trained.sampler(emotion_set(2, seed=0)), iterations=20)
    record = ArrayRecord(trained.state_dict())
    fresh = build_trainer(small_cfg(name, seed=7))  # other initial weights
    data = emotion_set(2, seed=3)
    assert not np.allclose(fresh.predict_proba(data.feats), trained.predict_proba(data.feats))
    fresh.load_state_dict(record.to_torch_state_dict())
    np.testing.assert_array_equal(fresh.predict_proba(data.feats), trained.predict_proba(data.feats))


def test_a_scoring_function_selects_the_model(name: str) -> None:
    """Federated model selection: the held-out node scores the weights; the best ones are kept."""
    trainer = build_trainer(small_cfg(name, eval_every=5))
    scores, seen = iter([0.1, 0.8, 0.3]), []

    def score() -> float:
        seen.append(params(trainer).clone())
        return next(scores)

    sample = trainer.sampler(emotion_set(2, seed=0))
    every = trainer.eval_every(sample)  # training.eval_every = 5, or one epoch (seed 000)
    result = trainer.fit(sample, score, iterations=3 * every)
    assert [s for s, _ in result.evals] == [every, 2 * every, 3 * every] and result.best_step == 2 * every
    torch.testing.assert_close(params(trainer), seen[1])


def test_trains_on_gan_synthetic_batches(name: str) -> None:
    """The GAN regimes feed every trainer the generators' (B, 1, 32, 32) log-mel samples."""
    trainer = build_trainer(small_cfg(name))
    start = params(trainer).clone()
    gen = Generator(GanSpec(n_z=8, n_c=4, width=0.0625, patch=32)).eval()
    result = trainer.fit(SyntheticPool([gen], per_class=8, n_classes=4, seed=0).sampler(seed=0), iterations=3)
    assert result.steps == 3 and not torch.equal(params(trainer), start)
    probs = trainer.predict_proba(emotion_set(1, seed=0).feats)
    assert probs.shape == (4, 4) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_start_step_continues_the_decay_schedule() -> None:
    """FedAvg rounds continue the centralized lr decay: after 10 decays (x0.1) nothing moves."""
    data = emotion_set(2, seed=0)
    moved = []
    for start_step in (0, 10 * 50):
        trainer = build_trainer(small_cfg("ser-cnn", ser_lr_decay_every=50))
        start = params(trainer).clone()
        trainer.fit(trainer.sampler(data), iterations=10, start_step=start_step)
        moved.append((params(trainer) - start).norm().item())
    assert moved[1] < moved[0] / 100


def test_fedprox_keeps_local_weights_near_the_global_model(name: str) -> None:
    data = emotion_set(2, seed=0)
    drift = []
    for mu in (0.0, 100.0):
        trainer = build_trainer(small_cfg(name))
        start = params(trainer).clone()
        trainer.fit(trainer.sampler(data), iterations=40, proximal_mu=mu)
        drift.append((params(trainer) - start).norm().item())
    assert drift[1] < drift[0] / 2


def test_proximal_term_value_and_gradient() -> None:
    net = torch.nn.Linear(3, 2)
    prox = proximal_term(net, mu=0.5)
    assert float(prox()) == 0.0  # at the global weights
    with torch.no_grad():
        net.weight += 2.0
    value = prox()
    assert float(value) == pytest.approx(0.5 / 2 * 4.0 * net.weight.numel())
    value.backward()
    torch.testing.assert_close(net.weight.grad, torch.full_like(net.weight, 0.5 * 2.0))  # mu (w - w0)
    assert proximal_term(net, 0.0)() == 0.0
