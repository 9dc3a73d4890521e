"""``fedser report``: regime x seed x fold macro-F1 / UA / WA from MLflow, beside seed 002's Table 2,
with a 95 % confidence interval per regime and paired tests between regimes.

Folds are the unit of replication: seeds run on the same fold share its train and test sessions,
so they are not independent. Intervals therefore average the seeds within each fold first and
take a Student t interval over the per-fold means; regimes are compared on the (seed, fold) cells
both have, with a Wilcoxon signed-rank test. Both come from scipy.
"""

from __future__ import annotations

import itertools
import json
import math
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from scipy import stats

from common.config import ALL_REGIMES
from simulations.plots import cells_interval_png
from simulations.regimes import SCORES, summary
from simulations.tracking import quiet_mlflow

# Seed 002 Table 2: mean and std F1 (%) of 5-fold leave-one-session-out on IEMOCAP, 4 classes.
TABLE_2: dict[str, tuple[float, float]] = {
    "real-central": (57.27, 0.99),  # "IEMOCAP"
    "baseline-gan": (43.05, 2.97),  # "Baseline [7]"
    "gan-central": (48.54, 3.89),  # "Proposed - Centralized"
    "gan-federated": (50.39, 3.31),  # "Proposed - Federated"
}
EXTRA = ("ua3", "pearson_r")  # seed 000's 3-class pooled UA and Pearson r of the expected valence

DEFAULT_TRAINER = "ser-cnn"  # runs logged before trainers were tagged used it
METRIC = "f1_macro"  # what intervals in the text and the paired tests are about
LEVEL = 0.95
ALPHA = 0.05  # p above this: "not distinguishable"
TEST = "wilcoxon signed-rank, two-sided"
INTERVAL = ("95 % CI: t over the k per-fold means (seeds averaged within a fold), k - 1 degrees of freedom "
            "(k = folds); undefined for a single fold")


def _key(run: Any) -> tuple[str, str]:
    return run.data.tags["regime"], run.data.tags.get("trainer", DEFAULT_TRAINER)


def run_seed(run: Any) -> int:
    """A parent run's seed: its ``seed`` tag; runs logged before seeds existed: the ``training.seed``
    param, else 0."""
    return int(run.data.tags.get("seed", run.data.params.get("training.seed", 0)))


def _parents(experiment: str) -> list[Any]:
    return mlflow.search_runs(experiment_names=[experiment], output_format="list",
                              filter_string="tags.kind = 'regime'", order_by=["attributes.start_time DESC"])


def latest_parents(experiment: str) -> dict[tuple[str, str], Any]:
    """The newest parent run of each (regime, trainer) in ``experiment``, whatever its seed."""
    latest: dict[tuple[str, str], Any] = {}
    for run in _parents(experiment):
        latest.setdefault(_key(run), run)
    return latest


def latest_seed_parents(experiment: str) -> dict[tuple[str, str, int], Any]:
    """The newest parent run of each (regime, trainer, seed) in ``experiment`` (a re-run supersedes;
    a resumed study re-opens the same parent)."""
    latest: dict[tuple[str, str, int], Any] = {}
    for run in _parents(experiment):
        latest.setdefault((*_key(run), run_seed(run)), run)
    return latest


