"""1D CNN of Abdoli et al. 2019 ("End-to-end environmental sound classification using a 1D CNN"),
the `1D CNN Rand` and `1D CNN Gamma` targets of Abdoli et al., "Universal adversarial audio
perturbations" (supplementary Tables 12-13).

Five 1-D conv layers (16, 32, 64, 128, 256 kernels of sizes 64, 32, 16, 8, 4, stride 2, ReLU then
batch norm), max-pools of 8, 8 and 4 after conv 1, 2 and 5, two FC layers (128, 64, dropout 0.5)
and the output layer. `cnn1d-gamma` replaces conv 1 with a frozen 64-band gammatone filterbank
(kernel 512, 100 Hz - 8 kHz). Adaptations for 1 s inputs on a CPU: convs are zero-padded so any
input length works, the final pool shrinks to the remaining length, and the gammatone layer is
evaluated with stride 8 (kernel 512 at stride 1 would cost ~0.5 GMAC per second of audio).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import AudioClassifier
from .layers import GammatoneConv1d, pool_to


class _ConvReLUBN(nn.Sequential):
    def __init__(self, cin, cout, k, stride):
        super().__init__(nn.Conv1d(cin, cout, k, stride=stride, padding=k // 2), nn.ReLU(), nn.BatchNorm1d(cout))


class _CNN1DNet(nn.Module):
    def __init__(self, num_classes, input_length, sample_rate, gammatone, dropout, gamma_stride):
        super().__init__()
        if gammatone:
            self.first = nn.Sequential(GammatoneConv1d(64, 512, stride=gamma_stride, sample_rate=sample_rate),
                                       nn.BatchNorm1d(64))
            c1 = 64
        else:
            self.first = nn.Sequential(nn.Conv1d(1, 16, 64, stride=2, padding=32), nn.ReLU(), nn.BatchNorm1d(16))
            c1 = 16
        self.convs = nn.ModuleList([_ConvReLUBN(c1, 32, 32, 2), _ConvReLUBN(32, 64, 16, 2),
                                    _ConvReLUBN(64, 128, 8, 2), _ConvReLUBN(128, 256, 4, 2)])
        with torch.no_grad():
            n = self.features(torch.zeros(2, input_length)).shape[1]
        self.head = nn.Sequential(nn.Linear(n, 128), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(128, 64), nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, num_classes))

    def features(self, wav):
        x = self.first(wav.unsqueeze(1) if isinstance(self.first[0], nn.Conv1d) else wav)
        x = pool_to(x, 8)
        x = pool_to(self.convs[0](x), 8)
        for conv in self.convs[1:]:
            x = conv(x)
        return pool_to(x, 4).flatten(1)

    def forward(self, wav):
        return self.head(self.features(wav))


class CNN1D(AudioClassifier):
    """`cnn1d-rand` (all layers learned) and `cnn1d-gamma` (frozen gammatone first layer)."""

    def __init__(self, num_classes: int, input_length: int = 16000, sample_rate: int = 16000, *,
                 gammatone: bool = False, dropout: float = 0.5, gamma_stride: int = 8):
        super().__init__(num_classes, input_length, sample_rate)
        self.arch = "cnn1d-gamma" if gammatone else "cnn1d-rand"
        self.hparams = {"dropout": dropout} | ({"gamma_stride": gamma_stride} if gammatone else {})
        self._set_stages([("waveform", _CNN1DNet(num_classes, input_length, sample_rate, gammatone, dropout,
                                                 gamma_stride))])
