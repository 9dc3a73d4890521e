"""Seed 001 (Tu et al. 2019): the gradient reversal of DAT, CGT's perturbations and eq. 4, Table 1's
sizes, and training with and without speaker labels. The contract (learning, weights, FedProx, GAN
batches) is tests/test_trainers.py's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.models.tu import TuNet, reverse_gradient
from common.schema import load_config
from common.trainers.registry import build_trainer
from common.trainers.tu import TuTrainer
from common.views import LabeledSet, UtteranceSampler

SPEAKERS = ("tu-mtl", "tu-dat", "tu-cgt")  # the variants with a speaker head


def tiny(trainer: str, **tu: object) -> TuTrainer:
    """A tiny-preset trainer (32 x 32 windows) with ``model.tu`` overrides."""
    cfg = load_config(overrides={"model": {"tu": tu}, "training": {"trainer": trainer, "batch_size": 8}})
    return build_trainer(cfg)


def batch(n: int = 8, seed: int = 0, speakers: list[int] | None = None) -> tuple:
    """Random (n, 1, 32, 32) windows, emotions 0..3 and speakers (default: 0..7, one unknown)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, generator=g) * 2 - 1
    y = torch.arange(n) % 4
    s = torch.tensor(speakers if speakers is not None else [0, 1, 2, 3, -1, 5, 6, 7][:n])
    return x, y, {"speaker": s}


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: (p.grad if p.grad is not None else torch.zeros_like(p)).clone() for k, p in module.named_parameters()}


# --- DAT: the gradient reversal layer -------------------------------------------------------------


def test_reverse_gradient_is_identity_forward_and_negated_scaled_backward() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    out = reverse_gradient(x, 0.3)
    torch.testing.assert_close(out, x)
    (out * torch.arange(4.0)).sum().backward()
    torch.testing.assert_close(x.grad, -0.3 * torch.arange(4.0).expand(3, 4))


def test_dat_reverses_the_speaker_gradient_into_the_embedding_only() -> None:
    """Eq. 1: the embedding receives -lambda dL_s/dtheta; the speaker head itself still minimizes L_s."""
    lam = 0.3
    mtl, dat = tiny("tu-mtl", dropout=0.0, dat_lambda=lam), tiny("tu-dat", dropout=0.0, dat_lambda=lam)
    dat.load_state_dict(mtl.state_dict())
    x, y, aux = batch()
    seen = {}
    for name, trainer in (("mtl", mtl), ("dat", dat)):
        trainer.net.train()
        _, l_s = trainer.terms(x, y, aux["speaker"])
        l_s.backward()
        seen[name] = (l_s.item(), grads(trainer.net.embed), grads(trainer.net.speaker))
    assert seen["dat"][0] == pytest.approx(seen["mtl"][0])  # identity forward
    # Biases in front of a BatchNorm get (numerically) zero gradient: tolerance on the overall scale.
    scale = max(float(g.abs().max()) for g in seen["mtl"][1].values())
    for key, g in seen["mtl"][1].items():
        torch.testing.assert_close(seen["dat"][1][key], -lam * g, rtol=1e-4, atol=1e-5 * scale, msg=key)
    assert scale > 0 and not torch.allclose(seen["dat"][1]["lstm.weight_ih_l0"], seen["mtl"][1]["lstm.weight_ih_l0"])
    for key, g in seen["mtl"][2].items():
        torch.testing.assert_close(seen["dat"][2][key], g)