def fold_rows(tracking_uri: str, experiment: str, regimes: Sequence[str] | None = None,
              trainers: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per (regime, trainer, seed, fold) from the newest parent run of each (regime, trainer,
    seed): ``regime``, ``trainer``, ``seed``, ``fold``, ``f1_macro``, ``ua``, ``wa`` and any further
    scores the trainer logged (seed 000: ``ua3``, ``pearson_r``).

    Of a parent's child runs only FINISHED ones with every score count (a killed study leaves
    KILLED or FAILED folds behind); a fold finished twice counts once, its newest run."""
    parents = {run.info.run_id: key for key, run in _selected_parents(tracking_uri, experiment, regimes, trainers).items()}
    newest: dict[tuple[str, str, int, int], dict[str, Any]] = {}
    for r in _fold_children(experiment):
        parent = parents.get(r.data.tags.get("mlflow.parentRunId", ""))
        if parent is None or r.info.status != "FINISHED" or not all(m in r.data.metrics for m in SCORES):
            continue
        regime, trainer, seed = parent
        fold = int(r.data.tags["fold"])
        newest.setdefault((regime, trainer, seed, fold), {
            "regime": regime, "trainer": trainer, "seed": seed, "fold": fold,
            **{m: r.data.metrics[m] for m in SCORES}, **{m: r.data.metrics[m] for m in EXTRA if m in r.data.metrics},
        })
    return sorted(newest.values(), key=lambda r: (*_regime_order(r["regime"]), r["trainer"], r["seed"], r["fold"]))


def _selected_parents(tracking_uri: str, experiment: str, regimes: Sequence[str] | None,
                      trainers: Sequence[str] | None) -> dict[tuple[str, str, int], Any]:
    """:func:`latest_seed_parents` of the regimes and trainers asked for (None: all); a missing
    experiment is one clear error."""
    quiet_mlflow()
    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        raise ValueError(f"no MLflow experiment {experiment!r} at {tracking_uri}; run `fedser study` first "
                         "or pass --tracking-uri")
    return {key: run for key, run in latest_seed_parents(experiment).items()
            if (regimes is None or key[0] in regimes) and (trainers is None or key[1] in trainers)}


def _fold_children(experiment: str) -> list[Any]:
    """Every fold run of ``experiment``, newest first."""
    return mlflow.search_runs(experiment_names=[experiment], output_format="list",
                              filter_string="tags.fold != ''", order_by=["attributes.start_time DESC"])


def _regime_order(regime: str) -> tuple[int, str]:
    order = {r: i for i, r in enumerate(ALL_REGIMES)}  # DESIGN.md's order, then any other name
    return order.get(regime, len(order)), regime


def paper_protocol(tracking_uri: str, experiment: str) -> bool:
    """True when the study ran the paper's protocol: real IEMOCAP, paper preset, all utterances."""
    mlflow.set_tracking_uri(tracking_uri)
    parents = list(latest_seed_parents(experiment).values())
    return bool(parents) and all(
        p.data.params.get("preset") == "paper" and p.data.params.get("data.root") not in (None, "None")
        and p.data.params.get("data.subset") == "all" and p.data.params.get("data.corpus") == "iemocap"
        for p in parents
    )


# ------------------------------------------------------------------------------------- statistics


def fold_interval(rows: Sequence[dict[str, Any]], metric: str = METRIC) -> tuple[float, float] | None:
    """The 95 % Student t interval over the per-fold means of ``metric`` (seeds averaged within a
    fold, k - 1 degrees of freedom); None with a single fold."""
    by_fold: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        by_fold[r["fold"]].append(float(r[metric]))
    means = [float(np.mean(v)) for v in by_fold.values()]
    if len(means) < 2:
        return None
    centre, sem = float(np.mean(means)), float(stats.sem(means))
    if sem == 0:  # identical fold means: scipy returns NaN for a zero scale
        return centre, centre
    lo, hi = stats.t.interval(LEVEL, len(means) - 1, loc=centre, scale=sem)
    return float(lo), float(hi)


def regime_stats(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = SCORES) -> list[dict[str, Any]]:
    """Per (regime, trainer), in the rows' order: ``cells`` (seed x fold rows), ``folds``, ``seeds``,
    and for each metric all rows have its mean and population std over the cells (``summary()``,
    ``<m>``, ``<m>_std``) and its 95 % interval over the folds (``<m>_ci``: (lo, hi) or None)."""
    out = []
    for s in summary(rows, metrics):
        mine = [r for r in rows if (r["regime"], r["trainer"]) == (s["regime"], s["trainer"])]
        entry: dict[str, Any] = {"regime": s["regime"], "trainer": s["trainer"], "cells": len(mine),
                                 "folds": len({r["fold"] for r in mine}), "seeds": len({r["seed"] for r in mine})}
        for m in metrics:
            if m in s:
                entry |= {m: s[m], f"{m}_std": s[f"{m}_std"], f"{m}_ci": fold_interval(mine, m)}
        out.append(entry)
    return out


