"""Differentially private stage 3 (``training.dp``, common/privacy.py): the per-utterance clipped,
noised discriminator gradient, Poisson batches, the accountant, and the server's budget check."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import MetricRecord, RecordDict
from typer.testing import CliRunner

from common.config import ConfigError, DpConfig
from common.models.sngan import Discriminator, GanSpec, Generator
from common.pipeline import finetune, state_digest
from common.privacy import DpPlan, noisy_gradient, plan, spent_epsilon
from common.schema import load_config
from common.trainers.registry import build_trainer
from common.views import PoissonPatchSampler
from server.regimes import within_budget
from server.tracking import config_digest
from simulations.cli import app
from simulations.report import (
    budget_json,
    budget_markdown,
    budget_png,
    fold_rows,
    privacy_markdown,
    privacy_rows,
)
from tests.conftest import FAST_STUDY_TABLES, study_file
from tests.inline import run_inline
from tests.test_federation import assert_eyes_off, audit_lines, state_shapes
from tests.test_gan_training import spectrograms

SPEC = GanSpec(n_z=8, n_c=4, width=0.0625, patch=32)


def discriminator_and_batch(b: int = 6) -> tuple[Discriminator, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    disc = Discriminator(SPEC, SPEC.n_c + 1).train()
    x, y = torch.randn(b, 1, SPEC.patch, SPEC.patch), torch.randint(0, SPEC.n_c, (b,))
    with torch.no_grad():
        disc(x)  # a training-mode pass: the power iteration the step's fake pass does first
    return disc, x, y


def no_noise(n: int, clip: float) -> DpPlan:
    return DpPlan(utterances=n, sample_rate=1.0, steps=1, noise_multiplier=0.0, clip=clip, delta=1e-5, accountant="rdp")


def test_unclipped_noiseless_per_utterance_gradients_sum_to_the_batch_gradient() -> None:
    disc, x, y = discriminator_and_batch()
    expected = torch.autograd.grad(F.cross_entropy(disc.eval()(x), y), list(disc.parameters()))
    disc.train()
    params = list(disc.parameters())
    loss = noisy_gradient(disc, params, F.cross_entropy, x, y, no_noise(len(x), clip=1e9))
    # float32 both ways, summed in another order over ~1e3 terms per coordinate: 1e-4 of the largest
    # entry bounds it on any CPU kernel (observed 2e-6).
    for want, p in zip(expected, params, strict=True):
        assert p.grad is not None
        assert torch.allclose(p.grad, want, rtol=0, atol=1e-4 * want.abs().max().item() + 1e-12)
    assert loss == pytest.approx(F.cross_entropy(disc.eval()(x), y).item(), rel=1e-5)


def test_each_utterance_moves_the_gradient_by_at_most_the_clip_norm() -> None:
    disc, x, y = discriminator_and_batch()
    params = list(disc.parameters())
    norms = []
    for i in range(len(x)):
        for p in params:
            p.grad = None
        noisy_gradient(disc, params, F.cross_entropy, x[i:i + 1], y[i:i + 1], no_noise(1, clip=1e9))
        norms.append(math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params)))  # type: ignore[union-attr]
    clip = float(np.median(norms))  # half the utterances are clipped, half are not
    for i, raw in enumerate(norms):
        for p in params:
            p.grad = None
        noisy_gradient(disc, params, F.cross_entropy, x[i:i + 1], y[i:i + 1], no_noise(1, clip=clip))
        got = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params))  # type: ignore[union-attr]
        assert got == pytest.approx(min(raw, clip), rel=1e-4)


def test_the_noise_is_sigma_times_clip_over_the_expected_batch() -> None:
    disc, x, _ = discriminator_and_batch()
    params = list(disc.parameters())
    private = DpPlan(utterances=40, sample_rate=0.25, steps=1, noise_multiplier=3.0, clip=0.5, delta=1e-5, accountant="rdp")
    torch.manual_seed(1)
    noisy_gradient(disc, params, F.cross_entropy, x[:0], torch.zeros(0, dtype=torch.long), private)  # an empty Poisson batch
    noise = torch.cat([p.grad.flatten() for p in params])  # type: ignore[union-attr]
    assert noise.numel() > 5_000
    assert noise.mean().abs().item() < 4 * 0.15 / math.sqrt(noise.numel())
    assert noise.std().item() == pytest.approx(3.0 * 0.5 / (0.25 * 40), rel=0.05)


def gaussian_epsilon_by_hand(sigma: float, steps: int, delta: float) -> float:
    """No subsampling: each step is the Gaussian mechanism, RDP alpha / (2 sigma^2) (Mironov 2017,
    Prop. 7), composed additively over the steps; converted to (epsilon, delta) as Balle et al. 2020
    (Thm. 21) do, at Opacus's orders."""
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    return min(steps * a / (2 * sigma**2) + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
               for a in orders)


