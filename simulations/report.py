"""``fedser report``: regime x seed x fold macro-F1 / UA / WA from MLflow, with a 95 % confidence
interval per regime, paired tests between regimes, and each paper's headline table beside ours with
the protocol verdict (simulations/papers.py: which protocol fields of the runs differ from the paper's).

Folds are the unit of replication: seeds run on the same fold share its train and test sessions,
so they are not independent. Intervals therefore average the seeds within each fold first and
take a Student t interval over the per-fold means; regimes are compared on the (seed, fold) cells
both have, with a Wilcoxon signed-rank test. Both come from scipy.

Generators: the audit figures (common/audit.py) of every generator of the newest parent runs, one
row each (:func:`generator_rows`): gan-federated's per session node on the parent run
(``audit.Session<N>.<figure>``), the other GAN regimes' per fold on the fold runs (``audit.<figure>``).
``fedser audit RUN_ID`` computes them afterwards for runs that lack them (:func:`generator_runs`,
:func:`server.tracking.log_audit`, simulations/stored.py).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import tempfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from scipy import stats

from common.audit import AUDIT_KEYS
from common.config import ALL_REGIMES, CENTRAL_REGIMES, PRIVATE_REGIMES
from common.metrics import mean_std
from common.regimes import SCORES, summary
from server.plots import Curve, CurvePanel, Panel, cells_interval_png, curves_png, dot_panels_png
from server.tracking import quiet_mlflow
from simulations.papers import Comparison, compare

EXTRA = ("ua3", "pearson_r")  # seed 000's 3-class pooled UA and Pearson r of the expected valence

DEFAULT_TRAINER = "ser-cnn"  # runs logged before trainers were tagged used it
PARTITION = "federation.partition"  # the parent run's param (runs logged before partitions: "session")
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


def latest_seed_parents(experiment: str, regimes: Sequence[str] | None = None) -> dict[tuple[str, str, int], Any]:
    """The newest parent run of each (regime, trainer, seed) in ``experiment`` (a re-run supersedes;
    a resumed study re-opens the same parent).

    A federated regime's rows depend on ``federation.partition``, which the key does not hold: an
    experiment whose runs of one federated (regime, trainer) used different partitions is refused
    rather than one partition silently replacing the other (of ``regimes``; None: all)."""
    latest: dict[tuple[str, str, int], Any] = {}
    partitions: dict[tuple[str, str], set[str]] = defaultdict(set)
    for run in _parents(experiment):
        latest.setdefault((*_key(run), run_seed(run)), run)
        if _key(run)[0] not in CENTRAL_REGIMES and (regimes is None or _key(run)[0] in regimes):
            partitions[_key(run)].add(run.data.params.get(PARTITION, "session"))
    for (regime, trainer), used in partitions.items():
        if len(used) > 1:
            raise ValueError(f"experiment {experiment!r} holds {regime} [{trainer}] runs of partitions "
                             f"{', '.join(sorted(used))}: their folds are not the same rows; give each partition "
                             "its own tracking.experiment (or delete the other runs) and report them apart")
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
    return {key: run for key, run in latest_seed_parents(experiment, regimes).items()
            if (regimes is None or key[0] in regimes) and (trainers is None or key[1] in trainers)}


def _fold_children(experiment: str) -> list[Any]:
    """Every fold run of ``experiment``, newest first."""
    return mlflow.search_runs(experiment_names=[experiment], output_format="list",
                              filter_string="tags.fold != ''", order_by=["attributes.start_time DESC"])


def _regime_order(regime: str) -> tuple[int, str]:
    order = {r: i for i, r in enumerate(ALL_REGIMES)}  # DESIGN.md's order, then any other name
    return order.get(regime, len(order)), regime


def comparisons(tracking_uri: str, experiment: str) -> list[Comparison]:
    """Each paper whose trainers the newest parent runs used, with the protocol verdict over those
    runs' logged configs (MLflow params) and the paper's headline cells that apply to them."""
    runs: dict[str, list[dict[str, str]]] = defaultdict(list)
    for (_, trainer, _), run in _selected_parents(tracking_uri, experiment, None, None).items():
        runs[trainer].append(dict(run.data.params))
    return compare(runs)


# -------------------------------------------------------------------------------------- generators


def audit_figures(metrics: Mapping[str, float], name: str | None = None) -> dict[str, float]:
    """The audit figures among a run's metrics, by key of :data:`common.audit.AUDIT_KEYS`: those of
    its fold generator (``audit.<figure>``, ``name`` None) or of generator ``name`` (``audit.<name>.<figure>``)."""
    prefix = "audit." if name is None else f"audit.{name}."
    return {k: float(metrics[prefix + k]) for k in AUDIT_KEYS if prefix + k in metrics}


def named_audits(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """``audit.<name>.<figure>`` metrics of a parent run (gan-federated's generators), by name."""
    names = {key[len("audit."):].rpartition(".")[0] for key in metrics if key.startswith("audit.")}
    return {name: audit_figures(metrics, name) for name in names if name and audit_figures(metrics, name)}


def generator_order(name: str) -> tuple[str, int, str]:
    """``Session2`` before ``Session10``: the name's letters, then its number."""
    found = re.fullmatch(r"(.*?)(\d+)", name)
    return (found[1], int(found[2]), name) if found else (name, -1, name)


def generator_rows(tracking_uri: str, experiment: str, regimes: Sequence[str] | None = None,
                   trainers: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per audited generator of the newest parent run of each (regime, trainer, seed):
    ``regime``, ``trainer``, ``seed``, ``generator`` (``Session3``: on the parent run; ``fold3``:
    the newest FINISHED, not skipped, run of fold 3) and every audit figure it has (common/audit.py's
    keys). Generators without any audit figure have no row. Sorted by regime (DESIGN.md's order),
    trainer, seed and generator."""
    parents = _selected_parents(tracking_uri, experiment, regimes, trainers)
    rows: list[dict[str, Any]] = []
    for (regime, trainer, seed), run in parents.items():
        rows += [{"regime": regime, "trainer": trainer, "seed": seed, "generator": name, **figures}
                 for name, figures in named_audits(run.data.metrics).items()]
    keys = {run.info.run_id: key for key, run in parents.items()}
    newest: dict[tuple[str, int], Any] = {}
    for r in _fold_children(experiment):
        parent = r.data.tags.get("mlflow.parentRunId", "")
        if parent in keys and r.info.status == "FINISHED" and "skipped" not in r.data.tags:
            newest.setdefault((parent, int(r.data.tags["fold"])), r)
    for (parent, fold), r in newest.items():
        if figures := audit_figures(r.data.metrics):
            regime, trainer, seed = keys[parent]
            rows.append({"regime": regime, "trainer": trainer, "seed": seed, "generator": f"fold{fold}", **figures})
    return sorted(rows, key=lambda r: (*_regime_order(r["regime"]), r["trainer"], r["seed"],
                                       generator_order(r["generator"])))


# What a regime's parent run may log about privacy: training.dp's epsilon (common/privacy.py) and the
# speaker-gender attack on its generators (common/attacks.py).
GENDER_KEYS = ("gender_auc", "gender_auc_low", "gender_auc_high", "gender_accuracy", "gender_chance",
               "gender_advantage", "gender_nodes")


def privacy_rows(tracking_uri: str, experiment: str, regimes: Sequence[str] | None = None,
                 trainers: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per newest parent run of each (regime, trainer, seed) that logged privacy figures:
    ``epsilon`` (training.dp: the most any node or fold spent) and the gender attack's figures."""
    parents = _selected_parents(tracking_uri, experiment, regimes, trainers)
    spent: dict[str, list[float]] = {}
    for r in _fold_children(experiment):
        if "epsilon" in r.data.metrics:
            spent.setdefault(r.data.tags.get("mlflow.parentRunId", ""), []).append(r.data.metrics["epsilon"])
    rows = []
    for (regime, trainer, seed), run in parents.items():
        m = run.data.metrics
        eps = [v for k, v in m.items() if k.startswith("epsilon_")] + spent.get(run.info.run_id, [])
        row = {k: m[k] for k in GENDER_KEYS if k in m} | ({"epsilon": max(eps)} if eps else {})
        if row:
            rows.append({"regime": regime, "trainer": trainer, "seed": seed, **row})
    return sorted(rows, key=lambda r: (*_regime_order(r["regime"]), r["trainer"], r["seed"]))


def privacy_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The privacy table: epsilon spent and the gender attack (AUC with its interval, accuracy beside
    chance, advantage) per regime and seed; empty when nothing was logged."""
    if not rows:
        return ""
    lines = ["Privacy (training.dp's epsilon; the speaker-gender attacks on generators and updates, common/attacks.py):", "",
             "| regime | seed | epsilon | gender AUC (95 % CI) | accuracy (chance) | advantage | nodes |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {_label(r)} | {r['seed']} | " + " | ".join(_privacy_cells(r)) + " |" for r in rows]
    return "\n".join([*lines, "", PRIVACY_LEGEND]) + "\n"


PRIVACY_LEGEND = (
    "epsilon inf: no differential privacy. Gender AUC: how well the attack's score separates the one-speaker nodes "
    "by gender, chance 0.5, interval a bootstrap over nodes (the score: gan-federated, the mean P(female) of a node's "
    "generated samples under a classifier trained on public speech; fedavg and the other strategies, the mean "
    "P(female) of its first-layer updates under a classifier trained on shadow clients' updates); accuracy at "
    "P = 0.5 beside the larger gender's share; advantage: mean 2 P(true gender) - 1, chance 0.")


def _privacy_cells(r: dict[str, Any]) -> list[str]:
    """A privacy row's epsilon spent, AUC with interval, accuracy (chance), advantage and nodes."""
    auc = f"{r['gender_auc']:.3f} [{r['gender_auc_low']:.3f}, {r['gender_auc_high']:.3f}]" if "gender_auc" in r else "-"
    acc = f"{r['gender_accuracy']:.3f} ({r['gender_chance']:.3f})" if "gender_accuracy" in r else "-"
    nodes = f"{r['gender_nodes']:.0f}" if "gender_nodes" in r else "-"
    eps = f"{r['epsilon']:.3g}" if "epsilon" in r else "inf"
    return [eps, auc, acc, _figure(r.get("gender_advantage")), nodes]


# ------------------------------------------------------------------------ the privacy-utility curve


def budget_rows(tracking_uri: str, budgets: Sequence[tuple[float, str]]) -> tuple[list[dict[str, Any]],
                                                                                  list[dict[str, Any]]]:
    """A study's ``epsilons`` axis read back, ``budgets`` its (epsilon, experiment) pairs (an
    experiment not run yet is left out): per (budget, regime, trainer) :func:`regime_stats`, and per
    (budget, regime, trainer, seed) :func:`privacy_rows`, each with ``budget``."""
    quiet_mlflow()
    mlflow.set_tracking_uri(tracking_uri)
    scores: list[dict[str, Any]] = []
    attacks: list[dict[str, Any]] = []
    for budget, experiment in budgets:
        if mlflow.get_experiment_by_name(experiment) is None:
            continue
        scores += [{"budget": budget, **s} for s in regime_stats(fold_rows(tracking_uri, experiment))]
        attacks += [{"budget": budget, **r} for r in privacy_rows(tracking_uri, experiment) if "gender_auc" in r]
    return scores, attacks


def _budget(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:g}"


def budget_markdown(scores: Sequence[dict[str, Any]], attacks: Sequence[dict[str, Any]]) -> str:
    """The privacy-utility tables: macro-F1 (mean, 95 % CI) per regime and budget, then the gender
    attack per regime, seed and budget."""
    budgets = sorted({s["budget"] for s in scores}, reverse=True)
    labels = list(dict.fromkeys(_label(s) for s in scores))
    cell = {(_label(s), s["budget"]): f"{s[METRIC]:.3f} {_ci(s[f'{METRIC}_ci'])}" for s in scores}
    lines = ["Privacy-utility: macro-F1 mean (95 % CI over folds) at each budget training.dp.epsilon:", "",
             "| regime | " + " | ".join(f"ε = {_budget(b)}" for b in budgets) + " |", "|---" * (1 + len(budgets)) + "|"]
    lines += [f"| {label} | " + " | ".join(cell.get((label, b), "-") for b in budgets) + " |" for label in labels]
    lines += ["", "A regime training.dp does not cover (real-central, baseline-gan) runs at the largest budget only."]
    if attacks:
        lines += ["", "The speaker-gender attacks at each budget:", "",
                  "| regime | seed | budget | epsilon spent | gender AUC (95 % CI) | accuracy (chance) | advantage | nodes |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {_label(r)} | {r['seed']} | {_budget(r['budget'])} | " + " | ".join(_privacy_cells(r)) + " |"
                  for r in sorted(attacks, key=lambda r: (_label(r), r["seed"], -r["budget"]))]
        lines += ["", PRIVACY_LEGEND]
    return "\n".join(lines) + "\n"


def budget_png(scores: Sequence[dict[str, Any]], attacks: Sequence[dict[str, Any]], path: Path) -> Path:
    """Macro-F1 (mean, 95 % CI) per regime, and each attack's AUC (95 % CI) and accuracy per regime
    and seed, against the budget (:func:`server.plots.curves_png`); the regimes training.dp does
    not cover as dotted levels."""
    groups = {_label(s): s["regime"] not in PRIVATE_REGIMES for s in scores}  # label -> flat
    f1 = [Curve(label, [(s["budget"], s[METRIC], s[f"{METRIC}_ci"]) for s in scores if _label(s) == label], flat)
          for label, flat in groups.items()]
    keys = list(dict.fromkeys((_label(r), r["seed"]) for r in attacks))
    mine = [[r for r in attacks if (_label(r), r["seed"]) == key] for key in keys]
    name = [f"{label} seed {seed}" for label, seed in keys]
    auc = [Curve(n, [(r["budget"], r["gender_auc"], (r["gender_auc_low"], r["gender_auc_high"])) for r in rs])
           for n, rs in zip(name, mine, strict=True)]
    acc = [Curve(n, [(r["budget"], r["gender_accuracy"], None) for r in rs if "gender_accuracy" in r])
           for n, rs in zip(name, mine, strict=True)]
    chance = {r["gender_chance"] for r in attacks if "gender_chance" in r}
    panels = [CurvePanel("macro-F1", f1)]
    if attacks:
        panels += [CurvePanel("gender attack AUC (chance 0.5)", auc, 0.5),
                   CurvePanel("gender attack accuracy" + (" (chance dashed)" if len(chance) == 1 else ""), acc,
                              chance.pop() if len(chance) == 1 else None)]
    return curves_png(panels, path, xlabel="budget ε (training.dp.epsilon)")


def budget_json(scores: Sequence[dict[str, Any]], attacks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """:func:`budget_rows` JSON-ready, each budget as text ("inf", "3")."""
    return _plain({"scores": [dict(s, budget=f"{s['budget']:g}") for s in scores],
                   "attacks": [dict(a, budget=f"{a['budget']:g}") for a in attacks]})


def log_budget_report(experiment_id: str, scores: Sequence[dict[str, Any]], attacks: Sequence[dict[str, Any]],
                      text: str) -> str:
    """Log privacy_utility.md, .json and .png as artifacts of a ``report`` run of experiment
    ``experiment_id`` (the axis's own, :class:`server.tracking.Tracker`'s), in the current tracking
    store; returns the run's id."""
    data = budget_json(scores, attacks)
    with mlflow.start_run(experiment_id=experiment_id, run_name="privacy-utility report", tags={"kind": "report"}) as run:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "privacy_utility.md").write_text(text, encoding="utf-8")
            (folder / "privacy_utility.json").write_text(json.dumps(data, indent=2, allow_nan=False), encoding="utf-8")
            budget_png(scores, attacks, folder / "privacy_utility.png")
            for name in ("privacy_utility.md", "privacy_utility.json", "privacy_utility.png"):
                mlflow.log_artifact(str(folder / name))
        return run.info.run_id


def generator_runs(run_id: str) -> dict[str, str]:
    """Which run each generator :func:`server.tracking.stored_generators` finds for ``run_id``
    belongs to, by the same names: the run's own (``Session<N>``; ``fold<N>`` when ``run_id`` is a
    fold run), and ``fold<N>`` -> the newest FINISHED fold run with a stored generator. Uses the
    current tracking URI; an unknown run is one clear error."""
    client = mlflow.MlflowClient()
    run = find_run(run_id)

    def names(rid: str) -> list[str]:
        return [Path(f.path).stem.removeprefix("generator_") for f in client.list_artifacts(rid, "checkpoints")
                if Path(f.path).name.startswith("generator_")]

    own = {f"fold{run.data.tags['fold']}" if "fold" in run.data.tags else name: run_id for name in names(run_id)}
    children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}' "
                                  "and attributes.status = 'FINISHED'", order_by=["attributes.start_time ASC"])
    for child in children:  # a fold finished twice: its newest run, as stored_generators() decides
        if names(child.info.run_id):
            own[f"fold{child.data.tags['fold']}"] = child.info.run_id
    return own


def find_run(run_id: str) -> Any:
    """Run ``run_id`` of the current tracking store; ValueError (one line) when there is none."""
    try:
        return mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        raise ValueError(f"no MLflow run {run_id!r} at {mlflow.get_tracking_uri()}; copy the run id from "
                         "`mlflow ui` or the study's output, or pass --tracking-uri") from None



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
    ``<m>``, ``<m>_std``) and its 95 % interval over the folds (``<m>_ci``: (lo, hi) or None);
    ``f1_macro_seed_spread``: :func:`seed_spread` (None with one seed)."""
    out = []
    for s in summary(rows, metrics):
        mine = [r for r in rows if (r["regime"], r["trainer"]) == (s["regime"], s["trainer"])]
        entry: dict[str, Any] = {"regime": s["regime"], "trainer": s["trainer"], "cells": len(mine),
                                 "folds": len({r["fold"] for r in mine}), "seeds": len({r["seed"] for r in mine})}
        for m in metrics:
            if m in s:
                entry |= {m: s[m], f"{m}_std": s[f"{m}_std"], f"{m}_ci": fold_interval(mine, m)}
        entry[f"{METRIC}_seed_spread"] = seed_spread(mine)
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


BOOTSTRAP = 10_000  # resamples of the paired ratio's interval
RATIO_INTERVAL = ("ratio A/B: mean of A over mean of B on the common cells; its 95 % interval is a paired "
                  f"percentile bootstrap ({BOOTSTRAP:,} resamples) over folds, each resampled fold carrying all "
                  "its seeds (cells of one fold are not independent)")


def ratio_interval(a: Mapping[tuple[int, int], float], b: Mapping[tuple[int, int], float],
                   cells: Sequence[tuple[int, int]], seed: int = 0) -> tuple[float, tuple[float, float]]:
    """mean(a) / mean(b) over ``cells`` ((seed, fold) keys both have) and its 95 % paired bootstrap
    interval: folds are drawn with replacement, each bringing its cells of both regimes."""
    folds = sorted({f for _, f in cells})
    by_fold = np.array([[sum(a[c] for c in cells if c[1] == f), sum(b[c] for c in cells if c[1] == f),
                         sum(c[1] == f for c in cells)] for f in folds])  # (k, 3): sum a, sum b, cells
    ratio = float(by_fold[:, 0].sum() / by_fold[:, 1].sum())
    draws = np.random.default_rng(seed).integers(0, len(folds), size=(BOOTSTRAP, len(folds)))
    sums = by_fold[draws].sum(axis=1)  # (BOOTSTRAP, 3); the cell counts cancel in the ratio of means
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = sums[:, 0] / sums[:, 1]
    lo, hi = np.nanpercentile(ratios, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return ratio, (float(lo), float(hi))


def seed_spread(rows: Sequence[dict[str, Any]], metric: str = METRIC) -> float | None:
    """How much a fold's result moves with the seed: the population std of ``metric`` over seeds
    within each fold, averaged over folds; None with fewer than two seeds in every fold. Another
    CPU's float kernels move a GAN regime like another seed does, so this is its robustness."""
    by_fold: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        by_fold[r["fold"]].append(float(r[metric]))
    spreads = [float(np.std(v)) for v in by_fold.values() if len(v) > 1]
    return float(np.mean(spreads)) if spreads else None


