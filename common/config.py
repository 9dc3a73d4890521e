"""The study's configuration: frozen pydantic models, presets, and TOML loading.

Validation happens once, at the edge: everything below receives a typed
:class:`common.schema.StudyConfig`, the one study config, which adds the registered trainer
families and extractors to the sections defined here (:class:`StudySections`). An experiment file holds only its differences from the defaults;
its ``preset`` (``tiny`` or ``paper``) picks the sizes it starts from.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

Preset = Literal["paper", "tiny", "small"]
S = TypeVar("S", bound="Section")
Study = TypeVar("Study", bound="StudySections")  # a schema: common.schema.StudyConfig

# Seed 002 §4.1: neutral, happy (excited merged into it), angry, sad; IEMOCAP's reader maps with these
# (notes §0.2: every peer toolkit drops fru, sur, fea, dis, oth, xxx).
CLASSES_4: tuple[str, ...] = ("neu", "hap", "ang", "sad")
DEFAULT_LABEL_MAP: dict[str, str] = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}


def _absolute_path(value: Path | None) -> Path | None:
    """``value`` made absolute against the current directory (``~`` expanded; symlinks kept).

    Relative paths from a config file were already anchored at its folder by :func:`read_config`;
    what is still relative here came from overrides or code, and Flower apps run with the
    SuperLink's cwd (notes/flower-1.41.md §2.5): pin it now.
    """
    return None if value is None else Path(os.path.abspath(value.expanduser()))


class Section(BaseModel):
    """A frozen config section that refuses unknown keys."""

    # validate_default: defaults go through the same validators (e.g. work_dir made absolute).
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # Sizes the ``tiny`` preset gives this section (a family's section declares its own).
    tiny: ClassVar[dict[str, Any]] = {}


class SyntheticConfig(Section):
    """The embedded synthetic corpora, written on first use when no corpus root is given."""

    seed: int = 0
    utterances_per_dialog: int = Field(12, ge=2, le=200)
    pretrain_speakers: int = Field(10, ge=1, le=500)


# The corpus kinds, the one list: common/corpora reads each, the config and the CLI take these names.
LabeledCorpus = Literal["iemocap", "ravdess", "cremad", "msppodcast"]
CorpusKind = Literal[LabeledCorpus, "librispeech", "folder"]
LABELED_CORPORA: tuple[str, ...] = get_args(LabeledCorpus)
CORPUS_KINDS: tuple[str, ...] = get_args(CorpusKind)


class DataConfig(Section):
    """Which labeled corpus, which part of it, and which classes."""

    corpus: LabeledCorpus = "iemocap"
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

    _paths = field_validator("root", "pretrain_root")(_absolute_path)

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

    # A name in common.features.EXTRACTORS (the study schema checks it and ``params``).
    kind: str = "logmel"
    # Overrides of the extractor's paper defaults, e.g. {n_mels = 64} (checked against the extractor).
    params: dict[str, int | float] = Field(default_factory=dict)
    backend: Literal["torch", "librosa"] = "torch"
    device: str = "cpu"
    # Seed 002 §4.2-4.3: 128x128 patches, sliding windows with a hop of 32 frames.
    patch_frames: int = Field(128, ge=8)
    window_hop: int = Field(32, ge=1)
    # None = work_dir/cache/features.
    cache_dir: Path | None = None

    _paths = field_validator("cache_dir")(_absolute_path)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        """cpu, cuda, cuda:N or auto (cuda when available)."""
        if value not in {"cpu", "cuda", "auto"} and not value.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {value!r}")
        return value


class ModelConfig(Section):
    """Model sizes; the preset fills them (``paper`` = the papers' tables).

    The seed 002 GAN's sizes live here; every other model family's section (``[model.chang]``, ...)
    is declared beside its trainer and added by the study schema (common/schema.py).
    """

    # Width multiplier on every channel count (1.0 = Table 1 of seed 002).
    width: float = Field(1.0, gt=0, le=4)
    # Seed 002 §4.4: noise dimension N_z = 128.
    n_z: int = Field(128, ge=1)
    # Pre-trained GAN checkpoint (``fedser pretrain``); None = work_dir/checkpoints/pretrained.pt.
    pretrained: Path | None = None

    _paths = field_validator("pretrained")(_absolute_path)

    def section(self, kind: type[S]) -> S:
        """The family section of type ``kind`` (a registered trainer's ``[model.<family>]``)."""
        for name in type(self).model_fields:
            value = getattr(self, name)
            if type(value) is kind:
                return value
        raise LookupError(f"the model config has no {kind.__name__} section: is its trainer registered?")


class DpConfig(Section):
    """Differentially private stage 3 (``training.dp``; common/privacy.py): the discriminator's
    gradient on each node's real utterances is clipped per utterance and noised (DP-SGD, Abadi et
    al. 2016), so the generator (and gan-fedavg's averaged discriminator) is (epsilon, delta)-DP
    for the node's utterances by post-processing (Xie et al. 2018, DP-GAN)."""

    # The budget: with ``noise_multiplier`` unset, each node picks the noise that spends at most
    # this over its whole stage 3; the server refuses a generator whose spent epsilon exceeds it.
    epsilon: float | None = Field(None, gt=0)
    # sigma, the noise's standard deviation over the clip norm; set it to fix the noise instead.
    noise_multiplier: float | None = Field(None, gt=0)
    # C: each utterance's gradient is scaled to at most this L2 norm (over D's trained parameters).
    clip: float = Field(1.0, gt=0)
    # delta; unset = 1 / N, N the utterances the discriminator trains on (the paper is silent; the
    # usual choice is delta < 1/N, and 1/N is the largest that still protects every utterance).
    delta: float | None = Field(None, gt=0, lt=1)
    # Opacus's accountants: Renyi DP (Mironov 2017, the moments accountant's successor) or PRV
    # (Gopi et al. 2021, tighter).
    accountant: Literal["rdp", "prv"] = "rdp"


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
    # Stage-3 switches against mode collapse on small data; all off in the paper (common/trainers/gan.py):
    # ramp the class part of the N_c + 1 cross-entropy from 0 to 1 over this many steps (0 = off);
    finetune_class_ramp: int = Field(0, ge=0)
    # differentiable augmentations of every discriminator input (common/trainers/augment.py);
    finetune_augment: tuple[Literal["shift", "time_mask", "freq_mask", "gain"], ...] = ()
    # keep the generator that scores best every this many steps against held-out utterances
    # of its own node (common/audit.py: selection_score; 0 = keep the last).
    finetune_select_every: int = Field(0, ge=0)
    # the mode-seeking regulariser's weight (Mao et al. 2019, MSGAN; 0 = off);
    finetune_mode_seeking: float = Field(0.0, ge=0)
    # FreezeD (Mo et al. 2020): this many of the discriminator's lowest convolutions keep their
    # pre-trained weights in stage 3 (0 = off; Table 1 has 8).
    finetune_freeze_d: int = Field(0, ge=0, le=8)
    # keep the exponential moving average of the generator's stage-3 iterates, this decay per step
    # (common/trainers/base.py: AverageWeights; Yazici et al. 2019; 0 = the last iterate).
    finetune_ema: float = Field(0.0, ge=0, lt=1)
    # the discriminator's stage-3 learning rate (None = d_lr, the paper's "same learning rates"): a
    # preset can give stage 3 the paper's D/G ratio of 10 without changing its pre-training.
    finetune_d_lr: float | None = Field(None, gt=0)
    # Differentially private stage 3 (DpConfig; None = off, the paper).
    dp: DpConfig | None = None
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
    # The SER model every regime trains (a name in common/trainers/registry.py; the schema checks it).
    trainer: str = "ser-cnn"
    # Torch/BLAS threads of each process that trains (common/threads.py): N fixed (bit-for-bit
    # reruns), 0 = the cores the job actually has, re-measured while it trains.
    threads: int = Field(0, ge=0)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return FeatureConfig._device(value)

    @model_validator(mode="after")
    def _private_selection(self) -> Self:
        if self.dp is not None and self.finetune_select_every:
            raise ValueError("training.dp: generator selection (training.finetune_select_every) scores against the "
                             "node's held-out utterances, which the privacy accountant does not cover; "
                             "set finetune_select_every = 0")
        if self.finetune_ema and self.finetune_select_every:
            raise ValueError("training.finetune_ema and training.finetune_select_every both choose the weights stage 3 "
                             "keeps (the average of the iterates / the best-scoring one); set one of them to 0")
        return self


class SynthesisConfig(Section):
    """Synthetic pool sizes (seed 002 §4.5)."""

    # Federated: 10K samples per emotion from each session's generator.
    per_class_federated: int = Field(10_000, ge=1)
    # Centralized: 40K per emotion from the one generator fine-tuned on the pooled sessions.
    per_class_central: int = Field(40_000, ge=1)
    # Samples per generator call: memory is one batch, never the pool.
    batch_size: int = Field(64, ge=1)
    # Train the SER models on the generators an earlier run logged (its MLflow run id) instead of
    # training generators: seed 002 §5, the data may be gone when a later model is trained.
    from_run: str | None = None


class AuditConfig(Section):
    """The generator audit (common/audit.py): quality and privacy figures of every generator."""

    enabled: bool = True
    # Share of every generator's utterances held back from its fine-tuning (by a hash of the
    # utterance id), so that membership can be tested on unseen utterances of the same speakers.
    holdout: float = Field(0.2, gt=0, lt=1)
    # Generated (and real) samples per class the figures are computed on.
    samples_per_class: int = Field(500, ge=10)
    # Training steps of the audit's classifiers (seed 002's SER network, GAN-test / GAN-train).
    iterations: int = Field(2000, ge=1)
    # k-means cells of the data-copying statistic C_T (Meehan et al. 2020).
    cells: int = Field(5, ge=1)
    # The speaker-gender attack on gan-federated's generators (common/attacks.py), run by the
    # server when every training node holds one speaker (federation.partition = "speaker"),
    # with this many public utterances per gender from the pre-training corpus.
    gender_attack: bool = True
    gender_public_per_gender: int = Field(200, ge=1)


# IEMOCAP's five sessions: one node each in the federated regimes (simulated node i holds SESSIONS[i]).
SESSIONS: tuple[int, ...] = (1, 2, 3, 4, 5)


class FoldConfig(Section):
    """Leave-one-session-out folds (seed 002 §4.4), k stratified folds for corpora without
    sessions (seed 004's RAVDESS protocol: five folds, 80/20 train/test), or a corpus's own
    split (MSP-Podcast's Split_Set: train on session 1, validate on session 2, test on each
    session of ``sessions``; common/splits.py)."""

    scheme: Literal["session", "kfold", "split"] = "session"
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

    # Who trains (docs/federated.md, "Clients: partitions"): "session" = one node per session (seed 002's five);
    # "speaker" = one node per speaker; "dirichlet" = num_clients nodes with label skew
    # dirichlet_alpha; "iid" = num_clients nodes with uniform random shards. Shards never cross a
    # session (a node's generator then serves every fold its session trains in, and the held-out
    # session never trains): num_clients are spread over the sessions, the first ones one more.
    # With a partition other than "session", one more node per session holds it whole and only
    # evaluates (the held-out session's node).
    partition: Literal["session", "speaker", "dirichlet", "iid"] = "session"
    num_clients: int = Field(20, ge=1, description="dirichlet / iid: training nodes over all sessions")
    dirichlet_alpha: float = Field(0.5, gt=0)
    min_partition_size: int = Field(2, ge=1, description="fewest utterances a training node must hold to be asked "
                                    "to train (dirichlet: every draw of shards, too)")
    # Flower's own sampling arguments (its strategies'): nodes asked to train per round.
    fraction_train: float = Field(1.0, gt=0, le=1)
    min_train_nodes: int = Field(1, ge=1)
    # Strategy regimes' parameters (flwr.serverapp.strategy; Flower's defaults unless said).
    server_momentum: float = Field(0.9, ge=0, description="fedavgm: server momentum")
    trim_beta: float = Field(0.2, gt=0, lt=0.5, description="fedtrimmedavg: fraction cut at each end")
    num_malicious: int = Field(0, ge=0, description="krum / multikrum / bulyan: assumed Byzantine nodes")
    qffl_q: float = Field(0.1, ge=0, description="qfedavg: the q of q-FFL")
    dp_noise: float = Field(0.1, ge=0, description="dp-fixed / dp-adaptive: noise multiplier")
    dp_clip: float = Field(1.0, gt=0, description="dp-fixed: clipping norm (dp-adaptive: its start)")
    # Straggler drill: this fraction of training nodes (chosen by a hash of name and seed) sleeps
    # `slow_seconds` before each train reply; with `timeout` below it they are dropped and recorded.
    slow_fraction: float = Field(0.0, ge=0, le=1)
    slow_seconds: float = Field(0.0, ge=0)
    # Strategy regimes: rounds, local SER iterations per round. Seed 002 has no FedAvg baseline;
    # 20 x 500 local steps ~ its SER schedule (30K) over 4 nodes / 3.
    rounds: int = Field(20, ge=1)
    local_iterations: int = Field(500, ge=1)
    proximal_mu: float = Field(0.01, ge=0, description="FedProx: weight of the proximal term")
    server_lr: float = Field(0.01, gt=0, description="fedadam / fedadagrad / fedyogi: server learning rate (eta)")
    # gan-fedavg (FedGAN, Rasouli et al. 2020): generator and discriminator averaged every round; each
    # round runs finetune_iterations / gan_rounds local steps, so a node's steps equal gan-federated's.
    gan_rounds: int = Field(10, ge=1)
    # gan-fedavg: each node keeps its G and D Adam moments from one round of a fold to the next (in
    # Flower's node state; they never leave the node). FedGAN (Rasouli et al. 2020) states its local
    # steps as plain SGD, which has no state; a fresh Adam re-runs its bias-corrected first steps
    # (each ~lr in size, whatever the gradient) every round. False: fresh Adam each round.
    gan_local_state: bool = False
    # Simulation only: where the simulated nodes read the corpus (default data.root); a deployment's
    # nodes name their copy in their node config (data-root). With synthesis.from_run, the server
    # then needs no corpus at all.
    node_data_root: Path | None = None
    # Generators go back to the server in fp16 (half the bytes; bf16 is refused by ArrayRecord).
    generator_fp16: bool = False
    # Seconds to wait for replies of one message round / for the nodes to connect; nothing waits forever.
    timeout: float = Field(1800.0, gt=0)
    node_wait: float = Field(120.0, gt=0)
    # Simulation: Ray resources per virtual node (Flower's client-resources-num-cpus/-num-gpus).
    client_cpus: int = Field(1, ge=1)
    client_gpus: float = Field(0.0, ge=0)
    failures: tuple[FailureSpec, ...] = ()

    _paths = field_validator("node_data_root")(_absolute_path)

    @model_validator(mode="after")
    def _slow_needs_shards(self) -> FederationConfig:
        # Only shard nodes train and nothing else (a session node is also a fold's evaluator), so
        # the drill slows shards alone: under the session partition it would silently do nothing.
        if self.slow_fraction and self.partition == "session":
            raise ValueError("slow_fraction slows shard nodes only, and partition = \"session\" has none: "
                             "set partition to \"speaker\", \"dirichlet\" or \"iid\", or slow_fraction = 0")
        return self

    @model_validator(mode="before")
    @classmethod
    def _no_strategy_key(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "strategy" in data:
            raise ValueError(f"federation.strategy = {data['strategy']!r} is gone: every strategy is a regime of its "
                             f"own; list it in regimes instead, e.g. regimes = [\"{data['strategy']}\"]")
        return data


class TrackingConfig(Section):
    """Where runs are logged; None = a local sqlite store at work_dir/mlflow.db."""

    uri: str | None = None
    experiment: str = "fedser"

    @field_validator("uri")
    @classmethod
    def _not_a_file_store(cls, uri: str | None) -> str | None:
        # MLflow 3 refuses its file store (./mlruns, file://...) unless MLFLOW_ALLOW_FILE_STORE is
        # true, with a page-long traceback deep in the first run: say it here, in one line.
        if uri is None or os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("true", "1"):
            return uri
        scheme = uri.partition("://")[0] if "://" in uri else ""
        if scheme in ("", "file"):
            raise ValueError("an MLflow file store, which MLflow 3 keeps read-only: use a database, "
                             "e.g. 'sqlite:////abs/path/mlflow.db', leave uri unset (work_dir/mlflow.db), or set "
                             "MLFLOW_ALLOW_FILE_STORE=true")
        return uri


# The strategy regimes: the configured SER trainer federated by one of Flower's server-side
# strategies (flwr.serverapp.strategy, server/regimes.py), each its own regime row.
# Not here: DifferentialPrivacyClientSide* (they need clipping mods in the ClientApp) and
# FedXgbBagging/FedXgbCyclic (XGBoost models as bytes, not weight arrays).
Strategy = Literal["fedavg", "fedprox", "fedadam", "fedadagrad", "fedyogi", "fedavgm", "fedmedian", "fedtrimmedavg",
                   "krum", "multikrum", "bulyan", "qfedavg", "dp-fixed", "dp-adaptive"]
STRATEGY_REGIMES: tuple[Strategy, ...] = get_args(Strategy)
# DESIGN.md's five regimes, FedGAN's gan-fedavg, and the strategy regimes; the centralized ones run
# in-process, the federated ones through Flower.
Regime = Literal["real-central", "gan-central", "gan-federated", "gan-fedavg", "baseline-gan", Strategy]
CENTRAL_REGIMES: tuple[Regime, ...] = ("real-central", "gan-central", "baseline-gan")
FEDERATED_REGIMES: tuple[Regime, ...] = ("gan-federated", "gan-fedavg", *STRATEGY_REGIMES)
# The demo's six (the default `regimes`): fedavg stands for the strategy regimes.
ALL_REGIMES: tuple[Regime, ...] = ("real-central", "gan-central", "gan-federated", "gan-fedavg", "baseline-gan", "fedavg")
# The regimes training.dp makes private: stage 3 of the proposed GAN, the nodes' local SER training.
PRIVATE_REGIMES: tuple[Regime, ...] = ("gan-central", *FEDERATED_REGIMES)
# The regimes whose SER model trains on generated samples (each generator is audited).
GAN_REGIMES: tuple[Regime, ...] = ("gan-central", "gan-federated", "gan-fedavg", "baseline-gan")


class StudySections(Section):
    """Everything one study needs but the registries' parts: the base of :class:`common.schema.StudyConfig`
    (this module imports nothing from the project, so the trainers it configures can import it)."""

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
    # Every (regime, trainer) runs once per seed listed here (empty = just ``training.seed``): the
    # seed replaces ``training.seed`` in that run, whose child runs are tagged ``seed``.
    seeds: tuple[int, ...] = ()
    # The privacy-utility curve: the study runs once per budget listed here (inf = no DP), each
    # as ``training.dp.epsilon`` (its other keys apply to all) in its own MLflow experiment,
    # "<tracking.experiment>-eps<epsilon>". The regimes training.dp does not cover (real-central,
    # baseline-gan) run once, at the largest budget: their result does not depend on it.
    epsilons: tuple[float, ...] = ()
    data: DataConfig = DataConfig()
    features: FeatureConfig = FeatureConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    synthesis: SynthesisConfig = SynthesisConfig()
    folds: FoldConfig = FoldConfig()
    federation: FederationConfig = FederationConfig()
    tracking: TrackingConfig = TrackingConfig()
    audit: AuditConfig = AuditConfig()

    @model_validator(mode="after")
    def _federated_by_session(self) -> Self:
        if any(r in FEDERATED_REGIMES for r in self.regimes) and self.folds.scheme == "kfold":
            raise ValueError("the federated regimes hold out one session node per fold: folds.scheme = \"kfold\" "
                             "runs centralized regimes only; drop the federated regimes from regimes")
        return self

    @model_validator(mode="after")
    def _budgets(self) -> Self:
        dp = self.training.dp
        if any(not e > 0 for e in self.epsilons):
            raise ValueError("epsilons: every budget must be > 0 (inf: no differential privacy), e.g. [inf, 10, 3, 1]")
        if self.epsilons and dp is not None and (dp.epsilon is not None or dp.noise_multiplier is not None):
            raise ValueError("epsilons sets training.dp.epsilon for each study: remove training.dp.epsilon and "
                             "noise_multiplier (keep clip, delta, accountant), or remove epsilons")
        if any(math.isfinite(e) for e in self.epsilons) and self.training.finetune_select_every:
            raise ValueError("epsilons: generator selection (training.finetune_select_every) scores against the "
                             "node's held-out utterances, which the privacy accountant does not cover; "
                             "set finetune_select_every = 0 or list only inf")
        if not self.epsilons and dp is not None and dp.epsilon is None and dp.noise_multiplier is None:
            raise ValueError("training.dp needs epsilon (a budget the noise is fitted to) or noise_multiplier; "
                             "set one, list budgets in epsilons, or remove training.dp")
        return self

    def with_epsilon(self, epsilon: float) -> Self:
        """This study at budget ``epsilon`` (inf: training.dp off) without the ``epsilons`` axis, in
        the experiment :func:`epsilon_experiment` names; at a budget below the axis's largest, only
        the regimes training.dp covers."""
        dp = None if math.isinf(epsilon) else (self.training.dp or DpConfig()).model_copy(update={"epsilon": epsilon})
        regimes = self.regimes if epsilon >= max(self.epsilons, default=epsilon) else tuple(
            r for r in self.regimes if r in PRIVATE_REGIMES)
        return self.model_copy(update={
            "epsilons": (), "regimes": regimes,
            "training": self.training.model_copy(update={"dp": dp}),
            "tracking": self.tracking.model_copy(update={
                "experiment": epsilon_experiment(self.tracking.experiment, epsilon)})})

    @property
    def budget_studies(self) -> list[tuple[float, Self]]:
        """(budget, study) for each study the ``epsilons`` axis runs, largest budget first (without the
        axis: this study, at training.dp.epsilon or inf); a budget left with no regime (real-central
        alone at a finite one) is left out."""
        if not self.epsilons:
            dp = self.training.dp
            return [(dp.epsilon if dp is not None and dp.epsilon is not None else math.inf, self)]
        studies = [(e, self.with_epsilon(e)) for e in sorted(set(self.epsilons), reverse=True)]
        return [(e, s) for e, s in studies if s.regimes]

    def with_trainer(self, name: str) -> Self:
        """This study with ``training.trainer = name``."""
        return self.model_copy(update={"training": self.training.model_copy(update={"trainer": name})})

    @property
    def study_trainers(self) -> tuple[str, ...]:
        """The trainers the study runs each regime with."""
        return self.trainers or (self.training.trainer,)

    def with_seed(self, seed: int) -> Self:
        """This study with ``training.seed = seed``."""
        return self.model_copy(update={"training": self.training.model_copy(update={"seed": seed})})

    @property
    def study_seeds(self) -> tuple[int, ...]:
        """The seeds the study runs each (regime, trainer) with."""
        return tuple(dict.fromkeys(self.seeds)) or (self.training.seed,)

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

    @classmethod
    def preset_values(cls, preset: Preset, feature_kind: str) -> dict[str, Any]:
        """What ``preset`` sets before an experiment file is applied (the schema adds its families')."""
        return PRESETS[preset]

    def flat(self) -> dict[str, str]:
        """``{"data.subset": "all", ...}``: the validated config as flat strings (MLflow params)."""
        return _flatten(self.model_dump(mode="json"))


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# Sizes per preset; an experiment file is applied on top of its preset.
PRESETS: dict[Preset, dict[str, Any]] = {
    # Exactly the papers' values (seed 002 Table 1 and §4.4): the field defaults.
    "paper": {},
    # A CPU demo (five regimes x five folds took ~11 min on 2 cores before gan-fedavg and the audit): Table 1's structure
    # at 1/8 of the channels on 32x32 patches (32 mels), the paper's batch of 32, short schedules with
    # larger learning rates, small synthetic pools. Measured on the synthetic corpus: 64x64 patches
    # cost 2.5x per GAN step (109 vs 44 ms); a batch of 16 left the conditional generator too
    # undiverse for SER trained on it alone.
    "tiny": {
        # + the extractor's ``tiny`` params (common/schema.py), e.g. 32 mels for logmel.
        "features": {"patch_frames": 32, "window_hop": 16},
        "model": {"width": 0.125, "n_z": 32},  # + each family section's ``tiny`` (common/schema.py)
        "training": {
            "batch_size": 32, "ae_lr": 1e-3, "ae_iterations": 1000, "g_lr": 2e-4, "d_lr": 4e-4,
            "gan_iterations": 500, "finetune_iterations": 600, "ser_lr": 1e-3, "ser_lr_decay_every": 400,
            "ser_iterations": 600, "eval_every": 100, "bagan_lr": 2e-4, "bagan_ae_iterations": 250,
            "bagan_gan_iterations": 250,
            # One thread per process: at these op sizes a 2nd thread gains 1.35x alone but loses 3x
            # beside another job (common/threads.py); the studies run their folds and nodes in processes.
            "threads": 1,
        },
        "synthesis": {"per_class_federated": 250, "per_class_central": 1000, "batch_size": 64},
        "federation": {"rounds": 6, "local_iterations": 50, "gan_rounds": 6},
        "audit": {"samples_per_class": 150, "iterations": 300},
    },
}
# The tiny sizes with the longer stage 3 that kept the generators' diversity best in the ablations
# (docs/generators.md, "The small preset"): 3x the steps, the class loss ramped in over the first
# half, the four DiffAugment transforms, stage 3 at the paper's D/G learning-rate ratio of 10 (tiny: 2)
# and the generator's iterates averaged. Stages 1-2 are tiny's, so the two share a checkpoint.
PRESETS["small"] = _merge(PRESETS["tiny"], {"training": {
    "finetune_iterations": 1800, "finetune_class_ramp": 900,
    "finetune_augment": ("shift", "time_mask", "freq_mask", "gain"), "finetune_d_lr": 2e-3, "finetune_ema": 0.997,
}})


# What each corpus root should point at (config_warnings' advice).
_CORPUS_COPIES: dict[str, str] = {
    "iemocap": "your copy of IEMOCAP (IEMOCAP_full_release)", "ravdess": "your copy of RAVDESS (Actor_01 ...)",
    "cremad": "your copy of CREMA-D (the folder holding AudioWAV/)",
    "msppodcast": "your copy of MSP-Podcast (the folder holding Audios/ and Labels/)",
    "librispeech": "your copy of a LibriSpeech subset (e.g. train-clean-360)",
    "folder": "a folder of audio files",
}


def config_warnings(cfg: StudySections) -> list[str]:
    """One line per configured path that is not there (what ``fedser config`` prints).

    ``data.root`` and ``data.pretrain_root`` must be folders, ``model.pretrained`` a file (unless
    ``fedser pretrain`` is about to write it); the defaults (None) are always fine.
    """
    warnings: list[str] = []
    data = cfg.data
    if data.root is not None and not data.root.is_dir():
        fallback = " or remove it to use the embedded synthetic corpus" if data.corpus == "iemocap" else ""
        warnings.append(f"data.root = {data.root} {_missing(data.root, 'folder')} "
                        f"(set it to {_CORPUS_COPIES[data.corpus]}{fallback})")
    if data.pretrain_root is not None and not data.pretrain_root.is_dir():
        copy = ("your copy of IEMOCAP" if data.pretrain_corpus == "iemocap"
                else _CORPUS_COPIES[data.pretrain_corpus])
        warnings.append(f"data.pretrain_root = {data.pretrain_root} {_missing(data.pretrain_root, 'folder')} "
                        f"(set it to {copy} or remove it to pre-train on the embedded synthetic corpus)")
    pretrained = cfg.model.pretrained
    if pretrained is not None and not pretrained.is_file():
        warnings.append(f"model.pretrained = {pretrained} {_missing(pretrained, 'file')} (run `fedser pretrain "
                        "CONFIG` to write it there, or remove it to use work_dir/checkpoints/pretrained.pt)")
    return warnings


def _missing(path: Path, kind: Literal["file", "folder"]) -> str:
    """Why ``path`` is not the ``kind`` it should be, as a predicate ("does not exist", ...)."""
    if not path.exists():
        return "does not exist"
    return "is a folder, not a file" if kind == "file" else "is a file, not a folder"


def epsilon_experiment(experiment: str, epsilon: float) -> str:
    """The MLflow experiment of budget ``epsilon`` on a study's ``epsilons`` axis: "fedser-eps3",
    "fedser-epsinf"."""
    return f"{experiment}-eps{epsilon:g}"


class ConfigError(ValueError):
    """A config file with one or more problems; the message lists all of them."""


def read_config(path: Path | None, overrides: Mapping[str, Any] | None, *, schema: type[Study]) -> Study:
    """Load a study config: defaults <- preset <- TOML file at ``path`` <- ``overrides``.

    Relative paths written in the file resolve against the file's folder; relative paths in
    ``overrides`` and the defaults (``work_dir = "outputs"``) against the current directory.

    ``schema``: the class to validate with; callers use common.schema.load_config, which binds
    the full one (every registered trainer family's section).
    """
    source = str(path) if path is not None else "<defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{source}: no such config file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
        data = _anchor_paths(data, schema, Path(os.path.abspath(path)).parent)
    data = _merge(data, dict(overrides or {}))
    preset = data.get("preset", "tiny")
    if preset not in PRESETS:
        raise ConfigError(f"{source}: preset: must be one of {sorted(PRESETS)}, got {preset!r}")
    features = data.get("features", {})
    kind = str(features.get("kind", "logmel")) if isinstance(features, Mapping) else "logmel"
    base = schema.preset_values(preset, kind)
    if isinstance(features, Mapping) and "params" in features:  # the file's params replace the preset's
        base = {**base, "features": {k: v for k, v in base.get("features", {}).items() if k != "params"}}
    return validate(schema, _merge(base, data), source)


def validate(schema: type[Study], data: Mapping[str, Any], source: str) -> Study:
    """``data`` validated by ``schema``; every problem in one ConfigError, one line per key."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(err, schema) for err in exc.errors()]
        raise ConfigError(
            f"{source}: {len(lines)} error(s)\n" + "\n".join(f"  {line}" for line in lines)
        ) from None


def _describe(err: Mapping[str, Any], schema: type[BaseModel]) -> str:
    """One line per error: the dotted key, what is wrong, and what is allowed."""
    loc = tuple(str(x) for x in err["loc"])
    key = ".".join(loc) or "<root>"
    if err["type"] == "extra_forbidden":
        allowed = sorted(_section_of(schema, loc[:-1]).model_fields)
        return f"{key}: unknown key; allowed here: {', '.join(allowed)}"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{key}: {message} (got {err.get('input')!r})"


def _section_of(schema: type[BaseModel], loc: tuple[str, ...]) -> type[BaseModel]:
    model = schema
    for part in loc:
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return model


def path_keys(schema: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The location of every ``Path`` field of ``schema`` (``("data", "root")``, ...), sections included."""
    for name, field in schema.model_fields.items():
        annotation = field.annotation
        if annotation is Path or Path in get_args(annotation):
            yield (*prefix, name)
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from path_keys(annotation, (*prefix, name))


def _anchor_paths(data: Mapping[str, Any], schema: type[BaseModel], folder: Path) -> dict[str, Any]:
    """``data`` (a config file's tables) with each relative path value joined onto ``folder``."""
    out = dict(data)
    for loc in path_keys(schema):
        *parents, leaf = loc
        node: Any = out
        for part in parents:
            child = node.get(part)
            if not isinstance(child, Mapping):
                break
            node[part] = node = dict(child)  # copies along the way: ``data`` is left as it was
        else:
            value = node.get(leaf)
            if isinstance(value, str) and not Path(value).expanduser().is_absolute():
                node[leaf] = os.path.normpath(folder / value)
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


def read_run_config(run_config: Mapping[str, Any], *, schema: type[Study]) -> Study:
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
            data = json.loads(source)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"run config study-config: not valid JSON: {exc}") from None
        return validate(schema, _merge(data, overrides), "run config study-config")
    return read_config(Path(source) if source else None, overrides, schema=schema)
