"""Synthetic corpora in the IEMOCAP_full_release and LibriSpeech layouts, voiced by the synthesizer.

The IEMOCAP writer reproduces the real on-disk layout and label formats (IEMOCAP README; seed 002
§4.1) so that the real reader reads it unchanged; the LibriSpeech writer gives the GAN an unlabeled
pretraining corpus in LibriSpeech's layout. Everything is deterministic by seed; each utterance's
random stream is keyed by (seed, utterance id), so files do not depend on write order.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Generator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from common.audio import SAMPLE_RATE, write_wav
from common.corpora.synthetic.synthesizer import (
    UtteranceSpec,
    Voice,
    make_voice,
    pick_words,
    prosody_for,
    synthesize,
)

MANIFEST_NAME = "fedser-synthetic.json"
GENERATOR = "fedser.synthetic"

# IEMOCAP categorical names as the C-E lines spell them (IEMOCAP README).
CATEGORY_NAMES = {
    "neu": "Neutral", "hap": "Happiness", "exc": "Excited", "ang": "Anger", "sad": "Sadness",
    "fru": "Frustration", "sur": "Surprise", "fea": "Fear", "dis": "Disgust", "oth": "Other",
}
# What a dissenting evaluator plausibly says instead; three distinct codes per label so a
# block never gives a second category a tie with the summary label.
_CONFUSIONS = {
    "neu": ("fru", "sad", "hap"), "hap": ("exc", "neu", "sur"), "exc": ("hap", "sur", "neu"),
    "ang": ("fru", "dis", "exc"), "sad": ("neu", "fru", "fea"), "fru": ("ang", "neu", "sad"),
    "sur": ("exc", "hap", "fea"), "fea": ("sad", "sur", "fru"), "dis": ("ang", "fru", "neu"),
    "oth": ("neu", "fru", "hap"),
}
# Mean (valence, activation, dominance) an evaluator gives, on IEMOCAP's 1-5 scale.
_VAD_MEANS = {
    "neu": (3.0, 2.4, 2.6), "hap": (4.0, 3.2, 3.0), "exc": (4.1, 3.9, 3.4), "ang": (1.8, 4.0, 4.0),
    "sad": (1.8, 1.8, 2.0), "fru": (2.0, 3.3, 3.2), "sur": (3.5, 3.9, 2.9), "fea": (2.0, 3.5, 2.0),
    "dis": (1.9, 3.0, 3.3), "oth": (3.0, 3.0, 3.0), "xxx": (2.7, 3.0, 3.0),
}
# Label shares: ~75 % in neu/hap/exc/ang/sad, the rest mostly fru/xxx (IEMOCAP's own mix).
_LABEL_WEIGHTS = {
    "neu": 0.25, "hap": 0.09, "exc": 0.10, "ang": 0.15, "sad": 0.16,
    "fru": 0.11, "xxx": 0.08, "sur": 0.03, "fea": 0.015, "dis": 0.01, "oth": 0.005,
}
_MAJOR = ("neu", "hap", "ang", "sad", "fru")  # the labels an xxx utterance is a blend of

# Dialogs per session with the real naming oddities: both F and M prefixes, a/b improvisations in
# Session 3 and Ses05M_script01_1b in Session 5 (IEMOCAP README; seed 002 §4.1).
DIALOGS: dict[int, tuple[str, ...]] = {
    1: ("Ses01F_impro01", "Ses01F_script01_1", "Ses01M_impro02", "Ses01M_script02_2", "Ses01F_impro03",
        "Ses01M_script03_1"),
    2: ("Ses02F_impro02", "Ses02F_script01_2", "Ses02M_impro01", "Ses02M_script02_1", "Ses02F_impro04",
        "Ses02M_script03_2"),
    3: ("Ses03F_impro01", "Ses03F_script01_3", "Ses03M_impro05a", "Ses03M_impro05b", "Ses03M_script02_2",
        "Ses03F_impro06"),
    4: ("Ses04F_impro03", "Ses04F_script02_1", "Ses04M_impro07", "Ses04M_script01_1", "Ses04F_impro02",
        "Ses04M_script03_1"),
    5: ("Ses05F_impro01", "Ses05F_script01_2", "Ses05M_impro04", "Ses05M_script01_1b", "Ses05F_impro05",
        "Ses05M_script02_2"),
}
# Evaluator names per session: three categorical, two or three dimensional (two give the
# half-integer means of the real files, three give thirds).
_CAT_EVALUATORS = {1: ("E2", "E3", "E4"), 2: ("E1", "E2", "E4"), 3: ("E1", "E3", "E4"),
                   4: ("E1", "E2", "E3"), 5: ("E2", "E3", "E4")}
_DIM_EVALUATORS = {1: ("E3", "E4"), 2: ("E1", "E2"), 3: ("E1", "E3", "E4"), 4: ("E2", "E3"), 5: ("E1", "E4")}
_NOTES = ("curious", "tired", "sarcastic", "annoyed", "calm", "playful", "hesitant", "tense")


# ------------------------------------------------------------------------------ random streams


def _rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator keyed by (seed, keys): stable across runs, processes and write order."""
    digest = hashlib.sha256("\x1f".join(keys).encode()).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([seed, *words]))


