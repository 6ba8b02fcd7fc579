"""SincNet (Ravanelli & Bengio 2018) and SincNet+VGG, targets of Abdoli et al., "Universal
adversarial audio perturbations" (supplementary Tables 15-16).

`sincnet`: input layer norm, 80 learnable sinc band-pass filters (kernel 251), |.|, max-pool,
layer norm, leaky ReLU; two 1-D convs (60 filters, kernel 5) each with max-pool, layer norm and
leaky ReLU; FC 128 and FC 64 (batch norm, leaky ReLU, dropout) and the output layer.
`sincnet-vgg`: sinc filters, |.|, max-pool to a 10 ms frame rate, layer norm; the (filters x
frames) map is a 2-D time-frequency image for a small VGG-style 2-D CNN (3x3 convs, batch norm,
ReLU, 2x2 max-pools), then FC and output. Adaptations for CPU training on 1 s clips: the sinc
layer is evaluated with a stride (10 and 16 samples), and the VGG is narrower than VGG19.
Layer norm is GroupNorm with one group (normalises each example over channels and time), so any
input length works.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import AudioClassifier
from .layers import SincConv1d


class _WaveNorm(nn.Module):
    """Per-example waveform standardisation (SincNet's input layer norm, without affine)."""

    def forward(self, wav):
        wav = wav - wav.mean(dim=-1, keepdim=True)
        return wav / (wav.pow(2).mean(dim=-1, keepdim=True) + 1e-8).sqrt()


class _Abs(nn.Module):
    def forward(self, x):
        return x.abs()


class _SincNetNet(nn.Module):
    def __init__(self, num_classes, input_length, sample_rate, n_filters, kernel_size, stride, dropout):
        super().__init__()
        lrelu = lambda: nn.LeakyReLU(0.2)  # noqa: E731
        self.features = nn.Sequential(
            _WaveNorm(), SincConv1d(n_filters, kernel_size, stride=stride, sample_rate=sample_rate), _Abs(),
            nn.MaxPool1d(4), nn.GroupNorm(1, n_filters), lrelu(),
            nn.Conv1d(n_filters, 60, 5), nn.MaxPool1d(3), nn.GroupNorm(1, 60), lrelu(),
            nn.Conv1d(60, 60, 5), nn.MaxPool1d(3), nn.GroupNorm(1, 60), lrelu(), nn.Flatten())
        with torch.no_grad():
            n = self.features(torch.zeros(2, input_length)).shape[1]
        self.head = nn.Sequential(nn.Linear(n, 128), nn.BatchNorm1d(128), lrelu(), nn.Dropout(dropout),
                                  nn.Linear(128, 64), nn.BatchNorm1d(64), lrelu(), nn.Dropout(dropout),
                                  nn.Linear(64, num_classes))

    def forward(self, wav):
        return self.head(self.features(wav))


class SincNet(AudioClassifier):
    """`sincnet`: learnable sinc band-pass first layer, two 1-D convs, two FC layers."""

    arch = "sincnet"

    def __init__(self, num_classes: int, input_length: int = 16000, sample_rate: int = 16000, *,
                 n_filters: int = 80, kernel_size: int = 251, stride: int = 10, dropout: float = 0.5):
        super().__init__(num_classes, input_length, sample_rate)
        self.hparams = {"n_filters": n_filters, "kernel_size": kernel_size, "stride": stride, "dropout": dropout}
        self._set_stages([("waveform", _SincNetNet(num_classes, input_length, sample_rate, n_filters,
                                                   kernel_size, stride, dropout))])


def _vgg(cfg, cin=1):
    layers = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU()]
            cin = v
    return nn.Sequential(*layers), cin


class _SincVGGNet(nn.Module):
    def __init__(self, num_classes, input_length, sample_rate, n_filters, kernel_size, stride, hop_ms, cfg, dropout):
        super().__init__()
        pool = max(1, round(hop_ms * 1e-3 * sample_rate / stride))
        self.tf_map = nn.Sequential(
            _WaveNorm(), SincConv1d(n_filters, kernel_size, stride=stride, sample_rate=sample_rate), _Abs(),
            nn.MaxPool1d(pool, ceil_mode=True), nn.GroupNorm(1, n_filters))
        self.vgg, c = _vgg(cfg)
        self.pool = nn.AdaptiveAvgPool2d((2, 2))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * c, 128), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(128, num_classes))

    def forward(self, wav):
        x = self.tf_map(wav).unsqueeze(1)  # (B, 1, filters, frames): the sinc "spectrogram"
        return self.head(self.pool(self.vgg(x)))


class SincNetVGG(AudioClassifier):
    """`sincnet-vgg`: sinc filterbank -> max-pool -> 2-D time-frequency map -> small VGG."""

    arch = "sincnet-vgg"

    def __init__(self, num_classes: int, input_length: int = 16000, sample_rate: int = 16000, *,
                 n_filters: int = 64, kernel_size: int = 251, stride: int = 16, hop_ms: float = 10.0,
                 cfg: tuple = (16, "M", 32, "M", 64, 64, "M", 128, "M"), dropout: float = 0.3):
        super().__init__(num_classes, input_length, sample_rate)
        cfg = tuple(cfg)
        self.hparams = {"n_filters": n_filters, "kernel_size": kernel_size, "stride": stride, "hop_ms": hop_ms,
                        "cfg": list(cfg), "dropout": dropout}
        self._set_stages([("waveform", _SincVGGNet(num_classes, input_length, sample_rate, n_filters, kernel_size,
                                                   stride, hop_ms, cfg, dropout))])
