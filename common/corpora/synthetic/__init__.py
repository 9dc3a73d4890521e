"""fedser's embedded synthetic corpora: IEMOCAP_full_release and LibriSpeech layouts, speech-like audio.

- :mod:`common.corpora.synthetic.synthesizer`: the source-filter synthesizer (voices, emotion
  prosody, words and syllables, :func:`synthesize`);
- :mod:`common.corpora.synthetic.layouts`: the IEMOCAP and LibriSpeech writers (sessions,
  evaluations, alignments, transcripts and the ground-truth manifest).

Everything is deterministic by seed. This package re-exports the names the rest of fedser imports.
"""

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