def test_epsilon_without_subsampling_is_the_composed_gaussian_mechanism() -> None:
    assert spent_epsilon(2.0, 1.0, 4, 1e-5) == pytest.approx(gaussian_epsilon_by_hand(2.0, 4, 1e-5), rel=1e-12)
    assert spent_epsilon(5.0, 1.0, 100, 1e-3) == pytest.approx(gaussian_epsilon_by_hand(5.0, 100, 1e-3), rel=1e-12)
    # Subsampling and fewer steps only spend less; no step spends nothing.
    assert spent_epsilon(2.0, 0.3, 4, 1e-5) < spent_epsilon(2.0, 1.0, 4, 1e-5) and spent_epsilon(2.0, 1.0, 0, 1e-5) == 0


def test_a_budget_is_met_by_the_noise_the_plan_picks() -> None:
    dp = DpConfig(epsilon=3.0)
    private = plan(dp, utterances=46, batch_size=32, steps=600)
    assert private.delta == pytest.approx(1 / 46) and private.sample_rate == pytest.approx(32 / 46)
    assert 0.97 * 3.0 < private.epsilon() <= 3.0
    assert private.epsilon(300) < private.epsilon()
    fixed = plan(DpConfig(noise_multiplier=private.noise_multiplier / 2), 46, 32, 600)
    assert fixed.epsilon() > 3.0  # half the noise spends more than the budget


def test_poisson_batches_hold_each_utterance_at_most_once_at_rate_b_over_n() -> None:
    data = spectrograms(per_class=5)  # 20 utterances
    sample = PoissonPatchSampler(data, 32, seed=0)
    sizes = []
    for _ in range(400):
        x, y = sample(5)
        assert x.shape[1:] == (1, 32, 32) and len(y) == len(x)
        sizes.append(len(x))
    assert np.mean(sizes) == pytest.approx(5, rel=0.05) and min(sizes) < 5 < max(sizes)
    assert 0 in {len(PoissonPatchSampler(data, 32, seed=s)(1)[0]) for s in range(40)}  # q = 1/20: empty batches happen
    assert len(sample(100)[0]) == 20  # q is capped at 1: everyone, once


def test_a_private_finetune_differs_from_the_plain_one_and_runs_on_noise() -> None:
    def tuned(**dp: float) -> str:
        cfg = load_config(overrides={"training": {"batch_size": 8, "finetune_iterations": 3,
                                                  **({"dp": dp} if dp else {})}})
        torch.manual_seed(0)
        return state_digest(finetune(cfg, Generator(SPEC), Discriminator(SPEC, 1), spectrograms(per_class=2)).state_dict())

    plain = tuned()
    assert plain == tuned()  # dp off: the same generator every time
    assert tuned(noise_multiplier=1.0) not in {plain, tuned(noise_multiplier=50.0)}


