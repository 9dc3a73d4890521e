"""CREMA-D and MSP-Podcast: their readers on the synthetic layouts (and the full release's
layout and groups), every class, split and skip counted, a study reading both through its config,
`fedser corpus synth --crema-d --msp-podcast`, and `fedser corpus check` per speaker x label
against the writers' manifests."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from common.config import DEFAULT_LABEL_MAP, config_warnings
from common.corpora import LABELED, detect_corpus, read_corpus
from common.corpora.speakers import (
    CREMAD_EMOTIONS,
    MSP_COLUMNS,
    MSP_EMOTIONS,
    MSP_LABELS,
    MSP_SPLITS,
    cremad_group,
)
from common.corpora.synthetic import MANIFEST_NAME
from common.corpora.synthetic.speakers import CREMAD_SENTENCES, cremad_names, write_cremad, write_msppodcast
from common.data import labeled_manifest
from common.schema import load_config
from simulations.cli import app

EXPERIMENTS = Path(__file__).resolve().parents[1] / "simulations" / "experiments"
FOUR = {"A": "ang", "S": "sad", "H": "hap", "N": "neu"}  # the default map's classes as EmoClass codes

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
    rows.append(dict(rows[5]))  # a second row for one file
    (copy / "Audios" / rows[3]["FileName"]).unlink()
    shutil.copy(copy / "Audios" / rows[4]["FileName"], copy / "Audios" / "MSP-PODCAST_9999_0001.wav")
    with (copy / MSP_LABELS).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(MSP_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    scan = read_corpus(copy, "msppodcast", label_map=DEFAULT_LABEL_MAP)
    assert scan.skip_counts() == {"unknown split": 1, "unknown label": 1, "malformed label line": 2,
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


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / MSP_LABELS).open(newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(root: Path, rows: list[dict[str, str]]) -> None:
    with (root / MSP_LABELS).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(MSP_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)


def _check(root: Path, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["corpus", "check", str(root), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


# ----------------------------------------------------------------------------------- CREMA-D


def test_cremad_release_layout_and_five_speaker_independent_groups() -> None:
    # The full release's names: 91 actors x (IEO: 5 emotions x LO/MD/HI + neutral XX; 11 sentences x 6 at XX).
    names = [stem for actor in range(1001, 1092) for stem, _ in cremad_names(actor)]
    assert len(names) == len(set(names)) == 91 * 82
    assert len(CREMAD_SENTENCES) == 12 and set(CREMAD_EMOTIONS) == {"ANG", "DIS", "FEA", "HAP", "NEU", "SAD"}
    levels = Counter((stem.split("_")[1] == "IEO", stem.split("_")[3]) for stem in names)
    assert levels == {(True, "LO"): 91 * 5, (True, "MD"): 91 * 5, (True, "HI"): 91 * 5, (True, "XX"): 91,
                      (False, "XX"): 91 * 11 * 6}
    # Every actor in exactly one of five groups, 18-19 actors each: 5-fold speaker-independent CV.
    assert Counter(cremad_group(str(a)) for a in range(1001, 1092)) == {1: 19, 2: 18, 3: 18, 4: 18, 5: 18}
    assert [cremad_group(str(a)) for a in (1001, 1002, 1005, 1006, 1091)] == [1, 2, 5, 1, 1]


def test_cremad_without_demographics_or_audiowav(cremad: Path, tmp_path: Path) -> None:
    # Files anywhere under the root (here flat, no AudioWAV/): detected by their names; no
    # VideoDemographics.csv: genders unknown, everything else as with it.
    flat = tmp_path / "flat"
    shutil.copytree(cremad / "AudioWAV", flat)
    assert detect_corpus(flat) == "cremad"
    scan = read_corpus(flat, label_map=DEFAULT_LABEL_MAP)
    full = read_corpus(cremad, "cremad", label_map=DEFAULT_LABEL_MAP)
    assert scan.corpus == "cremad" and not scan.skipped and scan.excluded == full.excluded == {"dis": 40, "fea": 40}
    assert {u.gender for u in scan.utterances} == {None} and None not in {u.gender for u in full.utterances}
    assert [(u.id, u.speaker, u.session, u.label, u.raw_label) for u in scan.utterances] == \
           [(u.id, u.speaker, u.session, u.label, u.raw_label) for u in full.utterances]
    # The writer's manifest and demographics are metadata, never skips.
    assert (cremad / MANIFEST_NAME).is_file() and (cremad / "VideoDemographics.csv").is_file()


# ------------------------------------------------------------------------------- MSP-Podcast


def test_msppodcast_splits_unknown_speakers_and_no_agreement(msp: Path) -> None:
    assert MSP_SPLITS == {"Train": 1, "Development": 2, "Test1": 3, "Test2": 4, "Test3": 5}
    assert MSP_COLUMNS == ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")
    rows = _rows(msp)
    assert all(r["FileName"].startswith("MSP-PODCAST_") and r["FileName"].endswith(".wav") for r in rows)
    assert Counter(r["SpkrID"] == "Unknown" for r in rows) == {False: 12 * 6, True: 4 * 2}
    no_agreement = sum(r["EmoClass"] == "X" for r in rows)
    assert no_agreement > 0  # the writer leaves some rows without agreement, as the corpus has
    # Every class but X kept under a map that names them all: X alone is left out, counted, not a skip.
    everything = {raw: raw for code, raw in MSP_EMOTIONS.items() if code != "X"}
    scan = read_corpus(msp, "msppodcast", label_map=everything)
    assert scan.excluded == {MSP_EMOTIONS["X"]: no_agreement} and not scan.skipped
    assert len(scan.utterances) == len(rows) - no_agreement
    unknown = [u for u in scan.utterances if u.speaker == "Unknown"]
    assert unknown and {u.gender for u in unknown} == {None}
    assert {u.session for u in unknown} == {1, 2, 3, 4}  # unknown speakers are in every split
    assert all(1 <= v <= 7 for u in scan.utterances for v in (u.valence, u.activation, u.dominance) if v is not None)


def test_msppodcast_test3_blank_scores_and_malformed_rows(msp: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(msp, tmp_path / "MSP-PODCAST")
    rows = _rows(copy)
    kept = [r for r in rows if r["EmoClass"] in FOUR]
    kept[0]["Split_Set"] = "Test3"
    kept[1]["EmoDom"] = ""  # a missing score is None, the row kept
    _write_rows(copy, rows)
    with (copy / MSP_LABELS).open("a", newline="") as f:
        f.write(f"{kept[2]['FileName']},A,2.0\n")  # a short row: no scores for the rest
    scan = read_corpus(copy, "msppodcast", label_map=DEFAULT_LABEL_MAP)
    by_name = {u.path.name: u for u in scan.utterances}
    assert by_name[kept[0]["FileName"]].session == 5
    assert by_name[kept[1]["FileName"]].dominance is None and by_name[kept[1]["FileName"]].valence is not None
    assert scan.skip_counts() == {"malformed label line": 1} and "labels_consensus.csv:" in str(scan.skipped[0].path)
    # Audio files whose rows are gone: each is an unlabeled file.
    _write_rows(copy, rows[3:])
    assert read_corpus(copy, "msppodcast").skip_counts() == {"unlabeled file": 3}


def test_msppodcast_labels_file_errors_name_the_file_and_the_fix(msp: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(msp, tmp_path / "MSP-PODCAST")
    (copy / MSP_LABELS).write_text("FileName,EmoClass\nMSP-PODCAST_0001_0001.wav,N\n")
    with pytest.raises(ValueError, match=r"labels_consensus\.csv: no column EmoAct.*Split_Set"):
        read_corpus(copy, "msppodcast")
    (copy / MSP_LABELS).unlink()
    with pytest.raises(FileNotFoundError, match=r"labels_consensus\.csv.*Audios/ and Labels/"):
        read_corpus(copy, "msppodcast")
    # Without the labels file the layout is no longer MSP-Podcast's.
    assert detect_corpus(copy) != "msppodcast"


# ------------------------------------------------------------------------- studies and the CLI


@pytest.mark.parametrize(("which", "experiment"), [("cremad", "cremad-speakers.toml"),
                                                   ("msp", "msppodcast-speakers.toml")])
def test_a_study_reads_them_through_its_config(which: str, experiment: str, cremad: Path, msp: Path,
                                               tmp_path: Path) -> None:
    root = {"cremad": cremad, "msp": msp}[which]
    cfg = load_config(EXPERIMENTS / experiment, {"data": {"root": str(root)}, "work_dir": str(tmp_path)})
    assert cfg.data.corpus in LABELED and not config_warnings(cfg)
    scan = labeled_manifest(cfg).scan
    direct = read_corpus(root, cfg.data.corpus, label_map=cfg.data.label_map)
    assert [u.id for u in scan.utterances] == [u.id for u in direct.utterances] and scan.utterances
    missing = load_config(EXPERIMENTS / experiment, {"data": {"root": str(tmp_path / "absent")}})
    assert any("AudioWAV/" in w or "Labels/" in w for w in config_warnings(missing))


def test_corpus_synth_writes_both_layouts(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["corpus", "synth", str(tmp_path), "--utterances-per-dialog", "2",
                                      "--no-librispeech", "--crema-d", "--crema-d-actors", "1",
                                      "--msp-podcast", "--msp-speakers", "2"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "CREMA-D" / "AudioWAV").iterdir()) == \
           sorted(f"{stem}.wav" for stem, _ in cremad_names(1001))
    assert detect_corpus(tmp_path / "CREMA-D") == "cremad" and detect_corpus(tmp_path / "MSP-PODCAST") == "msppodcast"
    speakers = {r["SpkrID"] for r in _rows(tmp_path / "MSP-PODCAST")}
    assert speakers == {"100", "101", "Unknown"}


def test_corpus_check_table_per_speaker_and_label(msp: Path) -> None:
    report = _check(msp)
    text = CliRunner().invoke(app, ["corpus", "check", str(msp)]).output
    header = next(line for line in text.splitlines() if "speaker" in line and "utterances" in line)
    assert [c for c in report["per_label"] if c in header] == list(report["per_label"])  # a column per class
    for speaker, cells in report["per_speaker_label"].items():
        assert sum(cells.values()) == report["per_speaker"][speaker]
        line = next(line for line in text.splitlines() if line.strip("│ ").startswith(f"{speaker} "))
        assert [int(x) for x in line.strip("│ ").split("│")[1:]] == \
               [*(cells.get(c, 0) for c in report["per_label"]), report["per_speaker"][speaker]]


def test_corpus_check_flags_a_relabeled_row_per_speaker(msp: Path, tmp_path: Path) -> None:
    # A row relabeled neutral -> angry: its speaker loses one neu and gains one ang; the total holds.
    copy = shutil.copytree(msp, tmp_path / "MSP-PODCAST")
    rows = _rows(copy)
    row = next(r for r in rows if r["EmoClass"] == "N" and r["SpkrID"] != "Unknown")
    row["EmoClass"] = "A"
    _write_rows(copy, rows)
    before = _check(msp)["per_speaker_label"][row["SpkrID"]]
    report = _check(copy)
    speaker = row["SpkrID"]
    assert report["reference"] == "synthetic corpus manifest"
    assert report["deviations"] == [
        f"speaker {speaker} ang: found {before.get('ang', 0) + 1}, expected {before.get('ang', 0)}",
        f"speaker {speaker} neu: found {before['neu'] - 1}, expected {before['neu']}",
    ]
