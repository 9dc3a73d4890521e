"""A second IEMOCAP-format corpus, spoken by espeak-ng and shaped by sox: speech fedser did not make.

The layout, labels, evaluations, timelines, transcripts, word alignments and manifest are the
embedded writer's (:func:`common.corpora.synthetic.layouts.write_iemocap`, same session plans for
the same seed); only the voice source differs. Each of the ten actors is a distinct espeak-ng
voice (dialect + voice variant + own base pitch, speed and loudness), each session a slightly
different room (light reverb). An utterance's emotion sets its prosody: pitch level and range and
speaking rate (SSML ``<prosody>``), word gaps, then level, brightness, overdrive, pitch bends and
tremolo (sox), each jittered per utterance so that the classes overlap as real speech does.

Word alignments are approximate: the speech between the first and last loud frame is shared among
the words by their length, each boundary moved to the quietest frame nearby.

Needs the ``espeak-ng`` and ``sox`` programs (Debian/Ubuntu: ``apt-get install espeak-ng sox``).
Deterministic by seed: each utterance's random stream is keyed by (seed, utterance id), and both
programs are deterministic (sox with ``-R``, float output, quantized here).

    python -m common.corpora.synthetic.spoken ROOT [--seed N] [--per-dialog N] [--workers N]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import soundfile as sf

from common.audio import SAMPLE_RATE
from common.corpora.synthetic.layouts import (
    DIALOGS,
    MANIFEST_NAME,
    Planned,
    Render,
    Rendered,
    _rng,
    _sentence,
    write_iemocap,
)
from common.corpora.synthetic.synthesizer import _soft_limit

SPOKEN_GENERATOR = "fedser.spoken"
PROGRAMS = ("espeak-ng", "sox")
INSTALL_HINT = "apt-get install espeak-ng sox"

_REF_RMS_DB = -28.0  # speech-active RMS of a 0 dB utterance, as the embedded synthesizer's
_NOISE_DB = -60.0  # background noise floor
_FRAME = SAMPLE_RATE // 100  # 10 ms: the wdseg frame


class MissingProgramError(FileNotFoundError):
    """espeak-ng or sox is not installed."""


def require_programs() -> None:
    """:class:`MissingProgramError` (one line, with the install command) unless both programs are on PATH."""
    for program in PROGRAMS:
        if shutil.which(program) is None:
            raise MissingProgramError(f"{program} not found on PATH: the spoken corpus needs it ({INSTALL_HINT})")


# ------------------------------------------------------------------------------------- voices

# (espeak-ng language voice, voice variant) of each actor: ten different dialect x variant pairs.
# "en" is British English: espeak-ng 1.51 drops the variant of "en-gb+<variant>".
VOICES: dict[str, tuple[str, str]] = {
    "Ses01F": ("en-us", "f1"), "Ses01M": ("en", "m1"),
    "Ses02F": ("en", "f2"), "Ses02M": ("en-us", "m3"),
    "Ses03F": ("en-gb-scotland", "f3"), "Ses03M": ("en-029", "m2"),
    "Ses04F": ("en-gb-x-rp", "f4"), "Ses04M": ("en-gb-x-gbclan", "m6"),
    "Ses05F": ("en-us-nyc", "f5"), "Ses05M": ("en-gb-x-gbcwmd", "m4"),
}


# espeak-ng -p of an actor: at 50 the female variants speak at ~180-215 Hz, the male ones at ~90-110 Hz;
# +20 is about +20 % F0. These give ~170-230 Hz (F) and ~95-130 Hz (M), IEMOCAP's ranges.
_BASE_PITCH = {"F": (40, 63), "M": (52, 76)}


@dataclass(frozen=True)
class SpokenVoice:
    """One actor: espeak-ng voice and habits, and the session's room."""

    speaker: str
    voice: str  # espeak-ng -v, e.g. "en-us+f1"
    pitch: int  # espeak-ng -p base pitch, 0-99
    wpm: int  # espeak-ng -s neutral speaking rate, words per minute
    level_db: float  # microphone distance / loudness habit
    reverberance: float  # sox reverb of the session's room (%)
    room_scale: float  # (%)
    wet_db: float  # reverb wet gain (dB)


