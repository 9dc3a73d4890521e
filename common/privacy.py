"""Differentially private stage 3 (``training.dp``): DP-SGD on the discriminator's real-data gradient.

In stage 3 only the discriminator reads a node's utterances; the generator learns from the
discriminator alone. So if D's updates are differentially private for the node's utterances, so
are the generator and every sample the server draws from it (post-processing; Xie et al. 2018,
DP-GAN; Chen et al. 2020, GS-WGAN), and so is gan-fedavg's averaged discriminator. Each D step:

- draws a Poisson sample of the node's N utterances, each with probability q = min(1, B / N), and
  one random patch of each drawn one (:class:`common.views.PoissonPatchSampler`): the sampling the
  accountants analyse, and one utterance touches a step at most once;
- takes the gradient of the real-class loss of each patch alone (``torch.func``: Opacus's module
  wrapper does not take spectral-norm parametrizations, opacus issue 646), scales it to at most
  the clip norm C over D's trained parameters, sums, adds N(0, sigma^2 C^2) to every coordinate and
  divides by the expected batch q N (Abadi et al. 2016, Algorithm 1; Opacus's "mean" reduction);
- adds the fakes' part of the loss with its exact gradient: fakes hold no real data.

The unit protected is one utterance of the node's training members. Not covered: the pre-trained
GAN's data (public by assumption, as in the paper), and the scalars the node's audit reports
(they are computed on its utterances without noise).

Epsilon comes from Opacus's accountants (Renyi DP, Mironov 2017; or PRV, Gopi et al. 2021); the
node reports what it spent and the server refuses a generator over the study's budget.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from common.config import DpConfig, TrainingConfig


@dataclass(frozen=True)
class DpPlan:
    """One private stage 3: its noise, sampling and accounting."""

    utterances: int  # N: the utterances the discriminator trains on
    sample_rate: float  # q: each utterance's chance to be in a step's batch
    steps: int  # T: the private steps the noise is fitted to
    noise_multiplier: float  # sigma: the noise's std over the clip norm
    clip: float  # C
    delta: float
    accountant: str

    @property
    def expected_batch(self) -> float:
        """q N: what the noisy sum is divided by."""
        return self.sample_rate * self.utterances

    def epsilon(self, steps: int | None = None) -> float:
        """The epsilon spent after ``steps`` private steps (all ``self.steps`` by default)."""
        return spent_epsilon(self.noise_multiplier, self.sample_rate, self.steps if steps is None else steps,
                             self.delta, self.accountant)


def spent_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """Epsilon of ``steps`` Poisson-subsampled Gaussian steps (Opacus's accountants)."""
    if steps <= 0:
        return 0.0
    from opacus.accountants import create_accountant

    acc = create_accountant(accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():
        # RDP warns when its best order is the smallest it tries: the bound is then loose (a large
        # epsilon, i.e. little noise), never wrong.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        return float(acc.get_epsilon(delta))


@functools.lru_cache(maxsize=64)
def plan(dp: DpConfig, utterances: int, batch_size: int, steps: int) -> DpPlan:
    """The noise that spends at most ``dp.epsilon`` over ``steps`` steps on ``utterances`` (or
    ``dp.noise_multiplier`` as given); delta 1/N unless set. Cached: a FedGAN node asks every round."""
    if utterances < 1:
        raise ValueError("training.dp: no training utterances to account for")
    rate = min(1.0, batch_size / utterances)
    delta = dp.delta if dp.delta is not None else 1.0 / utterances
    sigma = dp.noise_multiplier
    if sigma is None:
        from opacus.accountants.utils import get_noise_multiplier

        assert dp.epsilon is not None  # DpConfig asks for one of the two
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the")
            sigma = float(get_noise_multiplier(target_epsilon=dp.epsilon, target_delta=delta, sample_rate=rate,
                                               steps=steps, accountant=dp.accountant, epsilon_tolerance=0.01))
    return DpPlan(utterances, rate, steps, sigma, dp.clip, delta, dp.accountant)


def private_plan(cfg: TrainingConfig, utterances: int, steps: int) -> DpPlan | None:
    """``plan`` for a private training of ``steps`` steps (a stage 3, or all of a node's FedAvg
    rounds), or None when ``training.dp`` is off."""
    return None if cfg.dp is None else plan(cfg.dp, utterances, cfg.batch_size, steps)


def noisy_gradient(net: nn.Module, params: Sequence[nn.Parameter], loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   x: torch.Tensor, y: torch.Tensor, private: DpPlan) -> float:
    """Add DP-SGD's estimate of the mean gradient of ``loss(net(x), y)`` to ``params``' ``.grad``:
    (sum_i clip_C(g_i) + N(0, sigma^2 C^2 I)) / (q N), g_i the gradient on ``x[i]`` alone.

    ``x`` (B, 1, F, P) with B >= 0 (a Poisson batch may be empty: noise only), ``y`` (B,);
    ``loss(logits (1, K), y (1,))`` -> scalar. Returns the batch's mean loss (a log at the node).
    """
    names = {id(p): name for name, p in net.named_parameters()}
    weights = {names[id(p)]: p.detach() for p in params}
    total = {name: torch.zeros_like(w) for name, w in weights.items()}
    mean_loss = 0.0
    if len(x):
        def one(w: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            return loss(functional_call(net, w, (xi[None],)), yi[None])

        was_training = net.training
        # Spectral norm's power iteration updates buffers in place, which vmap cannot batch; in eval
        # mode it divides by the sigma of the u, v the last training-mode pass left, which is the
        # same function (and gradient) the training-mode pass computes after its iteration.
        net.eval()
        try:
            grads, losses = vmap(grad_and_value(one), in_dims=(None, 0, 0))(weights, x, y)  # each (B, *shape)
        finally:
            net.train(was_training)
        norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))  # (B,)
        scale = (private.clip / (norms + 1e-6)).clamp(max=1.0)  # Opacus's per-sample clip factor
        total = {name: torch.einsum("b,b...->...", scale, g) for name, g in grads.items()}
        mean_loss = float(losses.mean())
    std = private.noise_multiplier * private.clip
    for p in params:
        noisy = (total[names[id(p)]] + std * torch.randn_like(p)) / private.expected_batch
        p.grad = noisy if p.grad is None else p.grad + noisy
    return mean_loss
