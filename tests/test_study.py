"""`fedser pretrain` then `fedser study` on a small synthetic corpus: MLflow holds what the study did."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from simulations.cli import app
from tests.conftest import FAST_STUDY_TABLES, study_file

FAST = """
name = "e2e"
regimes = ["real-central", "gan-central", "baseline-gan"]
workers = 2  # the folds in spawned worker processes, as `make demo` runs them
""" + FAST_STUDY_TABLES + """
[tracking]
experiment = "e2e"
"""


@pytest.mark.slow
def test_pretrain_then_study_logs_every_regime_and_fold(tmp_path: Path) -> None:
    config = study_file(tmp_path, FAST)
    runner = CliRunner()
    # Without a pre-trained GAN the GAN regimes refuse with the command that fixes it.
    refused = runner.invoke(app, ["study", str(config)])
    assert refused.exit_code == 2 and "run `fedser pretrain`" in refused.output

    done = runner.invoke(app, ["pretrain", str(config)])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "out" / "checkpoints" / "pretrained.pt").is_file()
    result = runner.invoke(app, ["study", str(config)])
    assert result.exit_code == 0, result.output
    for regime in ("real-central", "gan-central", "baseline-gan"):
        assert regime in result.output
    assert "±" in result.output

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["e2e"], output_format="list")
    parents = {r.data.tags["regime"]: r for r in runs if "fold" not in r.data.tags}
    children = [r for r in runs if "fold" in r.data.tags]
    assert set(parents) == {"real-central", "gan-central", "baseline-gan"}
    assert len(children) == 6
    for child in children:
        regime = child.data.tags["regime"]
        assert child.data.tags["mlflow.parentRunId"] == parents[regime].info.run_id
        assert child.data.tags["session"] == child.data.tags["fold"] in {"1", "2"}
        assert {"f1_macro", "ua", "wa", "cm_0_0", "val_f1_macro"} <= set(child.data.metrics)
        assert 0.0 <= child.data.metrics["f1_macro"] <= 1.0
        files = {a.path for a in mlflow.artifacts.list_artifacts(run_id=child.info.run_id, artifact_path="plots")}
        assert "plots/confusion.png" in files
        if regime != "real-central":
            assert "plots/spectrograms_0.png" in files
            ckpts = mlflow.artifacts.list_artifacts(run_id=child.info.run_id, artifact_path="checkpoints")
            assert [a.path for a in ckpts] == ["checkpoints/generator_0.pt"]
    for parent in parents.values():
        assert parent.data.params["model.width"] == "0.125"
        assert {"f1_macro_mean", "f1_macro_std", "skipped"} <= set(parent.data.metrics)
        assert parent.data.tags["skips"].startswith("skipped")  # the reader's skips, one line

    # The report reads the same store: one row per regime x fold, then artifacts of a report run.
    as_json = runner.invoke(app, ["report", "--config", str(config), "--json"])
    assert as_json.exit_code == 0, as_json.output

    report = json.loads(as_json.output)
    rows = report["rows"]
    assert {(r["regime"], r["fold"]) for r in rows} == {
        (g, f) for g in ("real-central", "gan-central", "baseline-gan") for f in (1, 2)
    }
    assert all(set(r) == {"regime", "trainer", "seed", "fold", "f1_macro", "ua", "wa"} for r in rows)
    assert {(p["a"], p["b"]) for p in report["pairs"]} == {
        ("real-central", "gan-central"), ("real-central", "baseline-gan"), ("gan-central", "baseline-gan")}
    assert {r["trainer"] for r in rows} == {"ser-cnn"}  # training.trainer, tagged on every run
    table = runner.invoke(app, ["report", "--config", str(config)])
    assert table.exit_code == 0, table.output
    assert "| gan-central | ser-cnn | Proposed - Centralized | f1_macro |" in table.output  # Table 2 beside ours
    assert "0.4854 ± 0.0389" in table.output and "protocol matches: no (differs: data.root = the embedded" in table.output
    assert report["papers"][0]["seed"] == "002" and not report["papers"][0]["matches"]
    report_run = next(r for r in mlflow.search_runs(experiment_names=["e2e"], output_format="list")
                      if r.data.tags.get("kind") == "report")
    assert {a.path for a in mlflow.artifacts.list_artifacts(run_id=report_run.info.run_id)} == {
        "report.md", "report.json", "report.png", "generators.png"}  # gan-central, baseline-gan audited
