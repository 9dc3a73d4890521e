"""Seed 004 (Gans et al.) and Zhang et al. (2019): scaled-softmax attention, paper sizes, frame order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from common.models.fcn import Fcn1dAttention, Fcn2dAttention, ScaledSoftmaxAttention
from common.schema import load_config
from common.trainers.registry import build_trainer
from common.trainers.supervised import NetTrainer


def paper_trainer(name: str, **features) -> NetTrainer:
    return build_trainer(load_config(overrides={"preset": "paper", "features": features,
                                                "training": {"trainer": name}}))


def convs(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, nn.Conv1d | nn.Conv2d)]


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# --- the scaled softmax (eq. 2-4) -----------------------------------------------------------------


def test_attention_weights_are_the_scaled_softmax_of_the_scores() -> None:
    torch.manual_seed(0)
    att = ScaledSoftmaxAttention(channels=6, lam=0.3, hidden=5)
    a = torch.randn(3, 7, 6)  # (B, L, C)
    c, alpha = att(a)
    # eq. 2 by hand: e_i = u^T tanh(W a_i + b)
    e = torch.stack([torch.stack([att.u @ torch.tanh(att.proj.weight @ a[b, i] + att.proj.bias) for i in range(7)])
                     for b in range(3)])
    by_hand = torch.exp(0.3 * e) / torch.exp(0.3 * e).sum(dim=1, keepdim=True)  # eq. 3
    torch.testing.assert_close(alpha, by_hand)
    assert not torch.allclose(alpha, torch.softmax(e, dim=1), atol=1e-4)  # lambda is applied
    torch.testing.assert_close(alpha.sum(dim=1), torch.ones(3))
    torch.testing.assert_close(c, (alpha[:, :, None] * a).sum(dim=1))  # eq. 4
    assert c.shape == (3, 6) and alpha.shape == (3, 7)


def test_small_lambda_flattens_and_large_lambda_sharpens_the_weights() -> None:
    torch.manual_seed(0)
    att = ScaledSoftmaxAttention(channels=4, lam=1.0)
    a = torch.randn(2, 9, 4)
    peaks = []
    for lam in (1e-6, 0.3, 0.8, 5.0):
        att.lam = lam
        alpha = att(a)[1]
        peaks.append(alpha.max(dim=1).values)
        if lam == 1e-6:
            torch.testing.assert_close(alpha, torch.full_like(alpha, 1 / 9))  # lambda -> 0: uniform (a mean)
    for low, high in zip(peaks, peaks[1:], strict=False):
        assert (high > low).all()


def test_attention_refuses_a_non_positive_lambda() -> None:
    with pytest.raises(ValueError, match="lambda"):
        ScaledSoftmaxAttention(4, 0.0)


# --- paper sizes ------------------------------------------------------------------------------------


def test_1d_network_at_paper_size_on_the_259_value_mean_spectrum() -> None:
    trainer = paper_trainer("fcn1d-attention", kind="mean_spectrum")
    net = trainer.net
    assert (trainer.rows, trainer.frames) == (259, 1)
    assert isinstance(net, Fcn1dAttention) and trainer.whole_utterance
    layers = convs(net)
    assert [m.out_channels for m in layers] == [5, 10, 20, 30]
    assert [m.kernel_size for m in layers] == [(11,), (5,), (3,), (3,)]
    assert [m.stride for m in layers] == [(4,), (1,), (1,), (1,)]
    assert all(m.padding == (0,) for m in layers)
    assert sum(isinstance(m, nn.MaxPool1d) for m in net.modules()) == 3
    x = torch.randn(2, 1, 259, 1)
    a = net.annotations(x)
    # 259 -> 63 -pool-> 31 -> 27 -pool-> 13 -> 11 -> 9 -pool-> 4
    assert a.shape == (2, 4, 30)
    assert a.abs().max() < 1  # the FCN ends in a Dense layer with tanh
    logits, alpha = net.attend(x)
    assert logits.shape == (2, 4) and alpha.shape == (2, 4)
    # convs 60 + 260 + 620 + 1830, Dense 930, attention W b u 960, classifier 124
    assert n_params(net) == 4784
    assert trainer.net.attention.lam == 0.8
    opt = trainer.optimizer(list(net.parameters()))
    assert opt.param_groups[0]["lr"] == 1e-3 and trainer.lr_factor(10**6) == 1.0  # Fig. 3, no decay


def test_2d_network_at_paper_size_is_alexnet_with_attention_over_a_7x7_grid() -> None:
    trainer = paper_trainer("fcn2d-attention")
    net = trainer.net
    assert (trainer.rows, trainer.frames) == (128, 128)
    assert isinstance(net, Fcn2dAttention) and trainer.whole_utterance
    layers = convs(net)
    assert [m.out_channels for m in layers] == [96, 256, 384, 384, 256]
    assert [m.kernel_size for m in layers] == [(11, 11), (5, 5), (3, 3), (3, 3), (3, 3)]
    assert [m.stride for m in layers] == [(4, 4), (1, 1), (1, 1), (1, 1), (1, 1)]
    assert [m.padding for m in layers] == [(2, 2), (2, 2), (1, 1), (1, 1), (1, 1)]  # AlexNet's
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 2
    x = torch.randn(2, 1, 128, 128)
    with torch.no_grad():
        # 128 -> 31 -pool-> 15 -> 15 -pool-> 7 -> 7 -> 7
        assert net.features(x).shape == (2, 256, 7, 7)
        logits, alpha = net.attend(x)
    assert logits.shape == (2, 4) and alpha.shape == (2, 49)
    # convs 11712 + 614656 + 885120 + 1327488 + 884992 = 3723968, attention W b u 66048, classifier 1028
    assert n_params(net) == 3_791_044
    assert net.attention.lam == 0.3


def test_tiny_sizes_fit_32_row_windows() -> None:
    """The tiny preset's "same" padding leaves both networks a feature map on 32 x 32 log-mel windows."""
    for name, grid in (("fcn1d-attention", 1), ("fcn2d-attention", 4)):
        net = build_trainer(load_config(overrides={"training": {"trainer": name}})).net
        assert net.annotations(torch.randn(2, 1, 32, 32)).shape[1] == grid


# --- frame order ------------------------------------------------------------------------------------


def test_the_1d_network_ignores_frame_order_and_the_2d_network_does_not() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 1, 32, 32)
    shuffled = x[..., torch.randperm(32)]
    for name, invariant in (("fcn1d-attention", True), ("fcn2d-attention", False)):
        net = build_trainer(load_config(overrides={"training": {"trainer": name}})).net.eval()
        with torch.no_grad():
            # float32 round-off of a mean over 32 frames summed in another order: ~1e-8 (measured);
            # the 2-D network's outputs differ by 1.5e-3.
            same = torch.allclose(net(x), net(shuffled), atol=1e-5)
        assert same == invariant, name


def test_a_file_is_scored_in_one_pass_over_all_its_frames() -> None:
    """``whole_utterance``: the 1-D network sees the mean over the whole file, not window averages."""
    trainer = build_trainer(load_config(overrides={"training": {"trainer": "fcn1d-attention"}}))
    rng = np.random.default_rng(0)
    feat = rng.uniform(-1, 1, (32, 90)).astype(np.float32)
    feat[:, :45] += 0.5  # the windows differ
    with torch.no_grad():
        whole = torch.softmax(trainer.net(torch.from_numpy(feat)[None, None]), dim=1).numpy()
    np.testing.assert_allclose(trainer.predict_proba([feat]), whole, atol=1e-6)
