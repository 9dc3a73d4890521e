"""The fedser command line: help everywhere, one-line errors, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simulations.cli import app

runner = CliRunner()
COMMANDS = [[], ["corpus"], ["corpus", "check"], ["corpus", "synth"], ["corpus", "speak"], ["config"], ["features"], ["folds"], ["demo"],
            ["pretrain"], ["study"], ["report"], ["audit"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "fedser")
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_bad_config_is_one_clear_error_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[model]\nwidht = 1\n[data]\nsubset = "x"\n')
    result = runner.invoke(app, ["config", str(path)])
    assert result.exit_code == 2
    assert "error:" in result.output and "model.widht: unknown key" in result.output
    assert "data.subset: Input should be" in result.output
    assert "Traceback" not in result.output


def test_check_on_a_folder_that_is_not_a_corpus(tmp_path: Path) -> None:
    result = runner.invoke(app, ["corpus", "check", str(tmp_path / "nowhere"), "--kind", "iemocap"])
    assert result.exit_code == 2
    assert "no Session1..Session5 folders" in result.output and "Traceback" not in result.output


def test_check_json_on_a_real_format_tree(iemocap_tree: Path) -> None:
    result = runner.invoke(app, ["corpus", "check", str(iemocap_tree), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["utterances"] == 6
    assert [row["session"] for row in report["per_session"]] == [1, 3, 5]
    assert report["per_label"] == {"neu": 2, "hap": 2, "sad": 1, "ang": 1}
    assert report["per_speaker"] == {"Ses01F": 1, "Ses01M": 1, "Ses03F": 1, "Ses03M": 1, "Ses05F": 1, "Ses05M": 1}
    assert {s["reason"] for s in report["skipped"]} == {"AppleDouble metadata file", "missing audio file"}


def test_study_refuses_a_checkpoint_of_other_sizes_before_any_regime(tmp_path: Path) -> None:
    from common.models.sngan import GanSpec
    from common.pipeline import save_checkpoint
    from common.schema import load_config

    config = tmp_path / "study.toml"
    config.write_text(f'work_dir = "{tmp_path}"\nregimes = ["gan-federated"]\n[model]\nwidth = 0.25\n')
    save_checkpoint(load_config(config).pretrained_path, kind="sngan-pretrained",
                    spec=GanSpec(n_z=32, n_c=4, width=0.125, patch=32).to_dict())
    result = runner.invoke(app, ["study", str(config)])
    assert result.exit_code == 2
    assert "was trained with GanSpec(n_z=32, n_c=4, width=0.125, patch=32)" in result.output
    assert "re-run `fedser pretrain`" in result.output
    assert not (tmp_path / "flower").exists()  # refused before any Flower run started
