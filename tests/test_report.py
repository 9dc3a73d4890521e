"""`fedser report`'s statistics (intervals over folds, paired Wilcoxon tests), its markdown, JSON and plot,
which MLflow runs it reads (newest parent per seed, finished folds only, newest of a repeated fold), and
its generators table (audit figures of parent and fold runs)."""

from __future__ import annotations

import itertools
import json
import math
import statistics
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from common.audit import AUDIT_KEYS
from common.schema import load_config
from server.plots import Panel, cells_interval_png, dot_panels_png
from simulations.cli import app
from simulations.papers import EXPERIMENTS, compare
from simulations.report import (
    GENERATOR_COLUMNS,
    INTERVAL,
    NO_GENERATORS,
    comparisons,
    fold_interval,
    fold_rows,
    generator_rows,
    generator_summary,
    generators_markdown,
    generators_png,
    log_report,
    markdown,
    paired_tests,
    regime_stats,
    report_json,
    report_png,
    seed_spread,
    smallest_p,
)

T_975_DF4 = 2.7764451051977987  # Student t, 97.5 % quantile, 4 degrees of freedom (tables: 2.776)
T_975_DF14 = 2.1447866879169273  # ... 14 degrees of freedom (tables: 2.145)


def row(regime: str, seed: int, fold: int, f1: float, trainer: str = "ser-cnn", **extra: float) -> dict[str, Any]:
    return {"regime": regime, "trainer": trainer, "seed": seed, "fold": fold,
            "f1_macro": f1, "ua": f1 + 0.1, "wa": f1 + 0.2, **extra}


def grid(regime: str, seeds: int = 3, folds: int = 5, base: float = 0.5) -> list[dict[str, Any]]:
    """seeds x folds cells: a fold effect plus a seed effect that differs from fold to fold."""
    return [row(regime, s, f, base + 0.02 * f + 0.007 * s * (-1) ** f + 0.001 * s * f)
            for s in range(seeds) for f in range(1, folds + 1)]


def exact_wilcoxon_p(diffs: list[float]) -> float:
    """Two-sided signed-rank p by enumerating every sign assignment (zero differences dropped, no ties)."""
    d = [x for x in diffs if x != 0]
    ranks = {x: k + 1 for k, x in enumerate(sorted(d, key=abs))}
    w = sum(ranks[x] for x in d if x > 0)
    sums = [sum(r for r, plus in zip(range(1, len(d) + 1), signs, strict=True) if plus)
            for signs in itertools.product((False, True), repeat=len(d))]
    below = sum(s <= w for s in sums) / len(sums)
    above = sum(s >= w for s in sums) / len(sums)
    return min(1.0, 2 * min(below, above))


# ------------------------------------------------------------------------------------ statistics


def test_interval_is_student_t_over_the_per_fold_means_of_seed_averages() -> None:
    rows = grid("real-central")
    [stats] = regime_stats(rows)
    values = [r["f1_macro"] for r in rows]
    fold_means = [statistics.fmean(r["f1_macro"] for r in rows if r["fold"] == f) for f in range(1, 6)]
    half = T_975_DF4 * statistics.stdev(fold_means) / math.sqrt(5)
    centre = statistics.fmean(fold_means)

    assert (stats["cells"], stats["folds"], stats["seeds"]) == (15, 5, 3)
    assert stats["f1_macro"] == pytest.approx(statistics.fmean(values))
    assert stats["f1_macro_std"] == pytest.approx(statistics.pstdev(values))  # over all cells, as before
    assert stats["f1_macro_ci"] == pytest.approx((centre - half, centre + half))
    # Not an interval over the 15 cells as if they were independent.
    naive = T_975_DF14 * statistics.stdev(values) / math.sqrt(15)
    assert stats["f1_macro_ci"][1] - stats["f1_macro_ci"][0] != pytest.approx(2 * naive, rel=1e-3)
    # UA and WA get theirs too (shifted by 0.1 and 0.2 here).
    assert stats["ua_ci"] == pytest.approx((centre + 0.1 - half, centre + 0.1 + half))
    assert stats["wa_ci"] == pytest.approx((centre + 0.2 - half, centre + 0.2 + half))


def test_a_fold_with_fewer_seeds_weighs_as_much_as_the_others() -> None:
    rows = [r for r in grid("gan-central") if (r["seed"], r["fold"]) not in {(1, 5), (2, 5)}]
    fold_means = [statistics.fmean(r["f1_macro"] for r in rows if r["fold"] == f) for f in range(1, 6)]
    lo, hi = fold_interval(rows)
    assert (lo + hi) / 2 == pytest.approx(statistics.fmean(fold_means))
    assert (hi - lo) / 2 == pytest.approx(T_975_DF4 * statistics.stdev(fold_means) / math.sqrt(5))


