"""The ``fedser`` command line (typer): corpus tools, features, folds, config, demo."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from common.config import CORPUS_KINDS, ConfigError, config_warnings
from common.corpora import read_corpus
from common.schema import StudyConfig, load_config
from simulations.flower import FlowerRunError

app = typer.Typer(
    help="fedser: federated GAN-based speech emotion recognition studies.", no_args_is_help=True, add_completion=False
)
corpus_app = typer.Typer(help="Check and synthesize corpora.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])
ConfigArg = Annotated[
    Optional[Path],  # noqa: UP045 - typer needs Optional[] to build the option
    typer.Argument(help="Study config TOML (only differences from the defaults); omit for the defaults."),
]


def friendly(fn: F) -> F:
    """Turn expected errors into one clear line and exit code 2 (FEDSER_DEBUG=1 shows the traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` cleans up as Ctrl-C does
        try:
            return fn(*args, **kwargs)
        except (ConfigError, FileNotFoundError, NotADirectoryError, ValueError, FlowerRunError) as exc:
            if os.environ.get("FEDSER_DEBUG"):
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[bold yellow]interrupted:[/] open runs marked KILLED and every process this command "
                              "started stopped; run the same command again to resume", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return cast(F, wrapper)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# --------------------------------------------------------------------------------------- corpus


@corpus_app.command("check")
@friendly
def corpus_check(
    path: Annotated[Path, typer.Argument(help="Corpus root, e.g. /data/IEMOCAP_full_release.")],
    kind: Annotated[str, typer.Option(help=f"{', '.join(CORPUS_KINDS)} or auto.")] = "auto",
    subset: Annotated[str, typer.Option(help="improvised, scripted or all (IEMOCAP).")] = "all",
    config: Annotated[Optional[Path], typer.Option(help="Take classes and label map from this config.")] = None,  # noqa: UP045
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Count utterances per session x label and per speaker, list skips, flag deviations."""
    from common.corpora.check import summarize

    cfg = load_config(config, {"data": {"subset": subset}})
    scan = read_corpus(path, kind, label_map=cfg.data.label_map, subset=cfg.data.subset)
    report = summarize(scan, classes=cfg.data.classes, label_map=cfg.data.label_map, subset=cfg.data.subset)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    _print_check(report)


def _print_check(report: dict[str, Any]) -> None:
    console.print(f"[bold]{report['corpus']}[/] at {report['root']} (subset: {report['subset']}): "
                  f"[bold]{report['utterances']}[/] utterances", highlight=False)
    if report["per_session"]:
        labels = list(report["per_session"][0]["labels"])
        table = Table("session", *labels, "total", title="per session x label")
        for row in report["per_session"]:
            table.add_row(str(row["session"]), *(str(row["labels"][c]) for c in labels), str(row["total"]))
        table.add_row("all", *(str(report["per_label"].get(c, 0)) for c in labels), str(report["utterances"]),
                      style="bold")
        console.print(table)
    elif report["per_label"]:
        console.print("per label: " + ", ".join(f"{k} {v}" for k, v in report["per_label"].items()))
    classes = list(report["per_label"])
    speakers = Table("speaker", *classes, "utterances", title=f"per speaker ({len(report['per_speaker'])})")
    for speaker, n in report["per_speaker"].items():
        cells = report["per_speaker_label"].get(speaker, {})
        speakers.add_row(speaker, *(str(cells.get(c, 0)) for c in classes), str(n))
    console.print(speakers)
    if report["skipped"]:
        skips = Table("reason", "count", "example", title=f"skipped: {len(report['skipped'])}")
        for reason, n in report["skipped_by_reason"].items():
            example = next(s["path"] for s in report["skipped"] if s["reason"] == reason)
            skips.add_row(reason, str(n), example)
        console.print(skips)
    else:
        console.print("skipped: none")
    if report["reference"] is None:
        console.print("reference totals: none for this corpus / label map / subset")
    elif report["deviations"]:
        console.print(f"[bold yellow]{len(report['deviations'])} deviation(s) from {report['reference']}:[/]")
        for line in report["deviations"]:
            console.print(f"  {line}", markup=False, highlight=False)
    else:
        console.print(f"[bold green]matches {report['reference']}[/]")


# Options both corpus writers take.
CorpusSeed = Annotated[int, typer.Option("--seed", help="Random seed; the corpus is deterministic by seed.")]
PerDialog = Annotated[int, typer.Option("--utterances-per-dialog", help="Utterances per dialog (6 dialogs/session).")]


@corpus_app.command("synth")
@friendly
def corpus_synth(
    out: Annotated[Path, typer.Argument(help="Output folder; gets IEMOCAP_full_release/ and LibriSpeech/.")],
    seed: CorpusSeed = 0,
    utterances_per_dialog: PerDialog = 12,
    librispeech: Annotated[bool, typer.Option(help="Also write the unlabeled LibriSpeech-layout corpus.")] = True,
    pretrain_speakers: Annotated[int, typer.Option(help="Speakers of the LibriSpeech-layout corpus.")] = 10,
    ravdess: Annotated[bool, typer.Option(help="Also write OUT/RAVDESS: 24 actors' speech files in RAVDESS's "
                                                "exact names (seed 004's protocol).")] = False,
    crema_d: Annotated[bool, typer.Option("--crema-d", help="Also write OUT/CREMA-D in CREMA-D's layout "
                                          "(91 actors x 82 files; --crema-d-actors).")] = False,
    crema_d_actors: Annotated[int, typer.Option(help="Actors of OUT/CREMA-D (1001 on).")] = 91,
    msp_podcast: Annotated[bool, typer.Option("--msp-podcast", help="Also write OUT/MSP-PODCAST in MSP-Podcast's "
                                              "layout (Audios/, Labels/labels_consensus.csv).")] = False,
    msp_speakers: Annotated[int, typer.Option(help="Known speakers of OUT/MSP-PODCAST.")] = 24,
) -> None:
    """Write the synthetic IEMOCAP-format corpus (and a LibriSpeech-layout one for pre-training)."""
    from common.corpora.synthetic import write_iemocap, write_librispeech
    from common.corpora.synthetic.ravdess import write_ravdess
    from common.corpora.synthetic.speakers import write_cremad, write_msppodcast

    start = time.perf_counter()
    root = write_iemocap(out, seed=seed, utterances_per_dialog=utterances_per_dialog)
    console.print(f"wrote {root}", markup=False, highlight=False)
    if librispeech:
        console.print(f"wrote {write_librispeech(out, seed=seed, speakers=pretrain_speakers)}", markup=False, highlight=False)
    if ravdess:
        console.print(f"wrote {write_ravdess(out / 'RAVDESS', seed=seed)}", markup=False, highlight=False)
    if crema_d:
        console.print(f"wrote {write_cremad(out / 'CREMA-D', actors=crema_d_actors, seed=seed)}",
                      markup=False, highlight=False)
    if msp_podcast:
        console.print(f"wrote {write_msppodcast(out / 'MSP-PODCAST', speakers=msp_speakers, seed=seed)}",
                      markup=False, highlight=False)
    console.print(f"done in {time.perf_counter() - start:.1f} s; check it with: fedser corpus check {root}",
                  markup=False, highlight=False)


@corpus_app.command("speak")
@friendly
def corpus_speak(
    root: Annotated[Path, typer.Argument(help="The corpus folder to write (IEMOCAP_full_release's layout: Session1..5).")],
    workers: Annotated[int, typer.Option(help="espeak-ng/sox processes at once.")] = 2,
    seed: CorpusSeed = 0,
    utterances_per_dialog: PerDialog = 12,
) -> None:
    """Write an IEMOCAP-format corpus of machine-spoken speech (espeak-ng + sox, emotion as prosody):
    a second corpus, of another kind than the embedded synthesizer's, to check results on."""
    from common.corpora.synthetic import write_spoken_iemocap

    start = time.perf_counter()
    done = write_spoken_iemocap(root, seed=seed, utterances_per_dialog=utterances_per_dialog, workers=workers)
    console.print(f"wrote {done} in {time.perf_counter() - start:.1f} s; check it with: fedser corpus check {done}",
                  markup=False, highlight=False)


# --------------------------------------------------------------------------------------- config


@app.command("config")
@friendly
def config_show(config: ConfigArg = None) -> None:
    """Validate a study config and print every resolved value."""
    cfg = load_config(config)
    table = Table("key", "value", title=f"{config or 'defaults'} (preset {cfg.preset})")
    for key, value in cfg.flat().items():
        table.add_row(key, value)
    console.print(table)
    _warn(cfg)


@app.command("papers")
@friendly
def papers(config: ConfigArg = None) -> None:
    """Every paper's "paper says / we do / why" table (docs/papers.md); with a config, the protocol
    verdict of a study on it against the papers of its trainers, before anything runs."""
    from simulations.papers import compare, markdown_tables

    if config is None:
        print(markdown_tables(), end="")
        return
    cfg = load_config(config)
    comps = compare({trainer: [cfg.flat()] for trainer in cfg.study_trainers})
    if not comps:
        _say(f"{config}: its trainers ({', '.join(cfg.study_trainers)}) belong to none of the five papers")
    for c in comps:
        _say(f"seed {c.verdict.paper.seed} ({c.verdict.paper.experiment}): {c.verdict.text()}")


def _warn(cfg: StudyConfig) -> None:
    """One line per configured path that does not exist (data.root, model.pretrained, ...)."""
    for line in config_warnings(cfg):
        err_console.print(f"[bold yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------------- features


@app.command("features")
@friendly
def features(config: ConfigArg = None) -> None:
    """Prepare the labeled corpus: its manifest, and its features in the cache; print what was done."""
    _features(load_config(config))


def _features(cfg: StudyConfig) -> dict[str, Any]:
    from common.data import labeled_manifest, prepare, skip_summary
    from common.features import MinMax

    start = time.perf_counter()
    manifest = labeled_manifest(cfg)
    prepared = prepare(cfg, manifest)
    seconds = time.perf_counter() - start
    # Per-session min/max, combined as a federated server would combine node scalars (seed 002 §4.2).
    per_session = prepared.session_stats()
    combined = MinMax.combine(*per_session.values()) if per_session else prepared.stats()
    table = Table("session", "min", "max", title=f"{cfg.features.kind} scaling statistics")
    for session, stats in sorted(per_session.items()):
        table.add_row(str(session), f"{stats.lo:.3f}", f"{stats.hi:.3f}")
    table.add_row("combined", f"{combined.lo:.3f}", f"{combined.hi:.3f}", style="bold")
    console.print(table)
    failed = len(prepared.skipped) - len(manifest.scan.skipped)
    console.print(
        f"features: {len(prepared)} utterances ({sum(prepared.frames)} frames), {failed} unreadable, "
        f"{seconds:.1f} s; cache {prepared.cache.hits} hits / {prepared.cache.misses} misses at "
        f"{prepared.cache.root}; index under {cfg.work_dir / 'prepared'}",
        markup=False, highlight=False,
    )
    console.print(skip_summary(prepared.skip_counts()) + " (`fedser corpus check` lists them)",
                  markup=False, highlight=False)
    for skip in prepared.skipped[len(manifest.scan.skipped):]:
        console.print(f"  skipped {skip.path}: {skip.reason}", markup=False, highlight=False)
    return {"utterances": len(prepared), "skipped": failed, "hits": prepared.cache.hits,
            "misses": prepared.cache.misses, "skips": prepared.skip_counts()}


# ---------------------------------------------------------------------------------------- folds


@app.command("folds")
@friendly
def folds(
    config: ConfigArg = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the folds as JSON.")] = False,
) -> None:
    """Print the folds of the configured corpus (leave-one-session-out, or k-fold)."""
    _folds(load_config(config), as_json)


def _folds(cfg: StudyConfig, as_json: bool = False) -> list[dict[str, Any]]:
    from common.data import labeled_scan
    from common.splits import make_folds

    rows = []
    for fold in make_folds(labeled_scan(cfg).utterances, cfg.folds):
        rows.append({
            "fold": fold.index, "test_session": fold.test_session, "train_sessions": list(fold.train_sessions),
            "train": len(fold.train), "validation_speaker": fold.validation_speaker,
            "validation": len(fold.validation), "test_speakers": list(fold.test_speakers), "test": len(fold.test),
            "train_labels": dict(sorted(Counter(u.label for u in fold.train).items())),
        })
    if as_json:
        print(json.dumps(rows, indent=2))
        return rows
    table = Table("fold", "train sessions", "train", "validation", "test", "train labels",
                  title=f"{cfg.folds.scheme} folds (holdout: {cfg.folds.holdout})")
    for r in rows:
        table.add_row(
            str(r["fold"]), ",".join(map(str, r["train_sessions"])), str(r["train"]),
            f"{r['validation_speaker'] or '-'} ({r['validation']})",
            f"{','.join(r['test_speakers'])} ({r['test']})",
            " ".join(f"{k}:{v}" for k, v in r["train_labels"].items()),
        )
    console.print(table)
    return rows


# ------------------------------------------------------------------------------- pretrain/study


@app.command("pretrain")
@friendly
def pretrain(config: ConfigArg = None) -> None:
    """Pre-train the GAN (autoencoder, then WGAN-GP) on the unlabeled corpus; write the checkpoint."""
    from common.pipeline import pretrain as run_pretrain
    from server.processes import work_dir_lock

    cfg = load_config(config)
    start = time.perf_counter()
    with work_dir_lock(cfg.work_dir, "pretrain"):
        path = run_pretrain(cfg, progress=console.is_terminal)
    console.print(f"pre-trained GAN ({cfg.preset} preset) written to {path} in "
                  f"{time.perf_counter() - start:.0f} s", markup=False, highlight=False)


@app.command("study")
@friendly
def study(
    config: ConfigArg = None,
    seeds: Annotated[Optional[str], typer.Option(help="Comma-separated seeds, e.g. 0,1,2 (overrides `seeds`).")] = None,  # noqa: UP045
    epsilons: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Comma-separated privacy budgets, e.g. inf,10,3,1 (overrides `epsilons`).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Run every fold again instead of resuming.")] = False,
) -> None:
    """Run every configured regime x trainer x seed over the folds (leave-one-session-out, or
    k-fold with folds.scheme = "kfold"), logged to MLflow; with `epsilons`, once per privacy budget.

    A rerun resumes: folds finished with the same resolved config are kept (--fresh: run all again)."""
    overrides = ({"seeds": _number_list(seeds, "--seeds", int, "0,1,2")} if seeds is not None else {}) | (
        {"epsilons": _number_list(epsilons, "--epsilons", float, "inf,10,3,1")} if epsilons is not None else {})
    _study(load_config(config, overrides), resume=not fresh)


def _number_list(text: str, option: str, kind: Callable[[str], Any], example: str) -> list[Any]:
    try:
        return [kind(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"{option} {text!r}: give comma-separated numbers, e.g. {option} {example}") from None


def _study(cfg: StudyConfig, resume: bool = True) -> None:
    from simulations.report import regime_stats
    from simulations.study import run_study

    for _, budget in cfg.budget_studies:  # one, unless the study has an epsilons axis
        start = time.perf_counter()
        rows = run_study(budget, progress=console.is_terminal, say=_say, resume=resume)
        table = Table("regime", "trainer", "macro-F1 mean ± std", "95 % CI", "seeds", "folds",
                      title=f"{cfg.name}: {time.perf_counter() - start:.0f} s, MLflow {cfg.tracking_uri}, "
                            f"experiment {budget.tracking.experiment}")
        for s in regime_stats(rows):
            ci = s["f1_macro_ci"]
            table.add_row(s["regime"], s["trainer"], f"{s['f1_macro']:.3f} ± {s['f1_macro_std']:.3f}",
                          f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-", str(s["seeds"]), str(s["folds"]))
        console.print(table)


def _say(line: str) -> None:
    """A progress line as written: no Rich markup (``[ser-cnn]`` is text) and no highlighting."""
    console.print(line, markup=False, highlight=False)


@app.command("report")
@friendly
def report(
    experiment: Annotated[Optional[str], typer.Option(help="MLflow experiment (default: the config's).")] = None,  # noqa: UP045
    config: Annotated[Optional[Path], typer.Option(help="Study config for the tracking URI/experiment.")] = None,  # noqa: UP045
    tracking_uri: Annotated[Optional[str], typer.Option(help="Overrides the config's tracking URI.")] = None,  # noqa: UP045
    as_json: Annotated[bool, typer.Option("--json", help="Print rows, per-regime statistics and paired tests as JSON.")] = False,
) -> None:
    """Regime x seed x fold macro-F1 / UA / WA from MLflow: mean ± std and 95 % CI, a paired Wilcoxon
    test for every pair of regimes, and each paper's headline table beside ours with the protocol verdict.
    With a config that has `epsilons`: the privacy-utility curve over its budgets instead."""
    cfg = load_config(config)
    if cfg.epsilons and experiment is None:
        _budget_report(cfg, tracking_uri or cfg.tracking_uri, as_json)
    else:
        _report(tracking_uri or cfg.tracking_uri, experiment or cfg.tracking.experiment, as_json)


def _budget_report(cfg: StudyConfig, uri: str, as_json: bool = False) -> None:
    from server.tracking import Tracker
    from simulations.report import budget_json, budget_markdown, budget_rows, log_budget_report

    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": uri})})
    names = [(budget, study.tracking.experiment) for budget, study in cfg.budget_studies]
    scores, attacks = budget_rows(uri, names)
    if not scores:
        raise ValueError(f"none of the experiments {', '.join(n for _, n in names)} has finished fold runs at {uri}; "
                         "run `fedser study` with this config first")
    if as_json:
        print(json.dumps(budget_json(scores, attacks), indent=2))
        return
    text = budget_markdown(scores, attacks)
    # The axis's own experiment, created as a study's is (artifacts under work_dir, not the cwd).
    run_id = log_budget_report(Tracker(cfg).experiment_id, scores, attacks, text)
    print(text)
    console.print(f"logged privacy_utility.md, .json and .png to MLflow run {run_id} ({uri}); one budget's full "
                  f"report: fedser report --experiment {names[0][1]}", markup=False, highlight=False)


def _report(uri: str, name: str, as_json: bool = False) -> None:
    from simulations.report import (
        comparisons,
        fold_rows,
        generator_rows,
        log_report,
        markdown,
        privacy_rows,
        report_json,
    )

    rows = fold_rows(uri, name)
    if not rows:
        raise ValueError(f"experiment {name!r} has no finished fold runs yet")
    comps = comparisons(uri, name)
    generators = generator_rows(uri, name)
    privacy = privacy_rows(uri, name)
    if as_json:
        print(json.dumps(report_json(rows, comps, generators, privacy), indent=2))
        return
    text = markdown(rows, comps, generators, privacy)
    run_id = log_report(uri, name, rows, text, comps=comps, generators=generators, privacy=privacy)
    print(text)  # plain: markdown meant to be copied, never re-wrapped to the terminal width
    files = "report.md, report.json, report.png" + (" and generators.png" if generators else "")
    console.print(f"logged {files} to MLflow run {run_id} ({uri})", markup=False, highlight=False)


@app.command("audit")
@friendly
def audit(
    run_id: Annotated[str, typer.Argument(help="MLflow run of a GAN regime: a parent (regime) run or one fold run.")],
    config: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="Study config (default: the one the run logged, config/study.json).")] = None,
    tracking_uri: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="MLflow tracking URI (default: --config's, else the default config's).")] = None,
) -> None:
    """The generator audit (quality and privacy figures, common/audit.py) of the generators a run
    stored, against the real utterances each was trained on; printed as the report's generators
    table and logged back on the run they belong to (audit.<name>.<figure> on a parent run,
    audit.<figure> on a fold run)."""
    with _quiet_downloads():
        from simulations.stored import audit_run

        print(audit_run(run_id, config, tracking_uri, _say))  # plain: markdown, as `fedser report` prints it


@contextlib.contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No MLflow download progress bars (a failed download prints one before its error) unless
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR is set."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    unset = name not in os.environ
    os.environ.setdefault(name, "false")
    try:
        yield
    finally:
        if unset:
            os.environ.pop(name, None)


# ----------------------------------------------------------------------------------------- demo


@app.command("demo")
@friendly
def demo(config: ConfigArg = None) -> None:
    """The embedded default end to end: synthetic corpus -> check -> pretrain -> study (every regime,
    every fold) -> report, then where the MLflow store is and how to open it."""
    from server.processes import work_dir_lock

    cfg = load_config(config)
    with work_dir_lock(cfg.work_dir, "demo"):
        _demo(cfg)


def _demo(cfg: StudyConfig) -> None:
    from common.corpora.check import summarize
    from common.data import labeled_scan, synthetic_iemocap_root
    from common.pipeline import pretrain as run_pretrain

    start = time.perf_counter()
    console.rule("1. synthetic IEMOCAP-format corpus")
    root = cfg.data.root or synthetic_iemocap_root(cfg)
    console.print(f"corpus at {root}", markup=False, highlight=False)
    console.rule("2. corpus check")
    _print_check(summarize(labeled_scan(cfg), classes=cfg.data.classes, label_map=cfg.data.label_map,
                           subset=cfg.data.subset))
    console.rule("3. folds")
    _folds(cfg)
    console.rule(f"4. pre-training the GAN ({cfg.preset} preset)")
    lap = time.perf_counter()
    console.print(f"wrote {run_pretrain(cfg, progress=console.is_terminal)} in {time.perf_counter() - lap:.0f} s",
                  markup=False, highlight=False)
    console.rule(f"5. study: {', '.join(cfg.regimes)} x {len(cfg.folds.sessions)} folds")
    _study(cfg)
    console.rule("6. report")
    _report(cfg.tracking_uri, cfg.tracking.experiment)
    console.rule("done")
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s. MLflow store: {cfg.tracking_uri} "
                  f"(experiment {cfg.tracking.experiment!r}, artifacts under {cfg.work_dir / 'mlartifacts'}).\n"
                  f"Open it with: {_ui_command(cfg)}", markup=False, highlight=False, soft_wrap=True)


def _ui_command(cfg: StudyConfig) -> str:
    return f"{Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {cfg.tracking_uri} --port 5000"


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # python -m simulations.cli
    main()
