"""`fedser corpus check --json` on the synthetic corpus reports exactly what the writer wrote."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from common import audio
from common.corpora import check, read_corpus
from common.corpora.iemocap import DEFAULT_LABEL_MAP
from common.corpora.synthetic import MANIFEST_NAME, write_iemocap
from simulations.cli import app


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_iemocap(tmp_path_factory.mktemp("synth"), seed=7, utterances_per_dialog=4)


def _expected(root: Path, subset: str) -> dict:
    """The report the writer's ground truth implies, computed independently of the reader."""
    rows = json.loads((root / MANIFEST_NAME).read_text())["utterances"]
    kept = [r for r in rows if r["raw_label"] in DEFAULT_LABEL_MAP
            and (subset == "all" or r["improvised"] == (subset == "improvised"))]
    cells = Counter((r["session"], DEFAULT_LABEL_MAP[r["raw_label"]]) for r in kept)
    return {
        "utterances": len(kept),
        "per_session": {s: {c: cells[(s, c)] for c in ("neu", "hap", "ang", "sad")} for s in range(1, 6)},
        "per_label": dict(Counter(DEFAULT_LABEL_MAP[r["raw_label"]] for r in kept)),
        # The writer's speaker is whose voice it used: the utterance suffix, not the dialog prefix.
        "per_speaker": dict(Counter(r["speaker"] for r in kept)),
    }


@pytest.mark.parametrize("subset", ["all", "improvised", "scripted"])
def test_check_json_equals_the_writers_manifest(synthetic_root: Path, subset: str) -> None:
    result = CliRunner().invoke(app, ["corpus", "check", str(synthetic_root), "--subset", subset, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    want = _expected(synthetic_root, subset)
    assert report["utterances"] == want["utterances"] > 0
    assert {row["session"]: row["labels"] for row in report["per_session"]} == want["per_session"]
    assert all(isinstance(row["session"], int) for row in report["per_session"])
    assert report["per_label"] == want["per_label"]
    assert report["per_speaker"] == want["per_speaker"]
    assert report["skipped"] == [] and report["deviations"] == []
    assert report["reference"] == "synthetic corpus manifest"
    # What the 4-class map leaves out is counted apart, and is all the writer's other labels.
    rows = json.loads((synthetic_root / MANIFEST_NAME).read_text())["utterances"]
    dropped = Counter(r["raw_label"] for r in rows if r["raw_label"] not in DEFAULT_LABEL_MAP
                      and (subset == "all" or r["improvised"] == (subset == "improvised")))
    assert report["excluded_by_label_map"] == dict(dropped) and sum(dropped.values()) > 0


def test_cross_speaker_dialogs_exist_so_the_speaker_rule_matters(synthetic_root: Path) -> None:
    rows = json.loads((synthetic_root / MANIFEST_NAME).read_text())["utterances"]
    crossed = [r for r in rows if r["id"].split("_")[0][-1] != r["speaker"][-1]]
    assert len(crossed) > len(rows) // 4


def test_a_deleted_wav_shows_as_skip_and_deviation(tmp_path: Path) -> None:
    root = write_iemocap(tmp_path, seed=1, utterances_per_dialog=2)
    rows = json.loads((root / MANIFEST_NAME).read_text())["utterances"]
    victim = next(r for r in rows if r["raw_label"] == "neu")
    (root / victim["path"]).unlink()
    report = json.loads(CliRunner().invoke(app, ["corpus", "check", str(root), "--json"]).output)
    assert report["skipped"] == [
        {"path": str(root / victim["path"]), "reason": "missing audio file", "kind": "missing audio file"}]
    assert any(d.startswith(f"Session{victim['session']} neu: found") for d in report["deviations"])


def test_the_check_reads_samples_and_skips_non_finite_audio(tmp_path: Path) -> None:
    root = write_iemocap(tmp_path, seed=1, utterances_per_dialog=2)
    rows = json.loads((root / MANIFEST_NAME).read_text())["utterances"]
    victim = next(r for r in rows if r["raw_label"] == "ang")
    wav = root / victim["path"]
    samples, rate = sf.read(wav, dtype="float32")
    samples[len(samples) // 2] = np.nan  # a valid header over one NaN sample: only reading shows it
    sf.write(wav, samples, rate, subtype="FLOAT")
    report = json.loads(CliRunner().invoke(app, ["corpus", "check", str(root), "--json"]).output)
    assert report["skipped"] == [
        {"path": str(wav), "reason": "audio contains NaN or Inf samples", "kind": "non-finite samples"}]
    assert report["skipped_by_kind"] == {"non-finite samples": 1}
    assert any(d.startswith(f"Session{victim['session']} ang: found") for d in report["deviations"])


def test_verify_audio_reads_each_kept_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_iemocap(tmp_path, seed=1, utterances_per_dialog=2)
    scan = read_corpus(root)
    opened: list[str] = []
    blocks = audio.sf.blocks
    monkeypatch.setattr(audio.sf, "blocks", lambda file, *a, **k: opened.append(file) or blocks(file, *a, **k))
    verified = check.verify_audio(scan)
    assert verified.utterances == scan.utterances
    assert sorted(opened) == sorted(str(u.path) for u in scan.utterances)
