"""The full study schema: common/config.py's sections plus every registered family's section.

config.py is a leaf (it imports nothing from the project); this module is where the registries
meet it: ``[model.<family>]`` sections from common/trainers/registry.py, trainer names checked
against the registry, ``features.kind`` and ``features.params`` against the extractors, and the
``tiny`` preset's sizes of both. Everything that loads a config loads it through here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import create_model, field_validator, model_validator

from common import config
from common.config import FeatureConfig, ModelConfig, Preset, TrainingConfig
from common.features import EXTRACTORS, build_extractor
from common.trainers.registry import FAMILIES, TRAINERS

# ModelConfig plus one field per family: ``model.chang``, ``model.tu``, ...
# Field definitions are (annotation, default) pairs; pydantic types their values as Any.
_FAMILY_FIELDS: dict[str, Any] = {name: (section, section()) for name, section in FAMILIES.items()}
FamilyModels = create_model(
    "FamilyModels", __base__=ModelConfig, __module__=__name__,  # its own name: configs must pickle (workers)
    **_FAMILY_FIELDS,
)


class Features(FeatureConfig):
    """``[features]`` checked against the registered extractors."""

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value not in EXTRACTORS:
            raise ValueError(f"unknown feature extractor; valid: {', '.join(sorted(EXTRACTORS))}")
        return value

    @model_validator(mode="after")
    def _params(self) -> Features:
        build_extractor(self.kind, **self.params)  # ValueError names the valid parameters
        return self


def _trainer(name: str) -> str:
    if name not in TRAINERS:
        raise ValueError(f"unknown trainer; registered: {', '.join(sorted(TRAINERS))}")
    return name


class Training(TrainingConfig):
    """``[training]`` with its trainer checked against the registry."""

    @field_validator("trainer")
    @classmethod
    def _registered(cls, value: str) -> str:
        return _trainer(value)


class StudyConfig(config.StudySections):
    """The study config: everything one study needs, with the registered families' sections."""

    features: Features = Features()
    model: FamilyModels = FamilyModels()
    training: Training = Training()

    @field_validator("trainers")
    @classmethod
    def _registered(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_trainer(name) for name in value)

    @classmethod
    def preset_values(cls, preset: Preset, feature_kind: str) -> dict[str, Any]:
        """The preset's sizes, with each family's and the extractor's ``tiny`` sizes under ``tiny`` and ``small``."""
        values = super().preset_values(preset, feature_kind)
        if preset == "paper":
            return values
        extractor = EXTRACTORS.get(feature_kind)
        features = {**values.get("features", {}), "params": dict(extractor.tiny) if extractor else {}}
        model = {**values.get("model", {}), **{name: dict(s.tiny) for name, s in FAMILIES.items()}}
        return {**values, "features": features, "model": model}


def load_config(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> StudyConfig:
    """A study config (defaults <- preset <- TOML at ``path`` <- ``overrides``) in the full schema."""
    return config.read_config(path, overrides, schema=StudyConfig)


def config_from_run(run_config: Mapping[str, Any]) -> StudyConfig:
    """The study config a Flower run carries (see :func:`common.config.read_run_config`)."""
    return config.read_run_config(run_config, schema=StudyConfig)