# --- CGT: eq. 2-4 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_cgt_perturbs_along_each_task_gradient_and_mixes_the_losses_as_eq_4(alpha: float) -> None:
    eps = 0.7
    trainer = tiny("tu-cgt", dropout=0.0, cgt_epsilon=eps, cgt_alpha=alpha)
    x, y, aux = batch()
    s = aux["speaker"]
    inputs: list[torch.Tensor] = []
    terms = trainer.terms

    def spy(xs: torch.Tensor, ys: torch.Tensor, ss: torch.Tensor,
            frames: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        inputs.append(xs.detach().clone())
        return terms(xs, ys, ss, frames)

    trainer.terms = spy
    trainer.net.train()
    loss, _ = trainer.loss((x, y, aux))

    # Independently: per-utterance input gradients (eq. 2-3 are per utterance i: the batch sum).
    net = trainer.net
    leaf = x.clone().requires_grad_(True)
    emotion, speaker = net.both(leaf)
    (g_s,) = torch.autograd.grad(F.cross_entropy(speaker, s, ignore_index=-1, reduction="sum"), leaf, retain_graph=True)
    (g_y,) = torch.autograd.grad(F.cross_entropy(emotion, y, reduction="sum"), leaf)
    x_s, x_y = x + eps * g_s, x + eps * g_y
    assert g_s.abs().sum() > 0 and g_y.abs().sum() > 0 and not torch.allclose(g_s, g_y)

    assert len(inputs) == 3
    torch.testing.assert_close(inputs[0], x)
    torch.testing.assert_close(inputs[1], x_s)  # eq. 2
    torch.testing.assert_close(inputs[2], x_y)  # eq. 3

    def ce(xx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e, sp = net.both(xx)
        return F.cross_entropy(e, y), F.cross_entropy(sp, s, ignore_index=-1)

    with torch.no_grad():
        (l_y, l_s), (l_y_xs, _), (_, l_s_xy) = ce(x), ce(x_s), ce(x_y)
    expected = (1 - alpha) * (l_y + l_s) + alpha * (l_y_xs + l_s_xy)  # eq. 4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(((l_y + l_s) if alpha else (l_y_xs + l_s_xy)).item(), rel=1e-5)


# --- Table 1 sizes ----------------------------------------------------------------------------------


def test_paper_sizes_are_table_1_iemocap() -> None:
    cfg = load_config(overrides={"preset": "paper", "features": {"kind": "mfcc_vad", "patch_frames": 300},
                                 "training": {"trainer": "tu-mtl"}})
    trainer = build_trainer(cfg)
    net = trainer.net
    assert trainer.objective == "mtl" and isinstance(net, TuNet) and trainer.rows == 39  # 13 MFCC + d + dd
    convs = list(net.embed.convs)
    # TDNN 128-5-2, TDNN 64-3-4
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.dilation) for c in convs] == [
        (39, 128, (5,), (2,)), (128, 64, (3,), (4,))]
    for lstm in (net.embed.lstm, net.embed.lstm_reverse):  # Bi-LSTM 64: one LSTM per direction
        assert (lstm.input_size, lstm.hidden_size, lstm.bidirectional, lstm.num_layers) == (64, 64, False, 1)
    assert (net.embed.fc.in_features, net.embed.fc.out_features) == (128, 256)  # FC 256
    for head, n_out in ((net.emotion, 4), (net.speaker, 8)):  # FC 512-64-64-4, FC 512-64-64-8
        linears = [m for m in head if isinstance(m, torch.nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(512, 64), (64, 64), (64, n_out)]
    net.eval()
    with torch.no_grad():
        assert net.embed(torch.zeros(2, 1, 39, 300)).shape == (2, 512)  # 256 mean + 256 std
        emotion, speaker = net.both(torch.zeros(2, 1, 39, 300))
    assert emotion.shape == (2, 4) and speaker is not None and speaker.shape == (2, 8)
    # By hand (weights + biases; BatchNorm: scale + shift):
    #   TDNN 1: 39*128*5 + 128 = 25_088, BN 256;  TDNN 2: 128*64*3 + 64 = 24_640, BN 128
    #   Bi-LSTM: 2 directions x (4*64*(64 + 64) + 2*4*64) = 2 x 33_280 = 66_560
    #   FC 256: 128*256 + 256 = 33_024, BN 512            -> embedding 150_208
    #   head: 512*64 + 64 = 32_832, BN 128, 64*64 + 64 = 4_160, BN 128, 64*N + N
    #     emotion (N = 4): 37_508;  speaker (N = 8): 37_768
    #   total 150_208 + 37_508 + 37_768 = 225_484 (SER only: 187_716)
    assert sum(p.numel() for p in net.parameters()) == 225_484
    ser = build_trainer(cfg.model_copy(update={"training": cfg.training.model_copy(update={"trainer": "tu-ser"})}))
    assert ser.objective == "ser" and ser.net.speaker is None
    assert sum(p.numel() for p in ser.net.parameters()) == 187_716


def test_sgd_with_nesterov_momentum_at_a_constant_rate_and_whole_utterances() -> None:
    trainer = tiny("tu-ser", lr=0.05, momentum=0.8)
    opt = trainer.optimizer(list(trainer.net.parameters()))
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["lr"] == 0.05 and opt.defaults["momentum"] == 0.8 and opt.defaults["nesterov"]
    assert trainer.lr_factor(0) == trainer.lr_factor(10**6) == 1.0
    assert trainer.whole_utterance


# --- speaker labels ---------------------------------------------------------------------------------


def speaker_set(speakers: tuple[int, ...]) -> LabeledSet:
    rng = np.random.default_rng(0)
    feats = tuple(rng.uniform(-1, 1, (32, 40)).astype(np.float32) for _ in speakers)
    return LabeledSet(feats, tuple(i % 4 for i in range(len(speakers))), aux={"speaker": speakers})


@pytest.mark.parametrize("name", SPEAKERS)
def test_batches_without_speakers_train_the_emotion_part_only(name: str) -> None:
    trainer = tiny(name)
    x, y, _ = batch()
    emotion0 = [p.detach().clone() for p in trainer.net.emotion.parameters()]
    speaker0 = [p.detach().clone() for p in trainer.net.speaker.parameters()]
    result = trainer.fit(lambda n: (x[:n], y[:n]), iterations=2)  # 2-tuples: GAN-synthetic style
    assert result.steps == 2 and result.last["speaker"] == 0.0
    assert any(not torch.equal(p, q) for p, q in zip(trainer.net.emotion.parameters(), emotion0, strict=True))
    assert all(torch.equal(p, q) for p, q in zip(trainer.net.speaker.parameters(), speaker0, strict=True))


def test_unknown_speakers_are_left_out_of_the_speaker_loss() -> None:
    trainer = tiny("tu-mtl", dropout=0.0)
    x, y, aux = batch(speakers=[0, -1, 2, -1, 4, 5, -1, 7])
    s = aux["speaker"]
    trainer.net.train()
    _, l_s = trainer.terms(x, y, s)
    known = s >= 0
    _, speaker = trainer.net.both(x)
    torch.testing.assert_close(l_s, F.cross_entropy(speaker[known], s[known]))


def test_the_sampler_carries_speakers_for_the_speaker_head() -> None:
    data = speaker_set((0, 1, 2, 3))
    x, y, aux = tiny("tu-dat").sampler(data, seed=0)(5)
    assert x.shape == (5, 1, 32, 40) and aux["speaker"].shape == (5,)  # whole 40-frame utterances
    assert torch.equal(aux["speaker"], y)  # speaker i has utterance i, label i % 4
    assert set(tiny("tu-ser").sampler(data, seed=0)(5)[2]) == {"frames"}  # no speaker head: no speakers
    x, _, aux = tiny("tu-dat", crops=True).sampler(data, seed=0)(5)  # the 1 s crops of before
    assert x.shape == (5, 1, 32, 32) and set(aux) == {"speaker"}


# --- whole utterances, epochs, selection by accuracy (§2.1, §3.2) ----------------------------------


def lengths_set(lengths: tuple[int, ...], rows: int = 32) -> LabeledSet:
    rng = np.random.default_rng(1)
    feats = tuple(rng.uniform(-1, 1, (rows, n)).astype(np.float32) for n in lengths)
    return LabeledSet(feats, tuple(i % 4 for i in range(len(lengths))))


def test_the_utterance_sampler_pads_whole_utterances_and_visits_each_once_per_epoch() -> None:
    data = lengths_set((25, 60, 40, 10, 33))
    sample = UtteranceSampler(data, min_frames=17, seed=3)
    row_of = {max(f.shape[1], 17): i for i, f in enumerate(data.feats)}  # the 10-frame one counts 17
    seen = [row_of[int(sample(1)[2]["frames"])] for _ in range(5)]  # one per batch: an epoch = 5 batches
    assert sorted(seen) == [0, 1, 2, 3, 4]  # without replacement within an epoch
    x, y, aux = sample(5)
    assert x.shape == (5, 1, 32, 60) and sorted(aux["frames"].tolist()) == [17, 25, 33, 40, 60]
    for i, n in enumerate(aux["frames"].tolist()):
        assert (x[i, 0, :, n:] == -1).all()  # padded with the scaled minimum beyond the true length


def test_the_two_one_way_lstms_are_a_bidirectional_lstm() -> None:
    embed = tiny("tu-ser").net.embed
    bi = torch.nn.LSTM(embed.lstm.input_size, embed.lstm.hidden_size, batch_first=True, bidirectional=True)
    bi.load_state_dict({**embed.lstm.state_dict(),
                        **{f"{k}_reverse": v for k, v in embed.lstm_reverse.state_dict().items()}})
    seq = torch.randn(3, 40, embed.lstm.input_size)
    torch.testing.assert_close(embed.bilstm(seq, None), bi(seq)[0])
    # Padded: each sequence's valid frames get what the bidirectional LSTM gives that sequence alone.
    lengths = torch.tensor([40, 25, 7])
    padded = embed.bilstm(seq, lengths)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(padded[i, :n], bi(seq[i : i + 1, :n])[0][0])


def test_an_utterance_gets_the_same_embedding_alone_and_padded_beside_a_longer_one() -> None:
    trainer = tiny("tu-mtl")
    net = trainer.net
    short, long = torch.rand(1, 1, 32, 30) * 2 - 1, torch.rand(1, 1, 32, 70) * 2 - 1
    padded = torch.full((2, 1, 32, 70), -1.0)
    padded[0, ..., :30], padded[1] = short[0], long[0]
    frames = torch.tensor([30, 70])
    net.eval()
    with torch.no_grad():
        alone, both = net.embed(short), net.embed(padded, frames)
    torch.testing.assert_close(both[0], alone[0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(net.embed(padded)[0], alone[0], atol=1e-3)  # unmasked pooling would differ
    # Training mode: what the padding holds changes nothing (BatchNorm statistics, LSTM, pooling).
    net.train()
    noisy = padded.clone()
    noisy[0, ..., 30:] = torch.rand(32, 40)
    torch.manual_seed(0)
    a = net.both(padded, frames)
    torch.manual_seed(0)
    b = net.both(noisy, frames)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


def test_epochs_over_real_data_with_a_validation_per_epoch_and_accuracy_selection() -> None:
    trainer = tiny("tu-ser", epochs=3)
    data = lengths_set((20, 30, 40, 50, 25, 35, 45, 55, 21, 31, 41, 51))  # 12 utterances, batch 8: 2 steps/epoch
    sample = trainer.sampler(data, seed=0)
    assert trainer.iterations(sample) == 6 and trainer.eval_every(sample) == 2
    result = trainer.fit(sample, data)
    assert result.steps == 6 and [step for step, _ in result.evals] == [2, 4, 6]
    assert trainer.selection == "wa" and result.best_score == max(score for _, score in result.evals)
    pool = lambda n: (torch.rand(n, 1, 32, 32), torch.arange(n) % 4)  # noqa: E731 - a synthetic pool: no epochs
    assert trainer.iterations(pool) == trainer.cfg.training.ser_iterations
    assert trainer.eval_every(pool) == trainer.cfg.training.eval_every


@pytest.mark.parametrize("name", SPEAKERS)
def test_a_speaker_index_beyond_the_head_is_refused(name: str) -> None:
    trainer = tiny(name, speakers=8)
    with pytest.raises(ValueError, match=r"model.tu.speakers = 8 but the training set has speaker index 9"):
        trainer.sampler(speaker_set((0, 9, -1, 3)))
    x, y, _ = batch()
    with pytest.raises(ValueError, match=r"model.tu.speakers = 8 but the batch has speaker index 8"):
        trainer.loss((x, y, {"speaker": torch.tensor([0, 1, 2, 3, 4, 5, 6, 8])}))


def test_variants_are_the_registered_objectives() -> None:
    trainers = [tiny(n) for n in ("tu-ser", "tu-mtl", "tu-dat", "tu-cgt")]
    assert all(type(t) is TuTrainer for t in trainers)
    assert [(t.objective, t.speaker_head) for t in trainers] == [
        ("ser", False), ("mtl", True), ("dat", True), ("cgt", True)]
