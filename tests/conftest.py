"""Shared fixtures: small audio files and a hand-written IEMOCAP tree in the real format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
import torch

from common.audio import write_wav


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The end-to-end (``slow``) tests first: under ``pytest -n`` (make test) each process then
    starts with a long one and the short ones fill in around them, instead of one process
    running the last long test alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order otherwise


def unavailable(reason: str) -> NoReturn:
    """A test that cannot run here (a program or an engine is missing): skipped on a developer's
    machine, a failure under CI=true, where .ci/run installs what it needs, so CI cannot stay
    green without running it."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true, and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Tiny networks gain nothing from more threads, and two pools fighting over two cores lose."""
    torch.set_num_threads(1)


def tone(seconds: float = 0.5, rate: int = 16_000, freq: float = 220.0) -> np.ndarray:
    """A short harmonic tone, float32 mono."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.1 * np.sin(2 * np.pi * 3 * freq * t)).astype(np.float32)


# Real-format EmoEvaluation text (IEMOCAP README; lines quoted in notes §2.2), including the
# header, a multi-label annotator line, self-evaluations and an xxx consensus.
EMO_IMPRO01 = """% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]

[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]
C-E2:\tNeutral;\t()
C-E3:\tNeutral;\t()
C-E4:\tNeutral;\t()
C-F1:\tNeutral;\t(curious)
A-E3:\tval 3; act 2; dom  2;\t()
A-E4:\tval 2; act 3; dom  3;\t(mildly aggravated but staying polite, attitude)
A-F1:\tval 3; act 2; dom  1;\t()

[10.0100 - 11.3925]\tSes01F_impro01_M000\texc\t[3.5000, 3.5000, 3.0000]
C-E2:\tExcited;\t()
C-E3:\tHappiness; Excited;\t()
C-M1:\tNeutral; Anger;\t()
A-E3:\tval 4; act 4; dom  3;\t()
A-E4:\tval 3; act 3; dom  3;\t()

[19.2900 - 20.7875]\tSes01F_impro01_F001\txxx\t[2.5000, 3.0000, 3.0000]
C-E2:\tNeutral;\t()
C-E3:\tFrustration;\t()

[21.0000 - 23.5000]\tSes01F_impro01_M001\tfru\t[2.0000, 3.5000, 3.5000]
C-E2:\tFrustration;\t()

[140.2250 - 145.6000]\tSes01F_impro01_F002\tang\t[1.5000, 4.0000, 4.5000]
C-E1:\tAnger;\t()
A-E3:\tval 2; act 4; dom  4;\t()
"""

EMO_IMPRO05A = """% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]

[1.0000 - 2.5000]\tSes03M_impro05a_F000\tsad\t[1.5000, 1.5000, 2.0000]
C-E1:\tSadness;\t()

[3.0000 - 4.0000]\tSes03M_impro05a_M000\thap\t[4.0000, 3.0000, 3.0000]
C-E1:\tHappiness;\t()
"""

EMO_SCRIPT01_1B = """% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]

[1.0000 - 2.5000]\tSes05M_script01_1b_F000\tneu\t[3.0000, 2.0000, 2.5000]
C-E1:\tNeutral;\t()

[3.0000 - 4.5000]\tSes05M_script01_1b_M000\tang\t[1.5000, 4.5000, 4.0000]
C-E1:\tAnger;\t()
"""


def add_dialog(root: Path, session: int, dialog: str, text: str, missing: tuple[str, ...] = ()) -> None:
    """Write one EmoEvaluation file and a wav per summary line (except the ``missing`` ones)."""
    sdir = root / f"Session{session}"
    (sdir / "dialog" / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
    (sdir / "dialog" / "EmoEvaluation" / f"{dialog}.txt").write_text(text)
    for line in text.splitlines():
        if line.startswith("[") and "\t" in line:
            utt = line.split("\t")[1]
            if utt not in missing:
                write_wav(sdir / "sentences" / "wav" / dialog / f"{utt}.wav", tone())


@pytest.fixture
def iemocap_tree(tmp_path: Path) -> Path:
    """A tiny IEMOCAP_full_release with the real oddities: a/b dialogs, script01_1b, AppleDouble, a missing wav."""
    root = tmp_path / "IEMOCAP_full_release"
    add_dialog(root, 1, "Ses01F_impro01", EMO_IMPRO01, missing=("Ses01F_impro01_F002",))
    add_dialog(root, 3, "Ses03M_impro05a", EMO_IMPRO05A)
    add_dialog(root, 5, "Ses05M_script01_1b", EMO_SCRIPT01_1B)
    evals = root / "Session1" / "dialog" / "EmoEvaluation"
    (evals / "._Ses01F_impro01.txt").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (evals / "Categorical").mkdir()
    (evals / "Categorical" / "Ses01F_impro01_e2_cat.txt").write_text("Ses01F_impro01_F000 :Neutral state;\n")
    wavdir = root / "Session1" / "sentences" / "wav" / "Ses01F_impro01"
    (wavdir / "._Ses01F_impro01_F000.wav").write_bytes(b"\x00\x05\x16\x07")
    return root


# The shortest schedules that still run every stage: a study TOML's tables for end-to-end tests
# (a test puts its own top-level keys before them and its own tables after).
FAST_STUDY_TABLES = """
[data.synthetic]
utterances_per_dialog = 4
[training]
ae_iterations = 4
gan_iterations = 4
finetune_iterations = 4
ser_iterations = 12
eval_every = 6
bagan_ae_iterations = 4
bagan_gan_iterations = 4
[synthesis]
per_class_central = 8
per_class_federated = 8
[folds]
sessions = [1, 2]
[audit]
samples_per_class = 12
iterations = 4
"""


@pytest.fixture
def serverapp_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower 1.41's Message() reads the running task's identity, which the ServerApp process sets:
    for tests that run the server's side in this process (tests/inline.py, scripted grids)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in {"_run_id": 7, "_node_id": 0, "_task_id": 1}.items():
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture(scope="session")
def pretrained_gan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One GAN pre-trained at the FAST_STUDY_TABLES sizes on the embedded corpora, for the tests
    that need a checkpoint but do not test pre-training (``[model] pretrained = "..."``): the
    corpora, their features and the two stages are then paid once per test session."""
    from common.pipeline import pretrain
    from common.schema import load_config

    work = tmp_path_factory.mktemp("pretrained")
    return pretrain(load_config(study_file(work, FAST_STUDY_TABLES)))


def study_file(tmp_path: Path, toml: str) -> Path:
    """``toml`` as a study config file whose outputs go to ``tmp_path/out``."""
    path = tmp_path / "study.toml"
    path.write_text(f'work_dir = "{tmp_path / "out"}"\n' + toml)
    return path
