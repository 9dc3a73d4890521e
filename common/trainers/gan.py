"""The three training stages of seed 002 (§3.2, Figure 1), each a step function for the one loop.

1. autoencoder: discriminator body as encoder (head = N_z), generator as decoder with the zero
   condition placeholder c_0, L1 reconstruction;
2. WGAN-GP: critic head = 1, gradient penalty, two time-scale learning rates, one D step per G step,
   still the zero condition;
3. conditional fine-tuning: one-hot condition, N_c + 1 discriminator trained with sparse
   categorical cross-entropy (the last class is "fake").

Stage 3 has four switches against the mode collapse small data brings (all off in the ``paper``
preset, where the step is exactly §3.2's): ``training.finetune_class_ramp``,
``training.finetune_augment``, ``training.finetune_mode_seeking`` and ``training.finetune_freeze_d``
(see :func:`conditional_step`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from common.config import TrainingConfig
from common.models.sngan import Discriminator, GanSpec, Generator
from common.privacy import DpPlan, noisy_gradient
from common.trainers.augment import augmenter
from common.trainers.base import Hook, LoopResult, Step, run
from common.views import Batch, Sampler, SerBatch


class ConditionalGenerator(Protocol):
    """What the conditional step drives: ``gen(noise (B, N_z), one-hot (B, N_c))`` -> samples.

    The proposed generator (common.models.sngan) and BAGAN's (common.models.bagan) both are one.
    """

    @property
    def spec(self) -> GanSpec: ...

    def __call__(self, noise: torch.Tensor, condition: torch.Tensor) -> torch.Tensor: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...


def labeled_batch(batch: SerBatch) -> Batch:
    """``batch`` as (x, y); the GAN stages take no auxiliary targets."""
    if len(batch) != 2:
        raise ValueError(f"expected a batch (x, y), got {len(batch)} values")
    return batch


def adam(params: Iterable[nn.Parameter], lr: float, cfg: TrainingConfig) -> torch.optim.Adam:
    """Adam at ``lr`` with the study's betas."""
    # §4.4: Adam with beta1 = 0.5, beta2 = 0.99 for every network.
    return torch.optim.Adam(params, lr=lr, betas=cfg.betas)


@contextlib.contextmanager
def frozen(net: nn.Module) -> Iterator[None]:
    """``net``'s weights need no gradient inside (a generator step through the discriminator):
    the generator's gradients are the same, and the discriminator's, which its next step would
    discard (``zero_grad``), are never computed (~8 % of a tiny-preset conditional step)."""
    net.requires_grad_(False)
    try:
        yield
    finally:
        net.requires_grad_(True)


def _noise(gen: ConditionalGenerator, batch: int, device: torch.device) -> torch.Tensor:
    return torch.randn(batch, gen.spec.n_z, device=device)


def zero_condition(gen: ConditionalGenerator, batch: int, device: torch.device) -> torch.Tensor:
    """c_0: the N_c zeros that stand in for the condition while the data is unlabeled (§3.2)."""
    return torch.zeros(batch, gen.spec.n_c, device=device)


