"""`fedser audit RUN_ID`: its one-line errors, and an end to end audit of the generators a run stored
(an untrained one on the parent run, as gan-federated stores them, and one on a fold run)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from common.audit import AUDIT_KEYS
from common.data import load_corpus
from common.models.sngan import Discriminator, GanSpec, Generator
from common.pipeline import save_checkpoint
from common.schema import load_config
from simulations.cli import app
from simulations.report import generator_rows, generator_runs
from tests.conftest import FAST_STUDY_TABLES, study_file

runner = CliRunner()


def _store(tmp_path: Path) -> tuple[str, MlflowClient, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    return uri, client, client.create_experiment("audit", artifact_location=(tmp_path / "artifacts").as_uri())


def _one_line_error(output: str, *fragments: str) -> None:
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if line.strip()]
    assert line.startswith("error:")
    assert all(f in output for f in fragments), output


def test_an_unknown_run_is_one_line_and_exit_2(tmp_path: Path) -> None:
    uri, _, _ = _store(tmp_path)
    result = runner.invoke(app, ["audit", "no-such-run", "--tracking-uri", uri])
    assert result.exit_code == 2, result.output
    _one_line_error(result.output, "no MLflow run 'no-such-run'")


def test_a_run_without_config_or_generators_is_one_line(tmp_path: Path) -> None:
    uri, client, exp = _store(tmp_path)
    bare = client.create_run(exp, tags={"kind": "regime", "regime": "gan-federated", "seed": "0"}).info.run_id
    client.set_terminated(bare)
    result = runner.invoke(app, ["audit", bare, "--tracking-uri", uri])
    assert result.exit_code == 2, result.output
    _one_line_error(result.output, "has no config/study.json", "--config")
    # With a config but nothing stored: no generator to audit.
    result = runner.invoke(app, ["audit", bare, "--tracking-uri", uri, "--config", str(study_file(tmp_path, ""))])
    assert result.exit_code == 2, result.output
    _one_line_error(result.output, f"run {bare} has no stored generator")


@pytest.mark.slow  # ~15 s on two shared cores: the corpus's features, two audits
def test_audit_of_stored_generators_logs_back_to_their_runs(tmp_path: Path) -> None:
    # A quarter of the tiny width: the Fréchet embedding has 128 dimensions instead of 512 (sqrtm: 64x faster).
    cfg = load_config(study_file(tmp_path, 'preset = "tiny"\n' + FAST_STUDY_TABLES + "[model]\nwidth = 0.03125\n"))
    spec = GanSpec.of(cfg)
    corpus = load_corpus(cfg)  # the embedded synthetic corpus, written and prepared once
    save_checkpoint(cfg.pretrained_path, kind="sngan-pretrained", spec=spec.to_dict(),
                    stats=corpus.overall.to_dict(), pretrain_stats=corpus.overall.to_dict(),
                    generator=Generator(spec).state_dict(), discriminator=Discriminator(spec, head=1).state_dict())
    uri, client, exp = _store(tmp_path)
    parent = client.create_run(exp, tags={"kind": "regime", "regime": "gan-federated", "trainer": "ser-cnn",
                                          "seed": "0"}).info.run_id
    fold = client.create_run(exp, tags={"regime": "gan-federated", "trainer": "ser-cnn", "seed": "0", "fold": "1",
                                        "session": "1", "mlflow.parentRunId": parent}).info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "study.json").write_text(cfg.model_dump_json(indent=1))  # as tracked() logs it
        client.log_artifact(parent, str(Path(tmp) / "study.json"), "config")
        for run_id, name in ((parent, "Session1"), (fold, "0")):  # gan-federated's and a fold run's names
            torch.manual_seed(len(name))
            path = save_checkpoint(Path(tmp) / f"generator_{name}.pt", kind="generator", spec=spec.to_dict(),
                                   generator=Generator(spec).state_dict())
            client.log_artifact(run_id, str(path), "checkpoints")
    for run_id in (fold, parent):
        client.set_terminated(run_id)

    result = runner.invoke(app, ["audit", parent, "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert "| gan-federated | 0 | Session1 | " in result.output
    assert "| gan-federated | 0 | fold1 | " in result.output
    assert "Session1: audited on " in result.output and "fold1: audited on " in result.output
    on_parent, on_fold = client.get_run(parent), client.get_run(fold)
    assert set(on_parent.data.metrics) == {f"audit.Session1.{k}" for k in AUDIT_KEYS}
    assert set(on_fold.data.metrics) == {f"audit.{k}" for k in AUDIT_KEYS}
    assert on_parent.info.status == on_fold.info.status == "FINISHED"  # not re-opened
    assert 0 <= on_parent.data.metrics["audit.Session1.gan_test"] <= 1
    assert 0 <= on_fold.data.metrics["audit.mia_auc"] <= 1  # fold 1 holds utterances back: every figure
    # The report reads them back as two generators of the newest gan-federated parent.
    assert [r["generator"] for r in generator_rows(uri, "audit")] == ["Session1", "fold1"]
    # Which run each generator is logged on: a fold run given alone has its own generator only.
    mlflow.set_tracking_uri(uri)
    assert generator_runs(parent) == {"Session1": parent, "fold1": fold}
    assert generator_runs(fold) == {"fold1": fold}
