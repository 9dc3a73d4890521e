"""The SER trainer contract, run over every registered trainer: fit, evaluate, weights through
Flower's ArrayRecord, learning a tiny set, remote model selection, FedProx's proximal term."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from common.config import load_config
from common.trainers.registry import TRAINERS, build_trainer
from common.trainers.ser import proximal_term
from common.views import PatchSampler
from tests.test_ser import emotion_set

SMALL = {
    "features": {"params": {"n_mels": 32}, "patch_frames": 32},
    "model": {"width": 0.0625, "n_z": 8},
    "training": {"batch_size": 16, "ser_lr": 1e-3, "eval_every": 50, "ser_lr_decay_every": 10_000},
}


def small_cfg(trainer: str, **training):  # noqa: ANN003, ANN201
    return load_config(overrides={**SMALL, "training": {**SMALL["training"], "trainer": trainer, **training}})


# State that moves without any optimizer step: spectral-norm power iterations, batch-norm statistics.
BUFFERS = re.compile(r"(_u|_v|running_mean|running_var|num_batches_tracked)$")


def params(trainer) -> torch.Tensor:  # noqa: ANN001
    """The trainable weights, flattened."""
    return torch.cat([v.flatten().float() for k, v in trainer.state_dict().items() if not BUFFERS.search(k)])


@pytest.fixture(params=sorted(TRAINERS))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_unknown_trainer_is_refused_with_the_registered_names() -> None:
    from common.config import ConfigError

    with pytest.raises(ConfigError, match="training.trainer: unknown trainer; registered: ser-cnn"):
        load_config(overrides={"training": {"trainer": "nope"}})


def test_learns_a_tiny_set_and_evaluates(name: str) -> None:
    trainer = build_trainer(small_cfg(name))
    train, test = emotion_set(6, seed=0), emotion_set(4, seed=2)
    before = trainer.evaluate(test)
    trainer.fit(PatchSampler(train, 32, seed=0), iterations=150)
    after = trainer.evaluate(test)
    assert set(after) >= {"f1_macro", "ua", "wa", "confusion"}
    assert np.asarray(after["confusion"]).sum() == len(test)
    assert after["f1_macro"] >= 0.9 > before["f1_macro"]


def test_weights_round_trip_through_an_array_record(name: str) -> None:
    cfg = small_cfg(name)
    trained = build_trainer(cfg)
    trained.fit(PatchSampler(emotion_set(2, seed=0), 32, seed=0), iterations=20)
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

    result = trainer.fit(PatchSampler(emotion_set(2, seed=0), 32, seed=0), score, iterations=15)
    assert [s for s, _ in result.evals] == [5, 10, 15] and result.best_step == 10
    torch.testing.assert_close(params(trainer), seen[1])


def test_lr_override_sets_the_starting_rate(name: str) -> None:
    data = emotion_set(2, seed=0)
    moved = []
    for lr in (1e-3, 1e-9):
        trainer = build_trainer(small_cfg(name))
        start = params(trainer).clone()
        trainer.fit(PatchSampler(data, 32, seed=0), iterations=10, lr=lr)
        moved.append((params(trainer) - start).norm().item())
    assert moved[1] < moved[0] / 100


def test_fedprox_keeps_local_weights_near_the_global_model(name: str) -> None:
    data = emotion_set(2, seed=0)
    drift = []
    for mu in (0.0, 100.0):
        trainer = build_trainer(small_cfg(name))
        start = params(trainer).clone()
        trainer.fit(PatchSampler(data, 32, seed=0), iterations=40, proximal_mu=mu)
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
