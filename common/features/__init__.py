"""Feature extraction for the five papers, [-1, 1] scaling, patches and an on-disk feature cache.

- :mod:`common.features.extractors`: the extractors, each with a torch/torchaudio path (CPU or CUDA)
  and a librosa reference path, and their registry;
- :mod:`common.features.scaling`: :class:`MinMax`, global min/max scaling to [-1, 1];
- :mod:`common.features.windows`: fixed-size patches and random crops over (F, T) features;
- :mod:`common.features.cache`: the content-addressed :class:`FeatureCache` and :func:`extract_corpus`.

This package re-exports the names the rest of fedser imports.
"""

from common.audio import AudioError as AudioError
from common.audio import load_audio as load_audio
from common.features.cache import FeatureCache as FeatureCache
from common.features.cache import content_hash as content_hash
from common.features.cache import extract_corpus as extract_corpus
from common.features.extractors import EXTRACTORS as EXTRACTORS
from common.features.extractors import Extractor as Extractor
from common.features.extractors import LogMel as LogMel
from common.features.extractors import build_extractor as build_extractor
from common.features.extractors import compute as compute
from common.features.extractors import extractor_for as extractor_for
from common.features.extractors import feature_rows as feature_rows
from common.features.extractors import kaldi_vad as kaldi_vad
from common.features.extractors import resolve_device as resolve_device
from common.features.scaling import MinMax as MinMax
from common.features.windows import patches as patches
from common.features.windows import random_patch as random_patch
