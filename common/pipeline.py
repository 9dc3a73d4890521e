"""From prepared corpora to GAN models: pre-training, the pre-trained checkpoint, fine-tuning.

These are the pure-ML steps the regimes are assembled from (simulations/regimes/); only the
regimes and the Flower apps talk to MLflow or Flower.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.config import StudyConfig
from common.corpora import Utterance
from common.data import StreamedPatches, prepared_labeled, prepared_unlabeled
from common.features import MinMax, resolve_device
from common.models.sngan import Discriminator, GanSpec, Generator
from common.trainers.gan import train_stage
from common.views import LabeledSet, PatchSampler

CHECKPOINT_FORMAT = 1


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

    Patches stream from the memory-mapped feature cache (:class:`common.data.StreamedPatches`), so
    peak memory does not grow with the corpus. The scaling statistics combine the pre-training
    corpus with the labeled corpus's per-session min/max (seed 002 §4.2: "minimum and maximum
    values of the combined" corpora), both read from the feature indexes, and travel with the
    checkpoint.
    """
    device = resolve_device(cfg.training.device)
    torch.manual_seed(cfg.training.seed)
    unlabeled = prepared_unlabeled(cfg)
    unlabeled_stats = unlabeled.stats()
    stats = MinMax.combine(unlabeled_stats, *prepared_labeled(cfg).session_stats().values())
    spec = GanSpec.of(cfg)
    sample = StreamedPatches(unlabeled, stats, spec.patch, seed=cfg.training.seed)
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


@dataclass(frozen=True)
class PretrainedGan:
    """The pre-trained checkpoint as read once: network sizes, weights and scaling statistics.

    ``stats`` combine the pre-training corpus with the labeled corpus (what centralized regimes
    scale with); ``pretrain_stats`` are the pre-training corpus's alone (what the eyes-off server
    combines with its nodes' min/max). :meth:`networks` gives fresh modules each call.
    """

    path: Path
    spec: GanSpec
    generator: dict[str, torch.Tensor]
    discriminator: dict[str, torch.Tensor]
    stats: MinMax
    pretrain_stats: MinMax

    def networks(self) -> tuple[Generator, Discriminator]:
        """A fresh generator and critic (head 1) with the pre-trained weights."""
        gen, disc = Generator(self.spec), Discriminator(self.spec, head=1)
        gen.load_state_dict(self.generator)
        disc.load_state_dict(self.discriminator)
        return gen, disc


_PRETRAINED: dict[tuple[Path, int], PretrainedGan] = {}


def pretrained(cfg: StudyConfig) -> PretrainedGan:
    """The pre-trained GAN of ``cfg`` (read once per process and file version), refused with the
    fix when it was made for other network sizes."""
    path = cfg.pretrained_path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pre-trained GAN; run `fedser pretrain` with this config first "
                                "(or set model.pretrained)")
    key = (path, path.stat().st_mtime_ns)
    if key not in _PRETRAINED:
        ckpt = load_checkpoint(path)
        spec = GanSpec(**ckpt["spec"])
        _check_sizes(cfg, spec)  # before the weights are touched: a foreign checkpoint may lack them
        _PRETRAINED[key] = PretrainedGan(path, spec, ckpt["generator"], ckpt["discriminator"],
                                         MinMax.from_dict(ckpt["stats"]), MinMax.from_dict(ckpt["pretrain_stats"]))
    _check_sizes(cfg, _PRETRAINED[key].spec)
    return _PRETRAINED[key]


def _check_sizes(cfg: StudyConfig, spec: GanSpec) -> None:
    if spec != GanSpec.of(cfg):
        raise ValueError(f"{cfg.pretrained_path} was trained with {spec}, the config asks for "
                         f"{GanSpec.of(cfg)}; re-run `fedser pretrain` with this config")


def finetune(cfg: StudyConfig, gen: Generator, disc: Discriminator, train: LabeledSet,
             progress: bool = False) -> Generator:
    """Stage 3 on ``train``: N_c + 1 discriminator head, one-hot conditions (§3.2 Fine-Tuning)."""
    disc.replace_head(gen.spec.n_c + 1)
    sample = PatchSampler(train, gen.spec.patch, seed=cfg.training.seed)
    train_stage("conditional", gen, disc, sample, cfg.training, cfg.training.finetune_iterations,
                resolve_device(cfg.training.device), progress)
    return gen.cpu().eval()
