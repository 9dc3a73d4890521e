"""The generator audit (common/audit.py) on generators built here: one that never saw the members,
one that replays their patches, and one that emits a single patch per class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from common.audit import audit_generator, class_frechet, data_copying, held_back, members_of
from common.features.windows import random_patch
from common.models.sngan import GanSpec
from common.schema import load_config
from common.views import LabeledSet

P = 32  # the tiny preset's patch


def corpus(n: int, seed: int, prefix: str) -> LabeledSet:
    """``n`` utterances of 4 classes, each (32, T): a class-specific band of energy plus smooth noise."""
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for i in range(n):
        c = i % 4
        t = int(rng.integers(40, 90))
        noise = rng.normal(size=(P, t + 7))
        # Smooth along time, as a log-mel spectrogram is from one frame to the next.
        x = -0.5 + 0.6 * np.stack([np.convolve(row, np.ones(8) / np.sqrt(8), "valid") for row in noise]) / 2
        x[4 + 6 * c : 10 + 6 * c] += 0.9  # the class's band
        feats.append(np.clip(x, -1, 1).astype(np.float32))
        labels.append(c)
    return LabeledSet(tuple(feats), tuple(labels), tuple(f"{prefix}{i:03d}" for i in range(n)))


class Crops(nn.Module):
    """A 'generator' whose samples are random crops of ``data`` of the asked class (noise-seeded)."""

    def __init__(self, data: LabeledSet, spec: GanSpec, single: bool = False) -> None:
        super().__init__()
        self.data, self.spec, self.n_z, self.single = data, spec, spec.n_z, single

    def generate(self, noise: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        out = []
        for z, c in zip(noise, classes.tolist(), strict=True):
            rows = [i for i, y in enumerate(self.data.labels) if y == c]
            # The crop is picked by the noise rounded to 0.01: torch's normal samples differ by up to
            # ~1e-6 between its vectorized (AVX2, AVX-512) and scalar kernels, which must not pick other
            # crops on another CPU (seeded by the unrounded noise x 1e6, a fifth of them did).
            seed = 0 if self.single else [round(v * 100) + 10_000 for v in z[:4].tolist()]
            rng = np.random.default_rng(seed)
            out.append(random_patch(self.data.feats[rows[int(rng.integers(len(rows)))]], P, rng, pad_value=-1.0))
        return torch.from_numpy(np.stack(out)).unsqueeze(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("audit")
    (folder / "study.toml").write_text('preset = "tiny"\n[audit]\nsamples_per_class = 60\niterations = 60\n')
    cfg = load_config(folder / "study.toml")
    data = corpus(160, seed=1, prefix="a")
    members, held_out = members_of(data, 0.25, seed=0)
    others = corpus(120, seed=2, prefix="b")  # the same distribution, never a member
    spec = GanSpec.of(cfg)
    blind = audit_generator(cfg, Crops(others, spec), members, held_out)  # a generator that never saw the members
    return cfg, spec, members, held_out, others, blind


def test_members_are_split_by_a_hash_of_the_id() -> None:
    ids = [f"Ses01F_impro01_F{i:03d}" for i in range(2000)]
    out = [i for i in ids if held_back(i, 0.2, seed=0)]
    assert 0.17 < len(out) / len(ids) < 0.23
    assert out == [i for i in ids if held_back(i, 0.2, seed=0)]  # a node decides as the study does
    assert out != [i for i in ids if held_back(i, 0.2, seed=1)]


def test_membership_attack_separates_a_replaying_generator_from_one_that_never_saw_the_members(setup) -> None:
    cfg, spec, members, held_out, others, blind = setup
    replay = audit_generator(cfg, Crops(members, spec), members, held_out)
    assert 0.3 < blind["mia_auc"] < 0.7, blind
    assert replay["mia_auc"] > 0.9, replay
    assert replay["mia_tpr_1fpr"] > blind["mia_tpr_1fpr"]
    # Data copying: the replaying generator's samples sit closer to the training set than unseen data.
    assert replay["ct"] < -3 < blind["ct"], (replay["ct"], blind["ct"])
    # Quality: samples of the right class, a classifier trained on them works on real held-out data.
    for figures in (blind, replay):
        assert figures["gan_test"] > 0.8 and figures["gan_train"] > 0.6 and figures["real_train"] > 0.6
        assert 0.7 < figures["diversity"] < 1.3


def test_a_collapsed_generator_shows_no_diversity_and_a_large_frechet_distance(setup) -> None:
    cfg, spec, members, held_out, others, healthy = setup
    collapsed = audit_generator(cfg, Crops(others, spec, single=True), members, held_out)
    assert collapsed["diversity"] < 0.05 < 0.7 < healthy["diversity"]
    assert collapsed["fd"] > 3 * healthy["fd"]
    assert healthy["fd_real"] < collapsed["fd"]


def test_frechet_and_copying_statistics_on_known_distributions() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 3)), rng.normal(size=(400, 3))
    y = np.zeros(400, dtype=int)
    assert class_frechet(a, y, b, y) < 0.2 < class_frechet(a, y, b + 1.0, y)
    train, test = rng.normal(size=(300, 8)), rng.normal(size=(200, 8))
    copies = train[rng.integers(0, 300, 200)] + 0.01 * rng.normal(size=(200, 8))
    assert data_copying(train, test, copies, cells=3, seed=0) < -5
    assert abs(data_copying(train, test, rng.normal(size=(200, 8)), cells=3, seed=0)) < 3