def test_one_fold_has_no_interval_and_equal_folds_a_point() -> None:
    one_fold = [row("fedavg", s, 1, 0.5 + 0.01 * s) for s in range(3)]
    assert fold_interval(one_fold) is None
    assert regime_stats(one_fold)[0]["f1_macro_ci"] is None
    assert "| fedavg | ser-cnn | 3 | 1 | 3 | 0.510 ± 0.008 | - |" in markdown(one_fold)
    assert report_json(one_fold)["regimes"][0]["f1_macro_ci"] is None
    flat = [row("fedavg", 0, f, 0.5) for f in range(1, 4)]
    assert fold_interval(flat) == (0.5, 0.5)


def test_pairs_compare_only_the_cells_both_regimes_have() -> None:
    a = grid("real-central")
    common = [(s, f) for s in range(3) for f in range(1, 6) if (s, f) != (2, 5)]
    offsets = {c: (k + 1) * 0.003 * (1 if k % 4 else -1) for k, c in enumerate(common)}  # distinct sizes
    b = [row("gan-central", r["seed"], r["fold"], r["f1_macro"] - offsets[r["seed"], r["fold"]])
         for r in a if (r["seed"], r["fold"]) in offsets]
    b.append(row("gan-central", 9, 1, 0.99))  # a seed real-central never ran: not paired
    diffs = [next(x["f1_macro"] for x in a if (x["seed"], x["fold"]) == c)
             - next(y["f1_macro"] for y in b if (y["seed"], y["fold"]) == c) for c in common]

    [pair] = paired_tests(a + b)
    assert (pair["a"], pair["b"], pair["trainer"], pair["metric"]) == ("real-central", "gan-central", "ser-cnn",
                                                                       "f1_macro")
    assert pair["n"] == 14
    assert pair["mean_difference"] == pytest.approx(statistics.fmean(offsets.values()))
    assert pair["p"] == pytest.approx(exact_wilcoxon_p(diffs))
    assert pair["test"] == "wilcoxon signed-rank, two-sided"


def test_pairs_stay_within_a_trainer() -> None:
    rows = (grid("real-central") + grid("gan-central", base=0.4)
            + [{**r, "trainer": "tu-dat"} for r in grid("real-central", base=0.3)])
    assert [(p["a"], p["b"], p["trainer"]) for p in paired_tests(rows)] == [
        ("real-central", "gan-central", "ser-cnn")]


@pytest.mark.filterwarnings("error")  # all-zero differences: answered before scipy, which warns (1.17) or raises
@pytest.mark.parametrize(("diffs", "p", "verdict"), [
    ([0.01, 0.02, 0.03, 0.04, 0.05, 0.06], 2 / 2**6, "distinguishable"),  # every sign alike: 2 * 2^-n
    ([0.01, 0.02, 0.03, 0.04, 0.05], 2 / 2**5, "not distinguishable"),
    ([0.0] * 5, 1.0, "not distinguishable"),  # identical regimes: nothing to rank
])
def test_verdicts(diffs: list[float], p: float, verdict: str) -> None:
    a = [row("real-central", 0, f, 0.5 + 0.1 * f) for f in range(1, len(diffs) + 1)]
    b = [row("fedavg", 0, f, 0.5 + 0.1 * f - d) for f, d in enumerate(diffs, start=1)]
    [pair] = paired_tests(a + b)
    assert pair["n"] == len(diffs)
    assert pair["p"] == pytest.approx(p)
    assert pair["distinguishable"] is (verdict == "distinguishable")
    assert f"| real-central | fedavg | ser-cnn | {len(diffs)} | " in markdown(a + b)
    assert next(line for line in markdown(a + b).splitlines()
                if line.startswith("| real-central | fedavg |")).endswith(f"| {verdict} |")


def test_fewer_than_six_pairs_cannot_reach_five_percent() -> None:
    # Exact figures, from scipy and from enumerating the 2^n sign assignments.
    assert smallest_p(5) == pytest.approx(0.0625) == exact_wilcoxon_p([1, 2, 3, 4, 5])
    assert smallest_p(6) == pytest.approx(0.03125) == exact_wilcoxon_p([1, 2, 3, 4, 5, 6])
    assert all(smallest_p(n) > 0.05 for n in range(1, 6))
    text = markdown(grid("real-central") + grid("fedavg", base=0.45))
    assert "With fewer than 6 pairs a two-sided Wilcoxon signed-rank test cannot reach p < 0.05" in text
    assert "5 pairs is 0.0625" in text


