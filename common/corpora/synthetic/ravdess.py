"""A synthetic corpus in RAVDESS's exact speech layout, for seed 004's protocol and its counts.

RAVDESS (Livingstone & Russo 2018) audio-only speech: ``Actor_NN/03-01-EE-II-SS-RR-NN.wav`` with
emotion EE 01-08 (neutral, calm, happy, sad, angry, fearful, disgust, surprised), intensity II 01
normal / 02 strong (neutral has normal only), statement SS 01 "Kids are talking by the door" / 02
"Dogs are sitting by the door", repetition RR 01-02: 60 files per actor, 1,440 for 24 actors. Of
them the four classes seed 004 uses (neutral, happy, angry, sad) are 4 + 3 x 8 = 28 per actor, 672
in all, which is why no selection by a file-name field gives the paper's 510 (simulations/papers.py).

Audio comes from the embedded synthesizer (common/corpora/synthetic/synthesizer.py): one voice per
actor (odd actors male), each emotion's prosody profile (calm: neutral's), strong intensity louder
and with a wider pitch range. Deterministic by seed.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from common.audio import write_wav
from common.corpora.others import RAVDESS_EMOTIONS
from common.corpora.synthetic.layouts import write_manifest
from common.corpora.synthetic.synthesizer import UtteranceSpec, make_voice, prosody_for, synthesize

STATEMENTS = {"01": ("kids", "are", "talking", "by", "the", "door"),
              "02": ("dogs", "are", "sitting", "by", "the", "door")}
_PROFILE = {"cal": "neu"}  # calm has no profile of its own


def ravdess_names(actor: int) -> list[tuple[str, str]]:
    """(file stem, emotion code) of every audio-only speech file of ``actor``, in RAVDESS's order."""
    return [(f"03-01-{code}-{intensity}-{statement}-{rep}-{actor:02d}", code)
            for code in RAVDESS_EMOTIONS
            for intensity in (("01",) if code == "01" else ("01", "02"))
            for statement in STATEMENTS for rep in ("01", "02")]


GENERATOR = "fedser.synthetic.ravdess"


def write_ravdess(root: Path, *, actors: int = 24, seed: int = 0, seconds: float = 1.5) -> Path:
    """Write ``actors`` actors' speech files (60 each) under ``root`` and the ground truth in
    ``root/fedser-synthetic.json`` (what marks a corpus as written by fedser); returns ``root``."""
    if not 1 <= actors <= 24:
        raise ValueError(f"actors must be 1..24 (RAVDESS has 24), got {actors}")
    rows: list[dict[str, object]] = []
    for actor in range(1, actors + 1):
        rng = np.random.default_rng([seed, actor])
        voice = make_voice(f"Actor_{actor:02d}", "M" if actor % 2 else "F", rng)
        for stem, code in ravdess_names(actor):
            label = RAVDESS_EMOTIONS[code]
            prosody = prosody_for(_PROFILE.get(label, label), rng)
            if stem.split("-")[3] == "02":  # strong intensity
                prosody = replace(prosody, gain_db=prosody.gain_db + 4.0, range_st=prosody.range_st * 1.4)
            wav, _ = synthesize(UtteranceSpec(stem, voice, prosody, STATEMENTS[stem.split("-")[4]], seconds), rng)
            write_wav(root / f"Actor_{actor:02d}" / f"{stem}.wav", wav)
            rows.append({"id": stem, "speaker": f"Actor_{actor:02d}", "raw_label": label})
    write_manifest(root, seed, rows, GENERATOR)
    return root
