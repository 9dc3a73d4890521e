"""The GAN stages of seed 002 §3.2 and the one training loop: gradient penalty, losses, NaN, model selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from common.models.sngan import Discriminator, GanSpec, Generator
from common.schema import load_config
from common.trainers.base import KeepBest, LoopResult, run
from common.trainers.gan import (
    autoencoder_step,
    conditional_step,
    gradient_penalty,
    train_stage,
    wgan_gp_step,
)
from common.views import LabeledSet, PatchSampler

SPEC = GanSpec(n_z=8, n_c=4, width=0.0625, patch=32)
CPU = torch.device("cpu")


class Recorder:
    """A Hook that keeps every step's logs and every evaluation."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.logs: list[dict[str, float]] = []
        self.evals: list[tuple[int, float]] = []
        self.ended: LoopResult | None = None

    def on_step(self, step: int, logs: dict[str, float]) -> None:
        self.steps.append(step)
        self.logs.append(logs)

    def on_eval(self, step: int, score: float, logs: dict[str, float]) -> bool:
        self.evals.append((step, score))
        return False

    def on_end(self, result: LoopResult) -> None:
        self.ended = result

    def series(self, key: str) -> np.ndarray:
        return np.array([logs[key] for logs in self.logs])


def spectrograms(per_class: int = 4, seed: int = 0) -> LabeledSet:
    """Scaled "log-mel" matrices (32, T): class c lights up the mel band 8c..8c+7 over silence."""
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for c in range(4):
        for _ in range(per_class):
            f = np.full((32, int(rng.integers(40, 80))), -0.8, dtype=np.float32)
            f[8 * c : 8 * c + 8] = 0.8
            f += 0.05 * rng.standard_normal(f.shape).astype(np.float32)
            feats.append(np.clip(f, -1, 1))
            labels.append(c)
    return LabeledSet(tuple(feats), tuple(labels))


@pytest.fixture
def cfg():
    # Learning rates pinned here, not read from the preset, so retuning `tiny` cannot move these tests.
    return load_config(overrides={"training": {"batch_size": 16, "ae_lr": 1e-3, "g_lr": 5e-4,
                                               "d_lr": 1e-3}}).training


# ------------------------------------------------------------------------------------------
# Gradient penalty
# ------------------------------------------------------------------------------------------


class LinearCritic(nn.Module):
    """f(x) = <w, x>: its input gradient is w everywhere, so GP = (||w|| - 1)^2 exactly."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) * self.w).sum(dim=1, keepdim=True)


@pytest.mark.parametrize("norm", [0.25, 1.0, 3.0])
def test_gradient_penalty_of_a_linear_critic(norm: float) -> None:
    torch.manual_seed(1)
    w = torch.randn(1 * 4 * 4)
    critic = LinearCritic(w / w.norm() * norm)
    for _ in range(3):  # whatever the random interpolation
        real, fake = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4)
        gp = gradient_penalty(critic, real, fake)
        # float32: the input gradient is w exactly; its norm (16 terms) is off by a few ulps, and
        # (norm - 1)^2 <= 4 by ~1e-6 (measured <= 9.5e-7 with the scalar and vectorized kernels).
        assert gp.item() == pytest.approx((norm - 1) ** 2, abs=1e-5)


def test_gradient_penalty_is_differentiable_in_the_critic() -> None:
    """create_graph: d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w|| reaches the critic's weights."""
    w = torch.tensor([3.0, 4.0, 0.0, 0.0])  # ||w|| = 5
    critic = LinearCritic(w)
    gp = gradient_penalty(critic, torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2))
    assert gp.item() == pytest.approx(16.0)  # exact in float32: ||(3, 4, 0, 0)|| = 5
    (grad,) = torch.autograd.grad(gp, critic.w)
    assert torch.allclose(grad, 2 * (5 - 1) * w / 5)