# ----------------------------------------------------------------------------------------- outputs


def test_markdown_tables() -> None:
    rows = grid("real-central") + grid("gan-central", base=0.4)
    text = markdown(rows)
    stats = {s["regime"]: s for s in regime_stats(rows)}
    lo, hi = stats["real-central"]["f1_macro_ci"]

    assert "| regime | trainer | seed | fold | macro-F1 | UA | WA |" in text
    assert sum(line.startswith("| real-central | ser-cnn | ") for line in text.splitlines()) == 15 + 1
    first = rows[0]
    assert f"| real-central | ser-cnn | 0 | 1 | {first['f1_macro']:.3f} |" in text
    assert f"| real-central | ser-cnn | 15 | 5 | 3 | {stats['real-central']['f1_macro']:.3f} ± " in text
    assert f"| [{lo:.3f}, {hi:.3f}] |" in text
    assert "Table 2" not in text  # no paper compared: no paper table
    beside = markdown(rows, compare({"ser-cnn": [load_config(EXPERIMENTS / "demo.toml").flat()]}))
    assert beside.startswith(text.rstrip("\n"))
    assert "Seed 002 (Eskimez et al. 2020" in beside and "protocol matches: no (differs: data.root" in beside
    assert f"| real-central | ser-cnn | IEMOCAP | f1_macro | {stats['real-central']['f1_macro']:.3f} ± " in beside
    assert "| 0.5727 ± 0.0099 |" in beside and "| gan-federated | ser-cnn | Proposed - Federated | f1_macro | - | 0 |" in beside
    paper = load_config(EXPERIMENTS / "eskimez2020.toml").flat()
    assert "Table 2: macro-F1 (%), mean ± std of 5-fold leave-one-session-out: protocol matches: yes." in markdown(
        rows, compare({"ser-cnn": [paper]}))
    assert "95 % CI: t over the k per-fold means (seeds averaged within a fold)" in text
    assert ("| regime A | regime B | trainer | n pairs | mean difference (A − B) | ratio A/B (95 % CI) | Wilcoxon p "
            "| verdict |") in text
    diff = stats["real-central"]["f1_macro"] - stats["gan-central"]["f1_macro"]
    [pair] = paired_tests(rows)
    lo, hi = pair["ratio_ci"]
    assert (f"| real-central | gan-central | ser-cnn | 15 | {diff:+.3f} | {pair['ratio']:.3f} [{lo:.3f}, {hi:.3f}] | "
            f"{pair['p']:.4f} | distinguishable |") in text
    assert "Pearson r" not in text


def test_markdown_keeps_seed_000s_valence_table() -> None:
    rows = [row("real-central", 0, f, 0.5, trainer="chang-multitask-cnn", ua3=0.6, pearson_r=0.3) for f in (1, 2)]
    text = markdown(rows)
    assert "| regime | trainer | 5-class UA (split labels) | 3-class UA | Pearson r |" in text
    assert "| real-central | chang-multitask-cnn | 0.600 ± 0.000 | 0.600 ± 0.000 | 0.300 ± 0.000 |" in text