def autoencoder_step(gen: Generator, enc: Discriminator, sample: Sampler, cfg: TrainingConfig,
                     device: torch.device) -> Step:
    """Stage 1: x -> encoder -> z -> generator(z, c_0) -> x~, L1(x~, x) (§3.2)."""
    opt = adam([*gen.parameters(), *enc.parameters()], cfg.ae_lr, cfg)

    def step(_: int) -> dict[str, float]:
        x, _y = labeled_batch(sample(cfg.batch_size))
        x = x.to(device)
        recon = gen(enc(x), zero_condition(gen, x.shape[0], device))  # (B, 1, F, P)
        loss = F.l1_loss(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"l1": loss.item()}

    return step


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Gulrajani et al. 2017: E[(||grad_x critic(x_hat)||_2 - 1)^2] on random interpolates x_hat."""
    alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def wgan_gp_step(gen: Generator, critic: Discriminator, sample: Sampler, cfg: TrainingConfig,
                 device: torch.device) -> Step:
    """Stage 2: one critic step then one generator step, penalty weight ``cfg.gp_weight`` (§3.1, §4.4)."""
    opt_g, opt_d = adam(gen.parameters(), cfg.g_lr, cfg), adam(critic.parameters(), cfg.d_lr, cfg)

    def step(_: int) -> dict[str, float]:
        real, _y = labeled_batch(sample(cfg.batch_size))
        real = real.to(device)
        b = real.shape[0]
        with torch.no_grad():
            fake = gen(_noise(gen, b, device), zero_condition(gen, b, device))
        wasserstein = critic(real).mean() - critic(fake).mean()
        gp = gradient_penalty(critic, real, fake)
        d_loss = -wasserstein + cfg.gp_weight * gp
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        # Fresh noise for the generator update, as in Algorithm 1 of Gulrajani et al. 2017.
        with frozen(critic):
            g_loss = -critic(gen(_noise(gen, b, device), zero_condition(gen, b, device))).mean()
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
        opt_g.step()
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item(), "w_dist": wasserstein.item(), "gp": gp.item()}

    return step


def split_cross_entropy(logits: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """The N_c + 1 cross-entropy of a real-class ``target`` as its two parts, the class part weighted.

    -log p_c(x) = -log(1 - p_fake(x)) - log p(c | x, real): an adversarial part (real, not fake)
    and an auxiliary-classifier part (this class among the real ones), the term TAC-GAN (Gong et
    al. 2019) shows shrinks intra-class diversity. ``beta`` = 1 is the plain cross-entropy;
    ``logits`` (B, N_c + 1), ``target`` (B,) in [0, N_c).
    """
    real_lse = torch.logsumexp(logits[:, :-1], dim=1)  # (B,): log sum over the N_c real classes
    adversarial = torch.logsumexp(logits, dim=1) - real_lse  # -log(1 - p_fake)
    classwise = real_lse - logits.gather(1, target[:, None])[:, 0]  # -log p(c | x, real)
    return (adversarial + beta * classwise).mean()


# The stage-3 step's switches (TrainingConfig), each at its "off" default: what a caller that is
# not the proposed model's stage 3 (BAGAN's adversarial phase) sets so that it stays as published.
STAGE3_SWITCHES_OFF = {name: TrainingConfig.model_fields[name].default for name in (
    "finetune_class_ramp", "finetune_augment", "finetune_mode_seeking", "finetune_freeze_d", "finetune_d_lr")}


def mode_seeking(fake: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mao et al. 2019 (MSGAN, eq. 3), as a loss to minimise: 1 / (d(G(z1), G(z2)) / d(z1, z2)).

    ``fake`` (B, ...) and ``noise`` (B, N_z) hold pairs: row i of the first half and row i of the
    second share a condition, so the ratio rewards a generator whose samples move with the noise.
    Distances are mean absolute differences, as in the authors' code; eps 1e-5 as there.
    """
    half = fake.shape[0] // 2
    ratio = ((fake[:half] - fake[half:2 * half]).abs().mean()
             / (noise[:half] - noise[half:2 * half]).abs().mean())
    return 1 / (ratio + 1e-5)


def trainable_discriminator(disc: nn.Module, frozen_convs: int) -> list[nn.Parameter]:
    """``disc``'s parameters but those of its ``frozen_convs`` lowest convolutions (FreezeD, Mo et
    al. 2020: the pre-trained low-level filters stay; only the upper layers adapt to few data)."""
    if not frozen_convs:
        return list(disc.parameters())
    convs = [m for m in getattr(disc, "convs", ()) if isinstance(m, nn.Conv2d)]
    if len(convs) < frozen_convs:
        raise ValueError(f"training.finetune_freeze_d = {frozen_convs}, but this discriminator has "
                         f"{len(convs)} convolutions in .convs: set it to at most {len(convs)}")
    kept = {id(p) for conv in convs[:frozen_convs] for p in conv.parameters()}
    return [p for p in disc.parameters() if id(p) not in kept]