def iemocap_voices(seed: int = 0) -> dict[str, Voice]:
    """The ten actors ``Ses01F`` .. ``Ses05M``, one female and one male per session."""
    return {
        f"Ses0{s}{g}": make_voice(f"Ses0{s}{g}", g, _rng(seed, "voice", f"Ses0{s}{g}"))
        for s in DIALOGS
        for g in "FM"
    }


def _sentence(words: tuple[str, ...], label: str, rng: np.random.Generator) -> str:
    """Transcript text: capitalized, "I" upper-case, "!" for some aroused utterances, some questions."""
    text = " ".join("I" if w == "i" else w for w in words)
    if label in ("ang", "exc", "hap", "sur") and rng.random() < 0.5:
        mark = "!"
    else:
        mark = "?" if rng.random() < 0.15 else "."
    return text[0].upper() + text[1:] + mark


# ---------------------------------------------------------------------------- IEMOCAP writer


@dataclass(frozen=True)
class Planned:
    """One planned utterance: its id, dialog, true speaker and raw IEMOCAP label."""

    utt_id: str
    session: int
    dialog: str
    speaker: str
    label: str


@dataclass(frozen=True)
class Rendered:
    """One utterance's audio as a voice source made it.

    ``wav``: mono float samples at SAMPLE_RATE; ``segments``: (word, start s, end s) of each spoken
    word, for the wdseg alignment; ``text``: the transcript; ``meta``: extra manifest columns.
    """

    wav: np.ndarray
    segments: list[tuple[str, float, float]]
    text: str
    meta: Mapping[str, object] = field(default_factory=dict)


# A voice source: (planned utterance, the label its audio expresses, the second label an ``xxx``
# utterance is blended with or None, the utterance's random stream) -> its audio. It may draw from
# the stream; it is called once per utterance, possibly from a worker thread (``workers`` > 1).
Render = Callable[[Planned, str, str | None, np.random.Generator], Rendered]


