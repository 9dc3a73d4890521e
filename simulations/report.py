"""``fedser report``: regime x fold macro-F1 / UA / WA from MLflow, beside seed 002's Table 2."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow

from common.config import ALL_REGIMES
from simulations.plots import bar_chart_png
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


def _key(run: Any) -> tuple[str, str]:
    return run.data.tags["regime"], run.data.tags.get("trainer", DEFAULT_TRAINER)


def latest_parents(experiment: str) -> dict[tuple[str, str], Any]:
    """The newest parent run of each (regime, trainer) in ``experiment`` (a re-run supersedes)."""
    parents = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                                 filter_string="tags.kind = 'regime'", order_by=["attributes.start_time DESC"])
    latest: dict[tuple[str, str], Any] = {}
    for run in parents:
        latest.setdefault(_key(run), run)
    return latest


def fold_rows(tracking_uri: str, experiment: str, regimes: Sequence[str] | None = None,
              trainers: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per fold of each (regime, trainer)'s newest run: ``regime``, ``trainer``, ``fold``,
    ``f1_macro``, ``ua``, ``wa`` and any further scores the trainer logged (seed 000: ``ua3``,
    ``pearson_r``)."""
    quiet_mlflow()
    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        raise ValueError(f"no MLflow experiment {experiment!r} at {tracking_uri}; run `fedser study` first "
                         "or pass --tracking-uri")
    parents = {run.info.run_id for (regime, trainer), run in latest_parents(experiment).items()
               if (regimes is None or regime in regimes) and (trainers is None or trainer in trainers)}
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                              filter_string="tags.fold != ''")
    rows = [
        {"regime": r.data.tags["regime"], "trainer": r.data.tags.get("trainer", DEFAULT_TRAINER),
         "fold": int(r.data.tags["fold"]), **{m: r.data.metrics[m] for m in SCORES},
         **{m: r.data.metrics[m] for m in EXTRA if m in r.data.metrics}}
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") in parents and all(m in r.data.metrics for m in SCORES)
    ]
    order = {r: i for i, r in enumerate(ALL_REGIMES)}  # DESIGN.md's order, then any other name
    return sorted(rows, key=lambda r: (order.get(r["regime"], len(order)), r["regime"], r["trainer"], r["fold"]))


def paper_protocol(tracking_uri: str, experiment: str) -> bool:
    """True when the study ran the paper's protocol: real IEMOCAP, paper preset, all utterances."""
    mlflow.set_tracking_uri(tracking_uri)
    parents = list(latest_parents(experiment).values())
    return bool(parents) and all(
        p.data.params.get("preset") == "paper" and p.data.params.get("data.root") not in (None, "None")
        and p.data.params.get("data.subset") == "all" and p.data.params.get("data.corpus") == "iemocap"
        for p in parents
    )


def _label(row: dict[str, Any]) -> str:
    return row["regime"] if row["trainer"] == DEFAULT_TRAINER else f"{row['regime']} [{row['trainer']}]"


def markdown(rows: Sequence[dict[str, Any]], matches_paper: bool) -> str:
    """The report as a markdown table: folds, then mean ± std beside Table 2."""
    lines = ["| regime | trainer | fold | macro-F1 | UA | WA |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['regime']} | {r['trainer']} | {r['fold']} | {r['f1_macro']:.3f} | {r['ua']:.3f} | {r['wa']:.3f} |"
              for r in rows]
    note = "protocol matches the paper" if matches_paper else "protocol differs from the paper (for orientation only)"
    lines += ["", f"| regime | trainer | macro-F1 mean ± std | UA | WA | seed 002 Table 2 F1 ({note}) |",
              "|---|---|---|---|---|---|"]
    stats = summary(rows, (*SCORES, *EXTRA))
    for s in stats:
        paper = TABLE_2.get(s["regime"]) if s["trainer"] == DEFAULT_TRAINER else None
        ref = f"{paper[0] / 100:.4f} ± {paper[1] / 100:.4f}" if paper else "-"
        lines.append(f"| {s['regime']} | {s['trainer']} | {s['f1_macro']:.3f} ± {s['f1_macro_std']:.3f} | "
                     f"{s['ua']:.3f} ± {s['ua_std']:.3f} | {s['wa']:.3f} ± {s['wa_std']:.3f} | {ref} |")
    extra = [s for s in stats if "pearson_r" in s]
    if extra:  # seed 000's valence measures (§5)
        lines += ["", "| regime | trainer | 5-class UA (split labels) | 3-class UA | Pearson r |", "|---|---|---|---|---|"]
        lines += [f"| {s['regime']} | {s['trainer']} | {s['ua']:.3f} ± {s['ua_std']:.3f} | "
                  f"{s['ua3']:.3f} ± {s['ua3_std']:.3f} | {s['pearson_r']:.3f} ± {s['pearson_r_std']:.3f} |"
                  for s in extra]
    return "\n".join(lines) + "\n"


def log_report(tracking_uri: str, experiment: str, rows: Sequence[dict[str, Any]], text: str) -> str:
    """Log the markdown table and a bar chart as artifacts of a ``report`` run; returns its id."""
    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    assert exp is not None  # fold_rows() checked it
    with mlflow.start_run(experiment_id=exp.experiment_id, run_name="report", tags={"kind": "report"}) as run:
        with tempfile.TemporaryDirectory() as tmp:
            md = Path(tmp) / "report.md"
            md.write_text(text, encoding="utf-8")
            mlflow.log_artifact(str(md))
            stats = summary(rows)
            mlflow.log_artifact(str(bar_chart_png(
                [_label(s) for s in stats], {m: [s[m] for s in stats] for m in SCORES},
                {m: [s[f"{m}_std"] for s in stats] for m in SCORES},
                {_label(s): TABLE_2[s["regime"]][0] / 100 for s in stats
                 if s["regime"] in TABLE_2 and s["trainer"] == DEFAULT_TRAINER},
                Path(tmp) / "report.png")))
        return run.info.run_id