def plain_types(value: Any) -> bool:
    if isinstance(value, dict):
        return all(type(k) is str and plain_types(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain_types(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


def test_json_carries_the_same_statistics_and_serializes() -> None:
    rows = [{**r, "f1_macro": np.float64(r["f1_macro"]), "seed": np.int64(r["seed"]), "pearson_r": float("nan")}
            for r in grid("real-central") + grid("gan-central", base=0.4)]
    data = report_json(rows, compare({"ser-cnn": [load_config(EXPERIMENTS / "demo.toml").flat()]}))

    assert plain_types(data)
    json.dumps(data, allow_nan=False)
    assert set(data) >= {"rows", "regimes", "pairs", "interval"}
    assert data["interval"] == INTERVAL and data["interval"].startswith(
        "95 % CI: t over the k per-fold means (seeds averaged within a fold)")
    assert len(data["rows"]) == 30 and data["rows"][0]["pearson_r"] is None  # NaN -> null
    stats = regime_stats(rows)
    for entry, s in zip(data["regimes"], stats, strict=True):
        assert {k: entry[k] for k in ("regime", "trainer", "cells", "folds", "seeds")} == {
            k: s[k] for k in ("regime", "trainer", "cells", "folds", "seeds")}
        for m in ("f1_macro", "ua", "wa"):
            assert entry[m] == pytest.approx(s[m]) and entry[f"{m}_std"] == pytest.approx(s[f"{m}_std"])
            assert entry[f"{m}_ci"] == pytest.approx(list(s[f"{m}_ci"]))
    [paper] = data["papers"]
    assert paper["seed"] == "002" and paper["matches"] is False
    assert {d["key"] for d in paper["differences"]} >= {"data.root", "preset", "folds.holdout"}
    assert paper["rows"][0] == {"regime": "real-central", "trainer": "ser-cnn", "label": "IEMOCAP",
                                "metric": "f1_macro", "paper": pytest.approx(0.5727), "paper_std": pytest.approx(0.0099),
                                "ours": pytest.approx(stats[0]["f1_macro"]), "ours_std": pytest.approx(stats[0]["f1_macro_std"]),
                                "cells": 15}
    [pair] = data["pairs"]
    assert set(pair) == {"a", "b", "trainer", "metric", "n", "mean_difference", "ratio", "ratio_ci", "test", "p",
                         "distinguishable"}
    assert pair["n"] == 15 and pair["distinguishable"] is True and pair["metric"] == "f1_macro"


def test_plots_are_written(tmp_path: Path) -> None:
    rows = grid("real-central") + grid("gan-central", base=0.4) + [
        {**r, "trainer": "tu-dat"} for r in grid("fedavg", seeds=1, folds=1)]
    path = report_png(rows, tmp_path / "report.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bare = cells_interval_png(["a"], [[(1, 0, 0.5)]], [0.5], [None], {}, tmp_path / "bare.png")
    assert bare.stat().st_size > 0


# --------------------------------------------------------------------------------- the MLflow store

T0 = 1_700_000_000_000  # ms; explicit start times make "newest" deterministic


def scores(f1: float) -> dict[str, float]:
    return {"f1_macro": f1, "ua": f1 + 0.01, "wa": f1 + 0.02}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A study's store: a superseded parent, a resumed parent (a KILLED and a FAILED fold, a fold logged
    twice, a fold without every score, a skipped fold), a second seed, and two runs from before seeds
    (and trainers) were tagged."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("study", artifact_location=(root / "artifacts").as_uri())

    def run(start: int, tags: dict[str, str], metrics: dict[str, float] | None = None,
            params: dict[str, str] | None = None, status: str = "FINISHED", parent: str | None = None) -> str:
        tags = {**tags, **({"mlflow.parentRunId": parent} if parent else {})}
        run_id = client.create_run(exp, start_time=T0 + start, tags=tags).info.run_id
        for k, v in (params or {}).items():
            client.log_param(run_id, k, v)
        for k, v in (metrics or {}).items():
            client.log_metric(run_id, k, v)
        client.set_terminated(run_id, status=status, end_time=T0 + start + 1)
        return run_id

    def parent(start: int, regime: str, **tags: str) -> str:
        return run(start, {"kind": "regime", "regime": regime, **tags}, params={"preset": "demo"},
                   status="KILLED" if start == 200 else "FINISHED")

    def fold(start: int, of: str, regime: str, n: int, metrics: dict[str, float], status: str = "FINISHED",
             **tags: str) -> None:
        run(start, {"regime": regime, "fold": str(n), "session": str(n), **tags}, metrics, status=status, parent=of)

    real = {"trainer": "ser-cnn"}
    old = parent(100, "real-central", seed="1", **real)  # superseded by the re-run below
    fold(101, old, "real-central", 1, scores(0.11), seed="1", **real)
    fold(102, old, "real-central", 4, scores(0.14), seed="1", **real)  # a fold the re-run lacks: still out
    resumed = parent(200, "real-central", seed="1", **real)
    fold(201, resumed, "real-central", 1, scores(0.21), seed="1", **real)
    fold(202, resumed, "real-central", 2, scores(0.92), status="KILLED", seed="1", **real)  # the kill
    fold(203, resumed, "real-central", 3, scores(0.93), status="FAILED", seed="1", **real)
    fold(301, resumed, "real-central", 2, scores(0.22), seed="1", **real)  # the resumed study
    fold(302, resumed, "real-central", 3, scores(0.23), seed="1", **real)
    fold(303, resumed, "real-central", 1, scores(0.24), seed="1", **real)  # fold 1 again: the newest counts
    fold(304, resumed, "real-central", 4, {"f1_macro": 0.94, "ua": 0.94}, seed="1", **real)  # no WA
    fold(305, resumed, "real-central", 5, {}, seed="1", skipped="no test utterances", **real)
    fold(306, resumed, "real-central", 6, scores(0.96), status="KILLED", seed="1", **real)  # killed again
    fold(307, resumed, "real-central", 7, scores(0.97), status="FAILED", seed="1", **real)
    other_seed = parent(250, "real-central", seed="2", **real)
    fold(251, other_seed, "real-central", 1, scores(0.31), seed="2", **real)
    fold(252, other_seed, "real-central", 2, scores(0.32), seed="2", **real)
    legacy = run(260, {"kind": "regime", "regime": "gan-central"}, params={"training.seed": "7"})
    fold(261, legacy, "gan-central", 1, {**scores(0.41), "pearson_r": 0.5})
    legacy_tu = run(270, {"kind": "regime", "regime": "fedavg", "trainer": "tu-dat"})
    fold(271, legacy_tu, "fedavg", 1, scores(0.51), trainer="tu-dat")
    fold(280, "no-such-parent", "fedavg", 2, scores(0.99), trainer="tu-dat")
    run(400, {"kind": "report"})
    return uri


def test_fold_rows_reads_each_seeds_newest_parent_and_its_finished_folds(store: str) -> None:
    rows = fold_rows(store, "study")
    assert [(r["regime"], r["trainer"], r["seed"], r["fold"], r["f1_macro"]) for r in rows] == [
        ("real-central", "ser-cnn", 1, 1, 0.24),
        ("real-central", "ser-cnn", 1, 2, 0.22),
        ("real-central", "ser-cnn", 1, 3, 0.23),
        ("real-central", "ser-cnn", 2, 1, 0.31),
        ("real-central", "ser-cnn", 2, 2, 0.32),
        ("gan-central", "ser-cnn", 7, 1, 0.41),  # no seed tag: training.seed; no trainer tag: ser-cnn
        ("fedavg", "tu-dat", 0, 1, 0.51),  # neither: seed 0
    ]
    assert all(type(r["seed"]) is int for r in rows)
    assert rows[0] == {"regime": "real-central", "trainer": "ser-cnn", "seed": 1, "fold": 1,
                       "f1_macro": 0.24, "ua": 0.25, "wa": 0.26}
    assert rows[5]["pearson_r"] == 0.5
    assert [(r["seed"], r["fold"]) for r in fold_rows(store, "study", regimes=["real-central"])] == [
        (1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]
    assert [r["regime"] for r in fold_rows(store, "study", trainers=["tu-dat"])] == ["fedavg"]
    with pytest.raises(ValueError, match="no MLflow experiment 'missing'"):
        fold_rows(store, "missing")


def test_a_federated_regime_of_two_partitions_in_one_experiment_is_refused(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("mixed", artifact_location=(tmp_path / "artifacts").as_uri())
    for start, regime, partition in ((1, "fedavg", "session"), (2, "fedavg", "speaker"),
                                     (3, "real-central", "session"), (4, "real-central", "speaker")):
        run_id = client.create_run(exp, start_time=T0 + start, tags={"kind": "regime", "regime": regime}).info.run_id
        client.log_param(run_id, "federation.partition", partition)
        fold_id = client.create_run(exp, start_time=T0 + start, tags={
            "regime": regime, "fold": "1", "session": "1", "mlflow.parentRunId": run_id}).info.run_id
        for k, v in scores(0.5).items():
            client.log_metric(fold_id, k, v)
        for r in (fold_id, run_id):
            client.set_terminated(r, status="FINISHED")
    with pytest.raises(ValueError, match=r"fedavg \[ser-cnn\] runs of partitions session, speaker"):
        fold_rows(uri, "mixed")
    # A centralized regime does not depend on the partition: its newest run counts, as before.
    assert [r["regime"] for r in fold_rows(uri, "mixed", regimes=["real-central"])] == ["real-central"]


def test_log_report_logs_markdown_json_and_plot(store: str) -> None:
    rows = fold_rows(store, "study")
    [tu, eskimez] = comparisons(store, "study")  # tu-dat and ser-cnn ran; papers in seed order
    assert (eskimez.verdict.paper.seed, tu.verdict.paper.seed) == ("002", "001")
    assert not eskimez.verdict.matches and not tu.verdict.matches
    text = markdown(rows, [tu, eskimez])
    run_id = log_report(store, "study", rows, text)

    mlflow.set_tracking_uri(store)
    assert {a.path for a in mlflow.artifacts.list_artifacts(run_id=run_id)} == {
        "report.md", "report.json", "report.png"}
    folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id))
    assert (folder / "report.md").read_text(encoding="utf-8") == text
    assert json.loads((folder / "report.json").read_text(encoding="utf-8")) == report_json(rows, [tu, eskimez])
    # The report run is no regime: reading the store again gives the same rows.
    assert fold_rows(store, "study") == rows



# ------------------------------------------------------------------------------------ generators


def figures(base: float, **override: float) -> dict[str, float]:
    """A generator's audit figures: every key of common/audit.py, ``base`` + its position / 100."""
    return {**{k: base + i / 100 for i, k in enumerate(AUDIT_KEYS)}, **override}


@pytest.fixture(scope="module")
def audit_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Audit figures as the regimes log them: gan-federated's per session on its parent (a superseded
    parent too), gan-central's and a tu-dat baseline's per fold on the fold runs (a fold finished
    twice, a KILLED one, a skipped one, a second seed); real-central without any."""
    root = tmp_path_factory.mktemp("mlflow-audit")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("gens", artifact_location=(root / "artifacts").as_uri())

    def run(start: int, tags: dict[str, str], metrics: dict[str, float], status: str = "FINISHED",
            parent: str | None = None) -> str:
        tags = {**tags, **({"mlflow.parentRunId": parent} if parent else {})}
        run_id = client.create_run(exp, start_time=T0 + start, tags=tags).info.run_id
        for k, v in metrics.items():
            client.log_metric(run_id, k, v)
        client.set_terminated(run_id, status=status, end_time=T0 + start + 1)
        return run_id

    def parent(start: int, regime: str, seed: int, metrics: dict[str, float] | None = None,
               trainer: str = "ser-cnn") -> str:
        return run(start, {"kind": "regime", "regime": regime, "trainer": trainer, "seed": str(seed)}, metrics or {})

    def fold(start: int, of: str, regime: str, n: int, audit: dict[str, float] | None, status: str = "FINISHED",
             seed: int = 0, trainer: str = "ser-cnn", **tags: str) -> None:
        metrics = {**scores(0.5), **{f"audit.{k}": v for k, v in (audit or {}).items()}}
        run(start, {"regime": regime, "trainer": trainer, "seed": str(seed), "fold": str(n), "session": str(n), **tags},
            metrics, status=status, parent=of)

    def per_session(**named: dict[str, float]) -> dict[str, float]:
        return {f"audit.{name}.{k}": v for name, f in named.items() for k, v in f.items()}

    old = parent(100, "gan-federated", 0, per_session(Session1=figures(0.9)))  # superseded below
    fold(101, old, "gan-federated", 1, None)
    fed = parent(200, "gan-federated", 0, {
        **per_session(Session10=figures(0.3), Session2=figures(0.2), Session1=figures(0.1, ct=float("nan"))),
        "audit.Session3.gan_test": 0.55, "audit.Session3.nonsense": 1.0,  # a partial audit; an unknown key
        "f1_macro_mean": 0.5})
    fold(201, fed, "gan-federated", 1, None)  # gan-federated's folds carry no audit of their own
    central = parent(300, "gan-central", 0)
    fold(301, central, "gan-central", 1, figures(0.61))  # repeated below: the newest counts
    fold(302, central, "gan-central", 2, figures(0.62))
    fold(303, central, "gan-central", 2, figures(0.99), status="KILLED")  # killed: the finished one counts
    fold(304, central, "gan-central", 1, figures(0.71))
    fold(305, central, "gan-central", 3, figures(0.98), status="FAILED")
    fold(306, central, "gan-central", 4, None, skipped="no test utterances")
    fold(307, central, "gan-central", 5, None)  # finished without an audit (audit.enabled = false)
    second = parent(400, "gan-central", 1)
    fold(401, second, "gan-central", 1, figures(0.81), seed=1)
    tu = parent(500, "baseline-gan", 0, trainer="tu-dat")
    fold(501, tu, "baseline-gan", 1, {"gan_test": 0.4, "fd": 12.5}, trainer="tu-dat")  # some figures only
    fold(502, "no-such-parent", "baseline-gan", 2, figures(0.1))
    real = parent(600, "real-central", 0)
    fold(601, real, "real-central", 1, None)
    return uri


def _ids(rows: list[dict[str, Any]]) -> list[tuple[str, str, int, str]]:
    return [(r["regime"], r["trainer"], r["seed"], r["generator"]) for r in rows]


def test_generator_rows_read_parent_and_fold_generators_of_the_newest_parents(audit_store: str) -> None:
    rows = generator_rows(audit_store, "gens")
    assert _ids(rows) == [
        ("gan-central", "ser-cnn", 0, "fold1"),
        ("gan-central", "ser-cnn", 0, "fold2"),
        ("gan-central", "ser-cnn", 1, "fold1"),
        ("gan-federated", "ser-cnn", 0, "Session1"),
        ("gan-federated", "ser-cnn", 0, "Session2"),
        ("gan-federated", "ser-cnn", 0, "Session3"),
        ("gan-federated", "ser-cnn", 0, "Session10"),  # by number, not as text
        ("baseline-gan", "tu-dat", 0, "fold1"),
    ]
    assert rows[0] == {"regime": "gan-central", "trainer": "ser-cnn", "seed": 0, "generator": "fold1",
                       **figures(0.71)}  # fold 1's newest run
    assert rows[1]["gan_test"] == pytest.approx(0.62)  # the finished fold 2, not the killed one
    assert rows[4] == {"regime": "gan-federated", "trainer": "ser-cnn", "seed": 0, "generator": "Session2",
                       **figures(0.2)}
    assert math.isnan(rows[3]["ct"])
    assert rows[5] == {"regime": "gan-federated", "trainer": "ser-cnn", "seed": 0, "generator": "Session3",
                       "gan_test": 0.55}  # the unknown key is not a figure
    assert rows[7] == {"regime": "baseline-gan", "trainer": "tu-dat", "seed": 0, "generator": "fold1",
                       "gan_test": 0.4, "fd": 12.5}
    assert _ids(generator_rows(audit_store, "gens", regimes=["gan-federated"]))[0][3] == "Session1"
    assert {r["trainer"] for r in generator_rows(audit_store, "gens", trainers=["tu-dat"])} == {"tu-dat"}
    with pytest.raises(ValueError, match="no MLflow experiment 'missing'"):
        generator_rows(audit_store, "missing")


def test_generators_table_summary_and_legend(audit_store: str) -> None:
    rows = generator_rows(audit_store, "gens")
    text = generators_markdown(rows)
    lines = text.splitlines()
    assert ("| regime | seed | generator | GAN-test | GAN-train | real-train | FD | FD real | diversity | C_T | "
            "MIA AUC | TPR@1%FPR |") in lines
    assert [h for _, h in GENERATOR_COLUMNS][-2:] == ["MIA AUC", "TPR@1%FPR"]
    body = [line for line in lines if line.startswith("| ") and not line.startswith("| regime")]
    assert len(body) == len(rows) == 8
    assert body[0] == "| gan-central | 0 | fold1 | 0.710 | 0.720 | 0.730 | 0.740 | 0.750 | 0.760 | 0.770 | 0.780 | 0.790 |"
    assert body[3] == "| gan-federated | 0 | Session1 | 0.100 | 0.110 | 0.120 | 0.130 | 0.140 | 0.150 | - | 0.170 | 0.180 |"
    assert body[5] == "| gan-federated | 0 | Session3 | 0.550 | - | - | - | - | - | - | - | - |"
    assert body[7] == "| baseline-gan [tu-dat] | 0 | fold1 | 0.400 | - | - | 12.500 | - | - | - | - | - |"
    # A mean per regime over its generators (missing and NaN figures left out).
    central = (0.71 + 0.62 + 0.81) / 3  # GAN-test of seed 0's fold1 and fold2, seed 1's fold1
    assert f"Mean over the 3 generator(s) of gan-central: GAN-test {central:.3f}," in text
    fed_ct = (0.36 + 0.26) / 2  # Session1's C_T is NaN, Session3 has none
    assert f"Mean over the 4 generator(s) of gan-federated: GAN-test {(0.1 + 0.2 + 0.55 + 0.3) / 4:.3f}," in text
    assert f"C_T {fed_ct:.3f}" in text
    assert "Mean over the 1 generator(s) of baseline-gan [tu-dat]: GAN-test 0.400, GAN-train -, " in text
    assert "C_T << 0: samples closer to the training data" in text
    [summary] = [s for s in generator_summary(rows) if s["regime"] == "gan-federated"]
    assert summary["generators"] == 4 and summary["ct"] == pytest.approx(fed_ct)
    # In the report: after the regime tables, only when asked for.
    folds = grid("gan-central")
    assert markdown(folds, (), rows).startswith(markdown(folds))
    assert markdown(folds, (), rows).endswith(text)
    assert "Generators" not in markdown(folds)


def test_no_audit_figures_is_one_line(store: str) -> None:
    assert generator_rows(store, "study") == []
    assert generators_markdown([]) == NO_GENERATORS + "\n"
    assert "\n" not in NO_GENERATORS and "| generator |" not in NO_GENERATORS
    rows = fold_rows(store, "study")
    assert markdown(rows, (), []).endswith("\n\n" + NO_GENERATORS + "\n")
    data = report_json(rows, (), [])
    assert data["generators"] == [] and data["generator_regimes"] == []


def test_generators_json_and_plot(audit_store: str, tmp_path: Path) -> None:
    rows = generator_rows(audit_store, "gens")
    data = report_json(grid("gan-central"), (), rows)
    assert plain_types(data)
    json.dumps(data, allow_nan=False)
    assert data["generators"][3]["generator"] == "Session1" and data["generators"][3]["ct"] is None  # NaN -> null
    assert data["generators"][0] == {"regime": "gan-central", "trainer": "ser-cnn", "seed": 0, "generator": "fold1",
                                     **figures(0.71)}
    assert [(g["regime"], g["trainer"], g["generators"]) for g in data["generator_regimes"]] == [
        ("gan-central", "ser-cnn", 3), ("gan-federated", "ser-cnn", 4), ("baseline-gan", "tu-dat", 1)]
    assert data["generator_regimes"][2]["ct"] is None  # no generator of it has C_T
    path = generators_png(rows, tmp_path / "generators.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bare = dot_panels_png(["a", "b"], [Panel("x", [[1.0, float("nan")], []], reference=0.5, floor=[[0.5], []])],
                          tmp_path / "bare.png")
    assert bare.stat().st_size > 0


def test_report_logs_generators_png_beside_report_png(audit_store: str) -> None:
    rows, gens = fold_rows(audit_store, "gens"), generator_rows(audit_store, "gens")
    text = markdown(rows, (), gens)
    run_id = log_report(audit_store, "gens", rows, text, comps=(), generators=gens)
    mlflow.set_tracking_uri(audit_store)
    assert {a.path for a in mlflow.artifacts.list_artifacts(run_id=run_id)} == {
        "report.md", "report.json", "report.png", "generators.png"}
    folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id))
    assert (folder / "report.md").read_text(encoding="utf-8") == text
    assert json.loads((folder / "report.json").read_text(encoding="utf-8"))["generators"] == (
        report_json(rows, (), gens)["generators"])
    assert _ids(generator_rows(audit_store, "gens")) == _ids(gens)  # the report run is no regime


def test_fedser_report_prints_and_logs_the_generators(audit_store: str) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["report", "--tracking-uri", audit_store, "--experiment", "gens", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [(g["regime"], g["generator"]) for g in data["generators"]][:4] == [
        ("gan-central", "fold1"), ("gan-central", "fold2"), ("gan-central", "fold1"), ("gan-federated", "Session1")]
    result = runner.invoke(app, ["report", "--tracking-uri", audit_store, "--experiment", "gens"])
    assert result.exit_code == 0, result.output
    assert "| gan-federated | 0 | Session2 | 0.200 | 0.210 |" in result.output
    assert "and generators.png to MLflow run" in result.output


def test_the_paired_ratio_and_its_fold_bootstrap() -> None:
    a = grid("gan-federated", base=0.45)
    b = grid("real-central", base=0.5)
    [pair] = paired_tests(b + a)
    means = [statistics.fmean(r["f1_macro"] for r in rows) for rows in (b, a)]
    assert pair["ratio"] == pytest.approx(means[0] / means[1])
    lo, hi = pair["ratio_ci"]
    assert lo < pair["ratio"] < hi
    # Folds, not cells, are resampled: every resample's ratio lies between the per-fold ratios'
    # extremes, which a cell-level bootstrap would not respect here.
    folds = [statistics.fmean(r["f1_macro"] for r in b if r["fold"] == f)
             / statistics.fmean(r["f1_macro"] for r in a if r["fold"] == f) for f in range(1, 6)]
    assert min(folds) - 1e-12 <= lo and hi <= max(folds) + 1e-12
    # An exact multiple on every cell: the ratio and both bounds are that multiple.
    scaled = [{**r, "regime": "gan-central", "f1_macro": 0.9 * r["f1_macro"]} for r in b]
    [exact] = paired_tests(b + scaled)
    assert exact["ratio"] == pytest.approx(1 / 0.9)
    assert exact["ratio_ci"] == pytest.approx((1 / 0.9, 1 / 0.9))
    assert "ratio A/B (95 % CI)" in markdown(b + scaled)
    assert f"| {1 / 0.9:.3f} [{1 / 0.9:.3f}, {1 / 0.9:.3f}] |" in markdown(b + scaled)


def test_seed_spread_is_the_within_fold_std_over_seeds_averaged() -> None:
    rows = grid("gan-central")
    want = statistics.fmean(statistics.pstdev(r["f1_macro"] for r in rows if r["fold"] == f) for f in range(1, 6))
    assert seed_spread(rows) == pytest.approx(want)
    [stats] = regime_stats(rows)
    assert stats["f1_macro_seed_spread"] == pytest.approx(want)
    assert f"| {want:.3f} |" in markdown(rows)
    one_seed = [r for r in rows if r["seed"] == 0]
    assert seed_spread(one_seed) is None and regime_stats(one_seed)[0]["f1_macro_seed_spread"] is None
