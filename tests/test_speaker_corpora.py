"""CREMA-D and MSP-Podcast: their readers on the synthetic layouts, every skip counted, and
`fedser corpus check` per speaker against the writers' manifests."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.config import DEFAULT_LABEL_MAP
from common.corpora import detect_corpus, read_corpus
from common.corpora.speakers import MSP_COLUMNS, MSP_LABELS, cremad_group
from common.corpora.synthetic import MANIFEST_NAME
from common.corpora.synthetic.speakers import cremad_names, write_cremad, write_msppodcast
from simulations.cli import app

SIX = {c: c for c in ("ang", "dis", "fea", "hap", "neu", "sad")}


@pytest.fixture(scope="module")
def cremad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cremad(tmp_path_factory.mktemp("c") / "CREMA-D", actors=10, sentences=2)


@pytest.fixture(scope="module")
def msp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_msppodcast(tmp_path_factory.mktemp("m") / "MSP-PODCAST", speakers=12, per_speaker=6, unknown=2)


def test_cremad_layout_is_the_releases(cremad: Path) -> None:
    # 12 sentences x 6 emotions, IEO at three levels (neutral at XX only): 82 per actor, as in CREMA-D.
    assert len(cremad_names(1001)) == 82
    files = sorted(p.name for p in (cremad / "AudioWAV").iterdir())
    assert len(files) == 10 * len(cremad_names(1001, 2)) == 10 * 22
    assert "1001_IEO_ANG_HI.wav" in files and "1001_IEO_NEU_XX.wav" in files and "1010_TIE_SAD_XX.wav" in files
    with (cremad / "VideoDemographics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["ActorID"] for r in rows] == [str(a) for a in range(1001, 1011)]
    assert detect_corpus(cremad) == "cremad"


def test_cremad_fields_groups_and_label_map(cremad: Path) -> None:
    scan = read_corpus(cremad, "cremad", label_map=DEFAULT_LABEL_MAP)
    sexes = {r["ActorID"]: r["Sex"][0] for r in csv.DictReader((cremad / "VideoDemographics.csv").open())}
    assert len(scan.utterances) == 10 * 2 * 4 + 10 * 3 * 2  # 4 classes x 2 sentences, IEO's 2 extra levels
    assert scan.excluded == {"dis": 40, "fea": 40} and not scan.skipped  # the 4-class map, not skips
    for u in scan.utterances:
        actor = u.id.split("_")[0]
        assert u.speaker == actor and u.gender == sexes[actor] and u.label == u.raw_label
        assert u.session == cremad_group(actor) == (int(actor) - 1001) % 5 + 1  # speaker-independent groups
    assert Counter(u.session for u in scan.utterances) == dict.fromkeys(range(1, 6), 28)
    six = read_corpus(cremad, "cremad", label_map=SIX)
    assert Counter(u.label for u in six.utterances) == {"ang": 40, "dis": 40, "fea": 40, "hap": 40, "neu": 20, "sad": 40}


def test_cremad_skips_are_counted_by_kind(cremad: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(cremad, tmp_path / "CREMA-D")
    (copy / "AudioWAV" / "1001_TIE_ANG_XX.wav").rename(copy / "AudioWAV" / "1001-TIE-ANG.wav")
    shutil.copy(copy / "AudioWAV" / "1002_TIE_SAD_XX.wav", copy / "AudioWAV" / "1002_TIE_BOR_XX.wav")
    (copy / "AudioWAV" / "1003_TIE_HAP_XX.wav").write_bytes(b"")
    (copy / "AudioWAV" / "notes.pdf").write_text("x")
    scan = read_corpus(copy, "cremad", label_map=SIX)
    assert scan.skip_counts() == {"bad file name": 1, "unknown label": 1, "unreadable audio": 1, "not an audio file": 1}
    assert len(scan.utterances) == 220 - 2


def test_msppodcast_layout_fields_and_splits(msp: Path) -> None:
    with (msp / MSP_LABELS).open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        assert tuple(reader.fieldnames or ()) == MSP_COLUMNS
    assert len(rows) == 12 * 6 + 4 * 2 == len(list((msp / "Audios").iterdir()))
    # Speaker-independent splits: each known speaker in one split only.
    splits = {r["SpkrID"]: set() for r in rows}
    for r in rows:
        splits[r["SpkrID"]].add(r["Split_Set"])
    assert all(len(v) == 1 for k, v in splits.items() if k != "Unknown")
    assert detect_corpus(msp) == "msppodcast"
    scan = read_corpus(msp, "msppodcast", label_map=DEFAULT_LABEL_MAP)
    by_name = {r["FileName"]: r for r in rows}
    four = {"A": "ang", "S": "sad", "H": "hap", "N": "neu"}
    assert len(scan.utterances) == sum(r["EmoClass"] in four for r in rows)
    assert sum(scan.excluded.values()) == len(rows) - len(scan.utterances) and not scan.skipped
    for u in scan.utterances:
        row = by_name[u.path.name]
        assert u.label == four[row["EmoClass"]] and u.speaker == row["SpkrID"]
        assert u.session == {"Train": 1, "Development": 2, "Test1": 3, "Test2": 4}[row["Split_Set"]]
        assert (u.valence, u.activation, u.dominance) == (float(row["EmoVal"]), float(row["EmoAct"]), float(row["EmoDom"]))
        assert u.gender == {"Male": "M", "Female": "F"}.get(row["Gender"])


def test_msppodcast_skips_are_counted_by_kind(msp: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(msp, tmp_path / "MSP-PODCAST")
    with (copy / MSP_LABELS).open() as f:
        rows = list(csv.DictReader(f))
    rows[0]["Split_Set"] = "Test9"
    rows[1]["EmoClass"] = "Q"
    rows[2]["EmoVal"] = "high"
    (copy / "Audios" / rows[3]["FileName"]).unlink()
    shutil.copy(copy / "Audios" / rows[4]["FileName"], copy / "Audios" / "MSP-PODCAST_9999_0001.wav")
    with (copy / MSP_LABELS).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(MSP_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    scan = read_corpus(copy, "msppodcast", label_map=DEFAULT_LABEL_MAP)
    assert scan.skip_counts() == {"unknown split": 1, "unknown label": 1, "malformed label line": 1,
                                  "missing audio file": 1, "unlabeled file": 1}
    (copy / MSP_LABELS).unlink()
    with pytest.raises(FileNotFoundError, match="labels_consensus.csv"):
        read_corpus(copy, "msppodcast")


@pytest.mark.parametrize("which", ["cremad", "msp"])
def test_corpus_check_counts_per_speaker_and_compares_with_the_manifest(which: str, cremad: Path, msp: Path,
                                                                        tmp_path: Path) -> None:
    root = {"cremad": cremad, "msp": msp}[which]
    runner = CliRunner()
    result = runner.invoke(app, ["corpus", "check", str(root), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    manifest = json.loads((root / MANIFEST_NAME).read_text())["utterances"]
    want: dict[str, Counter[str]] = {}
    for row in manifest:
        if (label := DEFAULT_LABEL_MAP.get(row["raw_label"])) is not None:
            want.setdefault(row["speaker"], Counter())[label] += 1
    assert report["per_speaker_label"] == {k: dict(v) for k, v in sorted(want.items())}
    assert report["reference"] == "synthetic corpus manifest" and report["deviations"] == []
    text = runner.invoke(app, ["corpus", "check", str(root)]).output
    assert f"per speaker ({len(want)})" in text
    # A lost file is a deviation of its speaker and label.
    copy = shutil.copytree(root, tmp_path / "copy")
    victim = next(u for u in read_corpus(copy, label_map=DEFAULT_LABEL_MAP).utterances)
    victim.path.unlink()
    report = json.loads(runner.invoke(app, ["corpus", "check", str(copy), "--json"]).output)
    assert f"speaker {victim.speaker} {victim.label}: found {want[victim.speaker][victim.label] - 1}, " \
           f"expected {want[victim.speaker][victim.label]}" in report["deviations"]