def spoken_voices(seed: int = 0) -> dict[str, SpokenVoice]:
    """The ten actors ``Ses01F`` .. ``Ses05M``; both actors of a session share its room."""
    out = {}
    for session in DIALOGS:
        room = _rng(seed, "spoken-room", str(session))
        reverberance, room_scale, wet_db = room.uniform(10, 35), room.uniform(20, 60), room.uniform(-10, -5)
        for gender in "FM":
            speaker = f"Ses0{session}{gender}"
            rng = _rng(seed, "spoken-voice", speaker)
            language, variant = VOICES[speaker]
            out[speaker] = SpokenVoice(
                speaker=speaker, voice=f"{language}+{variant}", pitch=int(rng.integers(*_BASE_PITCH[gender])),
                wpm=int(rng.integers(150, 186)), level_db=float(rng.normal(0.0, 1.5)),
                reverberance=float(reverberance), room_scale=float(room_scale), wet_db=float(wet_db),
            )
    return out


# ------------------------------------------------------------------------------------ emotion


@dataclass(frozen=True)
class Style:
    """How one utterance is spoken: the emotion's row of the style table, perturbed."""

    pitch_pct: float  # SSML prosody pitch, % re the speaker's base
    range_pct: float  # SSML prosody range, % of the voice's normal pitch range
    rate_pct: float  # SSML prosody rate, % of the speaker's speed
    gap: int  # espeak-ng -g extra pause between words (10 ms units)
    gain_db: float  # level re a neutral utterance of this speaker
    tilt_db: float  # sox treble shelf at 3 kHz: + bright/pressed, - dark
    drive_db: float  # sox overdrive gain; 0 = none
    bend_cents: float  # size of random sox pitch bends (pitch movement beyond espeak's contour)
    tremolo_pct: float  # sox tremolo depth (shaky voice); 0 = none


# Relative to the speaker's own voice; directions follow the embedded synthesizer's profiles
# (synthesizer._PROFILES): sad low, slow, quiet, dark and monotone; ang loud, fast, bright and
# pressed; hap/exc high with a wide, bouncy pitch range; neu in the middle.
_STYLES: dict[str, tuple[float, ...]] = {
    #       pitch  range  rate  gap  gain  tilt  drive  bend  tremolo
    "neu": (0.0,   100,   100,  0,   0.0,  0.0,  0.0,   0,    0),
    "hap": (20.0,  170,   110,  0,   3.0,  2.0,  0.0,   150,  0),
    "exc": (28.0,  190,   116,  0,   5.0,  3.0,  2.0,   200,  0),
    "ang": (14.0,  140,   114,  0,   7.0,  5.0,  10.0,  80,   0),
    "sad": (-14.0, 45,    78,   3,   -7.0, -5.0, 0.0,   0,    10),
    "fru": (8.0,   115,   106,  0,   4.0,  2.5,  4.0,   50,   0),
    "sur": (26.0,  190,   104,  0,   3.0,  1.5,  0.0,   220,  0),
    "fea": (18.0,  70,    114,  1,   -2.0, -1.0, 0.0,   60,   25),
    "dis": (-5.0,  90,    90,   1,   1.0,  0.0,  2.0,   0,    0),
    "oth": (3.0,   100,   100,  0,   0.0,  0.0,  0.0,   0,    0),
}
_STYLE_FIELDS = tuple(f.name for f in fields(Style))


def style_for(label: str, rng: np.random.Generator, *, blend: str | None = None) -> Style:
    """The style of ``label`` (optionally blended with ``blend``, for ``xxx``) with per-utterance spread."""
    row = dict(zip(_STYLE_FIELDS, _STYLES[label], strict=True))
    if blend is not None:
        w = float(rng.uniform(0.3, 0.7))
        other = dict(zip(_STYLE_FIELDS, _STYLES[blend], strict=True))
        row = {k: (1 - w) * v + w * other[k] for k, v in row.items()}
    row["pitch_pct"] += rng.normal(0.0, 8.0)
    row["range_pct"] *= np.exp(rng.normal(0.0, 0.3))
    row["rate_pct"] *= np.exp(rng.normal(0.0, 0.08))
    row["gap"] = max(0.0, row["gap"] + rng.normal(0.0, 0.7))
    row["gain_db"] += rng.normal(0.0, 3.0)
    row["tilt_db"] += rng.normal(0.0, 1.5)
    row["drive_db"] *= np.exp(rng.normal(0.0, 0.35))
    row["bend_cents"] *= np.exp(rng.normal(0.0, 0.3))
    row["tremolo_pct"] *= np.exp(rng.normal(0.0, 0.3))
    return Style(
        pitch_pct=round(float(row["pitch_pct"]), 1), range_pct=round(float(np.clip(row["range_pct"], 10, 200)), 1),
        rate_pct=round(float(row["rate_pct"]), 1), gap=int(round(row["gap"])), gain_db=round(float(row["gain_db"]), 2),
        tilt_db=round(float(row["tilt_db"]), 2), drive_db=round(float(row["drive_db"]), 2),
        bend_cents=round(float(row["bend_cents"])), tremolo_pct=round(float(min(row["tremolo_pct"], 60.0)), 1),
    )


