"""From a validated config to trained models: features and scaling, pre-training, fine-tuning, SER.

These are the pure-ML steps every regime is assembled from; the study runner (centralized) and
the Flower apps (federated) call them, and only they talk to MLflow or Flower.
"""

from __future__ import annotations

import subprocess
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config import StudyConfig
from common.corpora import Utterance
from common.corpora.iemocap import word_spans
from common.data import labeled_scan, pretrain_scan
from common.features import FeatureCache, MinMax, build_extractor, extract_corpus, resolve_device
from common.models.sngan import Discriminator, GanSpec, Generator
from common.trainers.gan import train_stage
from common.views import LabeledSet, PatchSampler

CHECKPOINT_FORMAT = 1


@dataclass
class Corpus:
    """The labeled corpus with its (unscaled) features and the classes as indices."""

    utterances: list[Utterance]
    feats: dict[str, np.ndarray]
    classes: tuple[str, ...]
    words: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)  # read on first use

    def session_stats(self) -> dict[int, MinMax]:
        """Per-session min/max scalars: what each federated node reports (seed 002 §4.2)."""
        stats: dict[int, MinMax] = {}
        for u in self.utterances:
            if u.session is not None:
                stats[u.session] = stats.get(u.session, MinMax.empty()).update(self.feats[u.id])
        return stats

    def labeled_set(self, utterances: list[Utterance] | tuple[Utterance, ...], stats: MinMax,
                    speakers: Sequence[str] = ()) -> LabeledSet:
        """Scaled features (F, T) (a vector becomes (F, 1)) and class indices of ``utterances``.

        ``aux`` carries what the other papers' trainers use: ``speaker`` (index into ``speakers``,
        the fold's training speakers, -1 for others; seed 001), ``valence``/``activation`` (the
        annotators' means, when every utterance has them; seed 000) and ``words`` (IEMOCAP word
        spans in seconds; seed 000's crops).
        """
        index = {c: i for i, c in enumerate(self.classes)}
        aux: dict[str, tuple] = {}
        if speakers:
            position = {s: i for i, s in enumerate(speakers)}
            aux["speaker"] = tuple(position.get(u.speaker, -1) for u in utterances)
        for dim in ("valence", "activation"):
            values = [getattr(u, dim) for u in utterances]
            if values and all(v is not None for v in values):
                aux[dim] = tuple(values)
        if utterances and all(u.corpus == "iemocap" for u in utterances):
            aux["words"] = tuple(self._words(u) for u in utterances)
        return LabeledSet(
            tuple(_as_matrix(stats.scale(self.feats[u.id])) for u in utterances),
            tuple(index[u.label] for u in utterances),  # type: ignore[index]
            tuple(u.id for u in utterances),
            aux,
        )

    def _words(self, u: Utterance) -> tuple[tuple[float, float], ...]:
        if u.id not in self.words:
            self.words[u.id] = word_spans(u.path)
        return self.words[u.id]


def _as_matrix(feat: np.ndarray) -> np.ndarray:
    return feat[:, None] if feat.ndim == 1 else feat


def training_speakers(utterances: Sequence[Utterance]) -> tuple[str, ...]:
    """The speaker vocabulary of a fold: its training speakers, sorted (seed 001's speaker head).

    For IEMOCAP this is ``SesNN{F,M}`` of the training sessions in order, which a federated node
    computes from the list of training sessions alone (:func:`iemocap_speakers`): no node ever
    learns another node's speakers from data.
    """
    return tuple(sorted({u.speaker for u in utterances}))


def iemocap_speakers(sessions: Sequence[int]) -> tuple[str, ...]:
    """IEMOCAP's training speakers of ``sessions``: what :func:`training_speakers` gives for them."""
    return tuple(f"Ses{s:02d}{g}" for s in sorted(sessions) for g in "FM")


def extract(cfg: StudyConfig, utterances: list[Utterance]) -> dict[str, np.ndarray]:
    """Features of ``utterances`` through the on-disk cache; clips that cannot be read are left out."""
    extractor = build_extractor(cfg.features.kind, **cfg.features.params)
    feats, _skipped = extract_corpus(utterances, extractor, FeatureCache(cfg.feature_cache_dir),
                                     device=cfg.features.device, backend=cfg.features.backend)
    return feats


def load_corpus(cfg: StudyConfig, sessions: Collection[int] | None = None) -> Corpus:
    """The labeled corpus of ``cfg`` (only ``sessions`` when given: what one node holds) with
    features; utterances whose audio failed are dropped."""
    utterances = [u for u in labeled_scan(cfg).utterances if sessions is None or u.session in sessions]
    feats = extract(cfg, utterances)
    return Corpus([u for u in utterances if u.id in feats], feats, cfg.data.classes)


