"""The papers' protocol tables (simulations/papers.py) against the code: every "we do" value is the
experiment file's at the paper preset, docs/papers.md carries each table verbatim, and the protocol
verdict names exactly the fields that differ (seed 002: eskimez2020.toml is the only way to "matches")."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.corpora.synthetic.ravdess import write_ravdess
from common.schema import load_config
from common.trainers.registry import TRAINERS
from simulations.cli import app
from simulations.papers import (
    ESKIMEZ,
    GANS,
    PAPERS,
    REAL_CORPUS,
    TRIPATHI,
    TU,
    agrees,
    compare,
    markdown_table,
    verdict,
)

PAPERS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "papers.md"


def paper_run(paper_file: Path, **changes: str) -> dict[str, str]:
    """The flat config a study on ``paper_file`` at the paper preset logs, with ``changes``."""
    return {**load_config(paper_file, {"preset": "paper"}).flat(), **changes}


@pytest.mark.parametrize("paper", PAPERS, ids=lambda p: p.seed)
def test_every_we_do_value_is_the_experiment_files(paper) -> None:
    flat = load_config(paper.path, {"preset": "paper"}).flat()
    for row in paper.rows:
        if row.value == REAL_CORPUS:
            continue  # a path the user gives; the verdict checks it is set
        assert row.key in flat, f"{paper.experiment}: no config key {row.key}"
        assert agrees(row, flat[row.key]), f"{paper.experiment}: {row.key} = {flat[row.key]}, table says {row.value}"


@pytest.mark.parametrize("paper", PAPERS, ids=lambda p: p.seed)
def test_the_readme_carries_each_papers_table(paper) -> None:
    assert markdown_table(paper) in PAPERS_PAGE.read_text(encoding="utf-8"), (
        f"docs/papers.md's table of seed {paper.seed} is stale: paste `fedser papers` output")


def test_paper_trainers_and_results_are_registered() -> None:
    for paper in PAPERS:
        assert set(paper.trainers) <= set(TRAINERS)
        assert {r.trainer for r in paper.results} <= set(paper.trainers)
        assert all(r.metric in ("f1_macro", "ua", "wa", "ua3") and 0 < r.mean < 100 for r in paper.results)


def test_only_the_paper_file_matches_seed_002() -> None:
    assert verdict(ESKIMEZ, [paper_run(ESKIMEZ.path)]).matches
    # Every protocol field changed alone is named, and only it.
    for row in (r for r in ESKIMEZ.rows if r.protocol):
        other = "None" if row.value == REAL_CORPUS else "something-else"
        found = verdict(ESKIMEZ, [paper_run(ESKIMEZ.path, **{row.key: other})])
        assert [d.key for d in found.differences] == [row.key], row.key
    # The demo at the paper preset, even on a real copy of IEMOCAP: one speaker tests, LibriSpeech absent.
    demo = load_config(ESKIMEZ.path.parent / "demo.toml", {"preset": "paper", "data": {"root": "/data/IEMOCAP"}})
    keys = [d.key for d in verdict(ESKIMEZ, [demo.flat()]).differences]
    assert "folds.holdout" in keys and "data.pretrain_root" in keys and "data.root" not in keys
    # A run that does not record a field (logged before it existed) does not match either.
    old = {k: v for k, v in paper_run(ESKIMEZ.path).items() if k != "folds.holdout"}
    assert verdict(ESKIMEZ, [old]).text() == (
        "protocol matches: no (differs: folds.holdout = missing (paper: session))")


def test_tiny_experiment_files_say_what_differs() -> None:
    tiny = load_config(TU.path).flat()
    found = verdict(TU, [tiny])
    keys = [d.key for d in found.differences]
    assert {"data.root", "preset"} <= set(keys)
    assert "data.root = the embedded synthetic corpus (paper: a copy of the real corpus)" in found.text()
    # Several runs: every value any of them had.
    both = verdict(TU, [paper_run(TU.path), paper_run(TU.path, **{"data.subset": "all"})])
    assert [(d.key, d.ours) for d in both.differences] == [("data.root", ("None",)), ("data.subset", ("all",))]


def test_alternatives_and_conditional_cells() -> None:
    mfcc = paper_run(TRIPATHI.path, **{"features.kind": "mfcc6s", "data.root": "/x"})
    [comp] = compare({"tripathi-s": [mfcc]})
    assert comp.verdict.matches  # Table 1 has both inputs
    assert {r.label for r in comp.results} == {"S MFCC", "S+A MFCC", "S+C MFCC", "S+A+C MFCC"}
    [spec] = compare({"tripathi-sac": [paper_run(TRIPATHI.path, **{"data.root": "/x"})]})
    assert all(r.label.endswith("Spectrogram") for r in spec.results)
    # Label maps compare as maps: the order of the keys does not matter.
    ravdess = paper_run(GANS.path, **{"data.label_map": "{'sad': 'sad', 'ang': 'ang', 'hap': 'hap', 'neu': 'neu'}"})
    assert verdict(GANS, [ravdess]).matches
    assert "Counts differ: we use all 672" in GANS.note and "+162" in GANS.note


def test_fedser_papers_prints_tables_and_a_configs_verdict(tmp_path: Path) -> None:
    runner = CliRunner()
    tables = runner.invoke(app, ["papers"])
    assert tables.exit_code == 0 and all(markdown_table(p) in tables.output for p in PAPERS)
    one = runner.invoke(app, ["papers", str(ESKIMEZ.path)])
    assert one.exit_code == 0 and one.output.strip() == "seed 002 (eskimez2020.toml): protocol matches: yes"
    other = tmp_path / "zhang.toml"
    other.write_text('trainers = ["fcn2d-attention"]\n', encoding="utf-8")
    none = runner.invoke(app, ["papers", str(other)])
    assert none.exit_code == 0 and "belong to none of the five papers" in none.output


def test_a_corpus_fedser_wrote_is_never_the_real_one(tmp_path: Path) -> None:
    write_ravdess(tmp_path / "RAVDESS", actors=1)
    synthetic = verdict(GANS, [paper_run(GANS.path, **{"data.root": str(tmp_path / "RAVDESS")})])
    assert [d.key for d in synthetic.differences] == ["data.root"]
    assert "(a synthetic corpus fedser wrote)" in synthetic.text()
    assert verdict(GANS, [paper_run(GANS.path, **{"data.root": str(tmp_path)})]).matches  # no manifest: real