# ------------------------------------------------------------------------------------- speech

# Plain, emotionally unmarked English lines (lower case; "i" is capitalized by the writer), so
# the words carry no label: only the voice does.
SENTENCES: tuple[str, ...] = (
    "excuse me", "what time is it", "i know", "are you sure", "tell me again", "it is late",
    "i told you about the money yesterday", "we need to talk about the car",
    "the letter came this morning", "she said she would call back tomorrow",
    "i was standing in line for an hour", "you never told me where you were going",
    "they moved the meeting to next week", "can you open the window please",
    "i think we should go home now", "the house is still on the market",
    "he left his keys on the kitchen table", "we have been waiting here since noon",
    "it is the third time this month", "i remember the day we met",
    "you can take the train or the bus", "the job starts on monday",
    "my brother is coming to visit", "i need the form back by friday",
    "did you read the message i sent", "the store closes at nine tonight",
    "we talked about it for a long time", "there is nothing left in the box",
    "she bought a new coat last week", "i have to work late again",
    "the office is on the second floor", "you said you would be here at six",
    "the weather is supposed to change tomorrow", "i found your book under the couch",
    "he wants to know if you are coming", "we can talk about it after dinner",
    "i did not expect to see you here", "the phone rang twice and then stopped",
    "they are painting the house next door", "i have not seen him in years",
    "this is the last train of the night", "the dog has been outside all day",
    "you have to sign here and here", "we got the tickets for saturday",
    "my mother made soup for everyone", "the car is parked across the street",
    "i am going to tell them the truth", "nobody answered when i knocked",
    "it took three weeks to get the answer", "the children are asleep upstairs",
    "i want to go back to the beach", "he forgot to bring the papers",
    "they said the flight was delayed", "i left the lights on in the car",
    "we should have taken the other road", "the package arrived this afternoon",
    "you look different with short hair", "i can hear the rain on the roof",
    "she is moving to another city", "the coffee is on the counter",
    "do you want me to drive", "i waited for you at the station",
    "the bank closes early on fridays", "we have known each other for ten years",
    "he is going to be a father", "i lost my wallet on the way home",
    "the room was exactly the same", "you have to fill out another form",
    "it is the first time i have seen snow", "they gave the job to someone else",
    "we are going to miss the bus", "i got a letter from the school",
    "the doctor wants to see you again", "she called while you were out",
    "there were people everywhere", "i am not going back there",
    "you should have asked me first", "the water is cold this time of year",
    "my name is on the list", "he painted the fence last summer",
    "we will know by the end of the day", "the window in the kitchen is broken",
    "i have been thinking about what you said", "they are closing the factory",
    "you can keep the change", "i still have the picture you sent me",
    "it is only a few blocks from here", "the answer is in the second letter",
)


def _espeak_argv(voice: SpokenVoice, style: Style, text: str) -> list[str]:
    ssml = (
        f'<speak><prosody pitch="{style.pitch_pct:+.1f}%" range="{style.range_pct:.1f}%" '
        f'rate="{style.rate_pct:.1f}%">{escape(text)}</prosody></speak>'
    )
    return ["espeak-ng", "-m", "-v", voice.voice, "-p", str(voice.pitch), "-s", str(voice.wpm),
            "-a", "90", "-g", str(style.gap), "--stdout", ssml]


def _bends(style: Style, seconds: float, rng: np.random.Generator) -> list[str]:
    """sox ``bend`` arguments: up-and-back-down pitch excursions, about one per 0.8 s (bend is cumulative)."""
    if style.bend_cents < 1 or seconds < 0.6:
        return []
    count = max(1, int(seconds / 0.8))
    slot = (seconds - 0.05) / count
    out, rest = [], 0.0  # a bend's delay counts from the end of the previous one
    for _ in range(count):
        cents = max(style.bend_cents * rng.uniform(0.5, 1.0), 1.0) * (1 if rng.random() < 0.7 else -1)
        delay, rise, fall = slot * rng.uniform(0.0, 0.3), slot * rng.uniform(0.15, 0.3), slot * rng.uniform(0.2, 0.35)
        out += [f"{rest + delay:.3f},{cents:.0f},{rise:.3f}", f"0,{-cents:.0f},{fall:.3f}"]
        rest = slot - delay - rise - fall
    return ["bend", *out]


