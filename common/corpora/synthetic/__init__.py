"""fedser's embedded synthetic corpora: IEMOCAP_full_release and LibriSpeech layouts, speech-like audio.

- :mod:`common.corpora.synthetic.synthesizer`: the source-filter synthesizer (voices, emotion
  prosody, words and syllables, :func:`synthesize`);
- :mod:`common.corpora.synthetic.layouts`: the IEMOCAP and LibriSpeech writers (sessions,
  evaluations, alignments, transcripts and the ground-truth manifest);
- :mod:`common.corpora.synthetic.spoken`: the same IEMOCAP layout voiced by espeak-ng + sox
  (speech this package did not synthesize; needs both programs installed).

Everything is deterministic by seed. This package re-exports the names the rest of fedser imports.
"""

from typing import TYPE_CHECKING

from common.corpora.synthetic.layouts import CATEGORY_NAMES as CATEGORY_NAMES
from common.corpora.synthetic.layouts import DIALOGS as DIALOGS
from common.corpora.synthetic.layouts import GENERATOR as GENERATOR
from common.corpora.synthetic.layouts import MANIFEST_NAME as MANIFEST_NAME
from common.corpora.synthetic.layouts import write_iemocap as write_iemocap
from common.corpora.synthetic.layouts import write_librispeech as write_librispeech
from common.corpora.synthetic.synthesizer import UtteranceSpec as UtteranceSpec
from common.corpora.synthetic.synthesizer import make_voice as make_voice
from common.corpora.synthetic.synthesizer import prosody_for as prosody_for
from common.corpora.synthetic.synthesizer import synthesize as synthesize

if TYPE_CHECKING:
    from common.corpora.synthetic.spoken import SPOKEN_GENERATOR as SPOKEN_GENERATOR
    from common.corpora.synthetic.spoken import write_spoken_iemocap as write_spoken_iemocap

_SPOKEN = ("SPOKEN_GENERATOR", "write_spoken_iemocap")


def __getattr__(name: str) -> object:
    """The spoken writer's names, imported on first use: eagerly imported here, the module would be
    loaded twice by ``python -m common.corpora.synthetic.spoken`` (runpy warns)."""
    if name in _SPOKEN:
        from common.corpora.synthetic import spoken

        return getattr(spoken, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
