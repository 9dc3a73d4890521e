"""From prepared corpora to GAN models: pre-training, the pre-trained checkpoint, fine-tuning.

These are the pure-ML steps the regimes are assembled from (simulations/central.py, server/regimes.py); only the
regimes and the Flower apps talk to MLflow or Flower.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from common import threads
from common.corpora import Utterance
from common.data import StreamedPatches, prepared_labeled, prepared_unlabeled
from common.features import MinMax, resolve_device
from common.models.sngan import Discriminator, GanSpec, Generator, settle_spectral_norms
from common.privacy import DpPlan, private_plan
from common.schema import StudyConfig
from common.trainers.base import AverageWeights, Hook, KeepBest, run
from common.trainers.gan import (
    conditional_step,
    load_optimizer_tensors,
    optimizer_tensors,
    stage3_optimizers,
    train_stage,
)
from common.views import LabeledSet, PatchSampler, PoissonPatchSampler

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


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and bytes: which weights scored a fold (two
    runs agree bit for bit exactly when their digests do)."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # 1-d: 0-dim tensors cannot be viewed
    return h.hexdigest()


def save_checkpoint(path: Path, **content: Any) -> Path:
    """Write a checkpoint atomically: weights plus spec, scaling statistics and the git commit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "git_commit": git_commit(), **content}, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    A missing file raises FileNotFoundError; an empty, truncated, foreign or otherwise unreadable
    one raises ValueError with one line: the file, what is wrong, and the fix. The file is opened
    once, checked as a zip archive (what ``torch.save`` writes) and only then unpickled.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint; run `fedser pretrain CONFIG` first "
                                "or set model.pretrained")
    fix = "re-run `fedser pretrain CONFIG` or point model.pretrained at a good checkpoint"
    try:
        f = path.open("rb")
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({_first_line(exc)}); {fix}") from None
    with f:
        problem = _not_a_torch_archive(f)
        if problem:
            raise ValueError(f"{path}: {problem}; {fix}")
        f.seek(0)
        try:
            ckpt = torch.load(f, map_location="cpu", weights_only=False)
        # A damaged pickle inside a sound archive can raise nearly anything (UnpicklingError,
        # EOFError, RuntimeError from the zip reader, AttributeError, ...): all mean an unusable file.
        except Exception as exc:
            raise ValueError(f"{path}: damaged checkpoint ({_first_line(exc)}); {fix}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a fedser checkpoint (format {CHECKPOINT_FORMAT}); {fix}")
    return ckpt