def _sox_argv(voice: SpokenVoice, style: Style, seconds: float, rng: np.random.Generator) -> list[str]:
    """espeak's WAV on stdin -> 16 kHz mono float32 raw on stdout, through the style's effects."""
    argv = ["sox", "-R", "--single-threaded", "-V1", "-t", "wav", "-",
            "-t", "raw", "-e", "floating-point", "-b", "32", "-L", "-c", "1", "-r", str(SAMPLE_RATE), "-",
            "rate", str(SAMPLE_RATE), *_bends(style, seconds, rng)]
    if style.drive_db > 0.5:
        argv += ["overdrive", f"{style.drive_db:.1f}", "10"]
    argv += ["treble", f"{style.tilt_db:.1f}", "3000"]
    if style.tremolo_pct > 1:
        argv += ["tremolo", f"{rng.uniform(4.5, 7.0):.2f}", f"{style.tremolo_pct:.1f}"]
    argv += ["reverb", f"{voice.reverberance:.1f}", "50", f"{voice.room_scale:.1f}", "0", "0", f"{voice.wet_db:.1f}"]
    return argv


def _run(argv: list[str], stdin: bytes | None = None) -> bytes:
    """``argv``'s stdout; a one-line error naming the program if it is missing or fails."""
    try:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "LC_ALL": "C"}
        done = subprocess.run(argv, input=stdin, capture_output=True, check=False, env=env)
    except FileNotFoundError:
        raise MissingProgramError(f"{argv[0]} not found: the spoken corpus needs it ({INSTALL_HINT})") from None
    if done.returncode != 0 or not done.stdout:
        why = (done.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{argv[0]} failed (exit {done.returncode}): {why}")
    return done.stdout


def _frame_db(wav: np.ndarray) -> np.ndarray:
    """RMS (dB) of each 10 ms frame."""
    n = len(wav) // _FRAME
    frames = wav[: n * _FRAME].reshape(n, _FRAME).astype(np.float64)
    return 10.0 * np.log10((frames**2).mean(axis=1) + 1e-12)


def _words_of(text: str) -> tuple[str, ...]:
    return tuple(w.strip(".,!?") for w in text.split())


def _segments(words: tuple[str, ...], db: np.ndarray, first: int, last: int) -> list[tuple[str, float, float]]:
    """Words over frames [first, last): shares by word length, boundaries moved to the quietest frame
    within 60 ms, each word at least 30 ms."""
    weights = np.asarray([len(w) + 1.0 for w in words])
    edges = first + np.concatenate([[0.0], np.cumsum(weights)]) / weights.sum() * (last - first)
    bounds = [first]
    for i, edge in enumerate(edges[1:-1], start=1):
        latest = last - 3 * (len(words) - i)  # room for the words after this one
        lo = min(max(int(edge) - 6, bounds[-1] + 3), latest)
        hi = max(min(int(edge) + 7, latest + 1), lo + 1)
        bounds.append(lo + int(np.argmin(db[lo:hi])))
    bounds.append(last)
    return [(w, bounds[i] / 100, bounds[i + 1] / 100) for i, w in enumerate(words)]


def _speak(
    voice: SpokenVoice, style: Style, text: str, rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """The utterance's samples (float32, SAMPLE_RATE) and word segments: espeak-ng, sox, then
    trimmed to the speech, set to the style's level, padded with room noise."""
    raw = _run(_espeak_argv(voice, style, text))
    info = sf.info(io.BytesIO(raw))  # espeak's streamed header has no length: libsndfile takes the size
    wav = np.frombuffer(_run(_sox_argv(voice, style, info.frames / info.samplerate, rng), raw), dtype="<f4")
    db = _frame_db(wav)
    loud = np.flatnonzero(db > db.max() - 35.0)
    lo, hi = max(int(loud[0]) - 1, 0), min(int(loud[-1]) + 4, len(db))  # frames kept
    speech = wav[lo * _FRAME : hi * _FRAME].astype(np.float64)
    frames = db[lo:hi]
    active_db = 10.0 * np.log10(np.mean(10.0 ** (frames[frames > frames.max() - 30.0] / 10.0)))
    speech *= 10.0 ** ((_REF_RMS_DB + voice.level_db + style.gain_db - active_db) / 20.0)
    lead, tail = int(rng.uniform(0.12, 0.45) * 100), int(rng.uniform(0.15, 0.5) * 100)  # frames
    out = np.concatenate([np.zeros(lead * _FRAME), speech, np.zeros(tail * _FRAME)])
    noise = np.convolve(rng.normal(0.0, 1.0, len(out)), [1.0, 0.7], mode="same") / 1.22
    out += noise * 10.0 ** ((_NOISE_DB + voice.level_db) / 20.0)
    words = _words_of(text)
    first = lead + int(loud[0]) - lo  # first and after-last loud frame of the output
    last = max(lead + int(loud[-1]) + 1 - lo, first + 3 * len(words))
    return _soft_limit(out).astype(np.float32), _segments(words, _frame_db(out), first, last)


def _render(voices: dict[str, SpokenVoice]) -> Render:
    def render(p: Planned, spoken: str, blend: str | None, rng: np.random.Generator) -> Rendered:
        voice = voices[p.speaker]
        style = style_for(spoken, rng, blend=blend)
        words = tuple(SENTENCES[int(rng.integers(len(SENTENCES)))].split())
        text = _sentence(words, p.label, rng)
        wav, segments = _speak(voice, style, text, rng)
        return Rendered(wav, segments, text, {"voice": voice.voice, "style": asdict(style)})

    return render


def _readme(seed: int, count: int) -> str:
    voices = "".join(f"  {s}: espeak-ng -v {v.voice} -p {v.pitch} -s {v.wpm}\n" for s, v in spoken_voices(seed).items())
    return (
        "fedser spoken IEMOCAP_full_release\n\n"
        f"Generated by {SPOKEN_GENERATOR} (common/corpora/synthetic/spoken.py) with seed {seed}.\n"
        "This is NOT the USC IEMOCAP database: the audio is espeak-ng speech shaped by sox, with\n"
        "prosody following each utterance's label, in IEMOCAP's layout and label format so that the\n"
        f"real reader reads it. {count} utterances by 10 espeak-ng voices in 5 sessions; ground truth,\n"
        f"with each utterance's voice and style, in {MANIFEST_NAME}. Word alignments are approximate\n"
        "(the speech shared among the words by their length).\n\n"
        f"Voices:\n{voices}"
    )


def write_spoken_iemocap(root: Path, seed: int = 0, utterances_per_dialog: int = 12, workers: int = 2) -> Path:
    """Write the spoken IEMOCAP-format corpus at ``root`` (the IEMOCAP_full_release folder itself) and return it.

    Written in a temporary folder beside ``root`` and moved in place when complete, so ``root``
    holds a whole corpus or none; an earlier synthetic corpus there is replaced, anything else is
    refused. ``workers`` utterances are voiced at a time (each program single-threaded).
    """
    require_programs()
    root = Path(root)
    if root.exists() and not (root / MANIFEST_NAME).is_file():
        raise FileExistsError(f"{root} exists and is not a fedser synthetic corpus; refusing to overwrite")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".writing-", dir=root.parent))
    try:
        built = write_iemocap(
            tmp, seed=seed, utterances_per_dialog=utterances_per_dialog, render=_render(spoken_voices(seed)),
            workers=workers, generator=SPOKEN_GENERATOR, readme=_readme,
        )
        if root.exists():
            os.replace(root, tmp / "previous")
        os.replace(built, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m common.corpora.synthetic.spoken",
        description="Write an IEMOCAP-format corpus spoken by espeak-ng + sox (emotion via prosody).")
    parser.add_argument("root", type=Path, help="the corpus folder to write (its IEMOCAP_full_release root)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the corpus is deterministic by seed")
    parser.add_argument("--per-dialog", type=int, default=12, help="utterances per dialog (6 dialogs/session)")
    parser.add_argument("--workers", type=int, default=2, help="utterances voiced at a time")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        root = write_spoken_iemocap(args.root, seed=args.seed, utterances_per_dialog=args.per_dialog,
                                    workers=args.workers)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {root} in {time.perf_counter() - start:.1f} s; check it with: fedser corpus check {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