def stage3_optimizers(gen: ConditionalGenerator, disc: nn.Module, cfg: TrainingConfig) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Stage 3's Adam for G and for D's trainable parameters (FreezeD keeps the others out)."""
    d_lr = cfg.d_lr if cfg.finetune_d_lr is None else cfg.finetune_d_lr
    return adam(gen.parameters(), cfg.g_lr, cfg), adam(trainable_discriminator(disc, cfg.finetune_freeze_d), d_lr, cfg)


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """``opt``'s per-parameter state as flat named tensors ``"<parameter index>.<name>"`` (Adam:
    ``step`` (), ``exp_avg`` and ``exp_avg_sq`` shaped like the parameter); the hyper-parameters
    stay with the optimizer that :func:`load_optimizer_tensors` fills."""
    return {f"{i}.{name}": value for i, state in opt.state_dict()["state"].items() for name, value in state.items()}


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor]) -> None:
    """Give ``opt`` (built over the same parameters) the state :func:`optimizer_tensors` took."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def conditional_step(gen: ConditionalGenerator, disc: nn.Module, sample: Sampler, cfg: TrainingConfig,
                     device: torch.device, first_step: int = 0,
                     optimizers: tuple[torch.optim.Adam, torch.optim.Adam] | None = None,
                     private: DpPlan | None = None) -> Step:
    """Stage 3: D classifies real into its N_c classes and fakes into class N_c; G wants its condition.

    Fake conditions are drawn uniformly over the classes, so minority emotions get as many
    generator updates as majority ones (§3.1).

    Two switches, off (0 and ()) in the paper preset, for fine-tuning on a few dozen utterances:

    - ``cfg.finetune_class_ramp`` = R > 0: the real-class cross-entropies of D and G are split
      (:func:`split_cross_entropy`) and the class part weighted by beta = min(1, t / R), t the
      stage-3 step (``first_step`` + this run's step: FedGAN's rounds continue the ramp): the
      networks first learn real vs fake, then the classes (Shahbazi et al. 2022, "Collapse by
      Conditioning": class-conditional GANs collapse on small data where unconditional ones do not);
    - ``cfg.finetune_augment``: differentiable augmentations (Zhao et al. 2020, DiffAugment) of
      every discriminator input, real and fake, in the D and the G step (common/trainers/augment.py);
    - ``cfg.finetune_mode_seeking`` = lambda > 0: the fakes come in pairs of one condition and two
      noises, and G's loss adds lambda x :func:`mode_seeking` (Mao et al. 2019, MSGAN);
    - ``cfg.finetune_freeze_d`` = K > 0: D's K lowest convolutions keep their weights
      (:func:`trainable_discriminator`, Mo et al. 2020, FreezeD).

    ``private`` (common/privacy.py, ``training.dp``): D's real-data gradient is DP-SGD's (per-patch
    clipped, noised) on a Poisson batch from ``sample`` (a :class:`common.views.PoissonPatchSampler`);
    the fakes keep ``cfg.batch_size`` rows. None: the step above, bit for bit.
    """
    n_c = gen.spec.n_c
    # ``optimizers``: G's and D's Adam (:func:`stage3_optimizers`), given by a FedGAN node that keeps
    # their moments between rounds (federation.gan_local_state); fresh otherwise.
    opt_g, opt_d = optimizers or stage3_optimizers(gen, disc, cfg)
    trained_d = [p for group in opt_d.param_groups for p in group["params"]]
    aug = augmenter(cfg.finetune_augment)
    ramp, seeking = cfg.finetune_class_ramp, cfg.finetune_mode_seeking

    def real_class_loss(logits: torch.Tensor, target: torch.Tensor, step: int) -> torch.Tensor:
        if not ramp:
            return F.cross_entropy(logits, target)
        return split_cross_entropy(logits, target, min(1.0, (first_step + step) / ramp))

    def step(i: int) -> dict[str, float]:
        real, labels = labeled_batch(sample(cfg.batch_size))
        real, labels = real.to(device), labels.to(device)
        b = real.shape[0] if private is None else cfg.batch_size
        wanted = torch.randint(0, n_c, (b,), device=device)
        if seeking:  # pairs: row i and row i + b // 2 share a condition (an odd batch's last row is alone)
            wanted[b // 2:2 * (b // 2)] = wanted[:b // 2]
        noise = _noise(gen, b, device)
        fake = gen(noise, F.one_hot(wanted, n_c).float())  # one pass for both updates
        fake_class = torch.full((b,), n_c, device=device)  # the last output is "fake"
        if private is None:
            d_loss = real_class_loss(disc(aug(real)), labels, i) + F.cross_entropy(disc(aug(fake.detach())), fake_class)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
        else:  # the fakes' gradient is exact (they hold no real data); the real part is DP-SGD's
            opt_d.zero_grad(set_to_none=True)
            fake_loss = F.cross_entropy(disc(aug(fake.detach())), fake_class)
            fake_loss.backward()
            real_loss = noisy_gradient(disc, trained_d, lambda logits, y: real_class_loss(logits, y, i),
                                       aug(real) if len(real) else real, labels, private)
            d_loss = fake_loss.detach() + real_loss
        opt_d.step()
        with frozen(disc):
            g_loss = real_class_loss(disc(aug(fake)), wanted, i)
            if seeking:
                g_loss = g_loss + seeking * mode_seeking(fake, noise)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
        opt_g.step()
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item()}

    return step


def train_stage(
    stage: str, gen: Generator, disc: Discriminator, sample: Sampler, cfg: TrainingConfig,
    iterations: int, device: torch.device, progress: bool = False, *,
    evaluate: Callable[[], float] | None = None, eval_every: int = 0, hooks: Sequence[Hook] = (),
    private: DpPlan | None = None,
) -> LoopResult:
    """Run one stage (``autoencoder``, ``wgan-gp`` or ``conditional``) for ``iterations`` steps;
    ``evaluate``/``eval_every``/``hooks`` as in :func:`common.trainers.base.run` (generator selection);
    ``private``: the conditional stage's DP-SGD (:func:`conditional_step`).

    ``disc`` must already carry the stage's head: N_z, 1 or N_c + 1 outputs.
    """
    builders = {"autoencoder": autoencoder_step, "wgan-gp": wgan_gp_step, "conditional": conditional_step}
    if stage not in builders:
        raise ValueError(f"unknown GAN stage {stage!r}; choose from {sorted(builders)}")
    if private is not None and stage != "conditional":
        raise ValueError(f"differential privacy covers the conditional stage only, not {stage!r}")
    gen.to(device).train()
    disc.to(device).train()
    step = (builders[stage](gen, disc, sample, cfg, device) if private is None
            else conditional_step(gen, disc, sample, cfg, device, private=private))
    return run(step, iterations, desc=stage, progress=progress,
               evaluate=evaluate, eval_every=eval_every, hooks=hooks)
