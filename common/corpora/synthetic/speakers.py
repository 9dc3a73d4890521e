"""Synthetic corpora in CREMA-D's and MSP-Podcast's exact layouts (common/corpora/speakers.py).

- CREMA-D (Cao et al. 2014): ``AudioWAV/<ActorID>_<Sentence>_<Emotion>_<Level>.wav`` for actors
  1001-1091 (48 male, 43 female), 12 sentences x 6 emotions; the sentence IEO is spoken at the
  levels LO, MD and HI (neutral at XX only), the other 11 at XX (unspecified), as in the release:
  82 files per actor, 7,462 for 91 actors (the release holds 7,442: 20 fewer). Plus
  ``VideoDemographics.csv`` (ActorID, Age, Sex, Race, Ethnicity).
- MSP-Podcast (Lotfian & Busso 2019): ``Audios/MSP-PODCAST_<podcast>_<segment>.wav`` and
  ``Labels/labels_consensus.csv`` with FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender,
  Split_Set; every speaker in one split (the corpus's splits are speaker-independent), some
  segments by speaker "Unknown" and some without agreement (EmoClass X).

Audio comes from the embedded synthesizer: one voice per speaker, each emotion's prosody profile
(contempt, which has none, is spoken with disgust's; "no agreement" with a blend of two). Both
write the ground truth beside the corpus (``fedser-synthetic.json``), deterministic by seed.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from common.audio import write_wav
from common.corpora.speakers import CREMAD_EMOTIONS, MSP_COLUMNS, MSP_EMOTIONS, MSP_LABELS, MSP_SPLITS
from common.corpora.synthetic.layouts import write_manifest
from common.corpora.synthetic.synthesizer import (
    VOCABULARY,
    UtteranceSpec,
    Voice,
    make_voice,
    prosody_for,
    synthesize,
)

CREMAD_SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
CREMAD_GENERATOR = "fedser.synthetic.cremad"
MSP_GENERATOR = "fedser.synthetic.msppodcast"
_PROFILE = {"con": "dis"}  # emotions the synthesizer has no profile for


def _speak(path: Path, voice: Voice, emotion: str, words: tuple[str, ...], seconds: float,
           rng: np.random.Generator) -> None:
    """One utterance of ``voice`` in ``emotion`` (``xxx``: a blend of two profiles) at ``path``."""
    if emotion == "xxx":
        first, second = rng.choice(["neu", "hap", "ang", "sad"], size=2, replace=False)
        prosody = prosody_for(str(first), rng, blend=str(second))
    else:
        prosody = prosody_for(_PROFILE.get(emotion, emotion), rng)
    wav, _ = synthesize(UtteranceSpec(path.stem, voice, prosody, words, seconds), rng)
    write_wav(path, wav)


def cremad_names(actor: int, sentences: int = 12) -> list[tuple[str, str]]:
    """(file stem, emotion code) of every file of ``actor`` for the first ``sentences`` sentences."""
    return [(f"{actor}_{sentence}_{code}_{level}", code)
            for sentence in CREMAD_SENTENCES[:sentences] for code in CREMAD_EMOTIONS
            for level in (("LO", "MD", "HI") if sentence == "IEO" and code != "NEU" else ("XX",))]


def write_cremad(root: Path, *, actors: int = 91, sentences: int = 12, seed: int = 0, seconds: float = 1.2) -> Path:
    """Write ``actors`` actors (1001 on) x ``sentences`` sentences of CREMA-D under ``root``; returns ``root``.
    (Neutral IEO has only the XX level in the release, as here.)"""
    if not 1 <= actors <= 91 or not 1 <= sentences <= 12:
        raise ValueError(f"actors must be 1..91 and sentences 1..12 (CREMA-D's), got {actors} and {sentences}")
    rows: list[dict[str, object]] = []
    demographics = []
    for actor in range(1001, 1001 + actors):
        rng = np.random.default_rng([seed, actor])
        sex = "Male" if rng.random() < 48 / 91 else "Female"
        demographics.append({"ActorID": actor, "Age": int(rng.integers(20, 75)), "Sex": sex,
                             "Race": "Unknown", "Ethnicity": "Unknown"})
        voice = make_voice(str(actor), sex[0], rng)
        for stem, code in cremad_names(actor, sentences):
            words = tuple(rng.choice(VOCABULARY, size=5))
            _speak(root / "AudioWAV" / f"{stem}.wav", voice, CREMAD_EMOTIONS[code], words, seconds, rng)
            rows.append({"id": stem, "speaker": str(actor), "raw_label": CREMAD_EMOTIONS[code]})
    with (root / "VideoDemographics.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["ActorID", "Age", "Sex", "Race", "Ethnicity"])
        writer.writeheader()
        writer.writerows(demographics)
    write_manifest(root, seed, rows, CREMAD_GENERATOR)
    return root


def write_msppodcast(root: Path, *, speakers: int = 24, per_speaker: int = 8, unknown: int = 6, seed: int = 0,
                     seconds: float = 1.5) -> Path:
    """Write MSP-Podcast's layout under ``root`` (returns it): ``speakers`` speakers, each in one
    split (half Train, then Development, Test1, Test2 in turn), ``per_speaker`` segments each, plus
    ``unknown`` segments of unknown speakers per split; emotions drawn from all ten classes."""
    splits = list(MSP_SPLITS)[:4]
    rng = np.random.default_rng([seed, 1])
    codes = list(MSP_EMOTIONS)
    # Mostly neutral, as podcast speech is (the real corpus's Train split is about a third N).
    shares = np.array([0.10, 0.10, 0.15, 0.05, 0.03, 0.04, 0.05, 0.30, 0.05, 0.13])  # A S H U F D C N O X
    rows: list[dict[str, object]] = []
    table: list[dict[str, object]] = []
    owners = [(str(100 + k), splits[0] if k < speakers // 2 else splits[1 + k % 3]) for k in range(speakers)]
    owners += [("Unknown", split) for split in splits for _ in range(unknown)]
    segment = 0
    for index, (speaker, split) in enumerate(owners):
        voice_rng = np.random.default_rng([seed, 7, index if speaker == "Unknown" else int(speaker)])
        gender = "Male" if voice_rng.random() < 0.5 else "Female"
        voice = make_voice(f"msp{speaker}{index}", gender[0], voice_rng)
        for _ in range(per_speaker if speaker != "Unknown" else 1):
            segment += 1
            name = f"MSP-PODCAST_{1 + index:04d}_{segment:04d}.wav"
            code = str(rng.choice(codes, p=shares / shares.sum()))
            words = tuple(rng.choice(VOCABULARY, size=6))
            _speak(root / "Audios" / name, voice, MSP_EMOTIONS[code], words, seconds, rng)
            act, val, dom = (round(float(x), 1) for x in rng.uniform(1, 7, size=3))
            table.append({"FileName": name, "EmoClass": code, "EmoAct": act, "EmoVal": val, "EmoDom": dom,
                          "SpkrID": speaker, "Gender": gender if speaker != "Unknown" else "Unknown",
                          "Split_Set": split})
            rows.append({"id": Path(name).stem, "speaker": speaker, "raw_label": MSP_EMOTIONS[code],
                         "session": MSP_SPLITS[split]})
    (root / MSP_LABELS).parent.mkdir(parents=True, exist_ok=True)
    with (root / MSP_LABELS).open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(MSP_COLUMNS))
        writer.writeheader()
        writer.writerows(table)
    write_manifest(root, seed, rows, MSP_GENERATOR)
    return root
