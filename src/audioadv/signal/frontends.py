"""Differentiable front ends as nn.Modules, batched over (B, T) waveforms.

Models start with these, and randomized smoothing splits a model between them, so each
stage is its own module: waveform -> Spectrogram (|STFT|) -> LogMel (log mel energies)
-> MeanVarNorm (per-utterance normalisation, Deep Speaker style).
"""
from __future__ import annotations

import math

import torch
from torch import nn

# --- mel scale (Slaney, as librosa's default htk=False) -----------------------------------
_F_SP = 200.0 / 3          # Hz per mel below the break
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(f: torch.Tensor | float, htk: bool = False) -> torch.Tensor:
    f = torch.as_tensor(f, dtype=torch.float64)
    if htk:
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    lin = f / _F_SP
    log = _MIN_LOG_MEL + torch.log(f.clamp_min(1e-10) / _MIN_LOG_HZ) / _LOGSTEP
    return torch.where(f >= _MIN_LOG_HZ, log, lin)


def mel_to_hz(m: torch.Tensor | float, htk: bool = False) -> torch.Tensor:
    m = torch.as_tensor(m, dtype=torch.float64)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    lin = _F_SP * m
    log = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (m - _MIN_LOG_MEL))
    return torch.where(m >= _MIN_LOG_MEL, log, lin)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None, htk: bool = False, norm: str | None = "slaney") -> torch.Tensor:
    """Triangular mel filters, shape (n_mels, n_fft // 2 + 1), float32.

    Same construction as librosa.filters.mel: triangles between consecutive mel-spaced
    edges on the FFT bin frequencies; norm="slaney" scales each to unit area (2 / bandwidth).
    """
    fmax = sample_rate / 2.0 if fmax is None else fmax
    fft_freqs = torch.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(float(hz_to_mel(fmin, htk)), float(hz_to_mel(fmax, htk)), n_mels + 2, dtype=torch.float64)
    edges = mel_to_hz(mels, htk)
    widths = edges[1:] - edges[:-1]
    ramps = edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    if norm == "slaney":
        weights = weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    elif norm is not None:
        raise ValueError(f"mel_filterbank: unknown norm {norm!r} (use 'slaney' or None)")
    return weights.float()


def frame_count(num_samples: int, hop_length: int, center: bool = True, n_fft: int = 512) -> int:
    """Number of STFT frames torch.stft produces for a signal of num_samples."""
    if center:
        return num_samples // hop_length + 1
    return 1 + (num_samples - n_fft) // hop_length


class Spectrogram(nn.Module):
    """Magnitude (power=1) or power (power=2) spectrogram: (B, T) -> (B, n_fft//2+1, frames)."""

    def __init__(self, n_fft: int = 512, win_length: int | None = 400, hop_length: int = 160,
                 power: float = 1.0, center: bool = True, window_scale: float = 1.0):
        super().__init__()
        self.n_fft, self.hop_length, self.power, self.center = n_fft, hop_length, power, center
        self.win_length = win_length or n_fft
        self.register_buffer("window", torch.hann_window(self.win_length, periodic=True) * window_scale,
                             persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        squeeze = wav.dim() == 1
        x = wav.unsqueeze(0) if squeeze else wav
        spec = torch.stft(x, self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                          window=self.window, center=self.center, return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2
        # abs() of a complex zero has a NaN gradient; a 1e-20 floor keeps |z| exact to 1e-10.
        out = (power + 1e-20).sqrt() if self.power == 1.0 else power.pow(self.power / 2)
        return out[0] if squeeze else out


class LogMel(nn.Module):
    """Log mel filterbank energies of a magnitude spectrogram: (B, F, frames) -> (B, n_mels, frames).

    Takes the magnitude (power 1) spectrogram so that a model can be split right after
    Spectrogram; squares it internally (power spectrum), applies the mel filters, then log.
    """

    def __init__(self, sample_rate: int = 16000, n_fft: int = 512, n_mels: int = 40,
                 fmin: float = 0.0, fmax: float | None = None, log_floor: float = 1e-6):
        super().__init__()
        self.log_floor = log_floor
        self.register_buffer("fb", mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax), persistent=False)

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        mel = torch.matmul(self.fb, mag.pow(2))
        return torch.log(mel + self.log_floor)


class MeanVarNorm(nn.Module):
    """Per-utterance mean/variance normalisation over time of each feature (Deep Speaker style)."""

    def __init__(self, eps: float = 1e-5, variance: bool = True):
        super().__init__()
        self.eps, self.variance = eps, variance

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        out = feats - feats.mean(dim=-1, keepdim=True)
        if self.variance:
            out = out / (feats.std(dim=-1, keepdim=True) + self.eps)
        return out


class PowerSpectralDensity(nn.Module):
    """Log power spectral density per frame, as in Qin et al. 2019 (Sec. 3.2, Eq. 3).

    s_x(k) = sum_n w(n) x(n) e^{-j 2 pi k n / N} with a Hann window scaled by sqrt(8/3);
    p_x(k) = 10 log10 |s_x(k) / N|^2. Returns (B, n_fft//2+1, frames) in dB. Use
    `normalize(psd, ref_max)` to shift to the 96 dB SPL reference of the masking model.
    """

    def __init__(self, n_fft: int = 2048, hop_length: int = 512, floor_db: float = -200.0):
        super().__init__()
        self.n_fft, self.hop_length, self.floor_db = n_fft, hop_length, floor_db
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True) * math.sqrt(8.0 / 3.0),
                             persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = wav.unsqueeze(0) if wav.dim() == 1 else wav
        spec = torch.stft(x, self.n_fft, hop_length=self.hop_length, window=self.window,
                          center=False, return_complex=True) / self.n_fft
        power = spec.real ** 2 + spec.imag ** 2
        psd = 10.0 * torch.log10(power.clamp_min(10 ** (self.floor_db / 10)))
        return psd[0] if wav.dim() == 1 else psd

    @staticmethod
    def normalize(psd_db: torch.Tensor, ref_max_db: torch.Tensor | None = None, level: float = 96.0) -> torch.Tensor:
        """p_bar = level - max_k p_ref(k) + p(k), per example; ref_max_db defaults to psd's own max."""
        if ref_max_db is None:
            ref_max_db = psd_db.flatten(1).amax(dim=1) if psd_db.dim() == 3 else psd_db.amax()
        if psd_db.dim() == 3 and torch.is_tensor(ref_max_db) and ref_max_db.dim() == 1:
            ref_max_db = ref_max_db[:, None, None]
        return level - ref_max_db + psd_db
