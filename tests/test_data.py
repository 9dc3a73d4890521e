"""Prepared corpora: one scan per corpus, one featurization per extractor, streamed patches."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import common.data as data
from common.audio import write_wav
from common.schema import load_config
from common.views import LabeledSet, PatchSampler
from tests.conftest import tone


@pytest.fixture
def cfg(tmp_path: Path, iemocap_tree: Path):
    data._PREPARED.clear()  # a fresh process as far as the per-process memo goes
    return load_config(overrides={"work_dir": str(tmp_path / "out"), "data": {"root": str(iemocap_tree)}})


def count_scans(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every read_corpus call from common.data, by root."""
    calls: list[Path] = []
    real = data.read_corpus

    def counted(root, *args, **kwargs):
        calls.append(root)
        return real(root, *args, **kwargs)

    monkeypatch.setattr(data, "read_corpus", counted)
    return calls


def test_a_manifest_is_written_once_and_reused_while_the_files_are_unchanged(cfg, monkeypatch) -> None:
    scans = count_scans(monkeypatch)
    first = data.labeled_manifest(cfg)
    again = data.labeled_manifest(cfg)
    assert len(scans) == 1
    assert again.scan.utterances == first.scan.utterances and again.digests == first.digests
    assert [s.reason for s in again.scan.skipped] == [s.reason for s in first.scan.skipped]
    assert any("missing" in s.reason for s in first.scan.skipped)  # the tree's missing wav, still reported
    # Same path, new content: the manifest is stale and the corpus is scanned again.
    changed = first.scan.utterances[0].path
    write_wav(changed, tone(0.7, freq=330.0))
    os.utime(changed, ns=(1, 1))
    rescanned = data.labeled_manifest(cfg)
    assert len(scans) == 2 and rescanned.digests[0] != first.digests[0]


def test_features_are_indexed_once_and_one_node_reads_only_its_session(cfg, monkeypatch) -> None:
    prepared = data.prepared_labeled(cfg)
    assert len(prepared) == len(data.labeled_scan(cfg).utterances)
    assert prepared.cache.misses == len(set(prepared.keys))  # each distinct audio computed once
    full = {u.id: prepared.feature(r) for r, u in enumerate(prepared.utterances)}
    for r, u in enumerate(prepared.utterances):
        assert prepared.lo[r] == full[u.id].min() and prepared.hi[r] == full[u.id].max()
        assert prepared.frames[r] == full[u.id].shape[1]
    data._PREPARED.clear()
    reads: list[str] = []
    load = data.FeatureCache.load
    monkeypatch.setattr(data.FeatureCache, "load", lambda self, key, mmap=False: reads.append(key) or load(self, key, mmap))
    node = data.load_corpus(cfg, sessions={3})
    assert {u.session for u in node.utterances} == {3}
    assert len(reads) == len(node.utterances)  # the index came from disk; only session 3's features were read
    assert node.session_stats() == {3: data.prepared_labeled(cfg).session_stats()[3]}


def test_streamed_patches_draw_what_the_in_memory_sampler_draws(cfg) -> None:
    prepared = data.prepared_labeled(cfg)
    stats = prepared.stats()
    memory = LabeledSet(tuple(stats.scale(prepared.feature(r)) for r in range(len(prepared))), (0,) * len(prepared))
    for size in (8, 64):  # windows inside the clips, and clips shorter than a window (padded)
        streamed, in_memory = data.StreamedPatches(prepared, stats, size, seed=3), PatchSampler(memory, size, seed=3)
        for _ in range(3):
            (x, y), (x0, _y0) = streamed(5), in_memory(5)
            np.testing.assert_array_equal(x.numpy(), x0.numpy())
            assert x.shape == (5, 1, prepared.feature(0).shape[0], size) and not y.any()


def _spoil(tree: Path) -> None:
    """One malformed label line, one too-short clip, one clip with a NaN sample (beside the tree's
    AppleDouble file and missing wav)."""
    evals = tree / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    evals.write_text(evals.read_text().replace("[6.2901 - 8.2357]", "[6.2901 - ]"))
    write_wav(tree / "Session3" / "sentences" / "wav" / "Ses03M_impro05a" / "Ses03M_impro05a_F000.wav", tone(0.1))
    nan = tone()
    nan[100] = np.nan
    sf.write(tree / "Session5" / "sentences" / "wav" / "Ses05M_script01_1b" / "Ses05M_script01_1b_M000.wav",
             nan, 16_000, subtype="FLOAT")


SPOILED = {"AppleDouble file": 1, "missing audio file": 1, "malformed label line": 1, "too short": 1,
           "non-finite samples": 1}


def test_prepared_and_corpus_report_skips_by_kind(cfg, iemocap_tree: Path) -> None:
    _spoil(iemocap_tree)
    prepared = data.prepared_labeled(cfg)
    assert prepared.skip_counts() == SPOILED
    corpus = data.load_corpus(cfg, sessions={3})
    assert corpus.skips == SPOILED  # the whole corpus's skips, whichever sessions a node holds
    assert data.skip_summary(corpus.skips) == (
        "skipped 5 entries: 1 AppleDouble file, 1 malformed label line, 1 missing audio file, "
        "1 non-finite samples, 1 too short")


def test_the_manifest_keeps_skip_kinds_and_reads_old_rows_with_a_fallback(cfg, iemocap_tree: Path,
                                                                         monkeypatch) -> None:
    _spoil(iemocap_tree)
    scans = count_scans(monkeypatch)
    first = data.labeled_manifest(cfg).scan
    again = data.labeled_manifest(cfg).scan
    assert len(scans) == 1
    # "malformed label line" cannot be told from its reason (it opens with the file name): stored.
    assert again.skipped == first.skipped and again.skip_counts() == first.skip_counts()
    assert first.skip_counts()["malformed label line"] == 1
    assert again.excluded == first.excluded == {"xxx": 1, "fru": 1}
    # Rows of [path, reason] (no kind) still read: the kind comes from the reason.
    (path,) = (cfg.work_dir / "prepared").glob("iemocap-*.json")
    stored = json.loads(path.read_text())
    assert all(len(row) == 3 for row in stored["skipped"])
    stored["skipped"] = [row[:2] for row in stored["skipped"]]
    path.write_text(json.dumps(stored))
    legacy = data.labeled_manifest(cfg).scan
    assert len(scans) == 1
    assert {s.kind for s in legacy.skipped} == {"AppleDouble file", "missing audio file", "too short", "other"}


def test_a_version_1_manifest_is_rescanned_not_reused(cfg, monkeypatch) -> None:
    # Version 1 manifests were written by a reader that dropped a whole dialog for one bad line.
    current = data.MANIFEST_VERSION
    assert current >= 2
    scans = count_scans(monkeypatch)
    monkeypatch.setattr(data, "MANIFEST_VERSION", 1)
    data.labeled_manifest(cfg)
    monkeypatch.setattr(data, "MANIFEST_VERSION", current)
    data.labeled_manifest(cfg)
    assert len(scans) == 2
