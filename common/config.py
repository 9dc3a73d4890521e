"""The study's configuration: frozen pydantic models, presets, and TOML loading.

Validation happens once, here, at the edge: everything below receives a typed
:class:`StudyConfig`. An experiment file holds only its differences from the defaults;
its ``preset`` (``tiny`` or ``paper``) picks the sizes it starts from.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from common.corpora.iemocap import CLASSES_4, DEFAULT_LABEL_MAP

Preset = Literal["paper", "tiny"]


class Section(BaseModel):
    """A frozen config section that refuses unknown keys."""

    # validate_default: defaults go through the same validators (e.g. work_dir made absolute).
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SyntheticConfig(Section):
    """The embedded synthetic corpora, written on first use when no corpus root is given."""

    seed: int = 0
    utterances_per_dialog: int = Field(12, ge=2, le=200)
    pretrain_speakers: int = Field(10, ge=1, le=500)


class DataConfig(Section):
    """Which labeled corpus, which part of it, and which classes."""

    corpus: Literal["iemocap", "ravdess"] = "iemocap"
    # None = the embedded synthetic IEMOCAP-format corpus under work_dir/corpora.
    root: Path | None = None
    subset: Literal["improvised", "scripted", "all"] = "all"
    # Seed 002 §4.1: neutral, angry, sad, happy (+ excited merged into happy).
    classes: tuple[str, ...] = CLASSES_4
    label_map: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_LABEL_MAP))
    min_duration: float = Field(0.25, gt=0, description="seconds; shorter clips are skipped")
    # Unlabeled corpus for GAN pre-training (seed 002 §4.1 uses LibriSpeech 360 h).
    pretrain_corpus: Literal["librispeech", "folder", "iemocap"] = "librispeech"
    pretrain_root: Path | None = None
    synthetic: SyntheticConfig = SyntheticConfig()

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value) or not value:
            raise ValueError(f"classes must be non-empty and unique, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _labels_consistent(self) -> DataConfig:
        unknown = sorted(set(self.label_map.values()) - set(self.classes))
        if unknown:
            raise ValueError(
                f"label_map maps to {unknown}, which are not in classes {list(self.classes)}"
            )
        if self.corpus != "iemocap" and self.root is None:
            raise ValueError(f"root is required for corpus={self.corpus!r}: the embedded synthetic "
                             "corpus is IEMOCAP-format only")
        return self


class FeatureConfig(Section):
    """Which features, computed how, and how they are cut into network inputs."""

    kind: Literal["logmel", "stft", "mfcc_vad", "mel6s", "mfcc6s", "mean_spectrum"] = "logmel"
    # Overrides of the extractor's paper defaults, e.g. {n_mels = 64} (checked against the extractor).
    params: dict[str, int | float] = Field(default_factory=dict)
    backend: Literal["torch", "librosa"] = "torch"
    device: str = "cpu"
    # Seed 002 §4.2-4.3: 128x128 patches, sliding windows with a hop of 32 frames.
    patch_frames: int = Field(128, ge=8)
    window_hop: int = Field(32, ge=1)
    # None = work_dir/cache/features.
    cache_dir: Path | None = None

    @model_validator(mode="after")
    def _params_fit_extractor(self) -> FeatureConfig:
        from common.features import build_extractor  # torch-heavy: only when a config is validated

        build_extractor(self.kind, **self.params)  # ValueError names the valid parameters
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        """cpu, cuda, cuda:N or auto (cuda when available)."""
        if value not in {"cpu", "cuda", "auto"} and not value.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {value!r}")
        return value


class ChangConfig(Section):
    """Seed 000 (Chang & Scherer 2017): BasicCNN, MultitaskCNN, BasicDCGAN, MultitaskDCGAN.

    The paper tuned sizes by random search and does not list them; the four stride-2 layers follow
    the DCGAN discriminator it builds on (Radford et al. 2016: 5x5 kernels, 64-512 channels,
    batch-norm, leaky ReLU 0.2, Adam 2e-4 with beta1 0.5).
    """

    # "valence": the paper's 5-point fuzzy valence (+ activation for the multitask variants);
    # "emotion": the platform's classes, e.g. to train on GAN-synthetic data (which has no valence).
    task: Literal["valence", "emotion"] = "valence"
    channels: tuple[int, int, int, int] = (64, 128, 256, 512)
    kernel: int = Field(5, ge=1)
    hidden: int = Field(256, ge=1, description="the fully connected layer before the task heads")
    n_z: int = Field(100, ge=1, description="DCGAN generator noise size")
    lr: float = Field(2e-4, gt=0)
    # §5: validation accuracy after every epoch; stop after 5 consecutive epochs below the best.
    patience: int = Field(5, ge=1)
    oversample: bool = True  # §4: oversample under-represented valence levels
    # Where the DCGAN variants draw unlabeled speech: the pre-training corpus (data.pretrain_*) or
    # the labeled training set's own audio without labels (what a federated node has).
    unlabeled: Literal["pretrain", "train"] = "pretrain"


class TuConfig(Section):
    """Seed 001 (Tu et al. 2019) Table 1, IEMOCAP column; SGD with Nesterov momentum (§3.2)."""

    tdnn: tuple[tuple[int, int, int], ...] = ((128, 5, 2), (64, 3, 4))  # (channels, kernel, dilation)
    lstm: int = Field(64, ge=1, description="Bi-LSTM cells per direction")
    embedding: int = Field(256, ge=1, description="FC after the Bi-LSTM; pooling gives 2x this")
    head_hidden: int = Field(64, ge=1, description="FC 512-64-64-N: both hidden layers")
    speakers: int = Field(8, ge=1, description="speaker head outputs: the training speakers of a fold")
    dropout: float = Field(0.5, ge=0, lt=1, description="on the Bi-LSTM output (0.5 keep probability)")
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    # Not given in the paper: lambda of the gradient reversal (eq. 1); CrossGrad's epsilon and
    # alpha (eq. 2-4; Shankar et al. 2018 use alpha = 0.5).
    dat_lambda: float = Field(0.1, ge=0)
    cgt_epsilon: float = Field(0.5, ge=0)
    cgt_alpha: float = Field(0.5, ge=0, le=1)


class TripathiConfig(Section):
    """Seed 003 (Tripathi et al. 2019) §2: four parallel convolution paths, softmax/center/MSE losses."""

    filters: int = Field(200, ge=1)
    kernels: tuple[tuple[int, int], ...] = ((4, 6), (6, 8), (8, 10), (10, 12))
    # FC size is not stated; 64 gives the 0.26M parameters the paper reports for S+C (§4).
    hidden: int = Field(64, ge=1)
    decoder: tuple[int, ...] = (256,)  # "even more FC layers" of the decoder: not specified
    dropout: float = Field(0.5, ge=0, lt=1, description="tried 25-75% (§2.1)")
    center_weight: float = Field(4.0, ge=0, description="lambda_1 of eq. 2 (best at 4)")
    reconstruction_weight: float = Field(1.0, ge=0, description="lambda_2 of eq. 3-4 (not given)")
    center_alpha: float = Field(0.5, gt=0, le=1, description="center update rate (Wen et al. 2016)")
    lr: float = Field(1.0, gt=0, description="Adadelta's rate (its default)")


class FcnConfig(Section):
    """Seed 004 (Gans et al.): 1-D FCN + attention; Zhang et al. (2019): 2-D attention FCN."""

    channels: tuple[int, ...] = (5, 10, 20, 30)
    kernels: tuple[int, ...] = (11, 5, 3, 3)
    strides: tuple[int, ...] = (4, 1, 1, 1)
    pool_after: tuple[int, ...] = (0, 1, 3)  # max-pool 3/2 after these layers (AlexNet's places)
    attention_lambda: float = Field(0.8, gt=0, description="scaled softmax (Zhang et al.: 0.3)")
    # "valid": no padding (the 259-value mean spectrum); "same": k // 2, for short inputs.
    padding: Literal["valid", "same"] = "valid"
    lr: float = Field(1e-3, gt=0)
    # Zhang et al. 2019: AlexNet's five convolutions (with AlexNet's paddings), attention lambda 0.3.
    zhang_channels: tuple[int, ...] = (96, 256, 384, 384, 256)
    zhang_kernels: tuple[int, ...] = (11, 5, 3, 3, 3)
    zhang_strides: tuple[int, ...] = (4, 1, 1, 1, 1)
    zhang_pool_after: tuple[int, ...] = (0, 1)
    zhang_lambda: float = Field(0.3, gt=0)

    @model_validator(mode="after")
    def _layers(self) -> FcnConfig:
        for prefix in ("", "zhang_"):
            sizes = {len(getattr(self, f"{prefix}{k}")) for k in ("channels", "kernels", "strides")}
            if len(sizes) != 1:
                raise ValueError(f"{prefix}channels, {prefix}kernels and {prefix}strides need one entry per layer")
        return self


class ModelConfig(Section):
    """Model sizes; the preset fills them (``paper`` = the papers' tables)."""

    # Width multiplier on every channel count (1.0 = Table 1 of seed 002).
    width: float = Field(1.0, gt=0, le=4)
    # Seed 002 §4.4: noise dimension N_z = 128.
    n_z: int = Field(128, ge=1)
    # Pre-trained GAN checkpoint (``fedser pretrain``); None = work_dir/checkpoints/pretrained.pt.
    pretrained: Path | None = None
    # The other papers' trainer families (seeds 000, 001, 003, 004).
    chang: ChangConfig = ChangConfig()
    tu: TuConfig = TuConfig()
    tripathi: TripathiConfig = TripathiConfig()
    fcn: FcnConfig = FcnConfig()


class TrainingConfig(Section):
    """Optimization settings; the ``paper`` preset holds seed 002 §4.4's values."""

    seed: int = 0
    device: str = "cpu"
    # §4.4: mini-batch of 32; Adam with beta1 = 0.5, beta2 = 0.99 for every network.
    batch_size: int = Field(32, ge=1)
    betas: tuple[float, float] = (0.5, 0.99)
    # Stage 1 (autoencoder, L1): lr 5e-5, 200K iterations (§4.4).
    ae_lr: float = Field(5e-5, gt=0)
    ae_iterations: int = Field(200_000, ge=1)
    # Stage 2 (WGAN-GP): G 2e-6, D 2e-5 (two time-scale), penalty weight 10, 200K iterations (§4.4).
    g_lr: float = Field(2e-6, gt=0)
    d_lr: float = Field(2e-5, gt=0)
    gp_weight: float = Field(10.0, ge=0)
    gan_iterations: int = Field(200_000, ge=1)
    # Stage 3 (conditional fine-tuning): same learning rates (§4.4); the paper gives no length.
    finetune_iterations: int = Field(20_000, ge=1)
    # SER network (§4.4): lr 1e-5 decayed x0.1 every 10K iterations; length not given in the paper.
    ser_lr: float = Field(1e-5, gt=0)
    ser_lr_decay_every: int = Field(10_000, ge=1)
    ser_lr_decay: float = Field(0.1, gt=0, le=1)
    ser_iterations: int = Field(30_000, ge=1)
    # Model selection on the validation speaker every this many iterations (0 = keep the last).
    eval_every: int = Field(2_000, ge=0)
    # Baseline GAN (Chatziagapi et al. 2019 after BAGAN): Adam lr 5e-5, beta1 0.5 (BAGAN code).
    bagan_lr: float = Field(5e-5, gt=0)
    bagan_ae_iterations: int = Field(20_000, ge=1)
    bagan_gan_iterations: int = Field(20_000, ge=1)
    # The SER model every regime trains (a name in common/trainers/registry.py).
    trainer: str = "ser-cnn"

    @field_validator("trainer")
    @classmethod
    def _trainer(cls, value: str) -> str:
        from common.trainers.registry import TRAINERS  # the registry imports this module

        if value not in TRAINERS:
            raise ValueError(f"unknown trainer; registered: {', '.join(sorted(TRAINERS))}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return FeatureConfig._device(value)


class SynthesisConfig(Section):
    """Synthetic pool sizes (seed 002 §4.5)."""

    # Federated: 10K samples per emotion from each session's generator.
    per_class_federated: int = Field(10_000, ge=1)
    # Centralized: 40K per emotion from the one generator fine-tuned on the pooled sessions.
    per_class_central: int = Field(40_000, ge=1)
    # Samples per generator call: memory is one batch, never the pool.
    batch_size: int = Field(64, ge=1)


# IEMOCAP's five sessions: one node each in the federated regimes (simulated node i holds SESSIONS[i]).
SESSIONS: tuple[int, ...] = (1, 2, 3, 4, 5)


class FoldConfig(Section):
    """Leave-one-session-out folds (seed 002 §4.4), or k stratified folds for corpora without
    sessions (seed 004's RAVDESS protocol: five folds, 80/20 train/test)."""

    scheme: Literal["session", "kfold"] = "session"
    k: int = Field(5, ge=2, description="kfold: number of folds (seed 004: 5)")
    seed: int = Field(0, description="kfold: shuffling seed")

    # "speaker": one speaker of the held-out session validates, the other tests;
    # "session": the whole held-out session is the test set (no validation set).
    holdout: Literal["speaker", "session"] = "speaker"
    validation_gender: Literal["F", "M"] = "F"
    # The folds to run, by held-out session (training always uses every other session).
    sessions: tuple[int, ...] = SESSIONS

    @field_validator("sessions")
    @classmethod
    def _sessions(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        bad = [s for s in value if s not in range(1, 6)]
        if bad or not value or len(set(value)) != len(value):
            raise ValueError(f"sessions must be distinct values in 1..5, got {list(value)}")
        return value


# "HANDLER:SESSION": that session's ClientApp raises in that handler (failure drills and tests).
FailureSpec = Annotated[str, StringConstraints(pattern=r"^(query|train\.gan|train|evaluate):[1-5]$")]


class FederationConfig(Section):
    """How clients are formed and how the federated regimes (Flower apps) run."""

    partition: Literal["session", "speaker", "dirichlet"] = "session"
    num_clients: int = Field(5, ge=1, description="number of clients for the dirichlet partition")
    dirichlet_alpha: float = Field(0.5, gt=0)
    # fedavg: the server-side strategy (flwr.serverapp.strategy), rounds, local SER iterations per round.
    # Seed 002 has no FedAvg baseline; 20 x 500 local steps ~ its SER schedule (30K) over 4 nodes / 3.
    strategy: Literal["fedavg", "fedprox", "fedadam"] = "fedavg"
    rounds: int = Field(20, ge=1)
    local_iterations: int = Field(500, ge=1)
    proximal_mu: float = Field(0.01, ge=0, description="FedProx: weight of the proximal term")
    server_lr: float = Field(0.01, gt=0, description="FedAdam: server learning rate (eta)")
    # Generators go back to the server in fp16 (half the bytes; bf16 is refused by ArrayRecord).
    generator_fp16: bool = False
    # Seconds to wait for replies of one message round / for the nodes to connect; nothing waits forever.
    timeout: float = Field(1800.0, gt=0)
    node_wait: float = Field(120.0, gt=0)
    # Simulation: Ray resources per virtual node (Flower's client-resources-num-cpus/-num-gpus).
    client_cpus: int = Field(1, ge=1)
    client_gpus: float = Field(0.0, ge=0)
    failures: tuple[FailureSpec, ...] = ()


class TrackingConfig(Section):
    """Where runs are logged; None = a local sqlite store at work_dir/mlflow.db."""

    uri: str | None = None
    experiment: str = "fedser"


# DESIGN.md's five regimes; the centralized ones run in-process, the federated ones through Flower.
Regime = Literal["real-central", "gan-central", "gan-federated", "baseline-gan", "fedavg"]
CENTRAL_REGIMES: tuple[Regime, ...] = ("real-central", "gan-central", "baseline-gan")
FEDERATED_REGIMES: tuple[Regime, ...] = ("gan-federated", "fedavg")
ALL_REGIMES: tuple[Regime, ...] = ("real-central", "gan-central", "gan-federated", "baseline-gan", "fedavg")


class StudyConfig(Section):
    """Everything one study needs."""

    name: str = "demo"
    preset: Preset = "tiny"
    work_dir: Path = Path("outputs")
    # The regimes to run, in this order (names as in DESIGN.md, also the MLflow "regime" tag).
    regimes: tuple[Regime, ...] = ALL_REGIMES
    # Centralized folds run in this many processes at once (0 = one per CPU core, 1 = in-process).
    workers: int = Field(0, ge=0)
    # Every regime runs once per trainer listed here (empty = just ``training.trainer``): a
    # paper's variants side by side, each a parent run tagged ``trainer`` in MLflow.
    trainers: tuple[str, ...] = ()
    data: DataConfig = DataConfig()
    features: FeatureConfig = FeatureConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    synthesis: SynthesisConfig = SynthesisConfig()
    folds: FoldConfig = FoldConfig()
    federation: FederationConfig = FederationConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _federated_by_session(self) -> StudyConfig:
        if any(r in FEDERATED_REGIMES for r in self.regimes) and self.folds.scheme != "session":
            raise ValueError("the federated regimes hold out one session node per fold: folds.scheme = \"kfold\" "
                             "runs centralized regimes only; drop gan-federated/fedavg from regimes")
        if any(r in FEDERATED_REGIMES for r in self.regimes) and self.federation.partition != "session":
            raise ValueError("the federated regimes run one node per session: set federation.partition = "
                             "\"session\" or drop gan-federated/fedavg from regimes")
        return self

    @field_validator("trainers")
    @classmethod
    def _trainers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            TrainingConfig._trainer(name)
        return value

    def with_trainer(self, name: str) -> StudyConfig:
        """This study with ``training.trainer = name``."""
        return self.model_copy(update={"training": self.training.model_copy(update={"trainer": name})})

    @property
    def study_trainers(self) -> tuple[str, ...]:
        """The trainers the study runs each regime with."""
        return self.trainers or (self.training.trainer,)

    @field_validator("work_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Flower apps run with the SuperLink's cwd (notes/flower-1.41.md §2.5): pin it now.
        return value.expanduser().resolve()

    @property
    def corpus_dir(self) -> Path:
        """Where the embedded synthetic corpora are written."""
        return self.work_dir / "corpora"

    @property
    def pretrained_path(self) -> Path:
        """Where ``fedser pretrain`` writes and studies read the pre-trained GAN."""
        return self.model.pretrained or self.work_dir / "checkpoints" / "pretrained.pt"

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI: configured, or a local sqlite store with an absolute path."""
        return self.tracking.uri or f"sqlite:///{self.work_dir / 'mlflow.db'}"

    @property
    def feature_cache_dir(self) -> Path:
        """The feature cache folder."""
        return self.features.cache_dir or self.work_dir / "cache" / "features"

    def flat(self) -> dict[str, str]:
        """``{"data.subset": "all", ...}``: the validated config as flat strings (MLflow params)."""
        return _flatten(self.model_dump(mode="json"))


# Sizes per preset; an experiment file is applied on top of its preset.
PRESETS: dict[Preset, dict[str, Any]] = {
    # Exactly the papers' values (seed 002 Table 1 and §4.4): the field defaults.
    "paper": {},
    # A CPU demo that runs all five regimes x five folds in ~11 min on 2 cores: Table 1's structure
    # at 1/8 of the channels on 32x32 patches (32 mels), the paper's batch of 32, short schedules with
    # larger learning rates, small synthetic pools. Measured on the synthetic corpus: 64x64 patches
    # cost 2.5x per GAN step (109 vs 44 ms); a batch of 16 left the conditional generator too
    # undiverse for SER trained on it alone.
    "tiny": {
        "features": {"params": {"n_mels": 32}, "patch_frames": 32, "window_hop": 16},
        "model": {
            "width": 0.125, "n_z": 32,
            "chang": {"channels": [8, 16, 32, 64], "hidden": 32, "n_z": 16, "lr": 1e-3},
            "tu": {"tdnn": [[32, 5, 2], [16, 3, 4]], "lstm": 16, "embedding": 32, "head_hidden": 16, "lr": 1e-2},
            "tripathi": {"filters": 16, "hidden": 32, "decoder": [64]},
            "fcn": {"padding": "same", "zhang_channels": [8, 16, 24, 24, 16], "lr": 1e-2},
        },
        "training": {
            "batch_size": 32, "ae_lr": 1e-3, "ae_iterations": 1000, "g_lr": 2e-4, "d_lr": 4e-4,
            "gan_iterations": 500, "finetune_iterations": 600, "ser_lr": 1e-3, "ser_lr_decay_every": 400,
            "ser_iterations": 600, "eval_every": 100, "bagan_lr": 2e-4, "bagan_ae_iterations": 250,
            "bagan_gan_iterations": 250,
        },
        "synthesis": {"per_class_federated": 250, "per_class_central": 1000, "batch_size": 64},
        "federation": {"rounds": 6, "local_iterations": 50},
    },
}


# The tiny preset's extractor sizes for the other papers' features (``features.kind``); the paper
# preset keeps each extractor's paper defaults. A file that sets ``features.params`` replaces these.
TINY_FEATURE_PARAMS: dict[str, dict[str, int | float]] = {
    "logmel": {"n_mels": 32}, "stft": {"n_bins": 32}, "mel6s": {"n_mels": 32}, "mfcc6s": {"n_mfcc": 20},
    "mfcc_vad": {}, "mean_spectrum": {},
}


class ConfigError(ValueError):
    """A config file with one or more problems; the message lists all of them."""


def load_config(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> StudyConfig:
    """Load a study config: defaults <- preset <- TOML file at ``path`` <- ``overrides``."""
    source = str(path) if path is not None else "<defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{source}: no such config file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    data = _merge(data, dict(overrides or {}))
    preset = data.get("preset", "tiny")
    if preset not in PRESETS:
        raise ConfigError(f"{source}: preset: must be one of {sorted(PRESETS)}, got {preset!r}")
    base = PRESETS[preset]
    features = data.get("features", {})
    if preset == "tiny" and isinstance(features, Mapping) and features.get("kind", "logmel") != "logmel":
        params = TINY_FEATURE_PARAMS.get(str(features["kind"]), {})
        base = {**base, "features": {**base["features"], "params": params}}
    if isinstance(features, Mapping) and "params" in features:  # the file's params replace the preset's
        base = {**base, "features": {k: v for k, v in base.get("features", {}).items() if k != "params"}}
    try:
        return StudyConfig.model_validate(_merge(base, data))
    except ValidationError as exc:
        lines = [_describe(err) for err in exc.errors()]
        raise ConfigError(
            f"{source}: {len(lines)} error(s)\n" + "\n".join(f"  {line}" for line in lines)
        ) from None


def _describe(err: Mapping[str, Any]) -> str:
    """One line per error: the dotted key, what is wrong, and what is allowed."""
    loc = tuple(str(x) for x in err["loc"])
    key = ".".join(loc) or "<root>"
    if err["type"] == "extra_forbidden":
        allowed = sorted(_section_of(loc[:-1]).model_fields)
        return f"{key}: unknown key; allowed here: {', '.join(allowed)}"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{key}: {message} (got {err.get('input')!r})"


def _section_of(loc: tuple[str, ...]) -> type[BaseModel]:
    model: type[BaseModel] = StudyConfig
    for part in loc:
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return model


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and key != "label_map":
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def config_from_run(run_config: Mapping[str, Any]) -> StudyConfig:
    """The study config a Flower run carries (``[tool.flwr.app.config]`` in pyproject.toml).

    ``study-config`` is the resolved config as JSON (what ``fedser study`` sends, so that remote
    nodes need no file), a path to a study TOML, or "" for the embedded default; a non-empty
    ``work-dir`` replaces ``work_dir`` (give it absolutely: apps run in the SuperLink's cwd).
    """
    source = str(run_config.get("study-config", "")).strip()
    work_dir = str(run_config.get("work-dir", "")).strip()
    overrides = {"work_dir": work_dir} if work_dir else {}
    if source.startswith("{"):
        try:
            data = _merge(json.loads(source), overrides)
            return StudyConfig.model_validate(data)
        except (json.JSONDecodeError, ValidationError) as exc:
            raise ConfigError(f"run config study-config: not a valid study config: {exc}") from None
    return load_config(Path(source) if source else None, overrides)
