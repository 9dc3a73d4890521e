"""The papers' experiment files: they validate and build at both presets, a federated study runs a
speaker-head trainer end to end through Flower, and seed 004's RAVDESS k-fold protocol runs."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from common.corpora.synthetic.ravdess import write_ravdess
from common.schema import load_config
from common.trainers.registry import TRAINERS, build_trainer
from simulations.cli import app
from simulations.study import run_study
from tests.conftest import FAST_STUDY_TABLES, study_file
from tests.inline import run_inline

EXPERIMENTS = Path(__file__).parent.parent / "simulations" / "experiments"
PAPERS = ("chang2017", "tu2019", "tripathi2019", "gans2020", "gans2020-ravdess", "zhang2019")


@pytest.mark.parametrize("paper", PAPERS)
@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_paper_experiment_builds_its_trainers(paper: str, preset: str) -> None:
    cfg = load_config(EXPERIMENTS / f"{paper}.toml", overrides={"preset": preset})
    assert cfg.study_trainers and set(cfg.study_trainers) <= set(TRAINERS)
    for name in cfg.study_trainers:
        trainer = build_trainer(cfg.with_trainer(name))
        assert trainer.name == name


# The papers' models, by hand: each must be registered and run by its paper's experiment file. A
# trainer added later (docs: "Adding a trainer") needs neither: it is one file and one registry entry.
PAPER_TRAINERS = {
    "chang2017": {"chang-cnn", "chang-dcgan", "chang-multitask-cnn", "chang-multitask-dcgan"},
    "tu2019": {"tu-ser", "tu-mtl", "tu-dat", "tu-cgt"},
    "tripathi2019": {"tripathi-s", "tripathi-sa", "tripathi-sc", "tripathi-sac"},
    "zhang2019": {"fcn2d-attention"},
    "gans2020": {"fcn1d-attention"},  # seed 004's 1-D FCN
}


def test_every_papers_model_is_registered_and_run_by_its_experiment() -> None:
    for paper, models in PAPER_TRAINERS.items():
        assert models <= set(TRAINERS), paper
        assert models <= set(load_config(EXPERIMENTS / f"{paper}.toml").study_trainers), paper
    assert "ser-cnn" in TRAINERS  # seed 002's own SER network (gans2020*), the default trainer


@pytest.mark.usefixtures("serverapp_identity")
def test_a_speaker_head_trainer_runs_centralized_and_federated_and_is_reported(tmp_path: Path) -> None:
    """tu-dat (seed 001) in real-central and fedavg: the speaker head's indices reach the nodes as
    the fold's training sessions; the report lists the trainer beside the regime. The federated
    regime runs on the in-process grid (tests/inline.py; Flower's transport: tests/test_federation.py)."""
    config = study_file(tmp_path, """
name = "papers"
regimes = ["real-central", "fedavg"]
trainers = ["tu-dat", "chang-multitask-cnn"]
workers = 1
[features]
kind = "mfcc_vad"
patch_frames = 40
[model.chang]
task = "valence"
[federation]
rounds = 2
local_iterations = 3
""" + FAST_STUDY_TABLES.replace("sessions = [1, 2]", "sessions = [1]") + """
[tracking]
experiment = "papers"
""")
    cfg = load_config(config)
    run_study(cfg.model_copy(update={"regimes": ("real-central",)}), progress=False, say=lambda _: None)
    for trainer in cfg.study_trainers:
        run_inline(cfg.with_trainer(trainer), ["fedavg"], 5)
    runner = CliRunner()
    report = runner.invoke(app, ["report", "--config", str(config), "--json"])
    assert report.exit_code == 0, report.output
    rows = json.loads(report.output)["rows"]
    assert {(r["regime"], r["trainer"], r["fold"]) for r in rows} == {
        (regime, trainer, 1) for regime in ("real-central", "fedavg") for trainer in ("tu-dat", "chang-multitask-cnn")}
    # Seed 000's valence measures travel from the held-out node and reach the report.
    chang = [r for r in rows if r["trainer"] == "chang-multitask-cnn"]
    assert all({"ua3", "pearson_r"} <= set(r) for r in chang)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    folds = [r for r in mlflow.search_runs(experiment_names=["papers"], output_format="list") if "fold" in r.data.tags]
    valence = [r for r in folds if r.data.tags["trainer"] == "chang-multitask-cnn"]
    assert all("val_ua" in r.data.metrics and "cm_4_4" in r.data.metrics for r in valence)  # 5 x 5 levels


def test_seed_004_ravdess_protocol_five_stratified_folds(tmp_path: Path) -> None:
    root = tmp_path / "RAVDESS"
    write_ravdess(root, actors=3)
    cfg = load_config(EXPERIMENTS / "gans2020-ravdess.toml", overrides={
        "preset": "tiny", "work_dir": str(tmp_path / "out"), "workers": 1, "data": {"root": str(root)},
        "training": {"ser_iterations": 30, "batch_size": 16}, "model": {"fcn": {"padding": "valid"}}})
    rows = run_study(cfg, progress=False, say=lambda _: None)
    assert [(r["regime"], r["trainer"], r["fold"]) for r in rows] == [
        ("real-central", "fcn1d-attention", k) for k in range(1, 6)]
    assert all(0 <= r["ua"] <= 1 and 0 <= r["wa"] <= 1 for r in rows)
