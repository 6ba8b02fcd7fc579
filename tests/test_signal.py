import math

import numpy as np
import pytest
import torch

from audioadv import signal as S


def test_metrics_hand_computed():
    x = torch.tensor([[0.5, -0.5, 0.5, -0.5]])
    d = torch.tensor([[0.05, 0.0, -0.05, 0.0]])
    assert S.rms(x).item() == pytest.approx(0.5)
    assert S.spl(x).item() == pytest.approx(20 * math.log10(0.5), abs=1e-5)
    assert S.db(x).item() == pytest.approx(20 * math.log10(0.5), abs=1e-5)
    # dB_x = 20 log10(0.05) - 20 log10(0.5) = -20
    assert S.db_x(x, d).item() == pytest.approx(-20.0, abs=1e-4)
    # P(x) = 0.25, P(d) = 0.00125 -> 10 log10(200)
    assert S.snr(x, d).item() == pytest.approx(10 * math.log10(200), abs=1e-4)
    assert S.l0(d).item() == pytest.approx(0.5)
    assert S.l0(d, fraction=False).item() == 2
    assert S.l2(d).item() == pytest.approx(math.sqrt(2) * 0.05, abs=1e-6)
    assert S.linf(d).item() == pytest.approx(0.05)


def test_batched_one_value_per_example():
    x = torch.randn(5, 300)
    for fn in (S.rms, S.spl, S.db, S.l2, S.linf, S.l0):
        assert fn(x).shape == (5,)
    assert S.snr(x, 0.1 * x).shape == (5,)
    assert torch.allclose(S.snr(x, 0.1 * x), torch.full((5,), 20.0), atol=1e-4)


def test_zero_perturbation_is_inf_not_nan():
    x = torch.randn(3, 100)
    z = torch.zeros(3, 100)
    assert torch.isinf(S.snr(x, z)).all() and (S.snr(x, z) > 0).all()
    assert torch.isneginf(S.db(z)).all()
    assert torch.isneginf(S.spl(z)).all()
    assert torch.isneginf(S.db_x(x, z)).all()
    assert not torch.isnan(S.snr(z, z)).any()


def test_metrics_differentiable():
    d = (0.01 * torch.randn(2, 200)).requires_grad_()
    x = torch.randn(2, 200)
    (S.spl(d).sum() + S.snr(x, d).sum() + S.db(d).sum()).backward()
    assert torch.isfinite(d.grad).all() and d.grad.abs().sum() > 0


# --- mel filters: librosa's Slaney construction, written out independently in numpy -------
def _ref_hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)


def _ref_mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_mel = 1000.0 / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, 1000.0 * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def _ref_mel_fb(sr, n_fft, n_mels, fmin, fmax):
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    pts = _ref_mel_to_hz(np.linspace(_ref_hz_to_mel(fmin), _ref_hz_to_mel(fmax), n_mels + 2))
    w = np.zeros((n_mels, len(freqs)))
    for i in range(n_mels):
        lo, c, hi = pts[i], pts[i + 1], pts[i + 2]
        for k, f in enumerate(freqs):
            if lo < f <= c:
                w[i, k] = (f - lo) / (c - lo)
            elif c < f < hi:
                w[i, k] = (hi - f) / (hi - c)
        w[i] *= 2.0 / (hi - lo)
    return w


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax", [(16000, 512, 40, 0.0, 8000.0), (16000, 400, 64, 20.0, 7600.0),
                                                        (8000, 256, 23, 0.0, 4000.0)])
def test_mel_filterbank_matches_slaney_reference(sr, n_fft, n_mels, fmin, fmax):
    ref = _ref_mel_fb(sr, n_fft, n_mels, fmin, fmax)
    ours = S.mel_filterbank(sr, n_fft, n_mels, fmin, fmax).double().numpy()
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-5


def test_mel_scale_known_points():
    assert float(S.hz_to_mel(1000.0)) == pytest.approx(15.0)
    assert float(S.mel_to_hz(S.hz_to_mel(3456.0))) == pytest.approx(3456.0, rel=1e-9)
    assert float(S.hz_to_mel(440.0, htk=True)) == pytest.approx(2595 * math.log10(1 + 440 / 700))


def test_spectrogram_matches_numpy_stft():
    torch.manual_seed(1)
    x = torch.randn(2, 4000)
    spec = S.Spectrogram(n_fft=512, win_length=400, hop_length=160)(x)
    assert spec.shape == (2, 257, S.frame_count(4000, 160))
    # reference: centre-padded (reflect) frames, periodic Hann of 400 zero-padded to 512 in the middle
    xp = np.pad(x[0].numpy().astype(np.float64), 256, mode="reflect")
    win = np.zeros(512)
    n = np.arange(400)
    win[56:456] = 0.5 - 0.5 * np.cos(2 * np.pi * n / 400)
    frame = xp[160 * 7: 160 * 7 + 512] * win
    ref = np.abs(np.fft.rfft(frame))
    assert np.allclose(spec[0, :, 7].double().numpy(), ref, atol=1e-3 * ref.max())


def test_spectrogram_gradient_finite_at_silence():
    x = torch.zeros(1, 1600, requires_grad=True)
    S.LogMel()(S.Spectrogram()(x)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_logmel_of_tone_peaks_at_right_band():
    sr = 16000
    t = torch.arange(sr) / sr
    x = torch.sin(2 * math.pi * 1000 * t)[None]
    mel = S.LogMel(sample_rate=sr, n_mels=40)(S.Spectrogram()(x))
    band = int(mel[0, :, 50].argmax())
    fb = S.mel_filterbank(sr, 512, 40)
    centre_bins = fb.argmax(dim=1) * sr / 512
    assert abs(float(centre_bins[band]) - 1000) < 150


def test_mean_var_norm():
    f = torch.randn(2, 40, 100) * 3 + 7
    out = S.MeanVarNorm()(f)
    assert torch.allclose(out.mean(-1), torch.zeros(2, 40), atol=1e-5)
    assert torch.allclose(out.std(-1), torch.ones(2, 40), atol=1e-3)


def test_psd_of_full_scale_tone_normalises_to_96db():
    sr = 16000
    t = torch.arange(sr) / sr
    x = 0.5 * torch.sin(2 * math.pi * 1000 * t)
    psd = S.PowerSpectralDensity()(x[None])
    norm = S.PowerSpectralDensity.normalize(psd)
    assert norm.max().item() == pytest.approx(96.0, abs=1e-4)
    k = int(psd[0, :, 3].argmax())
    assert abs(k * sr / 2048 - 1000) < 16
    # halving the amplitude lowers the raw PSD by 6 dB
    psd_half = S.PowerSpectralDensity()(0.5 * x[None])
    assert (psd[0, k, 3] - psd_half[0, k, 3]).item() == pytest.approx(20 * math.log10(2), abs=1e-3)