def paired_tests(rows: Sequence[dict[str, Any]], metric: str = METRIC) -> list[dict[str, Any]]:
    """Every pair of regimes with the same trainer (in the rows' order), compared on the (seed, fold)
    cells both have: ``n`` pairs, ``mean_difference`` (a - b), ``ratio`` (mean a / mean b) with its
    bootstrap ``ratio_ci`` (:func:`ratio_interval`), the Wilcoxon ``p`` and whether ``p <= 0.05``
    (``distinguishable``). Pairs without a common cell are left out."""
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
            ratio, ratio_ci = ratio_interval(cells[a, trainer], cells[b, trainer], common)
            out.append({"a": a, "b": b, "trainer": trainer, "metric": metric, "n": len(common),
                        "mean_difference": float(np.mean(diffs)), "ratio": ratio, "ratio_ci": ratio_ci,
                        "test": TEST, "p": p, "distinguishable": p <= ALPHA})
    return out


# ---------------------------------------------------------------------------------------- outputs


def _label(row: dict[str, Any]) -> str:
    return row["regime"] if row["trainer"] == DEFAULT_TRAINER else f"{row['regime']} [{row['trainer']}]"


def paper_rows(rows: Sequence[dict[str, Any]], comparison: Comparison) -> list[dict[str, Any]]:
    """The paper's headline cells beside ours: ``regime``, ``trainer``, ``label`` (the paper's row),
    ``metric``, ``paper`` and ``paper_std`` (fractions; std None where the paper gives none), and our
    ``ours``/``ours_std`` (mean and population std over the seed x fold cells; None without cells) and
    ``cells``."""
    out = []
    for r in comparison.results:
        mine = [float(x[r.metric]) for x in rows if (x["regime"], x["trainer"]) == (r.regime, r.trainer)
                and r.metric in x]
        out.append({"regime": r.regime, "trainer": r.trainer, "label": r.label, "metric": r.metric,
                    "paper": r.mean / 100, "paper_std": None if r.std is None else r.std / 100,
                    **dict(zip(("ours", "ours_std"), mean_std(mine) if mine else (None, None), strict=True)),
                    "cells": len(mine)})
    return out


