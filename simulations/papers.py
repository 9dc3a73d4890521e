"""The five papers' protocols as data: what each paper says, what its experiment file does, and why.

One :class:`Paper` per seed (``PAPERS``): its ``rows`` ("paper says / we do / why"), each tied to a
flat config key whose value in the paper's experiment file *at the paper preset* is the "we do"
column (tests/test_papers.py loads every file and fails when a value disagrees, and checks that the
docs/papers.md carries :func:`markdown_table` of each paper verbatim); its ``results`` (the paper's headline
table, which ``fedser report`` prints beside ours); and :func:`verdict`, which names every
protocol-defining field of a study's runs that differs from the paper's.

The tables in docs/papers.md are generated: ``fedser papers`` prints them.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.corpora.others import RAVDESS_EMOTIONS
from common.corpora.synthetic import MANIFEST_NAME
from common.corpora.synthetic.ravdess import ravdess_names

EXPERIMENTS = Path(__file__).parent / "experiments"

# ``Row.value`` of a key that must name a copy of the real corpus: a path, and not a corpus fedser
# wrote (None = the embedded synthetic corpus; a folder with fedser's manifest = `fedser corpus synth`).
REAL_CORPUS = "<your copy of the corpus>"


def written_by_fedser(root: str) -> bool:
    """Whether ``root`` (a logged ``data.root``) is a corpus fedser synthesized: None, or its manifest
    is there. A path this machine cannot see counts as real."""
    return root in ("None", "") or (Path(root) / MANIFEST_NAME).is_file()


@dataclass(frozen=True)
class Row:
    """One protocol choice. ``key``: the flat config key (``folds.holdout``) that implements it;
    ``value``: its value in the paper's experiment file at ``preset = "paper"`` as ``cfg.flat()``
    writes it (a tuple: any of these is the paper's; :data:`REAL_CORPUS`: any path); ``protocol``:
    part of the verdict (False: a choice where the paper is silent, shown but never "differs")."""

    what: str
    paper: str
    key: str
    value: str | tuple[str, ...]
    why: str = ""
    protocol: bool = True

    @property
    def accepted(self) -> tuple[str, ...]:
        return self.value if isinstance(self.value, tuple) else (self.value,)


@dataclass(frozen=True)
class Result:
    """One cell of a paper's headline table: ``metric`` (a fold score key: ``f1_macro``, ``wa``,
    ``ua``, ``ua3``) of ``trainer`` in ``regime``, in percent, with its std where the paper gives one.
    ``when``: flat config values the cell applies to (seed 003's MFCC vs spectrogram rows)."""

    regime: str
    trainer: str
    metric: str
    mean: float
    std: float | None = None
    label: str = ""
    when: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Paper:
    """One paper: its protocol rows, its experiment file and its headline results."""

    seed: str
    title: str
    experiment: str  # file name in simulations/experiments/
    trainers: tuple[str, ...]  # a study that ran any of these is compared with this paper
    table: str  # what ``results`` are
    rows: tuple[Row, ...]
    results: tuple[Result, ...]
    note: str = ""  # what the report says beside the table (a difference no config key can close)

    @property
    def path(self) -> Path:
        return EXPERIMENTS / self.experiment


def _folds(paper: str) -> tuple[Row, ...]:
    """The five leave-one-session-out folds all four IEMOCAP papers run."""
    return (Row("folds", f"5-fold leave-one-session-out ({paper})", "folds.scheme", "session"),
            Row("folds run", f"all five held-out sessions ({paper})", "folds.sessions", "[1, 2, 3, 4, 5]"))


def _corpus(corpus: str, paper: str) -> tuple[Row, ...]:
    """The labeled corpus and that it is a copy of the real one (every paper's first two rows)."""
    return (Row("labeled corpus", paper, "data.corpus", corpus),
            Row("corpus copy", "the real recordings", "data.root", REAL_CORPUS,
                "without a root fedser writes its embedded synthetic corpus; a folder it wrote never counts"))


_SIZES = Row("sizes", "the paper's network and schedule", "preset", "paper",
             "`tiny` (every experiment file's default) shrinks them for a CPU; set `preset = \"paper\"`")
_EXC_HAP = "{'neu': 'neu', 'hap': 'hap', 'exc': 'hap', 'ang': 'ang', 'sad': 'sad'}"

ESKIMEZ = Paper(
    "002", "Eskimez et al. 2020, GAN-based data generation for SER", "eskimez2020.toml", ("ser-cnn",),
    "Table 2: macro-F1 (%), mean ± std of 5-fold leave-one-session-out",
    (
        *_corpus("iemocap", "IEMOCAP (§4.1)"),
        Row("utterances", "improvised and scripted, ~7 h (§4.1)", "data.subset", "all"),
        Row("classes", "neutral, angry, sad, happy; excited merged into happy (§4.1)", "data.label_map", _EXC_HAP),
        Row("features", "128 log-mel, 32 ms window, 16 ms hop, 128×128 patches (§4.2)", "features.kind", "logmel"),
        *_folds("§4.4"),
        Row("test set", "the whole held-out session (§4.4, §4.5)", "folds.holdout", "session",
            "the platform's default is `speaker` (one speaker validates): a study on it does not match"),
        Row("pre-training corpus", "LibriSpeech, 360 h (§4.1)", "data.pretrain_corpus", "librispeech"),
        Row("pre-training copy", "train-clean-360", "data.pretrain_root", REAL_CORPUS),
        _SIZES,
        Row("clients", "one per IEMOCAP session, five (§3.3)", "federation.partition", "session"),
        Row("federated pool", "10K samples per emotion per client (§4.5)", "synthesis.per_class_federated", "10000"),
        Row("centralized pool", "40K samples per emotion (§4.5)", "synthesis.per_class_central", "40000"),
        Row("SER length", "not given (§4.4: lr 1e-5, ×0.1 every 10K iterations)", "training.ser_iterations", "30000",
            "three decay steps; the paper is silent", protocol=False),
        Row("model selection", "not given: no validation set is described (§4.4)", "training.eval_every", "2000",
            "with `holdout = \"session\"` there is no validation set, so the last model is scored", protocol=False),
    ),
    (
        Result("real-central", "ser-cnn", "f1_macro", 57.27, 0.99, "IEMOCAP"),
        Result("baseline-gan", "ser-cnn", "f1_macro", 43.05, 2.97, "Baseline [7]"),
        Result("gan-central", "ser-cnn", "f1_macro", 48.54, 3.89, "Proposed - Centralized"),
        Result("gan-federated", "ser-cnn", "f1_macro", 50.39, 3.31, "Proposed - Federated"),
    ),
)

_TU = ("tu-ser", "tu-mtl", "tu-dat", "tu-cgt")
TU = Paper(
    "001", "Tu et al. 2019, speaker-invariant representations for SER", "tu2019.toml", _TU,
    "Table 2: test accuracy (%), mean (± std) of 5 runs over all 5 folds",
    (
        *_corpus("iemocap", "IEMOCAP (§3.1)"),
        Row("utterances", "improvised only, 2,943 (§3.1)", "data.subset", "improvised"),
        Row("classes", "happy + excitement as one class, sad, angry, neutral (§3.1)", "data.label_map", _EXC_HAP),
        Row("features", "13 MFCC + Δ + ΔΔ extracted with Kaldi, energy VAD (§3.1)", "features.kind", "mfcc_vad"),
        *_folds("§3.1"),
        Row("test set", "one speaker of the left-out session validates, the other tests (§3.1)", "folds.holdout",
            "speaker"),
        Row("variants", "SER_only, SER_SR_MTL, SER_SR_DAT, SER_SR_CGT (Table 2)", "trainers", str(list(_TU)), protocol=False),
        _SIZES,
        Row("optimizer", "SGD, lr 1e-3, Nesterov momentum 0.9 (§3.2)", "model.tu.lr", "0.001"),
        Row("runs", "every number the average of 5 runs (§4)", "seeds", "[0, 1, 2, 3, 4]"),
        Row("DAT λ", "not given (eq. 1)", "model.tu.dat_lambda", "0.1",
            "Ganin & Lempitsky use a schedule; a constant keeps FedAvg rounds comparable", protocol=False),
        Row("CGT ε, α", "not given (eq. 2-4)", "model.tu.cgt_alpha", "0.5", "Shankar et al. 2018's α", protocol=False),
    ),
    (
        Result("real-central", "tu-ser", "wa", 53.9, 1.0, "SER_only"),
        Result("real-central", "tu-mtl", "wa", 54.9, 0.6, "SER_SR_MTL"),
        Result("real-central", "tu-dat", "wa", 56.5, 1.4, "SER_SR_DAT"),
        Result("real-central", "tu-cgt", "wa", 57.3, 1.2, "SER_SR_CGT"),
    ),
)

_TRIPATHI = ("tripathi-s", "tripathi-sa", "tripathi-sc", "tripathi-sac")
_SPECTRUM, _MFCC = (("features.kind", "mel6s"),), (("features.kind", "mfcc6s"),)
TRIPATHI = Paper(
    "003", "Tripathi et al. 2019, center loss and reconstruction as regularizers for SER", "tripathi2019.toml",
    _TRIPATHI, "Table 1: overall accuracy (`wa`) and class accuracy (`ua`), %, 5-fold cross-validation",
    (
        *_corpus("iemocap", "IEMOCAP (§3)"),
        Row("utterances", "improvised only (§3)", "data.subset", "improvised"),
        Row("classes", "neutral 48.8 %, happiness 12.3 %, sadness 26.9 %, anger 12 % (§3): happy without "
            "excited", "data.label_map", "{'neu': 'neu', 'hap': 'hap', 'ang': 'ang', 'sad': 'sad'}",
            "with excited merged, happy would be 32 % of the improvised set (947 of 2,943)"),
        Row("features", "librosa mel spectrogram or MFCC, clips padded or cut to 6 s (§2.2)", "features.kind",
            ("mel6s", "mfcc6s"), "Table 1 has both inputs; `mfcc6s` selects the MFCC rows"),
        *_folds("§3"),
        Row("test set", "one speaker of the fifth session validates, the other tests (§3)", "folds.holdout",
            "speaker"),
        Row("variants", "S, S+A, S+C, S+A+C (Table 1)", "trainers", str(list(_TRIPATHI)), protocol=False),
        _SIZES,
    ),
    tuple(
        Result("real-central", trainer, metric, value, None, f"{name} {kind}", when)
        for when, kind, cells in (
            (_SPECTRUM, "Spectrogram", (("tripathi-s", "S", 71.2, 61.9), ("tripathi-sa", "S+A", 73.1, 65.2),
                                        ("tripathi-sac", "S+A+C", 74.3, 67.2))),
            (_MFCC, "MFCC", (("tripathi-s", "S", 70.5, 61.2), ("tripathi-sa", "S+A", 72.9, 65.4),
                             ("tripathi-sc", "S+C", 73.4, 66.1), ("tripathi-sac", "S+A+C", 74.1, 66.7))),
        )
        for trainer, name, overall, per_class in cells
        for metric, value in (("wa", overall), ("ua", per_class))
    ),
    note="Table 1's S+C spectrogram row is missing from our copy of the paper.",
)

_CHANG = ("chang-cnn", "chang-multitask-cnn", "chang-dcgan", "chang-multitask-dcgan")
CHANG = Paper(
    "000", "Chang & Scherer 2017, representations of emotional speech with DCGANs", "chang2017.toml", _CHANG,
    "§6 and abstract: the best model's valence accuracy (%), 5-point and 3-point, average of 5 folds",
    (
        *_corpus("iemocap", "IEMOCAP with its annotators' valence and activation (§4)"),
        Row("utterances", "the labeled IEMOCAP data (§4)", "data.subset", "all"),
        Row("labeled set", "IEMOCAP with its valence and activation labels (§4): every rated utterance",
            "data.label_map", "{'neu': 'neu', 'hap': 'hap', 'exc': 'hap', 'ang': 'ang', 'sad': 'sad', 'fru': 'oth', "
            "'sur': 'oth', 'fea': 'oth', 'dis': 'oth', 'oth': 'oth', 'xxx': 'oth'}",
            "every categorical label kept (the five classes only name utterances; valence is the target): "
            "10,039 utterances on the real corpus, 360 instead of 270 on the embedded one"),
        Row("unlabeled speech", "AMI and IEMOCAP (§4)", "model.chang.unlabeled", "['pretrain', 'train']",
            "AMI through data.pretrain_*; IEMOCAP = the fold's training sessions only, never the held-out one "
            "(§5 is speaker-independent); the paper does not say how it mixed them: in proportion to size"),
        Row("task", "5-point valence as fuzzy labels; activation as the second task (§3, §4)", "model.chang.task",
            "valence"),
        Row("features", "raw spectrograms, no further feature extraction (§6)", "features.kind", "stft"),
        *_folds("§5"),
        Row("test set", "one speaker of the left-out session validates, the other tests (§5)", "folds.holdout",
            "speaker"),
        Row("variants", "BasicCNN, MultitaskCNN, BasicDCGAN, MultitaskDCGAN (§5)", "trainers", str(list(_CHANG)), protocol=False),
        _SIZES,
        Row("early stopping", "after each epoch; stop after 5 epochs below the best, restore the best (§5)",
            "model.chang.patience", "5"),
        Row("crop width", "found by random search, not given (§5)", "features.patch_frames", "32",
            "the paper's Table of parameters is not in our copy; set 128 for a 2 s crop", protocol=False),
    ),
    (
        Result("real-central", "chang-dcgan", "ua", 43.88, None, "BasicDCGAN, 5-class"),
        Result("real-central", "chang-dcgan", "ua3", 49.80, None, "BasicDCGAN, 3-class"),
    ),
    note="The per-model results table (TABREF10) did not survive in our text copy; only the best model's "
         "figures, quoted in the abstract and §7, are compared. The multitask variants alternate their target "
         "every update, valence then activation (§3, §7), as the code does (not a setting).",
)

# RAVDESS speech, four classes: 24 actors x (4 neutral + 8 of each other emotion) files.
RAVDESS_COUNTS = dict(Counter(RAVDESS_EMOTIONS[code] for actor in range(1, 25) for _, code in ravdess_names(actor)
                              if RAVDESS_EMOTIONS[code] in ("hap", "ang", "neu", "sad")))
GANS_COUNTS = {"hap": 134, "ang": 174, "neu": 52, "sad": 150}  # §2 "510 such representations"


def _count_note() -> str:
    ours, theirs = sum(RAVDESS_COUNTS.values()), sum(GANS_COUNTS.values())
    per = ", ".join(f"{k} {RAVDESS_COUNTS[k]} vs {v}" for k, v in GANS_COUNTS.items())
    return (f"Counts differ: we use all {ours} audio-only speech files of the four emotions, the paper {theirs} "
            f"({per}; {ours - theirs:+d}, {100 * (ours - theirs) / theirs:+.1f} %). No selection by intensity, "
            "statement, repetition or vocal channel gives the paper's counts: a rule applied to every actor keeps a "
            "multiple of 24 speech files (23 song files) per class, and 134 = 24a + 23b has no solution. The "
            "paper does not say how it chose its files.")


GANS = Paper(
    "004", "Gans, Theodores & Rusu, Emotion in Motion", "gans2020-ravdess.toml", ("fcn1d-attention",),
    "Figure 4: 5-fold averages (%); the paper's \"unweighted\" accuracy is our `wa`, its \"weighted\" our `ua`",
    (
        *_corpus("ravdess", "RAVDESS audio-only speech (§2)"),
        Row("classes", "happy, angry, neutral, sad: 510 files (§2)", "data.label_map",
            "{'neu': 'neu', 'hap': 'hap', 'ang': 'ang', 'sad': 'sad'}",
            "all 672 speech files of these classes: see the note on counts"),
        Row("features", "259 time-means of a Hamming-window spectrogram (§2.1)", "features.kind", "mean_spectrum"),
        Row("folds", "five stratified folds, 80/20 train/test (§2)", "folds.scheme", "kfold"),
        Row("fold count", "five (§2)", "folds.k", "5"),
        Row("variants", "the 1-D FCN with attention (§2.2)", "trainers", "['fcn1d-attention']", protocol=False),
        _SIZES,
        Row("batch", "51 (Fig. 3)", "training.batch_size", "51"),
        Row("model kept", "the last: no validation set (§3)", "training.eval_every", "0"),
        Row("length", "200 epochs (§3)", "training.ser_iterations", "2000",
            "~200 epochs of 408 training files at batch 51 is 1,600 steps; 2,000 rounds up", protocol=False),
    ),
    (
        Result("real-central", "fcn1d-attention", "wa", 51.2, None, "\"unweighted accuracy\""),
        Result("real-central", "fcn1d-attention", "ua", 41.9, None, "\"weighted accuracy\""),
    ),
    note=_count_note(),
)

PAPERS: tuple[Paper, ...] = (CHANG, TU, ESKIMEZ, TRIPATHI, GANS)


# ------------------------------------------------------------------------------------------ verdict


def _canonical(value: Any) -> Any:
    """A parsed value in comparable form: lists and tuples alike, numbers as floats (dicts compare
    regardless of key order already)."""
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(v) for v in value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _normal(value: str) -> Any:
    """A flat config string as a comparable value: Python literals parsed, anything else as written."""
    try:
        return _canonical(ast.literal_eval(value))
    except (ValueError, SyntaxError):
        return value


MISSING = "missing"  # a run that did not log a protocol key (logged before the key existed)


def agrees(row: Row, value: str) -> bool:
    """Whether the flat config ``value`` is (one of) what the paper's protocol asks for ``row``."""
    if value == MISSING:
        return False
    if row.value == REAL_CORPUS:
        return not written_by_fedser(value)
    return any(_normal(value) == _normal(ok) for ok in row.accepted)


@dataclass(frozen=True)
class Difference:
    """A protocol field whose value in a study's runs is not the paper's."""

    key: str
    ours: tuple[str, ...]  # every value the study's runs had (:data:`MISSING`: not recorded)
    paper: str


@dataclass(frozen=True)
class Verdict:
    """Whether a study's runs follow ``paper``'s protocol, and where not."""

    paper: Paper
    differences: tuple[Difference, ...]

    @property
    def matches(self) -> bool:
        return not self.differences

    def text(self) -> str:
        """``protocol matches: yes`` or ``protocol matches: no (differs: key = ours (paper: ...); ...)``."""
        if self.matches:
            return "protocol matches: yes"
        return "protocol matches: no (differs: " + "; ".join(
            f"{d.key} = {' / '.join(_shown(d.key, v) for v in d.ours)} (paper: {_paper_value(d.paper)})"
            for d in self.differences) + ")"


def _shown(key: str, value: str) -> str:
    if not key.endswith("root") or not written_by_fedser(value):
        return value
    return "the embedded synthetic corpus" if value in ("None", "") else f"{value} (a synthetic corpus fedser wrote)"


def _paper_value(value: str) -> str:
    return "a copy of the real corpus" if value == REAL_CORPUS else value


def verdict(paper: Paper, runs: Iterable[Mapping[str, str]]) -> Verdict:
    """Which of ``paper``'s protocol fields differ in any of ``runs`` (each a run's flat config:
    MLflow params or ``cfg.flat()``; callers pass the runs of the paper's trainers only)."""
    runs = list(runs)
    out = []
    for row in paper.rows:
        if not row.protocol:
            continue
        seen = tuple(dict.fromkeys(run.get(row.key, MISSING) for run in runs))
        bad = tuple(v for v in seen if not agrees(row, v))
        if bad:
            out.append(Difference(row.key, bad, " or ".join(row.accepted)))
    return Verdict(paper, tuple(out))


def papers_of(trainers: Iterable[str]) -> list[Paper]:
    """The papers whose trainers are among ``trainers``, in :data:`PAPERS`' order."""
    names = set(trainers)
    return [p for p in PAPERS if names & set(p.trainers)]


def results_for(paper: Paper, runs: Sequence[Mapping[str, str]]) -> list[Result]:
    """The paper's headline cells that apply to ``runs`` (a ``when`` every run satisfies)."""
    return [r for r in paper.results if all(run.get(k) == v for run in runs for k, v in r.when)]


# ------------------------------------------------------------------------------------------- docs


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(paper: Paper) -> str:
    """The "paper says / we do / why" table of ``paper`` (we do: the experiment file's
    value at the paper preset, which tests/test_papers.py checks)."""
    lines = [f"**{paper.seed} — {paper.title}** (`{paper.experiment}`; ✱ = not part of the protocol verdict: the "
             "paper is silent, or the choice does not change what a number means)", "", "| | paper says | we do | why |", "|---|---|---|---|"]
    for row in paper.rows:
        ours = f"`{row.key}` = " + " or ".join(f"`{_paper_value(v)}`" for v in row.accepted)
        mark = "" if row.protocol else " ✱"
        lines.append(f"| {row.what}{mark} | {_cell(row.paper)} | {_cell(ours)} | {_cell(row.why)} |")
    if paper.note:
        lines += ["", paper.note]
    return "\n".join(lines) + "\n"


def markdown_tables() -> str:
    """Every paper's table, as docs/papers.md holds them."""
    return "\n".join(markdown_table(p) for p in PAPERS)


@dataclass(frozen=True)
class Comparison:
    """A paper beside a study: the protocol verdict and the headline cells that apply."""

    verdict: Verdict
    results: tuple[Result, ...]


def compare(runs: Mapping[str, Sequence[Mapping[str, str]]]) -> list[Comparison]:
    """For every paper with a trainer among ``runs`` (trainer -> the flat configs of its runs): the
    verdict over those runs and the headline cells that apply to them."""
    out = []
    for paper in papers_of(runs):
        mine = [run for trainer in paper.trainers for run in runs.get(trainer, ())]
        out.append(Comparison(verdict(paper, mine), tuple(results_for(paper, mine))))
    return out