def wilcoxon_p(differences: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p of paired differences (scipy's defaults: zero differences
    dropped, exact for small samples); 1.0 when every difference is zero (nothing to rank)."""
    if not any(differences):
        return 1.0
    return float(stats.wilcoxon(differences, alternative="two-sided").pvalue)


def smallest_p(n: int) -> float:
    """The smallest two-sided p the signed-rank test can give ``n`` pairs: every difference of one sign
    (asked of scipy's exact test, not from a formula)."""
    return wilcoxon_p(np.arange(1.0, n + 1))


def paired_note() -> str:
    """Why few pairs can never be 'distinguishable', with the exact figures scipy gives."""
    return (f"With fewer than 6 pairs a two-sided Wilcoxon signed-rank test cannot reach p < {ALPHA}: "
            f"the smallest p scipy's exact test gives 5 pairs is {smallest_p(5):g} (6 pairs: {smallest_p(6):g}). "
            f"'not distinguishable' = p > {ALPHA}. p-values are not corrected for the number of pairs compared, "
            "and cells of one fold share its test session, so with several seeds the pairs are not "
            "independent and p is optimistic.")


def paired_tests(rows: Sequence[dict[str, Any]], metric: str = METRIC) -> list[dict[str, Any]]:
    """Every pair of regimes with the same trainer (in the rows' order), compared on the (seed, fold)
    cells both have: ``n`` pairs, ``mean_difference`` (a - b), the Wilcoxon ``p`` and whether
    ``p <= 0.05`` (``distinguishable``). Pairs without a common cell are left out."""
    cells: dict[tuple[str, str], dict[tuple[int, int], float]] = defaultdict(dict)
    for r in rows:
        cells[r["regime"], r["trainer"]][r["seed"], r["fold"]] = float(r[metric])
    out = []
    for trainer in dict.fromkeys(t for _, t in cells):
        regimes = [g for g, t in cells if t == trainer]
        for a, b in itertools.combinations(regimes, 2):
            common = sorted(cells[a, trainer].keys() & cells[b, trainer].keys())
            if not common:
                continue
            diffs = [cells[a, trainer][c] - cells[b, trainer][c] for c in common]
            p = wilcoxon_p(diffs)
            out.append({"a": a, "b": b, "trainer": trainer, "metric": metric, "n": len(common),
                        "mean_difference": float(np.mean(diffs)), "test": TEST, "p": p,
                        "distinguishable": p <= ALPHA})
    return out


# ---------------------------------------------------------------------------------------- outputs


def _label(row: dict[str, Any]) -> str:
    return row["regime"] if row["trainer"] == DEFAULT_TRAINER else f"{row['regime']} [{row['trainer']}]"


def _paper(s: dict[str, Any]) -> tuple[float, float] | None:
    """Table 2's F1 mean and std as fractions, for the default trainer's regimes it has."""
    paper = TABLE_2.get(s["regime"]) if s["trainer"] == DEFAULT_TRAINER else None
    return (paper[0] / 100, paper[1] / 100) if paper else None


def _ci(ci: tuple[float, float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"


def _p(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else "< 0.0001"


def markdown(rows: Sequence[dict[str, Any]], matches_paper: bool) -> str:
    """The report as markdown: folds; mean ± std and 95 % CI beside Table 2; paired tests; seed 000's
    valence measures where a trainer logged them."""
    lines = ["| regime | trainer | seed | fold | macro-F1 | UA | WA |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['regime']} | {r['trainer']} | {r['seed']} | {r['fold']} | {r['f1_macro']:.3f} | {r['ua']:.3f} | "
              f"{r['wa']:.3f} |" for r in rows]
    note = "protocol matches the paper" if matches_paper else "protocol differs from the paper (for orientation only)"
    lines += ["", f"| regime | trainer | cells | folds | seeds | macro-F1 mean ± std | macro-F1 95 % CI | UA | WA | "
                  f"seed 002 Table 2 F1 ({note}) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in regime_stats(rows):
        paper = _paper(s)
        ref = f"{paper[0]:.4f} ± {paper[1]:.4f}" if paper else "-"
        lines.append(f"| {s['regime']} | {s['trainer']} | {s['cells']} | {s['folds']} | {s['seeds']} | "
                     f"{s['f1_macro']:.3f} ± {s['f1_macro_std']:.3f} | {_ci(s['f1_macro_ci'])} | "
                     f"{s['ua']:.3f} ± {s['ua_std']:.3f} | {s['wa']:.3f} ± {s['wa_std']:.3f} | {ref} |")
    lines += ["", f"Mean ± std: over all seed x fold cells (population std). {INTERVAL}."]
    pairs = paired_tests(rows)
    if pairs:
        lines += ["", "Paired macro-F1 differences on the (seed, fold) cells both regimes have:", "",
                  "| regime A | regime B | trainer | n pairs | mean difference (A − B) | Wilcoxon p | verdict |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {p['a']} | {p['b']} | {p['trainer']} | {p['n']} | {p['mean_difference']:+.3f} | {_p(p['p'])} | "
                  f"{'distinguishable' if p['distinguishable'] else 'not distinguishable'} |" for p in pairs]
        lines += ["", f"{TEST}. {paired_note()}"]
    extra = [s for s in summary(rows, (*SCORES, *EXTRA)) if all(m in s for m in EXTRA)]
    if extra:  # seed 000's valence measures (§5)
        lines += ["", "| regime | trainer | 5-class UA (split labels) | 3-class UA | Pearson r |", "|---|---|---|---|---|"]
        lines += [f"| {s['regime']} | {s['trainer']} | {s['ua']:.3f} ± {s['ua_std']:.3f} | "
                  f"{s['ua3']:.3f} ± {s['ua3_std']:.3f} | {s['pearson_r']:.3f} ± {s['pearson_r_std']:.3f} |"
                  for s in extra]
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    """``value`` with JSON's types only: numpy scalars as Python ones, tuples as lists, NaN as None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def report_json(rows: Sequence[dict[str, Any]], matches_paper: bool) -> dict[str, Any]:
    """The report as JSON-ready data: ``rows``; per (regime, trainer) cells, folds, seeds and each score's
    mean, std and 95 % CI (``regimes``, with Table 2's F1 where it has one); the paired tests
    (``pairs``); the description of the interval and of the test."""
    regimes = [{**s, "table_2_f1": _paper(s)} for s in regime_stats(rows, (*SCORES, *EXTRA))]
    return _plain({"rows": [dict(r) for r in rows], "regimes": regimes, "pairs": paired_tests(rows),
                   "interval": INTERVAL, "paired_note": f"{TEST}. {paired_note()}", "matches_paper": matches_paper})


def report_png(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Per (regime, trainer): every (seed, fold) cell's macro-F1, the mean, its 95 % CI and Table 2's F1."""
    groups = regime_stats(rows)
    return cells_interval_png(
        [_label(s) for s in groups],
        [[(r["fold"], r["seed"], r[METRIC]) for r in rows if (r["regime"], r["trainer"]) == (s["regime"], s["trainer"])]
         for s in groups],
        [s[METRIC] for s in groups], [s[f"{METRIC}_ci"] for s in groups],
        {_label(s): paper[0] for s in groups if (paper := _paper(s))}, path, metric="macro-F1")


def log_report(tracking_uri: str, experiment: str, rows: Sequence[dict[str, Any]], text: str,
               matches_paper: bool | None = None) -> str:
    """Log the markdown (report.md), the JSON (report.json) and the cells-and-intervals plot
    (report.png) as artifacts of a ``report`` run; returns its id. ``matches_paper``: for the JSON,
    read from the store (``paper_protocol``) when not given."""
    if matches_paper is None:
        matches_paper = paper_protocol(tracking_uri, experiment)
    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    assert exp is not None  # fold_rows() checked it
    with mlflow.start_run(experiment_id=exp.experiment_id, run_name="report", tags={"kind": "report"}) as run:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "report.md").write_text(text, encoding="utf-8")
            (folder / "report.json").write_text(json.dumps(report_json(rows, matches_paper), indent=2,
                                                           allow_nan=False), encoding="utf-8")
            report_png(rows, folder / "report.png")
            for name in ("report.md", "report.json", "report.png"):
                mlflow.log_artifact(str(folder / name))
        return run.info.run_id