def test_gradient_penalty_of_a_quadratic_critic_at_fixed_interpolates(monkeypatch) -> None:
    """f(x) = ||x||^2 / 2 has gradient x_hat = alpha * real + (1 - alpha) * fake; alpha fixed by hand."""
    alpha = torch.tensor([0.25, 0.75]).view(2, 1, 1, 1)
    calls: list[tuple[int, ...]] = []

    def fixed_rand(*shape, **kwargs):
        calls.append(tuple(shape))
        return alpha.clone()

    monkeypatch.setattr(torch, "rand", fixed_rand)
    real = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 2.0)])
    fake = torch.stack([torch.full((1, 2, 2), 0.0), torch.full((1, 2, 2), 0.0)])
    gp = gradient_penalty(lambda x: 0.5 * (x**2).flatten(1).sum(1, keepdim=True), real, fake)
    # Sample 0: x_hat = 0.25 * 1 = 0.25 in 4 cells, ||.|| = 0.5 -> (0.5 - 1)^2 = 0.25.
    # Sample 1: x_hat = 0.75 * 2 = 1.5 in 4 cells, ||.|| = 3   -> (3 - 1)^2 = 4.
    assert gp.item() == pytest.approx((0.25 + 4.0) / 2)
    assert calls == [(2, 1, 1, 1)]  # one alpha per sample, broadcast over the patch


# ------------------------------------------------------------------------------------------
# The three stages lower their losses on a tiny set
# ------------------------------------------------------------------------------------------


def run_stage(builder, head: int, cfg, iterations: int) -> Recorder:
    torch.manual_seed(0)
    gen, disc = Generator(SPEC), Discriminator(SPEC, head=head)
    rec = Recorder()
    result = run(builder(gen, disc, PatchSampler(spectrograms(), SPEC.patch, seed=0), cfg, CPU),
                 iterations, hooks=[rec])
    assert result.steps == iterations and rec.steps == list(range(1, iterations + 1))
    assert result.last == rec.logs[-1]
    return rec


def first_last(values: np.ndarray, n: int = 10) -> tuple[float, float]:
    return float(values[:n].mean()), float(values[-n:].mean())


def test_autoencoder_stage_lowers_l1(cfg) -> None:
    rec = run_stage(autoencoder_step, SPEC.n_z, cfg, 50)
    first, last = first_last(rec.series("l1"))
    assert last < 0.85 * first, (first, last)


def test_wgan_gp_stage_critic_loss_falls_and_wasserstein_estimate_rises(cfg) -> None:
    rec = run_stage(wgan_gp_step, 1, cfg, 60)
    assert set(rec.logs[0]) == {"d_loss", "g_loss", "w_dist", "gp"}
    d_first, d_last = first_last(rec.series("d_loss"))
    w_first, w_last = first_last(rec.series("w_dist"))
    assert d_last < d_first - 1.0, (d_first, d_last)
    assert w_last > w_first + 1.0, (w_first, w_last)
    # d_loss = -W + gp_weight * GP, as logged: float32 terms of ~20 summed in another order, a few
    # ulps (2e-6) apart (measured <= 9e-7).
    logs = rec.logs[-1]
    assert logs["d_loss"] == pytest.approx(-logs["w_dist"] + cfg.gp_weight * logs["gp"], rel=1e-4, abs=1e-4)


def test_conditional_stage_discriminator_loss_falls(cfg) -> None:
    rec = run_stage(conditional_step, SPEC.n_c + 1, cfg, 40)
    d = rec.series("d_loss")
    # Two cross-entropies over N_c + 1 = 5 classes start near 2 ln 5.
    assert d[0] == pytest.approx(2 * math.log(5), rel=0.2)
    first, last = first_last(d, 5)
    assert last < 0.5 * first, (first, last)


def test_train_stage_runs_each_stage_and_rejects_unknown(cfg) -> None:
    sample = PatchSampler(spectrograms(per_class=1), SPEC.patch, seed=0)
    for stage, head, key in (("autoencoder", SPEC.n_z, "l1"), ("wgan-gp", 1, "w_dist"),
                             ("conditional", SPEC.n_c + 1, "d_loss")):
        result = train_stage(stage, Generator(SPEC), Discriminator(SPEC, head), sample, cfg, 2, CPU)
        assert result.steps == 2 and key in result.last
    with pytest.raises(ValueError, match="unknown GAN stage"):
        train_stage("vae", Generator(SPEC), Discriminator(SPEC, 1), sample, cfg, 1, CPU)


