"""The SN-cGAN of seed 002 against Table 1: layer shapes, parameter counts, spectral norm, heads.

The paper-size networks (~140M parameters each) are built once per module on the ``meta`` device:
shapes and parameter counts are exact there and nothing is allocated. Numerical checks (the
singular values) use a tiny spec on the CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from common.models.sngan import Discriminator, GanSpec, Generator, ser_network
from common.schema import load_config

PAPER = GanSpec(n_z=128, n_c=4, width=1.0, patch=128)
TINY_GRID = GanSpec(n_z=8, n_c=4, width=0.0625, patch=32)

# Table 1 of seed 002, one row per layer: (input shape, stride, output shape). In the generator a
# "stride 2" row is a x2 (nearest) upsampling after the convolution.
GEN_TABLE = [
    ((128 + 4,), None, (4096,)),
    ((4096,), None, (32768,)),
    ((512, 8, 8), 1, (512, 8, 8)),
    ((512, 8, 8), 2, (512, 16, 16)),
    ((512, 16, 16), 1, (256, 16, 16)),
    ((256, 16, 16), 2, (256, 32, 32)),
    ((256, 32, 32), 1, (128, 32, 32)),
    ((128, 32, 32), 2, (128, 64, 64)),
    ((128, 64, 64), 1, (64, 64, 64)),
    ((64, 64, 64), 2, (64, 128, 128)),
    # Not a row of Table 1 but implied by its (1, 128, 128) discriminator input: the output conv.
    ((64, 128, 128), 1, (1, 128, 128)),
]
DISC_TABLE = [
    ((1, 128, 128), 1, (64, 128, 128)),
    ((64, 128, 128), 2, (64, 64, 64)),
    ((64, 64, 64), 1, (128, 64, 64)),
    ((128, 64, 64), 2, (128, 32, 32)),
    ((128, 32, 32), 1, (256, 32, 32)),
    ((256, 32, 32), 2, (256, 16, 16)),
    ((256, 16, 16), 1, (512, 16, 16)),
    ((512, 16, 16), 2, (512, 8, 8)),
    ((32768,), None, (4096,)),
    ((4096,), None, (4 + 1,)),
]


def conv(k: int, c_in: int, c_out: int) -> int:
    return k * k * c_in * c_out + c_out


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


# Parameter counts written out from Table 1 by hand (filter size 3 everywhere).
GEN_PARAMS = (
    (132 * 4096 + 4096)  # FC (N_z + N_c) -> 4096
    + (4096 * 32768 + 32768)  # FC 4096 -> 512*8*8
    + (3 * 3 * 512 * 512 + 512) * 2  # conv 512 -> 512, twice
    + (3 * 3 * 512 * 256 + 256)  # conv 512 -> 256
    + (3 * 3 * 256 * 256 + 256)  # conv 256 -> 256
    + (3 * 3 * 256 * 128 + 128)  # conv 256 -> 128
    + (3 * 3 * 128 * 128 + 128)  # conv 128 -> 128
    + (3 * 3 * 128 * 64 + 64)  # conv 128 -> 64
    + (3 * 3 * 64 * 64 + 64)  # conv 64 -> 64
    + (3 * 3 * 64 * 1 + 1)  # output conv 64 -> 1
)
DISC_PARAMS = (
    (3 * 3 * 1 * 64 + 64)
    + (3 * 3 * 64 * 64 + 64)
    + (3 * 3 * 64 * 128 + 128)
    + (3 * 3 * 128 * 128 + 128)
    + (3 * 3 * 128 * 256 + 256)
    + (3 * 3 * 256 * 256 + 256)
    + (3 * 3 * 256 * 512 + 512)
    + (3 * 3 * 512 * 512 + 512)
    + (32768 * 4096 + 4096)  # FC 512*8*8 -> 4096
    + (4096 * 5 + 5)  # head: N_c + 1 outputs
)


@pytest.fixture(scope="module")
def paper_nets() -> tuple[Generator, Discriminator]:
    with torch.device("meta"):
        return Generator(PAPER), Discriminator(PAPER, head=PAPER.n_c + 1)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def layer_trace(net: nn.Module, *inputs: torch.Tensor) -> list[tuple[nn.Module, tuple[int, ...], tuple[int, ...]]]:
    """(module, input shape, output shape) of every Linear, Conv2d and Upsample, in execution order."""
    trace: list[tuple[nn.Module, tuple[int, ...], tuple[int, ...]]] = []

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        trace.append((module, tuple(args[0].shape[1:]), tuple(out.shape[1:])))

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, nn.Linear | nn.Conv2d | nn.Upsample)]
    try:
        with torch.no_grad():
            net(*inputs)
    finally:
        for h in handles:
            h.remove()
    return trace


def table_rows(trace: list[tuple[nn.Module, tuple[int, ...], tuple[int, ...]]]) -> list[tuple]:
    """Fold an upsampling into the row of the convolution before it, as Table 1 does."""
    rows: list[tuple] = []
    for module, shape_in, shape_out in trace:
        if isinstance(module, nn.Upsample):
            assert module.mode == "nearest" and module.scale_factor == 2
            prev_in, _stride, prev_out = rows[-1]
            assert shape_in == prev_out
            rows[-1] = (prev_in, 2, shape_out)
        else:
            stride = module.stride[0] if isinstance(module, nn.Conv2d) else None
            rows.append((shape_in, stride, shape_out))
    return rows


def affine_layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def test_paper_generator_layers_match_table_1(paper_nets) -> None:
    gen, _ = paper_nets
    with torch.device("meta"):
        trace = layer_trace(gen, torch.zeros(1, 128), torch.zeros(1, 4))
    assert table_rows(trace) == GEN_TABLE
    convs = [m for m, _, _ in trace if isinstance(m, nn.Conv2d)]
    assert all(c.kernel_size == (3, 3) and c.stride == (1, 1) for c in convs)
    # The upsampling follows every second convolution: the conv itself keeps the 8x8 map.
    assert [out for m, _, out in trace if isinstance(m, nn.Conv2d)][:2] == [(512, 8, 8), (512, 8, 8)]


def test_paper_discriminator_layers_match_table_1(paper_nets) -> None:
    _, disc = paper_nets
    with torch.device("meta"):
        trace = layer_trace(disc, torch.zeros(1, 1, 128, 128))
    assert table_rows(trace) == DISC_TABLE
    assert all(m.kernel_size == (3, 3) for m, _, _ in trace if isinstance(m, nn.Conv2d))


def test_activations_leaky_relu_except_last(paper_nets) -> None:
    """Table 1: leaky ReLU after each layer except the last (tanh for the generator, logits for D)."""
    gen, disc = paper_nets
    gen_seq = [m for m in [*gen.fc, *gen.convs] if not isinstance(m, nn.Upsample)]
    disc_seq = [m for m in [*disc.convs, *disc.fc, disc.head] if not isinstance(m, nn.Flatten)]
    for seq, n_affine in ((gen_seq, 11), (disc_seq, 10)):
        affine = [i for i, m in enumerate(seq) if isinstance(m, nn.Linear | nn.Conv2d)]
        assert len(affine) == n_affine
        for i in affine[:-1]:
            assert isinstance(seq[i + 1], nn.LeakyReLU)
            assert seq[i + 1].negative_slope == pytest.approx(0.2)
    assert isinstance(gen_seq[-1], nn.Tanh) and gen_seq[-2] is affine_layers(gen)[-1]
    assert disc_seq[-1] is disc.head  # no activation after the head
    assert not any(isinstance(m, nn.BatchNorm2d | nn.Dropout) for m in [*gen.modules(), *disc.modules()])


def test_paper_parameter_counts(paper_nets) -> None:
    gen, disc = paper_nets
    assert GEN_PARAMS == 141_838_785  # the arithmetic above, evaluated
    assert DISC_PARAMS == 138_926_533
    assert n_params(gen) == GEN_PARAMS
    assert n_params(disc) == DISC_PARAMS
    # Per layer too, with the helper formulas.
    expected_gen = [linear(132, 4096), linear(4096, 32768)] + [
        conv(3, i, o) for i, o in [(512, 512), (512, 512), (512, 256), (256, 256), (256, 128),
                                   (128, 128), (128, 64), (64, 64), (64, 1)]]
    assert [n_params(m) for m in affine_layers(gen)] == expected_gen
    expected_disc = [conv(3, i, o) for i, o in [(1, 64), (64, 64), (64, 128), (128, 128), (128, 256),
                                                (256, 256), (256, 512), (512, 512)]]
    expected_disc += [linear(32768, 4096), linear(4096, 5)]
    assert [n_params(m) for m in affine_layers(disc)] == expected_disc


def test_spectral_norm_registered_on_every_layer(paper_nets) -> None:
    gen, disc = paper_nets
    for net, count in ((gen, 2 + 9), (disc, 8 + 2)):
        layers = affine_layers(net)
        assert len(layers) == count
        for layer in layers:
            assert parametrize.is_parametrized(layer, "weight")
            names = [type(p).__name__ for p in layer.parametrizations.weight]
            assert names == ["_SpectralNorm"]


def test_replaced_head_is_spectral_normalized() -> None:
    disc = Discriminator(TINY_GRID, head=1)
    disc.replace_head(7)
    assert parametrize.is_parametrized(disc.head, "weight")


def _power_iterate(net: nn.Module, make_input, steps: int = 20) -> None:
    net.train()
    with torch.no_grad():
        for _ in range(steps):
            net(*make_input())


@pytest.mark.parametrize("which", ["generator", "discriminator"])
def test_normalized_weights_have_unit_spectral_norm(which: str) -> None:
    torch.manual_seed(0)
    spec = TINY_GRID
    if which == "generator":
        net: nn.Module = Generator(spec)
        inputs = lambda: (torch.randn(4, spec.n_z), torch.eye(spec.n_c))  # noqa: E731
    else:
        net = Discriminator(spec, head=spec.n_c + 1)
        inputs = lambda: (torch.rand(4, 1, spec.patch, spec.patch) * 2 - 1,)  # noqa: E731
    _power_iterate(net, inputs)
    net.eval()
    raw_far_from_one = 0
    with torch.no_grad():
        for layer in affine_layers(net):
            sigma = torch.linalg.matrix_norm(layer.weight.flatten(1), ord=2).item()
            assert sigma == pytest.approx(1.0, rel=0.05), (layer, sigma)
            raw = layer.parametrizations.weight.original
            raw_far_from_one += abs(torch.linalg.matrix_norm(raw.flatten(1), ord=2).item() - 1) > 0.05
    assert raw_far_from_one >= 1  # the unnormalized weights are not already unit-norm


def test_tiny_preset_keeps_table_1_structure(paper_nets) -> None:
    spec = GanSpec.of(load_config())
    assert (spec.width, spec.patch, spec.n_z, spec.n_c) == (0.125, 32, 32, 4)
    gen, disc = Generator(spec), Discriminator(spec, head=spec.n_c + 1)
    paper_gen, paper_disc = paper_nets
    assert len(affine_layers(gen)) == len(affine_layers(paper_gen))
    assert len(affine_layers(disc)) == len(affine_layers(paper_disc))
    # Every channel / hidden size is the paper's x 1/8; inputs and outputs keep their sizes.
    gen_rows = table_rows(layer_trace(gen, torch.zeros(1, 32), torch.zeros(1, 4)))
    assert [r[2] for r in gen_rows] == [
        (512,), (64 * 2 * 2,), (64, 2, 2), (64, 4, 4), (32, 4, 4), (32, 8, 8), (16, 8, 8),
        (16, 16, 16), (8, 16, 16), (8, 32, 32), (1, 32, 32)]
    assert [r[1] for r in gen_rows] == [r[1] for r in GEN_TABLE]
    disc_rows = table_rows(layer_trace(disc, torch.zeros(1, 1, 32, 32)))
    assert [r[2] for r in disc_rows] == [
        (8, 32, 32), (8, 16, 16), (16, 16, 16), (16, 8, 8), (32, 8, 8), (32, 4, 4), (64, 4, 4),
        (64, 2, 2), (512,), (5,)]
    assert [r[1] for r in disc_rows] == [r[1] for r in DISC_TABLE]
    assert all(parametrize.is_parametrized(m, "weight") for m in affine_layers(gen) + affine_layers(disc))


def test_heads_per_stage() -> None:
    spec = TINY_GRID
    x = torch.rand(3, 1, spec.patch, spec.patch)
    disc = Discriminator(spec, head=spec.n_z)
    body = {n: p.detach().clone() for n, p in disc.named_parameters() if not n.startswith("head.")}
    assert disc(x).shape == (3, spec.n_z)  # autoencoder encoder
    for outputs in (1, spec.n_c + 1):  # WGAN-GP critic, conditional discriminator
        old_head = disc.head
        disc.replace_head(outputs)
        assert disc.head is not old_head
        assert disc(x).shape == (3, outputs)
    # The body is kept across head changes (§3.2).
    after = {n: p for n, p in disc.named_parameters() if not n.startswith("head.")}
    assert body.keys() == after.keys()
    assert all(torch.equal(body[n], after[n]) for n in body)
    ser = ser_network(spec)
    assert isinstance(ser, Discriminator)
    assert ser(x).shape == (3, spec.n_c)
    gen = Generator(spec)
    out = gen.generate(torch.randn(3, spec.n_z), torch.tensor([0, 1, 3]))
    assert out.shape == (3, 1, spec.patch, spec.patch)
    assert out.abs().max() <= 1


@pytest.mark.parametrize("patch", [8, 40, 120, 130])
def test_patch_not_multiple_of_16_rejected(patch: int) -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        GanSpec(patch=patch)


def test_meta_build_matches_real_build() -> None:
    """The meta-device walk used above reports what a real CPU build computes."""
    spec = TINY_GRID
    real = table_rows(layer_trace(Generator(spec), torch.zeros(1, 8), torch.zeros(1, 4)))
    with torch.device("meta"):
        meta = table_rows(layer_trace(Generator(spec), torch.zeros(1, 8), torch.zeros(1, 4)))
    assert real == meta
