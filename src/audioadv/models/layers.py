"""Building blocks shared by the zoo: sinc and gammatone filterbank layers, a strided 1-D conv block."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..signal import hz_to_mel, mel_to_hz


def erb(f: torch.Tensor) -> torch.Tensor:
    """Equivalent rectangular bandwidth in Hz (Glasberg & Moore 1990): 24.7 + 0.108 f."""
    return 24.7 + 0.108 * f


def erb_space(fmin: float, fmax: float, n: int) -> torch.Tensor:
    """n centre frequencies equally spaced on the ERB-rate scale, 21.4 log10(1 + 0.00437 f)."""
    lo, hi = (21.4 * math.log10(1 + 0.00437 * f) for f in (fmin, fmax))
    e = torch.linspace(lo, hi, n, dtype=torch.float64)
    return (10 ** (e / 21.4) - 1) / 0.00437


def gammatone_filters(n_filters: int = 64, kernel_size: int = 512, sample_rate: int = 16000,
                      fmin: float = 100.0, fmax: float = 8000.0, order: int = 4) -> torch.Tensor:
    """4th-order gammatone impulse responses (Patterson et al.), shape (n_filters, kernel_size).

    g(t) = t^(n-1) exp(-2 pi b ERB(fc) t) cos(2 pi fc t), b = 1.019, centre frequencies
    ERB-spaced in [fmin, min(fmax, 0.45 sr)]; each filter scaled to unit peak frequency response.
    """
    fmax = min(fmax, 0.45 * sample_rate)
    fc = erb_space(fmin, fmax, n_filters)[:, None]
    t = (torch.arange(kernel_size, dtype=torch.float64) / sample_rate)[None, :]
    g = t ** (order - 1) * torch.exp(-2 * math.pi * 1.019 * erb(fc) * t) * torch.cos(2 * math.pi * fc * t)
    gain = torch.fft.rfft(g, n=max(4096, kernel_size)).abs().amax(dim=1, keepdim=True)
    return (g / gain).float()


class GammatoneConv1d(nn.Module):
    """Frozen gammatone filterbank as a strided 1-D convolution: (B, T) -> (B, n_filters, frames)."""

    def __init__(self, n_filters: int = 64, kernel_size: int = 512, stride: int = 1, sample_rate: int = 16000,
                 fmin: float = 100.0, fmax: float = 8000.0):
        super().__init__()
        self.stride = stride
        # flipped so that the cross-correlation conv1d computes the convolution with g
        self.register_buffer("weight", gammatone_filters(n_filters, kernel_size, sample_rate, fmin, fmax)
                             .flip(-1)[:, None, :].contiguous())

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return F.conv1d(wav.unsqueeze(1), self.weight, stride=self.stride)


class SincConv1d(nn.Module):
    """SincNet's learnable band-pass filterbank (Ravanelli & Bengio 2018, Eqs. 3-6).

    Each filter is g[n] = 2 f2 sinc(2 pi f2 n) - 2 f1 sinc(2 pi f1 n) times a Hamming window,
    with only the cutoffs f1 = |a| + min_low, f2 = f1 + |b| + min_band learned.
    Initialised mel-spaced between `fmin` and the Nyquist frequency. (B, T) -> (B, n_filters, frames).
    """

    def __init__(self, n_filters: int = 80, kernel_size: int = 251, stride: int = 1, sample_rate: int = 16000,
                 fmin: float = 30.0, min_low_hz: float = 50.0, min_band_hz: float = 50.0):
        super().__init__()
        if kernel_size % 2 == 0:
            kernel_size += 1
        self.kernel_size, self.stride, self.sample_rate = kernel_size, stride, sample_rate
        self.min_low_hz, self.min_band_hz = min_low_hz, min_band_hz
        fmax = sample_rate / 2 - (min_low_hz + min_band_hz)
        hz = mel_to_hz(torch.linspace(float(hz_to_mel(fmin, htk=True)), float(hz_to_mel(fmax, htk=True)),
                                      n_filters + 1), htk=True).float()
        self.low_hz_ = nn.Parameter(hz[:-1, None].clone())
        self.band_hz_ = nn.Parameter((hz[1:] - hz[:-1])[:, None].clone())
        half = kernel_size // 2
        n = torch.arange(-half, 0, dtype=torch.float32)
        self.register_buffer("n_", 2 * math.pi * n[None, :] / sample_rate, persistent=False)
        self.register_buffer("window_", torch.hamming_window(kernel_size, periodic=False)[:half][None, :],
                             persistent=False)

    def filters(self) -> torch.Tensor:
        low = self.min_low_hz + self.low_hz_.abs()
        high = (low + self.min_band_hz + self.band_hz_.abs()).clamp(max=self.sample_rate / 2)
        band = high - low
        left = (torch.sin(high * self.n_) - torch.sin(low * self.n_)) / (self.n_ / 2) * self.window_
        centre = 2 * band
        right = left.flip(1)
        f = torch.cat([left, centre, right], dim=1) / (2 * band)
        return f[:, None, :]

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return F.conv1d(wav.unsqueeze(1), self.filters(), stride=self.stride)


class ConvBNReLU1d(nn.Sequential):
    def __init__(self, cin, cout, k, stride=1, groups=1, bn_after_act: bool = False):
        layers = [nn.Conv1d(cin, cout, k, stride=stride, groups=groups, bias=False)]
        layers += [nn.ReLU(), nn.BatchNorm1d(cout)] if bn_after_act else [nn.BatchNorm1d(cout), nn.ReLU()]
        super().__init__(*layers)


def pool_to(x: torch.Tensor, k: int) -> torch.Tensor:
    """1-D max-pool of size k, shrunk to the sequence length when the input is shorter (any input length)."""
    return F.max_pool1d(x, min(k, x.shape[-1]))