def _not_a_torch_archive(f: BinaryIO) -> str | None:
    """What makes the open file ``f`` not a ``torch.save`` zip archive, or None if it is one."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return "empty file (0 bytes)"
    f.seek(0)
    head = f.read(4)
    if not zipfile.is_zipfile(f):
        if head == b"PK\x03\x04":  # a zip archive's first entry, but no end (central directory)
            return f"truncated: a zip archive cut short at {size} bytes (no central directory)"
        return f"not a torch zip archive (starts with {head!r}, {size} bytes)"
    try:
        names = zipfile.ZipFile(f).namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return f"damaged zip archive ({_first_line(exc)})"
    if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
        return "a zip archive but not a torch checkpoint (no data.pkl)"
    return None


def _first_line(exc: BaseException) -> str:
    """``exc`` as ``Type: first line of its message`` (at most 120 characters of it)."""
    lines = str(exc).strip().splitlines()
    line = lines[0] if lines else ""
    return f"{type(exc).__name__}: {line[:117] + '...' if len(line) > 120 else line}"


def pretrain(cfg: StudyConfig, progress: bool = False) -> Path:
    """Stages 1-2 (autoencoder, WGAN-GP) on the unlabeled corpus; writes ``cfg.pretrained_path``.

    Patches stream from the memory-mapped feature cache (:class:`common.data.StreamedPatches`), so
    peak memory does not grow with the corpus. The scaling statistics combine the pre-training
    corpus with the labeled corpus's per-session min/max (seed 002 §4.2: "minimum and maximum
    values of the combined" corpora), both read from the feature indexes, and travel with the
    checkpoint.
    """
    threads.use(cfg.training.threads)
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


def stage3_sampler(train: LabeledSet, patch: int, seed: int, private: DpPlan | None) -> PatchSampler:
    """Stage 3's real batches: patches drawn with replacement (§4.2), or DP-SGD's Poisson batches."""
    return (PatchSampler if private is None else PoissonPatchSampler)(train, patch, seed=seed)


def finetune(cfg: StudyConfig, gen: Generator, disc: Discriminator, train: LabeledSet,
             progress: bool = False, select: Callable[[Generator], float] | None = None) -> Generator:
    """Stage 3 on ``train``: N_c + 1 discriminator head, one-hot conditions (§3.2 Fine-Tuning).

    ``select`` (common.audit.selector): with ``training.finetune_select_every`` = E, the generator
    is scored every E steps and the best-scoring iterate kept; with ``training.finetune_ema`` the
    average of the iterates (:class:`AverageWeights`); otherwise the last one (the paper).
    """
    disc.replace_head(gen.spec.n_c + 1)
    private = private_plan(cfg.training, len(train), cfg.training.finetune_iterations)
    sample = stage3_sampler(train, gen.spec.patch, cfg.training.seed, private)
    every = cfg.training.finetune_select_every if select is not None else 0
    ema = cfg.training.finetune_ema
    keep: list[Hook] = [KeepBest(gen)] if every else [AverageWeights(gen, ema)] if ema else []
    train_stage("conditional", gen, disc, sample, cfg.training, cfg.training.finetune_iterations,
                resolve_device(cfg.training.device), progress,
                evaluate=(lambda: select(gen)) if select is not None else None, eval_every=every, hooks=keep,
                private=private)
    if ema:
        settle_spectral_norms(gen)
    return gen.cpu().eval()


def fedgan_plan(cfg: StudyConfig, utterances: int, steps: int) -> DpPlan | None:
    """A FedGAN node's private stage 3 (``training.dp``): the noise fitted to all its rounds of the
    fold (``federation.gan_rounds`` x ``steps``); after round r it has spent ``epsilon(r * steps)``."""
    return private_plan(cfg.training, utterances, cfg.federation.gan_rounds * steps)


def fedgan_round(cfg: StudyConfig, gen: Generator, disc: Discriminator, train: LabeledSet, *, seed: int,
                 round_: int, steps: int, moments: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """One FedGAN round at a node (gan-fedavg): ``steps`` stage-3 steps on ``train`` from the
    received networks (``disc`` with its N_c + 1 head), continuing the class-loss ramp over rounds.

    ``moments``: G's and D's Adam state after this node's previous round of the fold, as this
    function returned it (``federation.gan_local_state``); None or empty: fresh Adam. Returns the
    state to keep, ``"g.<index>.<name>"`` / ``"d.<index>.<name>"`` tensors on the CPU.
    """
    torch.manual_seed(seed)
    device = resolve_device(cfg.training.device)
    gen.to(device).train()
    disc.to(device).train()
    opts = stage3_optimizers(gen, disc, cfg.training)
    private = fedgan_plan(cfg, len(train), steps)
    for prefix, opt in zip("gd", opts, strict=True):
        mine = {k[2:]: v.to(device) for k, v in (moments or {}).items() if k.startswith(f"{prefix}.")}
        if mine:
            load_optimizer_tensors(opt, mine)
    sample = stage3_sampler(train, gen.spec.patch, seed, private)
    run(conditional_step(gen, disc, sample, cfg.training, device, first_step=(round_ - 1) * steps, optimizers=opts,
                         private=private), steps, desc="conditional")
    return {f"{prefix}.{k}": v.cpu() for prefix, opt in zip("gd", opts, strict=True)
            for k, v in optimizer_tensors(opt).items()}