def _ref(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def papers_markdown(rows: Sequence[dict[str, Any]], comps: Sequence[Comparison]) -> str:
    """Per paper the study's trainers come from: its headline table beside ours, with the verdict."""
    lines: list[str] = []
    for c in comps:
        p = c.verdict.paper
        lines += [f"Seed {p.seed} ({p.title}), {p.table}: {c.verdict.text()}.", ""]
        if p.note:
            lines += [p.note, ""]
        lines += ["| regime | trainer | paper's row | metric | ours (mean ± std) | cells | paper |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['regime']} | {r['trainer']} | {r['label']} | {r['metric']} | {_ref(r['ours'], r['ours_std'], 3)} | "
                  f"{r['cells']} | {_ref(r['paper'], r['paper_std'], 4)} |" for r in paper_rows(rows, c)]
        lines.append("")
    return "\n".join(lines)


def _ci(ci: tuple[float, float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"


def _p(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else "< 0.0001"


def markdown(rows: Sequence[dict[str, Any]], comps: Sequence[Comparison] = (),
             generators: Sequence[dict[str, Any]] | None = None, privacy: Sequence[dict[str, Any]] = ()) -> str:
    """The report as markdown: folds; mean ± std and 95 % CI; paired tests; seed 000's valence
    measures where a trainer logged them; each paper's headline table beside ours with its protocol
    verdict (``comps``, :func:`comparisons`); with ``generators`` (:func:`generator_rows`) the
    generators table (:func:`generators_markdown`)."""
    lines = ["| regime | trainer | seed | fold | macro-F1 | UA | WA |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['regime']} | {r['trainer']} | {r['seed']} | {r['fold']} | {r['f1_macro']:.3f} | {r['ua']:.3f} | "
              f"{r['wa']:.3f} |" for r in rows]
    lines += ["", "| regime | trainer | cells | folds | seeds | macro-F1 mean ± std | macro-F1 95 % CI | UA | WA "
              "| seed spread |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {s['regime']} | {s['trainer']} | {s['cells']} | {s['folds']} | {s['seeds']} | "
              f"{s['f1_macro']:.3f} ± {s['f1_macro_std']:.3f} | {_ci(s['f1_macro_ci'])} | "
              f"{s['ua']:.3f} ± {s['ua_std']:.3f} | {s['wa']:.3f} ± {s['wa_std']:.3f} | "
              f"{_figure(s['f1_macro_seed_spread'])} |" for s in regime_stats(rows)]
    lines += ["", f"Mean ± std: over all seed x fold cells (population std). {INTERVAL}. Seed spread: macro-F1's "
              "std over seeds within a fold, averaged over folds (- with one seed)."]
    pairs = paired_tests(rows)
    if pairs:
        lines += ["", "Paired macro-F1 differences on the (seed, fold) cells both regimes have:", "",
                  "| regime A | regime B | trainer | n pairs | mean difference (A − B) | ratio A/B (95 % CI) "
                  "| Wilcoxon p | verdict |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {p['a']} | {p['b']} | {p['trainer']} | {p['n']} | {p['mean_difference']:+.3f} | "
                  f"{p['ratio']:.3f} {_ci(p['ratio_ci'])} | {_p(p['p'])} | "
                  f"{'distinguishable' if p['distinguishable'] else 'not distinguishable'} |" for p in pairs]
        lines += ["", f"{TEST}. {paired_note()} {RATIO_INTERVAL}."]
    extra = [s for s in summary(rows, (*SCORES, *EXTRA)) if all(m in s for m in EXTRA)]
    if extra:  # seed 000's valence measures (§5)
        lines += ["", "| regime | trainer | 5-class UA (split labels) | 3-class UA | Pearson r |", "|---|---|---|---|---|"]
        lines += [f"| {s['regime']} | {s['trainer']} | {s['ua']:.3f} ± {s['ua_std']:.3f} | "
                  f"{s['ua3']:.3f} ± {s['ua3_std']:.3f} | {s['pearson_r']:.3f} ± {s['pearson_r_std']:.3f} |"
                  for s in extra]
    if comps:
        lines += ["", papers_markdown(rows, comps).rstrip("\n")]
    text = "\n".join(lines) + "\n"
    text = text if generators is None else f"{text}\n{generators_markdown(generators)}"
    return f"{text}\n{privacy_markdown(privacy)}" if privacy else text


# The generators table's columns: (audit figure, header). ``diversity_generated`` (what a server
# without data computes alone) is in the JSON only.
GENERATOR_COLUMNS: tuple[tuple[str, str], ...] = (
    ("gan_test", "GAN-test"), ("gan_train", "GAN-train"), ("real_train", "real-train"), ("fd", "FD"),
    ("fd_real", "FD real"), ("diversity", "diversity"), ("ct", "C_T"), ("mia_auc", "MIA AUC"),
    ("mia_tpr_1fpr", "TPR@1%FPR"))
NO_GENERATORS = ("Generators: no run of this experiment has generator audit figures (GAN regimes log them "
                 "with `audit.enabled`; `fedser audit RUN_ID` computes them for an earlier run).")
GENERATOR_LEGEND = (
    "GAN-test: accuracy of a classifier trained on the generator's real training utterances, on its samples. "
    "GAN-train / real-train: macro-F1 on held-out utterances of a classifier trained on generated / real data. "
    "FD: class-conditional Fréchet distance, generated vs real training patches (FD real: held-out vs training "
    "patches, the floor of sampling noise). diversity: spread of generated over real patches (1 = as diverse, "
    "near 0 = mode collapse). C_T << 0: samples closer to the training data than unseen data is (copying). "
    "MIA AUC / TPR@1%FPR: a distance-based membership attack (0.5 / 0.01 = no leak). Means ignore missing "
    "(-) figures.")


def _figure(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def generator_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (regime, trainer), in the rows' order: ``generators`` (how many) and the mean of each
    audit figure over its generators that have a finite value (NaN when none has)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["regime"], r["trainer"]), []).append(r)
    out = []
    for (regime, trainer), mine in groups.items():
        entry: dict[str, Any] = {"regime": regime, "trainer": trainer, "generators": len(mine)}
        for key in AUDIT_KEYS:
            values = [float(r[key]) for r in mine if key in r and math.isfinite(float(r[key]))]
            entry[key] = float(np.mean(values)) if values else float("nan")
        out.append(entry)
    return out


def generators_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The generators table (a row per generator, 3 decimals, - where a figure is missing), a mean
    line per regime and a legend; one line when there is no row."""
    if not rows:
        return NO_GENERATORS + "\n"
    heads = [h for _, h in GENERATOR_COLUMNS]
    lines = ["Generators (generator audit, common/audit.py):", "",
             "| regime | seed | generator | " + " | ".join(heads) + " |", "|---" * (3 + len(heads)) + "|"]
    lines += [f"| {_label(r)} | {r['seed']} | {r['generator']} | "
              + " | ".join(_figure(r.get(k)) for k, _ in GENERATOR_COLUMNS) + " |" for r in rows]
    lines += [""] + [f"Mean over the {s['generators']} generator(s) of {_label(s)}: "
                     + ", ".join(f"{h} {_figure(s[k])}" for k, h in GENERATOR_COLUMNS) + "."
                     for s in generator_summary(rows)]
    lines += ["", GENERATOR_LEGEND]
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


def papers_json(rows: Sequence[dict[str, Any]], comps: Sequence[Comparison]) -> list[dict[str, Any]]:
    """Per compared paper: ``seed``, ``title``, ``table``, ``note``, ``matches``, ``verdict`` (the
    text), ``differences`` (key, our values, the paper's) and ``rows`` (:func:`paper_rows`)."""
    return [{"seed": c.verdict.paper.seed, "title": c.verdict.paper.title, "table": c.verdict.paper.table,
             "note": c.verdict.paper.note, "matches": c.verdict.matches, "verdict": c.verdict.text(),
             "differences": [{"key": d.key, "ours": list(d.ours), "paper": d.paper} for d in c.verdict.differences],
             "rows": paper_rows(rows, c)} for c in comps]


def report_json(rows: Sequence[dict[str, Any]], comps: Sequence[Comparison] = (),
                generators: Sequence[dict[str, Any]] = (), privacy: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The report as JSON-ready data: ``rows``; per (regime, trainer) cells, folds, seeds and each score's
    mean, std and 95 % CI (``regimes``); the paired tests (``pairs``); the description of the interval
    and of the test; each compared paper with its verdict and headline cells (``papers``,
    :func:`papers_json`); the audited ``generators`` (:func:`generator_rows`) and their means per
    regime (``generator_regimes``; NaN -> null)."""
    return _plain({"rows": [dict(r) for r in rows], "regimes": regime_stats(rows, (*SCORES, *EXTRA)),
                   "pairs": paired_tests(rows), "interval": INTERVAL, "paired_note": f"{TEST}. {paired_note()}",
                   "papers": papers_json(rows, comps), "generators": [dict(g) for g in generators],
                   "generator_regimes": generator_summary(generators), "privacy": [dict(p) for p in privacy]})


def report_png(rows: Sequence[dict[str, Any]], path: Path, comps: Sequence[Comparison] = ()) -> Path:
    """Per (regime, trainer): every (seed, fold) cell's macro-F1, the mean, its 95 % CI and the
    paper's macro-F1 where its headline table has one (seed 002's Table 2)."""
    groups = regime_stats(rows)
    papers = {(r.regime, r.trainer): r.mean / 100 for c in comps for r in c.results if r.metric == METRIC}
    return cells_interval_png(
        [_label(s) for s in groups],
        [[(r["fold"], r["seed"], r[METRIC]) for r in rows if (r["regime"], r["trainer"]) == (s["regime"], s["trainer"])]
         for s in groups],
        [s[METRIC] for s in groups], [s[f"{METRIC}_ci"] for s in groups],
        {_label(s): papers[s["regime"], s["trainer"]] for s in groups if (s["regime"], s["trainer"]) in papers},
        path, metric="macro-F1")


def _ratio(row: dict[str, Any]) -> float:
    train, real = row.get("gan_train", math.nan), row.get("real_train", math.nan)
    return train / real if math.isfinite(train) and math.isfinite(real) and real > 0 else math.nan


def generators_png(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Per (regime, trainer) a column, per generator a dot, in five panels: GAN-train / real-train
    (1 = generated data trains as well as real), FD (hollow: FD real), diversity (1 = as diverse as
    the data), C_T (0 = no copying) and MIA AUC (0.5 = no membership leak)."""
    groups = generator_summary(rows)
    mine = [[r for r in rows if (r["regime"], r["trainer"]) == (s["regime"], s["trainer"])] for s in groups]

    def values(key: str) -> list[list[float]]:
        return [[float(r.get(key, math.nan)) for r in group] for group in mine]

    panels = [
        Panel("GAN-train / real-train", [[_ratio(r) for r in group] for group in mine], reference=1.0),
        Panel("FD (hollow: FD real)", values("fd"), floor=values("fd_real")),
        Panel("diversity", values("diversity"), reference=1.0),
        Panel("C_T (< 0: copying)", values("ct"), reference=0.0),
        Panel("MIA AUC", values("mia_auc"), reference=0.5),
    ]
    return dot_panels_png([_label(s) for s in groups], panels, path)


def log_report(tracking_uri: str, experiment: str, rows: Sequence[dict[str, Any]], text: str,
               comps: Sequence[Comparison] | None = None, generators: Sequence[dict[str, Any]] = (),
               privacy: Sequence[dict[str, Any]] = ()) -> str:
    """Log the markdown (report.md), the JSON (report.json), the cells-and-intervals plot
    (report.png) and, when there are audited ``generators``, their panels (generators.png) as
    artifacts of a ``report`` run; returns its id. ``comps``: the papers compared, read from the
    store (:func:`comparisons`) when not given."""
    if comps is None:
        comps = comparisons(tracking_uri, experiment)
    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    assert exp is not None  # fold_rows() checked it
    with mlflow.start_run(experiment_id=exp.experiment_id, run_name="report", tags={"kind": "report"}) as run:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "report.md").write_text(text, encoding="utf-8")
            (folder / "report.json").write_text(json.dumps(report_json(rows, comps, generators, privacy), indent=2,
                                                           allow_nan=False), encoding="utf-8")
            report_png(rows, folder / "report.png", comps)
            names = ["report.md", "report.json", "report.png"]
            if generators:
                generators_png(generators, folder / "generators.png")
                names.append("generators.png")
            for name in names:
                mlflow.log_artifact(str(folder / name))
        return run.info.run_id