def gan_spec(cfg: StudyConfig) -> GanSpec:
    """Network sizes: the preset's width and N_z, square patches of ``features.patch_frames``."""
    n_rows = cfg.features.params.get("n_mels", 128) if cfg.features.kind == "logmel" else None
    if n_rows is not None and n_rows != cfg.features.patch_frames:
        raise ValueError(f"the GAN needs square patches: features.params.n_mels = {n_rows} but "
                         f"features.patch_frames = {cfg.features.patch_frames}; make them equal")
    return GanSpec(n_z=cfg.model.n_z, n_c=len(cfg.data.classes), width=cfg.model.width,
                   patch=cfg.features.patch_frames)


def git_commit() -> str:
    """The source commit (checkpoints record it); "unknown" outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_checkpoint(path: Path, **content: Any) -> Path:
    """Write a checkpoint atomically: weights plus spec, scaling statistics and the git commit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "git_commit": git_commit(), **content}, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (clear error if missing or foreign)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint; run `fedser pretrain CONFIG` first "
                                "or set model.pretrained")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a fedser checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def pretrain(cfg: StudyConfig, progress: bool = False) -> Path:
    """Stages 1-2 (autoencoder, WGAN-GP) on the unlabeled corpus; writes ``cfg.pretrained_path``.

    The scaling statistics combine the pre-training corpus with the labeled corpus's per-session
    min/max (seed 002 §4.2: "minimum and maximum values of the combined" corpora) and travel
    with the checkpoint.
    """
    device = resolve_device(cfg.training.device)
    torch.manual_seed(cfg.training.seed)
    unlabeled = pretrain_scan(cfg).utterances
    feats = extract(cfg, unlabeled)
    if not feats:
        raise ValueError(f"no usable audio in the pre-training corpus ({cfg.data.pretrain_root})")
    corpus = load_corpus(cfg)
    unlabeled_stats = MinMax.combine(*(MinMax.empty().update(f) for f in feats.values()))
    stats = MinMax.combine(unlabeled_stats, *corpus.session_stats().values())
    spec = gan_spec(cfg)
    data = LabeledSet(tuple(stats.scale(f) for f in feats.values()), (0,) * len(feats))
    sample = PatchSampler(data, spec.patch, seed=cfg.training.seed)
    gen, disc = Generator(spec), Discriminator(spec, head=spec.n_z)  # encoder head: the latent code
    ae = train_stage("autoencoder", gen, disc, sample, cfg.training, cfg.training.ae_iterations, device, progress)
    disc.replace_head(1)  # the critic: one output, no activation (§3.2)
    gan = train_stage("wgan-gp", gen, disc, sample, cfg.training, cfg.training.gan_iterations, device, progress)
    return save_checkpoint(
        # ``pretrain_stats`` (unlabeled corpus only) lets the eyes-off server combine them with the
        # min/max scalars its nodes report instead of the centrally computed ``stats``.
        cfg.pretrained_path, kind="sngan-pretrained", spec=spec.to_dict(), stats=stats.to_dict(),
        pretrain_stats=unlabeled_stats.to_dict(),
        generator=gen.cpu().state_dict(), discriminator=disc.cpu().state_dict(),
        logs={"autoencoder": ae.last, "wgan-gp": gan.last}, config=cfg.model_dump(mode="json"),
    )


def pretrained_checkpoint(cfg: StudyConfig) -> dict[str, Any]:
    """The pre-trained checkpoint, refused with the fix when it was made for other network sizes."""
    ckpt = load_checkpoint(cfg.pretrained_path)
    spec = GanSpec(**ckpt["spec"])
    if spec != gan_spec(cfg):
        raise ValueError(f"{cfg.pretrained_path} was trained with {spec}, the config asks for "
                         f"{gan_spec(cfg)}; re-run `fedser pretrain` with this config")
    return ckpt


def pretrain_stats(ckpt: dict[str, Any]) -> MinMax:
    """The pre-training corpus's own min/max (older checkpoints: their combined statistics, a superset)."""
    return MinMax.from_dict(ckpt.get("pretrain_stats", ckpt["stats"]))


def load_pretrained(cfg: StudyConfig, ckpt: dict[str, Any] | None = None) -> tuple[Generator, Discriminator, MinMax]:
    """The pre-trained generator and critic (head 1) and the scaling statistics (from ``ckpt``
    when the caller already read it)."""
    ckpt = ckpt or pretrained_checkpoint(cfg)
    spec = GanSpec(**ckpt["spec"])
    gen, disc = Generator(spec), Discriminator(spec, head=1)
    gen.load_state_dict(ckpt["generator"])
    disc.load_state_dict(ckpt["discriminator"])
    return gen, disc, MinMax.from_dict(ckpt["stats"])


def finetune(cfg: StudyConfig, gen: Generator, disc: Discriminator, train: LabeledSet,
             progress: bool = False) -> Generator:
    """Stage 3 on ``train``: N_c + 1 discriminator head, one-hot conditions (§3.2 Fine-Tuning)."""
    disc.replace_head(gen.spec.n_c + 1)
    sample = PatchSampler(train, gen.spec.patch, seed=cfg.training.seed)
    train_stage("conditional", gen, disc, sample, cfg.training, cfg.training.finetune_iterations,
                resolve_device(cfg.training.device), progress)
    return gen.cpu().eval()
