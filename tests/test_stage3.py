"""Stage 3's switches against mode collapse: class-loss ramp, DiffAugment, mode seeking, FreezeD,
node-local generator selection; each off in the paper preset, where the step is §3.2's bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from common.audit import (
    SELECTION_SHARE,
    generator_split,
    members_of,
    reference_classifier,
    selection_score,
    selector,
)
from common.config import ConfigError, TrainingConfig
from common.models.sngan import Discriminator, GanSpec, Generator
from common.pipeline import fedgan_round, finetune, state_digest
from common.schema import load_config
from common.trainers.augment import AUGMENTS, augmenter, freq_mask, gain, shift, time_mask
from common.trainers.base import AverageWeights, run
from common.trainers.gan import (
    STAGE3_SWITCHES_OFF,
    adam,
    conditional_step,
    frozen,
    load_optimizer_tensors,
    mode_seeking,
    optimizer_tensors,
    split_cross_entropy,
    stage3_optimizers,
    trainable_discriminator,
    wgan_gp_step,
)
from common.views import LabeledSet, PatchSampler
from tests.test_gan_training import spectrograms

SPEC = GanSpec(n_z=8, n_c=4, width=0.0625, patch=32)
CPU = torch.device("cpu")
ALL = tuple(AUGMENTS)


def training(**switches: object) -> TrainingConfig:
    # Learning rates pinned here, not read from the preset, so retuning `tiny` cannot move these tests.
    return load_config(overrides={"training": {"batch_size": 8, "g_lr": 5e-4, "d_lr": 1e-3, **switches}}).training


def section_3_2_step(gen: Generator, disc: Discriminator, sample: PatchSampler, cfg: TrainingConfig):
    """Stage 3 exactly as §3.2 has it (and as the code was before the switches): the reference."""
    opt_g, opt_d = adam(gen.parameters(), cfg.g_lr, cfg), adam(disc.parameters(), cfg.d_lr, cfg)

    def step(_: int) -> dict[str, float]:
        real, labels = sample(cfg.batch_size)
        b = real.shape[0]
        wanted = torch.randint(0, 4, (b,))
        fake = gen(torch.randn(b, gen.spec.n_z), F.one_hot(wanted, 4).float())
        d_loss = F.cross_entropy(disc(real), labels) + F.cross_entropy(disc(fake.detach()), torch.full((b,), 4))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        with frozen(disc):
            g_loss = F.cross_entropy(disc(fake), wanted)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
        opt_g.step()
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item()}

    return step


def stage3_digest(builder, cfg: TrainingConfig, steps: int = 4, **kwargs: object) -> tuple[str, list[dict[str, float]]]:
    torch.manual_seed(0)
    gen, disc = Generator(SPEC), Discriminator(SPEC, SPEC.n_c + 1)
    logs: list[dict[str, float]] = []
    step = builder(gen, disc, PatchSampler(spectrograms(per_class=2), SPEC.patch, seed=0), cfg, **kwargs)
    for i in range(1, steps + 1):
        logs.append(step(i))
    return state_digest({**{f"g.{k}": v for k, v in gen.state_dict().items()},
                         **{f"d.{k}": v for k, v in disc.state_dict().items()}}), logs


def test_the_paper_preset_has_every_switch_off() -> None:
    t = load_config(overrides={"preset": "paper"}).training
    assert (t.finetune_class_ramp, t.finetune_augment, t.finetune_select_every) == (0, (), 0)
    assert (t.finetune_mode_seeking, t.finetune_freeze_d, t.finetune_ema) == (0.0, 0, 0.0)
    # Every stage-3 step switch has its "off" value where BAGAN's adversarial phase resets them.
    step_switches = {k for k in TrainingConfig.model_fields if k.startswith("finetune_")} - {
        "finetune_iterations", "finetune_select_every", "finetune_ema"}  # (which iterate to keep: not the step's)
    assert set(STAGE3_SWITCHES_OFF) == step_switches
    assert all(getattr(t, k) == v for k, v in STAGE3_SWITCHES_OFF.items())


def test_switches_off_is_section_3_2_bit_for_bit() -> None:
    cfg = training()
    plain, _ = stage3_digest(section_3_2_step, cfg)
    assert stage3_digest(lambda g, d, s, c: conditional_step(g, d, s, c, CPU), cfg)[0] == plain
    # ... and each switch does change the run (so the equality above is not vacuous).
    for switch in ({"finetune_class_ramp": 100}, {"finetune_augment": ["gain"]}, {"finetune_mode_seeking": 1.0},
                   {"finetune_freeze_d": 2}, {"finetune_d_lr": 3e-3}):
        assert stage3_digest(lambda g, d, s, c: conditional_step(g, d, s, c, CPU), training(**switch))[0] != plain


def test_finetune_d_lr_is_stage_3s_discriminator_rate_only() -> None:
    gen, disc = Generator(SPEC), Discriminator(SPEC, SPEC.n_c + 1)
    opt_g, opt_d = stage3_optimizers(gen, disc, training(finetune_d_lr=3e-3))
    assert (opt_g.param_groups[0]["lr"], opt_d.param_groups[0]["lr"]) == (5e-4, 3e-3)
    assert stage3_optimizers(gen, disc, training())[1].param_groups[0]["lr"] == 1e-3  # None: d_lr
    # Pre-training's critic keeps d_lr, so a preset that sets it shares its checkpoint with one that does not.
    critic = lambda g, d, s, c: (d.replace_head(1), wgan_gp_step(g, d, s, c, CPU))[1]  # noqa: E731
    assert stage3_digest(critic, training(finetune_d_lr=3e-3))[0] == stage3_digest(critic, training())[0]


def test_split_cross_entropy_is_the_cross_entropy_in_two_parts() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(64, 5) * 3, torch.randint(0, 4, (64,))
    # float32 log-sum-exps of 5 logits of a few units: ulps of ~10, differences within 1e-6.
    assert split_cross_entropy(logits, target, 1.0).item() == pytest.approx(F.cross_entropy(logits, target).item(),
                                                                            abs=1e-6)
    p = torch.softmax(logits.double(), dim=1)  # the parts from their definitions, in float64
    adversarial = -torch.log(1 - p[:, 4]).mean().item()
    classwise = -torch.log(p.gather(1, target[:, None])[:, 0] / (1 - p[:, 4])).mean().item()
    assert split_cross_entropy(logits, target, 0.0).item() == pytest.approx(adversarial, abs=1e-5)
    assert split_cross_entropy(logits, target, 0.25).item() == pytest.approx(adversarial + 0.25 * classwise, abs=1e-5)


def test_the_class_ramp_starts_real_vs_fake_and_continues_across_rounds() -> None:
    _, plain = stage3_digest(lambda g, d, s, c: conditional_step(g, d, s, c, CPU), training(), steps=1)
    _, early = stage3_digest(lambda g, d, s, c: conditional_step(g, d, s, c, CPU), training(finetune_class_ramp=10_000),
                             steps=1)
    # Step 1 of a long ramp: D's real term is nearly the adversarial part alone, which a fresh
    # D (5 near-uniform outputs) puts near ln(5/4) instead of ln 5 — the class part, ln 4, is gone.
    assert plain[0]["d_loss"] - early[0]["d_loss"] == pytest.approx(math.log(4), abs=0.1)
    # A FedGAN round past the ramp's end (first_step >= R) is the plain loss again.
    _, late = stage3_digest(lambda g, d, s, c: conditional_step(g, d, s, c, CPU, first_step=10),
                            training(finetune_class_ramp=10), steps=1)
    assert late[0]["d_loss"] == pytest.approx(plain[0]["d_loss"], rel=1e-5)


def two_rounds(carry: str) -> str:
    """Two 3-step stage-3 rounds on one G and D; between them G's and D's Adam is kept alive
    ("alive"), rebuilt from :func:`optimizer_tensors` ("tensors"), or rebuilt fresh ("fresh")."""
    cfg = training(finetune_freeze_d=1)  # D's optimizer over a subset: indices must still match
    torch.manual_seed(0)
    gen, disc = Generator(SPEC), Discriminator(SPEC, SPEC.n_c + 1)
    sample = PatchSampler(spectrograms(per_class=2), SPEC.patch, seed=0)
    opts = stage3_optimizers(gen, disc, cfg)
    for rnd in range(2):
        if rnd and carry != "alive":
            kept = [optimizer_tensors(o) for o in opts]
            opts = stage3_optimizers(gen, disc, cfg)
            if carry == "tensors":
                for opt, tensors in zip(opts, kept, strict=True):
                    load_optimizer_tensors(opt, {k: v.clone() for k, v in tensors.items()})
        step = conditional_step(gen, disc, sample, cfg, CPU, first_step=3 * rnd, optimizers=opts)
        for i in range(1, 4):
            step(i)
    return state_digest({**{f"g.{k}": v for k, v in gen.state_dict().items()},
                         **{f"d.{k}": v for k, v in disc.state_dict().items()}})


def test_adam_moments_carried_as_tensors_continue_the_optimizer_exactly() -> None:
    assert two_rounds("tensors") == two_rounds("alive") != two_rounds("fresh")


def test_a_fedgan_round_keeps_its_moments_only_when_given_them() -> None:
    cfg = load_config(overrides={"training": {"batch_size": 8}})
    torch.manual_seed(0)
    gen, disc = Generator(SPEC), Discriminator(SPEC, SPEC.n_c + 1)
    data = spectrograms(per_class=2)
    start = {k: v.clone() for k, v in gen.state_dict().items()}, {k: v.clone() for k, v in disc.state_dict().items()}
    moments = fedgan_round(cfg, gen, disc, data, seed=1, round_=1, steps=2)
    # "g.<index>.<name>": G's and D's Adam state after 2 steps, every parameter's.
    assert {k.split(".")[0] for k in moments} == {"g", "d"}
    assert moments["g.0.step"].item() == 2 and len(moments) == 3 * (len(list(gen.parameters())) + len(list(disc.parameters())))

    def round_two(kept: dict[str, torch.Tensor] | None) -> str:
        g, d = Generator(SPEC), Discriminator(SPEC, SPEC.n_c + 1)
        g.load_state_dict(start[0])
        d.load_state_dict(start[1])
        after = fedgan_round(cfg, g, d, data, seed=2, round_=2, steps=2, moments=kept)
        assert after["g.0.step"].item() == (4 if kept else 2)
        return state_digest(g.state_dict())

    assert round_two(moments) != round_two(None) == round_two({})


def test_mode_seeking_is_the_inverse_image_to_noise_distance_ratio_of_pairs() -> None:
    torch.manual_seed(0)
    fake, noise = torch.randn(6, 1, 4, 4), torch.randn(6, 3)
    ratio = (fake[:3] - fake[3:]).abs().mean() / (noise[:3] - noise[3:]).abs().mean()
    assert mode_seeking(fake, noise).item() == pytest.approx(1 / (ratio.item() + 1e-5), rel=1e-6)
    # A generator deaf to its noise (both halves equal) pays 1 / eps; an odd batch's last row is unpaired.
    assert mode_seeking(torch.ones(7, 1, 4, 4), torch.randn(7, 3)).item() == pytest.approx(1e5)


def test_mode_seeking_pairs_conditions_and_pushes_samples_apart() -> None:
    seen: list[torch.Tensor] = []

    class Recording(Generator):
        def forward(self, noise: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
            seen.append(condition.argmax(1))
            return super().forward(noise, condition)

    torch.manual_seed(0)
    gen, disc = Recording(SPEC), Discriminator(SPEC, SPEC.n_c + 1)
    sample = PatchSampler(spectrograms(per_class=2), SPEC.patch, seed=0)
    conditional_step(gen, disc, sample, training(finetune_mode_seeking=1.0), CPU)(1)
    assert torch.equal(seen[0][:4], seen[0][4:])  # batch 8: row i and row i + 4 share a condition

    def spread(seeking: float) -> float:
        """Distance between paired samples after 5 steps (fixed noise pairs, shared condition)."""
        torch.manual_seed(0)
        gen, disc = Generator(SPEC), Discriminator(SPEC, SPEC.n_c + 1)
        step = conditional_step(gen, disc, PatchSampler(spectrograms(per_class=2), SPEC.patch, seed=0),
                                training(finetune_mode_seeking=seeking, g_lr=5e-3), CPU)
        for i in range(1, 6):
            step(i)
        torch.manual_seed(1)
        with torch.no_grad():
            out = gen(torch.randn(16, SPEC.n_z), F.one_hot(torch.arange(16) % 4, 4).float())
        return (out[:8] - out[8:]).abs().mean().item()

    assert spread(10.0) > spread(0.0)


def test_freeze_d_keeps_the_lowest_convolutions_and_trains_the_rest() -> None:
    torch.manual_seed(0)
    gen, disc = Generator(SPEC), Discriminator(SPEC, SPEC.n_c + 1)
    before = {k: v.clone() for k, v in disc.state_dict().items()}
    step = conditional_step(gen, disc, PatchSampler(spectrograms(per_class=2), SPEC.patch, seed=0),
                            training(finetune_freeze_d=2), CPU)
    for i in range(1, 4):
        step(i)
    after = disc.state_dict()
    # convs.0 and convs.2 are the two lowest convolutions (LeakyReLUs between); spectral norm's
    # power-iteration vectors (_u, _v) move in every forward pass, trained or not.
    weights = [k for k in after if not k.endswith(("_u", "_v"))]
    frozen_keys = [k for k in weights if k.startswith(("convs.0.", "convs.2."))]
    assert len(frozen_keys) == 4  # weight (spectral norm's original) and bias of each
    assert all(torch.equal(before[k], after[k]) for k in frozen_keys)
    assert all(not torch.equal(before[k], after[k]) for k in weights if k not in frozen_keys)
    with pytest.raises(ValueError, match="finetune_freeze_d = 9.*at most 8"):
        trainable_discriminator(disc, 9)


@pytest.mark.parametrize("name", ALL)
def test_each_augmentation_keeps_shape_and_passes_gradients(name: str) -> None:
    torch.manual_seed(0)
    x = (torch.rand(6, 1, 32, 40) * 2 - 1).requires_grad_(True)
    y = AUGMENTS[name](x)
    assert y.shape == x.shape and not torch.equal(y, x)
    y.sum().backward()  # DiffAugment's point: G's gradient passes through the transform
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_shift_moves_frames_and_fills_with_the_floor() -> None:
    torch.manual_seed(0)
    x = torch.arange(32 * 40, dtype=torch.float32).view(1, 1, 32, 40).repeat(64, 1, 1, 1) / 2000
    y = shift(x)
    for row in range(64):
        moved = [s for s in range(-5, 6) if torch.equal(
            y[row, ..., max(0, s):40 + min(0, s)], x[row, ..., max(0, -s):40 - max(0, s)])]
        assert len(moved) == 1, row  # one shift within T/8 = 5 frames explains the sample
        s = moved[0]
        gap = y[row, ..., :s] if s > 0 else y[row, ..., 40 + s:]
        assert bool((gap == -1).all())


@pytest.mark.parametrize(("mask", "dim", "most"), [(time_mask, 3, 10), (freq_mask, 2, 4)])
def test_masks_set_one_band_to_the_sample_mean(mask, dim: int, most: int) -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 1, 32, 40)
    y = mask(x)
    changed = (y != x).any(dim=tuple(d for d in (1, 2, 3) if d != dim))  # (B, n) positions touched
    widths = changed.sum(1)
    assert int(widths.max()) <= most and int(widths.max()) > 0
    for row in range(64):
        where = changed[row].nonzero()[:, 0]
        if len(where):
            assert int(where[-1] - where[0]) + 1 == len(where)  # one contiguous band
            band = y[row].index_select(dim - 1, where)
            assert torch.allclose(band, x[row].mean().expand_as(band))


def test_gain_is_one_offset_per_sample_within_its_bound() -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 1, 32, 40)
    d = gain(x) - x
    per_sample = d.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample), atol=1e-6)
    assert float(d.abs().max()) <= 0.2 + 1e-6


def test_no_augmentation_is_the_identity() -> None:
    x = torch.rand(2, 1, 32, 32)
    assert augmenter(())(x) is x


# ------------------------------------------------------------------------------------------
# Node-local generator selection
# ------------------------------------------------------------------------------------------


def labeled(per_class: int) -> LabeledSet:
    data = spectrograms(per_class=per_class)
    return LabeledSet(data.feats, data.labels, tuple(f"utt{i}" for i in range(len(data))))


def test_generator_split_keeps_the_audits_members_and_halves_its_held_out() -> None:
    data, cfg = labeled(20), load_config()
    members, held_out = members_of(data, cfg.audit.holdout, cfg.training.seed)
    off = generator_split(data, cfg)
    assert (off.members.ids, off.held_out.ids, off.selection.ids) == (members.ids, held_out.ids, ())
    on = generator_split(data, load_config(overrides={"training": {"finetune_select_every": 10}}))
    assert on.members.ids == members.ids  # selection never changes what the generator trains on
    assert set(on.selection.ids).isdisjoint(on.held_out.ids)
    assert sorted(on.selection.ids + on.held_out.ids) == sorted(held_out.ids)
    assert 0 < len(on.selection) < len(held_out)
    assert abs(len(on.selection) / len(held_out) - SELECTION_SHARE) < 0.35
    no_audit = load_config(overrides={"audit": {"enabled": False}})
    assert generator_split(data, no_audit).members.ids == data.ids  # nothing held back
    assert generator_split(data, cfg, hold_back=False).members.ids == data.ids


def tiny_study(**training_switches: object):
    return load_config(overrides={"model": {"width": 0.0625, "n_z": 8}, "features": {"patch_frames": 32},
                                  "audit": {"samples_per_class": 20, "iterations": 40},
                                  "training": {"batch_size": 8, "g_lr": 5e-4, "d_lr": 1e-3,
                                               "finetune_iterations": 6, **training_switches}})


def test_finetune_keeps_the_best_scored_iterate_of_the_same_run() -> None:
    """A score that prefers the 2nd of 3 evaluations: the kept generator is the one the run had at
    that step (selection neither moves the run nor keeps the last iterate)."""
    cfg, data = tiny_study(finetune_select_every=2), labeled(2)
    calls: list[int] = []

    def prefer_second(gen: Generator) -> float:
        calls.append(1)
        return -abs(len(calls) - 2)

    torch.manual_seed(0)
    kept = finetune(cfg, Generator(SPEC), Discriminator(SPEC, 1), data, select=prefer_second)
    assert len(calls) == 3
    torch.manual_seed(0)
    at_step_4 = finetune(cfg.model_copy(update={"training": cfg.training.model_copy(
        update={"finetune_iterations": 4, "finetune_select_every": 0})}), Generator(SPEC), Discriminator(SPEC, 1), data)
    assert state_digest(kept.state_dict()) == state_digest(at_step_4.state_dict())


def test_selection_score_guards_class_blindness_and_leaves_the_run_alone() -> None:
    cfg, data = tiny_study(finetune_select_every=2), labeled(6)
    ref = reference_classifier(cfg, data)
    torch.manual_seed(0)
    gen = Generator(SPEC).train()
    before_rng, before_state = torch.get_rng_state(), state_digest(gen.state_dict())
    # An untrained generator's samples are one blur whatever the condition: GAN-test ~ chance.
    assert selection_score(cfg, gen, ref, data) == -math.inf
    assert torch.equal(torch.get_rng_state(), before_rng)  # the training run's noise is untouched
    assert state_digest(gen.state_dict()) == before_state and gen.training  # spectral norm not stepped


def test_selection_score_ranks_by_frechet_distance_to_the_selection_utterances() -> None:
    """A "generator" that returns real patches of its class beats one that returns them mixed with noise."""
    cfg, data = tiny_study(finetune_select_every=2), labeled(6)
    ref = reference_classifier(cfg, data)
    bank = {c: torch.from_numpy(np.stack([f[:, :32] for f, y in zip(data.feats, data.labels, strict=True)
                                          if y == c])).unsqueeze(1) for c in range(4)}

    class Replay(torch.nn.Module):
        def __init__(self, noise: float) -> None:
            super().__init__()
            self.spec, self.noise, self.n_z = SPEC, noise, SPEC.n_z

        def generate(self, z: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
            rows = [bank[int(c)][i % len(bank[int(c)])] for i, c in enumerate(classes)]
            return torch.stack(rows) + self.noise * z[:, :1, None, None]

    close, far = selection_score(cfg, Replay(0.0), ref, data), selection_score(cfg, Replay(0.6), ref, data)
    assert math.isfinite(close) and close > far


def test_selector_is_off_without_the_switch_or_selection_data(caplog: pytest.LogCaptureFixture) -> None:
    data = labeled(2)
    assert selector(tiny_study(), generator_split(data, tiny_study())) is None
    cfg = tiny_study(finetune_select_every=2)
    split = generator_split(data, cfg)._replace(selection=LabeledSet((), (), ()))
    with caplog.at_level("WARNING"):
        assert selector(cfg, split) is None
    assert "generator selection skipped" in caplog.text



def test_average_weights_is_the_moving_average_with_its_warm_up() -> None:
    net = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.bias.fill_(0.0)
    average = AverageWeights(net, decay=0.9)

    def step(t: int) -> dict[str, float]:
        with torch.no_grad():
            net.weight.fill_(float(t + 1))  # the iterate after step t
        return {}

    run(step, 20, hooks=[average])
    want = 1.0
    for t in range(1, 21):
        d = min(0.9, (1 + t) / (10 + t))
        want = d * want + (1 - d) * (t + 1)
    assert net.weight.detach() == pytest.approx(torch.full((1, 2), want), rel=1e-6)  # float32, 20 products
    assert net.bias.item() == 0.0


def test_an_averaged_generator_has_its_spectral_norms_refit() -> None:
    def tuned(**switches: object) -> Generator:
        cfg = load_config(overrides={"training": {"batch_size": 8, "finetune_iterations": 12, **switches}})
        torch.manual_seed(0)
        return finetune(cfg, Generator(SPEC), Discriminator(SPEC, 1), spectrograms(per_class=2))

    last, averaged = tuned(), tuned(finetune_ema=0.9)
    assert state_digest(last.state_dict()) != state_digest(averaged.state_dict())
    for module in averaged.modules():
        if not parametrize.is_parametrized(module, "weight"):
            continue
        weight = module.parametrizations.weight.original.detach().flatten(1)  # (out, in * k * k)
        u, v = module.parametrizations.weight[0]._u, module.parametrizations.weight[0]._v
        # eval mode divides by u.W v: after the re-fit it is W's largest singular value (power
        # iterations from the last iterate's vectors; top two singular values within 0.3 % here: 1e-3 relative).
        assert torch.dot(u, weight @ v).item() == pytest.approx(torch.linalg.matrix_norm(weight, 2).item(), rel=1e-3)


def test_averaging_and_selection_are_refused_together() -> None:
    with pytest.raises(ConfigError, match="finetune_ema and training.finetune_select_every"):
        load_config(overrides={"training": {"finetune_ema": 0.99, "finetune_select_every": 50}})