def test_a_private_finetune_draws_poisson_batches_of_distinct_utterances(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[list[int]] = []
    batch = PoissonPatchSampler._batch

    def record(self: PoissonPatchSampler, rows: np.ndarray):  # type: ignore[no-untyped-def]
        drawn.append(list(rows))
        return batch(self, rows)

    monkeypatch.setattr(PoissonPatchSampler, "_batch", record)
    cfg = load_config(overrides={"training": {"batch_size": 4, "finetune_iterations": 30, "dp": {"noise_multiplier": 1.0}}})
    finetune(cfg, Generator(SPEC), Discriminator(SPEC, 1), spectrograms(per_class=2))  # 8 utterances: q = 1/2
    assert len(drawn) == 30 and all(len(set(rows)) == len(rows) for rows in drawn)
    assert len({len(rows) for rows in drawn}) > 1  # the batch size varies around q N = 4


def test_a_noiseless_unclipped_private_ser_step_is_the_plain_step() -> None:
    """fedavg's DP-SGD (NetTrainer.fit with ``private``) on a Poisson batch of every utterance (q = 1),
    without noise or clipping, is the plain cross-entropy step on that batch."""
    cfg = load_config(overrides={"training": {"batch_size": 8, "ser_lr": 1e-3}})
    data = spectrograms(per_class=2)  # 8 utterances
    plain, private = build_trainer(cfg, torch.device("cpu")), build_trainer(cfg, torch.device("cpu"))
    batch = private.private_sampler(data, seed=0)(8)
    assert len(batch[1]) == 8 and len(set(batch[0].sum(dim=(1, 2, 3)).tolist())) == 8  # one window of each
    plain.fit(lambda _: batch, iterations=1)
    private.fit(lambda _: batch, iterations=1, private=no_noise(8, clip=1e9))
    # Adam's first step moves each weight by lr g / (|g| + 1e-8), ~lr x sign(g): a term missing or
    # of the wrong sign moves weights by ~lr; float32 sums in another order only the few weights
    # whose |g| is near 1e-8 (observed at most 5.5e-3 x lr). (The gradient's scale, which Adam's
    # first step hides, is test_unclipped_noiseless_per_utterance_gradients_sum_to_the_batch_gradient's.)
    for (name, want), got in zip(plain.state_dict().items(), private.state_dict().values(), strict=True):
        assert torch.allclose(got, want, rtol=0, atol=0.1 * cfg.training.ser_lr), name
    noisy = build_trainer(cfg, torch.device("cpu"))
    noisy.fit(lambda _: batch, iterations=1, private=DpPlan(8, 1.0, 1, 1.0, 1.0, 1e-5, "rdp"))
    assert state_digest(noisy.state_dict()) != state_digest(plain.state_dict())


def test_only_a_trainer_with_the_plain_step_trains_privately() -> None:
    cfg = load_config(overrides={"training": {"trainer": "chang-cnn"}})
    with pytest.raises(ValueError, match="training.dp: the trainer chang-cnn has its own loss"):
        build_trainer(cfg, torch.device("cpu")).private_sampler(spectrograms(per_class=2))


def test_dp_needs_a_budget_or_a_noise_and_no_selection() -> None:
    with pytest.raises(ConfigError, match="training.dp needs epsilon"):
        load_config(overrides={"training": {"dp": {"clip": 1.0}}})
    with pytest.raises(ConfigError, match="finetune_select_every"):
        load_config(overrides={"training": {"dp": {"epsilon": 3}, "finetune_select_every": 50}})


def test_the_epsilons_axis_sets_each_budget_and_refuses_a_second_one() -> None:
    cfg = load_config(overrides={"epsilons": [3, math.inf, 10], "regimes": ["real-central", "gan-federated", "fedavg"],
                                 "training": {"dp": {"clip": 0.5}}, "tracking": {"experiment": "curve"}})
    studies = cfg.budget_studies
    assert [(e, s.tracking.experiment, s.regimes) for e, s in studies] == [
        (math.inf, "curve-epsinf", ("real-central", "gan-federated", "fedavg")),
        (10.0, "curve-eps10", ("gan-federated", "fedavg")),  # real-central does not depend on the budget
        (3.0, "curve-eps3", ("gan-federated", "fedavg"))]
    assert studies[0][1].training.dp is None and studies[0][1].epsilons == ()
    assert [s.training.dp for _, s in studies[1:]] == [DpConfig(epsilon=10.0, clip=0.5), DpConfig(epsilon=3.0, clip=0.5)]
    assert load_config(overrides={"epsilons": [1], "regimes": ["real-central"]}).budget_studies[0][1].regimes == (
        "real-central",)  # the largest budget runs what is not covered
    # A budget's study is the study one would write for it alone: it resumes runs made without the axis.
    alone = load_config(overrides={"regimes": ["gan-federated"], "training": {"dp": {"epsilon": 10, "clip": 0.5}}})
    assert config_digest(studies[1][1]) == config_digest(alone)
    for bad, message in [({"epsilons": [0]}, "every budget must be > 0"),
                         ({"epsilons": [3], "training": {"dp": {"epsilon": 3}}}, "remove training.dp.epsilon"),
                         ({"epsilons": [3], "training": {"finetune_select_every": 50}}, "finetune_select_every")]:
        with pytest.raises(ConfigError, match=message):
            load_config(overrides=bad)


def test_fedser_study_runs_the_privacy_utility_curve_and_report_plots_it(tmp_path: Path, pretrained_gan: Path) -> None:
    """``epsilons = [inf, 50]`` with real-central and gan-central: two experiments, the uncovered
    regime in the first only, gan-central private in the second (its folds spend at most 50), and
    ``fedser report`` reads the axis back into one table and plot."""
    path = study_file(tmp_path, 'regimes = ["real-central", "gan-central"]\nworkers = 1\nepsilons = [inf, 50]\n'
                      + FAST_STUDY_TABLES.replace("[audit]\n", "[audit]\nenabled = false\n")
                      + f'[model]\npretrained = "{pretrained_gan}"\n[tracking]\nexperiment = "curve"\n')
    result = CliRunner().invoke(app, ["study", str(path)])
    assert result.exit_code == 0, result.output
    uri = load_config(path).tracking_uri
    mlflow.set_tracking_uri(uri)

    def parents(experiment: str) -> dict[str, Any]:
        return {r.data.tags["regime"]: r for r in mlflow.search_runs(
            experiment_names=[experiment], filter_string="tags.kind = 'regime'", output_format="list")}

    assert sorted(parents("curve-epsinf")) == ["gan-central", "real-central"]
    assert sorted(parents("curve-eps50")) == ["gan-central"]
    folds = mlflow.search_runs(experiment_names=["curve-eps50"], filter_string="tags.fold != ''", output_format="list")
    assert len(folds) == 2 and all(0 < f.data.metrics["epsilon"] <= 50 for f in folds)
    plain = mlflow.search_runs(experiment_names=["curve-epsinf"], filter_string="tags.fold != ''", output_format="list")
    assert plain and not any("epsilon" in f.data.metrics for f in plain)
    again = CliRunner().invoke(app, ["study", str(path)])
    assert again.exit_code == 0 and again.output.count("finished in an earlier run") == 3, again.output
    result = CliRunner().invoke(app, ["report", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "| regime | ε = ∞ | ε = 50 |" in result.output
    private = np.mean([r["f1_macro"] for r in fold_rows(uri, "curve-eps50")])
    assert re.search(rf"\| gan-central \| \d\.\d{{3}} \[.*\] \| {private:.3f} \[", result.output), result.output
    assert re.search(r"\| real-central \| \d\.\d{3} \[.*\] \| - \|", result.output)  # not run at 50
    report = mlflow.search_runs(experiment_names=["curve"], output_format="list")
    assert [r.data.tags["kind"] for r in report] == ["report"]
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(report[0].info.run_id)}
    assert names == {"privacy_utility.md", "privacy_utility.json", "privacy_utility.png"}


def test_the_curve_tables_put_each_attack_beside_its_budget(tmp_path: Path) -> None:
    scores = [{"budget": math.inf, "regime": "real-central", "trainer": "ser-cnn", "f1_macro": 0.7, "f1_macro_ci": (0.6, 0.8)},
              {"budget": math.inf, "regime": "fedavg", "trainer": "ser-cnn", "f1_macro": 0.6, "f1_macro_ci": (0.5, 0.7)},
              {"budget": 1.0, "regime": "fedavg", "trainer": "ser-cnn", "f1_macro": 0.1, "f1_macro_ci": None}]
    attack = {"regime": "fedavg", "trainer": "ser-cnn", "seed": 0, "gender_chance": 0.5, "gender_nodes": 10}
    attacks = [{**attack, "budget": math.inf, "gender_auc": 0.96, "gender_auc_low": 0.81, "gender_auc_high": 1.0,
                "gender_accuracy": 0.9, "gender_advantage": 0.58},
               {**attack, "budget": 1.0, "epsilon": 0.98, "gender_auc": 0.6, "gender_auc_low": 0.2,
                "gender_auc_high": 1.0, "gender_accuracy": 0.5, "gender_advantage": 0.02}]
    text = budget_markdown(scores, attacks)
    assert "| real-central | 0.700 [0.600, 0.800] | - |" in text
    assert "| fedavg | 0.600 [0.500, 0.700] | 0.100 - |" in text
    assert "| fedavg | 0 | ∞ | inf | 0.960 [0.810, 1.000] | 0.900 (0.500) | 0.580 | 10 |" in text
    assert "| fedavg | 0 | 1 | 0.98 | 0.600 [0.200, 1.000] | 0.500 (0.500) | 0.020 | 10 |" in text
    assert budget_png(scores, attacks, tmp_path / "curve.png").stat().st_size > 10_000
    assert budget_json(scores, attacks)["scores"][0]["budget"] == "inf"


def reply(**metrics: float) -> RecordDict:
    return RecordDict({"metrics": MetricRecord({"num-examples": 10, **metrics})})


def test_the_server_refuses_a_generator_over_budget_or_without_its_epsilon(caplog: pytest.LogCaptureFixture) -> None:
    replies = {"Session1": reply(epsilon=2.9), "Session2": reply(epsilon=3.4), "Session3": reply()}
    failures: dict[str, str] = {}
    kept = within_budget(DpConfig(epsilon=3.0), replies, failures)
    assert list(kept) == ["Session1"]
    assert failures["Session2"] == "refused: it spent epsilon 3.4, over the budget training.dp.epsilon = 3"
    assert "reports no epsilon" in failures["Session3"]
    assert "Session2: refused" in caplog.text
    assert within_budget(None, replies, {}) == replies  # dp off: nothing to check
    assert list(within_budget(DpConfig(noise_multiplier=1.0), replies, {})) == ["Session1", "Session2"]  # no budget


@pytest.mark.usefixtures("serverapp_identity")
def test_private_federated_regimes_report_the_epsilon_each_node_spent(tmp_path: Path, pretrained_gan: Path) -> None:
    """gan-federated, gan-fedavg and fedavg on the in-process grid with training.dp: every node's
    batch is its whole session (q = 1, batch 64), so each fold's epsilon is the Gaussian mechanism
    composed over 4 private steps (stage 3's 4; gan-fedavg 2 rounds of 2; fedavg's DP-SGD 2 rounds
    of 2), by hand; a budget below it refuses every generator and fedavg's second round."""
    hand = gaussian_epsilon_by_hand(2.0, 4, 1e-5)

    def study(name: str, budget: float, regimes: tuple[str, ...] = ("gan-federated", "gan-fedavg", "fedavg"),
              sessions: str = "[1, 2]") -> dict:
        (tmp_path / name).mkdir()
        toml = (f'name = "{name}"\n' + FAST_STUDY_TABLES.replace("[training]\n", "[training]\nbatch_size = 64\n")
                .replace("sessions = [1, 2]", f"sessions = {sessions}")
                .replace("[audit]\n", "[audit]\nenabled = false\n")
                + f'[model]\npretrained = "{pretrained_gan}"\n[training.dp]\nnoise_multiplier = 2.0\ndelta = 1e-5\n'
                f'epsilon = {budget}\n[federation]\nnode_wait = 60\ngan_rounds = 2\nrounds = 2\nlocal_iterations = 2\n[tracking]\nexperiment = "{name}"\n')
        cfg = load_config(study_file(tmp_path / name, toml))
        mlflow.set_tracking_uri(cfg.tracking_uri)
        return run_inline(cfg, regimes, 5)

    within = study("within", hand * 1.01, sessions="[1]")
    for regime, outcomes in within.items():
        assert [o.skipped for o in outcomes] == [None], regime
        assert [o.metrics["epsilon"] for o in outcomes] == pytest.approx([hand], rel=1e-9), regime
    # What left the nodes: the networks and scalars, now with each node's epsilon among them.
    cfg = load_config(overrides={"work_dir": str(tmp_path)})
    spec = GanSpec.of(cfg)
    shapes = {"generator": state_shapes(Generator(spec)), "discriminator": state_shapes(Discriminator(spec, spec.n_c + 1)),
              "ser": state_shapes(build_trainer(cfg, torch.device("cpu")))}
    for parent in mlflow.search_runs(experiment_names=["within"], filter_string="tags.kind = 'regime'", output_format="list"):
        lines = audit_lines(parent)
        assert any("epsilon" in line["metrics"].get("metrics", {}) for line in lines), parent.data.tags["regime"]
        assert_eyes_off(lines, shapes)
    # fedser report's privacy table reads it back from MLflow.
    rows = privacy_rows(mlflow.get_tracking_uri(), "within")
    assert sorted((r["regime"], r["epsilon"]) for r in rows) == [("fedavg", pytest.approx(hand, rel=1e-9)),
                                                                ("gan-fedavg", pytest.approx(hand, rel=1e-9)),
                                                                ("gan-federated", pytest.approx(hand, rel=1e-9))]
    assert f"| gan-federated | 0 | {hand:.3g} | - |" in privacy_markdown(rows)
    # The nodes fine-tune and the server refuses every generator: no SER is trained.
    two = gaussian_epsilon_by_hand(2.0, 2, 1e-5)  # fedavg's nodes after round 1
    over = study("over", (two + hand) / 2, ("gan-federated", "fedavg"), sessions="[1]")
    assert all("no training node's generator arrived" in str(o.skipped) for o in over["gan-federated"])
    parents = {r.data.tags["regime"]: r for r in mlflow.search_runs(experiment_names=["over"], output_format="list")
               if r.data.tags.get("kind") == "regime"}
    assert parents["gan-federated"].data.metrics["generators_refused"] == 5
    # fedavg: round 2's replies (epsilon = hand) are refused before FedAvg averages them, each node's
    # failure tagged; the folds keep round 1's model, whose nodes spent what a 2-step plan allows.
    assert all(o.skipped is None for o in over["fedavg"])
    assert all(o.metrics["epsilon"] == pytest.approx(two, rel=1e-9) for o in over["fedavg"])
    tags = parents["fedavg"].data.tags
    assert any("over the budget training.dp.epsilon" in v for k, v in tags.items() if k.startswith("failure")), tags
