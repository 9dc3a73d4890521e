"""The speaker-gender attack on generators (common/attacks.py): its figures, and that it succeeds
on a deliberately leaky setup and fails where there is nothing to learn."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from common.attacks import (
    fedgan_update_attack,
    female_score,
    first_layer,
    gender_attack,
    gender_classifier,
    public_genders,
    ser_update_attack,
    shadow_clients,
)
from common.data import load_corpus, prepared_unlabeled
from common.features import MinMax
from common.features.windows import random_patch
from common.models.sngan import Discriminator, GanSpec, Generator
from common.schema import StudyConfig, load_config
from common.trainers.registry import build_trainer
from common.trainers.supervised import NetTrainer, fedavg_round
from common.views import LabeledSet
from tests.conftest import FAST_STUDY_TABLES


def test_the_figures_over_nodes() -> None:
    genders = {"a": "F", "b": "F", "c": "M", "d": "M", "e": "M"}
    perfect = gender_attack({"a": 0.9, "b": 0.7, "c": 0.6, "d": 0.2, "e": 0.1}, genders)
    assert perfect["gender_auc"] == 1 and perfect["gender_auc_low"] == 1 and perfect["gender_auc_high"] == 1
    assert perfect["gender_accuracy"] == pytest.approx(0.8) and perfect["gender_chance"] == pytest.approx(0.6)
    assert perfect["gender_nodes"] == 5
    assert perfect["gender_advantage"] == pytest.approx(np.mean([0.8, 0.4, -0.2, 0.6, 0.8]))
    tied = gender_attack({"a": 0.5, "b": 0.5, "c": 0.5, "d": 0.5, "e": 0.5}, genders)
    assert tied["gender_auc"] == 0.5  # ties count half (the Mann-Whitney AUC)
    backwards = gender_attack({"a": 0.1, "b": 0.2, "c": 0.6, "d": 0.7, "e": 0.9}, genders)
    assert backwards["gender_auc"] == 0 and backwards["gender_accuracy"] == 0
    mixed = gender_attack({"a": 0.6, "b": 0.4, "c": 0.6, "d": 0.4, "e": 0.5}, genders)
    assert mixed["gender_auc_low"] < mixed["gender_auc"] < mixed["gender_auc_high"]
    assert gender_attack({"a": 0.9, "b": 0.1}, {"a": "F", "b": "F"}) == {}  # one gender: nothing to score


class Replayer:
    """A deliberately leaky "generator": it replays random patches of one speaker's real utterances
    (whatever the class asked for), as a generator that copied its node's data would."""

    n_z = 4

    def __init__(self, data: LabeledSet, size: int) -> None:
        self.data, self.size = data, size

    def generate(self, noise: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        rng = np.random.default_rng(int(noise.abs().sum() * 1e4))
        rows = rng.integers(0, len(self.data.feats), len(classes))
        patches = [random_patch(self.data.feats[r], self.size, rng, pad_value=-1.0) for r in rows]
        return torch.from_numpy(np.stack(patches)).unsqueeze(1).float()

    def eval(self) -> Replayer:
        return self


def test_the_attack_finds_the_gender_of_copying_generators_and_not_with_shuffled_labels(pretrained_gan: Path) -> None:
    """Ten one-speaker nodes of the embedded IEMOCAP whose "generators" replay their speech; the
    attacker trains on the other corpus (the embedded LibriSpeech) only."""
    tables = tomllib.loads(FAST_STUDY_TABLES)
    tables["audit"] = {**tables["audit"], "iterations": 300, "samples_per_class": 20}
    cfg = load_config(overrides={**tables, "work_dir": str(pretrained_gan.parents[1])})
    corpus = load_corpus(cfg)
    stats = MinMax.combine(prepared_unlabeled(cfg).stats(), corpus.overall)
    speakers = sorted({u.speaker for u in corpus.utterances})
    assert len(speakers) == 10
    generators = {s: Replayer(corpus.labeled_set([u for u in corpus.utterances if u.speaker == s], stats),
                              cfg.features.patch_frames) for s in speakers}
    truth = {s: s[-1] for s in speakers}
    public = public_genders(cfg, stats, per_gender=200, seed=0)
    assert set(public.labels) == {0, 1}

    clf = gender_classifier(cfg, public, seed=0)
    leaky = gender_attack({s: female_score(clf, g, cfg, seed=0) for s, g in generators.items()}, truth)
    assert leaky["gender_auc"] >= 0.9 and leaky["gender_accuracy"] > leaky["gender_chance"]
    assert leaky["gender_advantage"] >= 0.5  # observed 0.84: confident and right

    rng = np.random.default_rng(0)
    shuffled = LabeledSet(public.feats, tuple(int(v) for v in rng.permutation(public.labels)), public.ids)
    blind = gender_classifier(cfg, shuffled, seed=0)
    chance = gender_attack({s: female_score(blind, g, cfg, seed=0) for s, g in generators.items()}, truth)
    # Trained on noise the classifier is unsure of every node (observed advantage 0.07); its AUC says
    # little, since a finite shuffle keeps a chance correlation a separating score can follow.
    assert abs(chance["gender_advantage"]) <= 0.2



def test_the_update_attack_reads_the_first_layer() -> None:
    trainer = build_trainer(load_config(), torch.device("cpu"))
    assert isinstance(trainer, NetTrainer)
    assert first_layer(trainer.net) == ("convs.0.bias", "convs.0.parametrizations.weight.original")


Client = tuple[str, LabeledSet]


@pytest.fixture(scope="module")
def public_speakers(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyConfig, list[Client], dict[int, Client]]:
    """24 public speakers (the embedded LibriSpeech): twelve the attacker's shadow clients (6 F, 6 M),
    twelve the nodes — the deliberately leaky setup, nodes drawn from the attacker's own distribution."""
    tables = tomllib.loads(FAST_STUDY_TABLES)
    tables["data"] = {"synthetic": {**tables["data"]["synthetic"], "pretrain_speakers": 24}}
    tables["federation"] = {"rounds": 2, "local_iterations": 20}
    cfg = load_config(overrides={**tables, "work_dir": str(tmp_path_factory.mktemp("public"))})
    clients = shadow_clients(cfg, prepared_unlabeled(cfg).stats(), per_gender=200, seed=0)
    females, males = [c for c in clients if c[0] == "F"], [c for c in clients if c[0] == "M"]
    assert (len(females), len(males)) == (12, 12)
    return cfg, females[:6] + males[:6], dict(enumerate(females[6:] + males[6:]))


def test_the_update_attack_finds_the_gender_of_public_like_nodes_and_not_with_shuffled_shadows(
        public_speakers: tuple[StudyConfig, list[Client], dict[int, Client]]) -> None:
    """Nodes training FedAvg rounds on their speech. With shadow genders that say nothing (in each
    true gender, half labelled F and half M) it must know nothing."""
    cfg, shadows, nodes = public_speakers

    def build() -> NetTrainer:
        return build_trainer(cfg, torch.device("cpu"))  # type: ignore[return-value]

    def local_round(trainer: NetTrainer, data: LabeledSet, rnd: int, seed: int) -> None:
        fedavg_round(trainer, data, round_=rnd, seed=seed)

    # The nodes train as the shadow clients do (the same round, the global model's labels): they
    # differ from the shadows in their voices alone.
    spy = ser_update_attack(build, local_round, shadows, seed=0)
    shadow_round = spy.shadow_round
    sent = build().state_dict()
    for rnd in (1, 2):
        states = {f"n{i}": shadow_round(sent, data, rnd, 100 * rnd + i) for i, (_, data) in nodes.items()}
        for name, state in states.items():
            spy.observe(rnd, sent, state, name)
        sent = {k: torch.stack([s[k] for s in states.values()]).mean(0) for k in sent}  # FedAvg, equal weights
    truth = {f"n{i}": g for i, (g, _) in nodes.items()}
    leaky = gender_attack(spy.scores(), truth)
    # Observed: AUC 1.0, accuracy 1.0, advantage 0.41 (0.43 with 50 local steps).
    assert leaky["gender_auc"] >= 0.9 and leaky["gender_accuracy"] > leaky["gender_chance"]
    assert leaky["gender_advantage"] >= 0.25
    spy.shadows = [(g, d) for g, (_, d) in zip(["F", "F", "F", "M", "M", "M"] * 2, shadows, strict=True)]
    blind = gender_attack(spy.scores(), truth)  # shadow genders independent of the true ones (F x 6, M x 6)
    assert abs(blind["gender_advantage"]) <= 0.2  # observed 0.05


def test_the_update_attack_on_fedgan_reads_the_discriminators_first_layer_and_finds_the_gender(
        public_speakers: tuple[StudyConfig, list[Client], dict[int, Client]]) -> None:
    """gan-fedavg's updates, the same leaky setup (one FedGAN round of 10 steps from one random G
    and D), and the same blind control."""
    cfg, shadows, nodes = public_speakers
    spy = fedgan_update_attack(cfg, 10, shadows, seed=0)
    assert spy.names == ("discriminator.convs.0.bias", "discriminator.convs.0.parametrizations.weight.original")
    spec = GanSpec.of(cfg)
    torch.manual_seed(0)
    gen, disc = Generator(spec), Discriminator(spec, head=spec.n_c + 1)
    sent = {**{f"generator.{k}": v for k, v in gen.state_dict().items()},
            **{f"discriminator.{k}": v for k, v in disc.state_dict().items()}}
    for i, (_, data) in nodes.items():
        spy.observe(1, sent, spy.shadow_round(sent, data, 1, 100 + i), f"n{i}")
    truth = {f"n{i}": g for i, (g, _) in nodes.items()}
    leaky = gender_attack(spy.scores(), truth)  # observed: AUC 0.97, accuracy 0.92, advantage 0.61
    assert leaky["gender_auc"] >= 0.9 and leaky["gender_accuracy"] > leaky["gender_chance"]
    assert leaky["gender_advantage"] >= 0.25
    spy.shadows = [(g, d) for g, (_, d) in zip(["F", "F", "F", "M", "M", "M"] * 2, shadows, strict=True)]
    blind = gender_attack(spy.scores(), truth)
    assert abs(blind["gender_advantage"]) <= 0.2  # observed -0.06