def _session_labels(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` raw labels with a per-session imbalance; every 4-class label at least min(5, n // 8) times."""
    codes = list(_LABEL_WEIGHTS)
    w = np.asarray([_LABEL_WEIGHTS[c] for c in codes]) * np.exp(rng.normal(0.0, 0.35, len(codes)))
    share = w / w.sum() * n
    counts = np.floor(share).astype(int)
    for i in np.argsort(counts - share)[: n - counts.sum()]:  # largest remainders
        counts[i] += 1
    count = dict(zip(codes, counts.tolist(), strict=True))
    need = min(5, n // 8)
    for cls in ("neu", "hap", "ang", "sad"):
        while count[cls] + (count["exc"] if cls == "hap" else 0) < need:
            donor = max((c for c in codes if c not in ("neu", "hap", "exc", "ang", "sad")), key=count.__getitem__)
            if count[donor] == 0:
                donor = max(("neu", "ang", "sad"), key=count.__getitem__)
            count[donor] -= 1
            count[cls] += 1
    labels = [c for c in codes for _ in range(count[c])]
    rng.shuffle(labels)
    return labels


def _plan_session(session: int, per_dialog: int, seed: int) -> list[Planned]:
    """Labels and turn order of a session's dialogs: actors alternate turns."""
    rng = _rng(seed, "session", str(session))
    dialogs = DIALOGS[session]
    labels = _session_labels(len(dialogs) * per_dialog, rng)
    planned: list[Planned] = []
    for d, dialog in enumerate(dialogs):
        first = "F" if rng.random() < 0.5 else "M"
        counters = {"F": 0, "M": 0}
        for k in range(per_dialog):
            letter = first if k % 2 == 0 else ("M" if first == "F" else "F")
            utt = f"{dialog}_{letter}{counters[letter]:03d}"
            counters[letter] += 1
            planned.append(Planned(utt, session, dialog, f"Ses0{session}{letter}", labels[d * per_dialog + k]))
    return planned


def _evaluations(label: str, rng: np.random.Generator) -> tuple[list[tuple[str, ...]], tuple[str, ...], str]:
    """Categorical evaluator labels (3 lines), self-evaluation, and the label the audio expresses.

    The summary label holds a strict majority (>= 2 of 3) and no other category appears twice;
    ``xxx`` blocks have three different single labels, so no majority (IEMOCAP README).
    """
    if label == "xxx":
        base = _MAJOR[int(rng.integers(len(_MAJOR)))]
        lines: list[tuple[str, ...]] = [(base,), (_CONFUSIONS[base][0],), (_CONFUSIONS[base][1],)]
        rng.shuffle(lines)
        return lines, (lines[int(rng.integers(3))][0],), base
    others = list(_CONFUSIONS[label])
    rng.shuffle(others)
    agree = 3 if rng.random() < 0.5 else 2
    lines = []
    for k in range(3):
        if k < agree:
            lines.append((label, others.pop()) if rng.random() < 0.2 else (label,))
        else:
            lines.append((others.pop(),))
    rng.shuffle(lines)
    self_eval = (label,) if rng.random() < 0.6 else (_CONFUSIONS[label][int(rng.integers(3))],)
    return lines, self_eval, label


def _vad(label: str, rng: np.random.Generator) -> tuple[int, int, int]:
    """One evaluator's integer (val, act, dom), 1-5, around the label's mean."""
    v, a, d = (int(x) for x in np.clip(np.rint(np.asarray(_VAD_MEANS[label]) + rng.normal(0.0, 0.7, 3)), 1, 5))
    return v, a, d


def _note(rng: np.random.Generator) -> str:
    return f"({_NOTES[int(rng.integers(len(_NOTES)))]})" if rng.random() < 0.1 else "()"


def _wdseg(segments: list[tuple[str, float, float]], seconds: float, rng: np.random.Generator) -> str:
    """Word alignment at 100 frames/s; pauses are absorbed into the preceding word."""
    last = int(seconds * 100) - 1
    starts = [int(round(s * 100)) for _, s, _ in segments]
    rows = [("<s>", 0, starts[0] - 1)]
    for i, (word, _, _) in enumerate(segments):
        end = starts[i + 1] - 1 if i + 1 < len(segments) else int(round(segments[-1][2] * 100)) - 1
        rows.append((word.upper(), starts[i], end))
    rows.append(("</s>", rows[-1][2] + 1, last))
    scores = [-int((e - s + 1) * rng.uniform(4000, 12000)) for _, s, e in rows]
    body = "".join(f"\t{s}\t{e}\t{sc}\t{w}\n" for (w, s, e), sc in zip(rows, scores, strict=True))
    return f"\tSFrm\tEFrm\tSegAScr\tWord\n{body} Total Score: {sum(scores)}\n"


def _prepare_root(root: Path) -> None:
    """Replace an earlier synthetic corpus, never anything else (a real corpus may live there)."""
    if root.exists():
        if not (root / MANIFEST_NAME).is_file():
            raise FileExistsError(f"{root} exists and is not a fedser synthetic corpus; refusing to overwrite")
        shutil.rmtree(root)
    root.mkdir(parents=True)


def _synthesizer(voices: Mapping[str, Voice], min_seconds: float, max_seconds: float) -> Render:
    """The embedded voice source: the source-filter synthesizer, prosody from the label."""

    def render(p: Planned, spoken: str, blend: str | None, rng: np.random.Generator) -> Rendered:
        prosody = prosody_for(spoken, rng, blend=blend)
        n = int(round(rng.uniform(min_seconds, max_seconds) * SAMPLE_RATE))
        words = pick_words(rng, n / SAMPLE_RATE, prosody.rate)
        text = _sentence(words, p.label, rng)
        spec = UtteranceSpec(p.utt_id, voices[p.speaker], prosody, words, n / SAMPLE_RATE)
        wav, segments = synthesize(spec, rng)
        return Rendered(wav, segments, text)

    return render


def _voiced(
    planned: list[Planned], seed: int, render: Render, workers: int
) -> Generator[tuple[Planned, np.random.Generator, list[tuple[str, ...]], tuple[str, ...], Rendered]]:
    """Each planned utterance, in order, with its random stream, evaluations and audio.

    Every utterance has its own stream, so rendering them on ``workers`` threads gives the same
    bytes as rendering them one by one. Closing the generator early cancels what has not started.
    """

    def one(p: Planned) -> tuple[Planned, np.random.Generator, list[tuple[str, ...]], tuple[str, ...], Rendered]:
        rng = _rng(seed, "utterance", p.utt_id)
        lines, self_eval, spoken = _evaluations(p.label, rng)
        blend = _CONFUSIONS[spoken][0] if p.label == "xxx" else None
        return p, rng, lines, self_eval, render(p, spoken, blend, rng)

    if workers <= 1:
        yield from map(one, planned)
        return
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        yield from pool.map(one, planned)
    finally:
        pool.shutdown(cancel_futures=True)


def _synthesizer_readme(seed: int, count: int) -> str:
    return (
        "fedser synthetic IEMOCAP_full_release\n\n"
        f"Generated by {GENERATOR} (common/corpora/synthetic.py) with seed {seed}.\n"
        "This is NOT the USC IEMOCAP database: the audio is a source-filter synthesizer whose prosody\n"
        "follows each utterance's label, in IEMOCAP's layout and label format so that the real reader\n"
        f"reads it. {count} utterances by 10 synthetic actors in 5 sessions; ground truth in\n"
        f"{MANIFEST_NAME}.\n"
    )


def write_iemocap(
    out: Path,
    *,
    seed: int = 0,
    utterances_per_dialog: int = 12,
    min_seconds: float = 1.5,
    max_seconds: float = 4.5,
    render: Render | None = None,
    workers: int = 1,
    generator: str = GENERATOR,
    readme: Callable[[int, int], str] = _synthesizer_readme,
) -> Path:
    """Write a synthetic IEMOCAP_full_release under ``out`` and return its root.

    ``render``: the voice source (default: the embedded synthesizer, utterances of ``min_seconds``
    to ``max_seconds``), run on ``workers`` threads; ``generator`` names it in the manifest and
    ``readme(seed, utterances)`` gives Documentation/README.txt.
    """
    root = Path(out) / "IEMOCAP_full_release"
    _prepare_root(root)
    if render is None:
        render = _synthesizer(iemocap_voices(seed), min_seconds, max_seconds)
    planned = [p for session in DIALOGS for p in _plan_session(session, utterances_per_dialog, seed)]
    manifest: list[dict[str, object]] = []
    with closing(_voiced(planned, seed, render, workers)) as voiced:
        for session in DIALOGS:
            sdir = root / f"Session{session}"
            for dialog in DIALOGS[session]:
                timeline_rng = _rng(seed, "timeline", dialog)
                t = timeline_rng.uniform(1.0, 6.0)
                emo = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
                trans: list[str] = []
                for _ in range(utterances_per_dialog):
                    p, rng, lines, self_eval, audio = next(voiced)
                    assert p.dialog == dialog, (p.utt_id, dialog)
                    seconds = len(audio.wav) / SAMPLE_RATE
                    rel = Path(f"Session{session}", "sentences", "wav", dialog, f"{p.utt_id}.wav")
                    write_wav(root / rel, audio.wav)
                    align = sdir / "sentences" / "ForcedAlignment" / dialog / f"{p.utt_id}.wdseg"
                    align.parent.mkdir(parents=True, exist_ok=True)
                    align.write_text(_wdseg(audio.segments, seconds, rng))

                    start = round(t, 4)
                    end = round(start + seconds, 4)
                    t = end + timeline_rng.uniform(0.2, 2.5)
                    dims = [_vad(p.label, rng) for _ in _DIM_EVALUATORS[session]]
                    v, a, d = (float(f"{x:.4f}") for x in np.mean(dims, axis=0))
                    who = p.speaker[-1]
                    emo.append(f"[{start:.4f} - {end:.4f}]\t{p.utt_id}\t{p.label}\t[{v:.4f}, {a:.4f}, {d:.4f}]")
                    for name, cats in zip(_CAT_EVALUATORS[session], lines, strict=True):
                        emo.append(f"C-{name}:\t{' '.join(CATEGORY_NAMES[c] + ';' for c in cats)}\t{_note(rng)}")
                    emo.append(f"C-{who}1:\t{CATEGORY_NAMES[self_eval[0]]};\t{_note(rng)}")
                    for name, (dv, da, dd) in zip(_DIM_EVALUATORS[session], dims, strict=True):
                        emo.append(f"A-{name}:\tval {dv}; act {da}; dom  {dd};\t{_note(rng)}")
                    sv, sa, sd = _vad(p.label, rng)
                    emo.append(f"A-{who}1:\tval {sv}; act {sa}; dom  {sd};\t{_note(rng)}")
                    emo.append("")
                    trans.append(f"{p.utt_id} [{start:08.4f}-{end:08.4f}]: {audio.text}")
                    manifest.append({
                        "id": p.utt_id, "session": session, "speaker": p.speaker, "gender": who,
                        "dialog": dialog, "raw_label": p.label, "valence": v, "activation": a, "dominance": d,
                        "improvised": "_impro" in dialog, "duration": seconds, "transcript": audio.text,
                        "path": rel.as_posix(), **audio.meta,
                    })
                for sub, content in (("EmoEvaluation", emo), ("transcriptions", trans)):
                    path = sdir / "dialog" / sub / f"{dialog}.txt"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("\n".join(content) + "\n")
    docs = root / "Documentation"
    docs.mkdir()
    docs.joinpath("README.txt").write_text(readme(seed, len(manifest)))
    write_manifest(root, seed, manifest, generator)
    return root


def write_manifest(root: Path, seed: int, rows: list[dict[str, object]], generator: str = GENERATOR) -> None:
    """The ground truth of a corpus fedser wrote, in ``root/MANIFEST_NAME`` (its presence marks the corpus as
    synthetic: `fedser corpus check` compares against it, the protocol verdict never calls it real)."""
    payload = {"generator": generator, "seed": seed, "utterances": rows}
    (root / MANIFEST_NAME).write_text(json.dumps(payload, indent=1) + "\n")


# ------------------------------------------------------------------------- LibriSpeech writer

_LIBRI_STYLES = ("neu",) * 7 + ("hap", "sad", "ang", "sur", "exc")  # mostly neutral read speech


def write_librispeech(
    out: Path,
    *,
    seed: int = 0,
    speakers: int = 10,
    chapters: int = 2,
    utterances_per_chapter: int = 6,
    subset: str = "train-clean-100",
) -> Path:
    """Write an unlabeled synthetic LibriSpeech ``subset`` (FLAC, 16 kHz) under ``out``; return its root."""
    root = Path(out) / "LibriSpeech"
    _prepare_root(root)
    rng = _rng(seed, "librispeech")
    ids = sorted(int(x) for x in rng.choice(np.arange(10, 9000), size=speakers, replace=False))
    chapter_ids = rng.choice(np.arange(100, 9999), size=speakers * chapters, replace=False).reshape(speakers, chapters)
    first = "F" if rng.random() < 0.5 else "M"
    rows: list[dict[str, object]] = []
    table = [";ID  |SEX| SUBSET           |MINUTES| NAME"]
    for i, spk in enumerate(ids):
        gender = first if i % 2 == 0 else ("M" if first == "F" else "F")
        voice = make_voice(str(spk), gender, _rng(seed, "libri-voice", str(spk)))
        seconds_total = 0.0
        for chapter in sorted(int(c) for c in chapter_ids[i]):
            folder = root / subset / str(spk) / str(chapter)
            folder.mkdir(parents=True)
            lines = []
            for k in range(utterances_per_chapter):
                utt = f"{spk}-{chapter}-{k:04d}"
                urng = _rng(seed, "libri-utterance", utt)
                style = _LIBRI_STYLES[int(urng.integers(len(_LIBRI_STYLES)))]
                prosody = prosody_for(style, urng)
                n = int(round(urng.uniform(2.0, 6.0) * SAMPLE_RATE))
                words = pick_words(urng, n / SAMPLE_RATE, prosody.rate)
                wav, _ = synthesize(UtteranceSpec(utt, voice, prosody, words, n / SAMPLE_RATE), urng)
                sf.write(str(folder / f"{utt}.flac"), wav, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
                text = " ".join(words).upper()
                lines.append(f"{utt} {text}")
                seconds_total += n / SAMPLE_RATE
                rows.append({
                    "id": utt, "speaker": str(spk), "gender": gender, "chapter": chapter, "style": style,
                    "duration": n / SAMPLE_RATE, "transcript": text,
                    "path": f"{subset}/{spk}/{chapter}/{utt}.flac",
                })
            (folder / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
        table.append(f"{spk:<5}| {gender} | {subset:<17}| {seconds_total / 60:5.2f} | Synthetic Speaker {spk}")
    header = (
        "; fedser synthetic LibriSpeech (common/corpora/synthetic.py), seed "
        f"{seed}; not the real LibriSpeech.\n"
    )
    (root / "SPEAKERS.TXT").write_text(header + "\n".join(table) + "\n")
    write_manifest(root, seed, rows)
    return root
