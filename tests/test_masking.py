"""Psychoacoustic masking threshold (Qin et al. 2019) on hand-checkable signals."""
import math

import pytest
import torch

from audioadv.signal.masking import (absolute_threshold_of_hearing, bark, masking_loss, masking_threshold,
                                     perturbation_psd)

SR = 16000


def tone(f, seconds=1.0, amp=0.5):
    t = torch.arange(int(seconds * SR)) / SR
    return amp * torch.sin(2 * math.pi * f * t)


def test_bark_and_quiet_threshold_formulas():
    assert float(bark(torch.tensor(0.0))) == 0.0
    assert float(bark(torch.tensor(1000.0))) == pytest.approx(13 * math.atan(0.76) + 3.5 * math.atan((1000 / 7500) ** 2))
    # the absolute threshold of hearing is lowest near 3-4 kHz and rises towards low frequencies
    ath = absolute_threshold_of_hearing(torch.tensor([100.0, 1000.0, 3300.0]))
    assert ath[0] > ath[1] > ath[2]


def test_pure_tone_threshold_peaks_at_the_tone_and_falls_to_the_ath():
    theta, psd_max = masking_threshold(tone(1000.0)[None])
    th_db = 10 * torch.log10(theta[0, :, 5])
    freqs = torch.linspace(0, SR / 2, theta.shape[1])
    assert abs(float(freqs[th_db.argmax()]) - 1000.0) <= 2 * SR / 2048
    # the tone is the loudest component, normalised to 96 dB; the threshold stays below it
    assert 80.0 < float(th_db.max()) < 96.0
    # far below the tone (steep lower slope, 27 dB/Bark) only the absolute threshold remains
    for f in (350.0, 450.0):
        k = int(round(f / (SR / 2048)))
        ath = float(absolute_threshold_of_hearing(freqs[k]))
        assert float(th_db[k]) == pytest.approx(ath, abs=1.0)
    # above the tone the masking decays slowly but monotonically
    k1, k2, k3 = (int(round(f / (SR / 2048))) for f in (1500.0, 3000.0, 6000.0))
    assert th_db[k1] > th_db[k2] > th_db[k3] > -20


def test_batched_threshold_matches_single_and_respects_lengths():
    a, b = tone(500.0, 0.5), tone(2000.0, 0.3, amp=0.1)
    batch = torch.zeros(2, len(a))
    batch[0], batch[1, :len(b)] = a, b
    theta, pmax = masking_threshold(batch, lengths=torch.tensor([len(a), len(b)]))
    t1, p1 = masking_threshold(b[None])
    assert torch.allclose(pmax[1], p1[0])
    n = t1.shape[-1]
    assert torch.allclose(theta[1, :, :n], t1[0], rtol=1e-4)


def test_masking_loss_zero_when_masked_positive_when_loud():
    x = tone(1000.0)[None]
    theta, pmax = masking_threshold(x)
    loud = 0.3 * torch.randn_like(x)
    big = float(masking_loss(loud, theta, pmax)[0])
    assert big > 1e3
    # a copy of the tone 40 dB down hides under the tone's own threshold (only spectral leakage
    # into the lowest bins, where the model has no absolute threshold, is left)
    assert float(masking_loss(0.01 * x, theta, pmax)[0]) < 1e-9 * big
    assert float(masking_loss(torch.zeros_like(x), theta, pmax)[0]) == 0.0
    # the perturbation PSD is normalised with the clean maximum: the clean tone itself peaks at 96 dB
    assert float(10 * torch.log10(perturbation_psd(x, pmax).max())) == pytest.approx(96.0, abs=1e-3)
    # differentiable in the perturbation
    d = loud.clone().requires_grad_(True)
    masking_loss(d, theta, pmax).sum().backward()
    assert d.grad.abs().sum() > 0


@pytest.mark.parametrize("n_fft,hop,length", [(16, 4, 50), (15, 5, 47), (16, 5, 53)])
def test_perturbation_psd_gradient_matches_autograd_through_stft(n_fft, hop, length):
    # the hand-written backward against autograd's through torch.stft, including an odd window and a hop that
    # does not divide it (the generic overlap-add)
    from audioadv.signal.masking import _window
    torch.manual_seed(0)
    d = torch.randn(2, length, dtype=torch.float64, requires_grad=True)
    pmax = torch.tensor([80.0, 60.0], dtype=torch.float64)
    g = torch.randn(2, n_fft // 2 + 1, (length - n_fft) // hop + 1, dtype=torch.float64)
    ours = perturbation_psd(d, pmax, n_fft, hop)
    grad, = torch.autograd.grad((ours * g).sum(), d)
    spec = torch.stft(d, n_fft, hop_length=hop, window=_window(n_fft, d.dtype, d.device), center=False,
                      return_complex=True)
    ref = spec.abs() ** 2 / n_fft ** 2 * (10.0 ** ((96.0 - pmax) / 10.0))[:, None, None]
    ref_grad, = torch.autograd.grad((ref * g).sum(), d)
    assert torch.allclose(ours, ref) and torch.allclose(grad, ref_grad)
    with pytest.raises(ValueError, match="shorter than one window"):
        perturbation_psd(torch.zeros(1, n_fft - 1), pmax[:1], n_fft, hop)