def test_stages_update_the_networks(cfg) -> None:
    """Each stage step moves both networks (G through D in the adversarial stages)."""
    sample = PatchSampler(spectrograms(per_class=1), SPEC.patch, seed=0)
    for builder, head in ((autoencoder_step, SPEC.n_z), (wgan_gp_step, 1), (conditional_step, SPEC.n_c + 1)):
        gen, disc = Generator(SPEC), Discriminator(SPEC, head)
        before = [p.detach().clone() for p in (*gen.parameters(), *disc.parameters())]
        builder(gen, disc, sample, cfg, CPU)(1)
        after = [*gen.parameters(), *disc.parameters()]
        g_count = len(list(gen.parameters()))
        assert any(not torch.equal(b, a) for b, a in zip(before[:g_count], after[:g_count], strict=True))
        assert any(not torch.equal(b, a) for b, a in zip(before[g_count:], after[g_count:], strict=True))


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_run_stops_on_non_finite_loss(bad: float) -> None:
    rec = Recorder()

    def step(i: int) -> dict[str, float]:
        return {"loss": 1.0 / i if i < 3 else bad, "other": 0.0}

    with pytest.raises(FloatingPointError, match=r"step 3: non-finite \['loss'\]"):
        run(step, 10, hooks=[rec], desc="demo")
    assert rec.steps == [1, 2]  # the bad step never reaches the hooks


class Scripted:
    """A model whose weight records the step that last set it, and scripted evaluation scores."""

    def __init__(self, scores: list[float]) -> None:
        self.model = nn.Linear(1, 1, bias=False)
        self.scores = iter(scores)

    def step(self, i: int) -> dict[str, float]:
        with torch.no_grad():
            self.model.weight.fill_(float(i))
        return {"loss": 1.0}

    def evaluate(self) -> float:
        return next(self.scores)

    @property
    def weight(self) -> float:
        return self.model.weight.item()


def test_keep_best_restores_the_best_snapshot() -> None:
    s = Scripted([0.1, 0.5, 0.3, 0.7, 0.2, 0.6])
    keep, rec = KeepBest(s.model), Recorder()
    result = run(s.step, 6, evaluate=s.evaluate, eval_every=1, hooks=[keep, rec])
    assert result.evals == [(1, 0.1), (2, 0.5), (3, 0.3), (4, 0.7), (5, 0.2), (6, 0.6)]
    assert (result.best_step, result.best_score, result.stopped_early) == (4, 0.7, False)
    assert s.weight == 4.0  # restored from the snapshot of step 4, not the last step's 6
    assert keep.best == 0.7
    assert rec.ended is result


def test_keep_best_early_stops_after_patience_evaluations_below_the_best() -> None:
    s = Scripted([0.1, 0.5, 0.3, 0.4, 0.2, 0.9, 1.0])
    keep = KeepBest(s.model, patience=3)
    result = run(s.step, 7 * 2, evaluate=s.evaluate, eval_every=2, hooks=[keep])
    # Evaluations at steps 2, 4, 6, 8, 10: best 0.5 at step 4, then 0.3, 0.4, 0.2 -> stop at step 10.
    assert result.evals == [(2, 0.1), (4, 0.5), (6, 0.3), (8, 0.4), (10, 0.2)]
    assert result.stopped_early and result.steps == 10
    assert result.best_step == 4
    assert s.weight == 4.0


def test_keep_best_patience_resets_on_improvement() -> None:
    s = Scripted([0.5, 0.4, 0.6, 0.5, 0.4, 0.3])
    result = run(s.step, 6, evaluate=s.evaluate, eval_every=1, hooks=[KeepBest(s.model, patience=3)])
    assert result.stopped_early and result.steps == 6 and result.best_step == 3
    assert s.weight == 3.0


def test_run_evaluates_every_n_steps_and_at_the_end() -> None:
    s = Scripted([0.1, 0.2, 0.3])
    result = run(s.step, 7, evaluate=s.evaluate, eval_every=3)
    assert [step for step, _ in result.evals] == [3, 6, 7]
    assert (result.steps, result.best_step, result.stopped_early) == (7, 7, False)
    assert s.weight == 7.0  # no KeepBest: the last weights stay
