"""EnvNet-v2 (Tokozume, Ushiku & Harada 2018), adapted to the input length as in Abdoli et al.,
"Universal adversarial audio perturbations" (supplementary Table 14).

Two 1-D convs on the waveform (kernels 64 and 16, stride 2 in the original) and a max-pool give
a (channels x frames) map that is swapped into a 2-D image; two 8x8 2-D convs, a (5, 3) max-pool,
two (1, 4) convs, a (1, 2) max-pool and a (1, 2) conv follow, then two FC layers with dropout
0.5 and the output layer. Batch norm follows each conv as in EnvNet-v2. Adaptations for 1 s
inputs on a CPU: the first conv has stride 4, channel counts are halved or quartered and the FC
layers have 256 units instead of 4096; the flatten size is computed from `input_length`.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import AudioClassifier


def _c1(cin, cout, k, s):
    return [nn.Conv1d(cin, cout, k, stride=s, bias=False), nn.BatchNorm1d(cout), nn.ReLU()]


def _c2(cin, cout, k):
    return [nn.Conv2d(cin, cout, k, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class _EnvNetNet(nn.Module):
    def __init__(self, num_classes, input_length, ch, fc, dropout):
        super().__init__()
        a, b, c, d, e = ch
        self.wave = nn.Sequential(*_c1(1, a, 64, 4), *_c1(a, b, 16, 2), nn.MaxPool1d(16, ceil_mode=True))
        self.image = nn.Sequential(*_c2(1, c, (8, 8)), *_c2(c, c, (8, 8)), nn.MaxPool2d((5, 3), ceil_mode=True),
                                   *_c2(c, d, (1, 4)), *_c2(d, d, (1, 4)), nn.MaxPool2d((1, 2), ceil_mode=True),
                                   *_c2(d, e, (1, 2)), nn.Flatten())
        try:
            with torch.no_grad():
                n = self._features(torch.zeros(2, input_length)).shape[1]
        except RuntimeError:
            raise ValueError(f"envnet-v2: input_length {input_length} is too short (about 5000 samples at least)") from None
        self.head = nn.Sequential(nn.Linear(n, fc), nn.ReLU(), nn.Dropout(dropout), nn.Linear(fc, fc), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(fc, num_classes))

    def _features(self, wav):
        x = self.wave(wav.unsqueeze(1))          # (B, b, frames)
        return self.image(x.unsqueeze(1))        # swap axes: (B, 1, b, frames) image

    def forward(self, wav):
        return self.head(self._features(wav))


class EnvNetV2(AudioClassifier):
    """`envnet-v2`: 1-D convs on the waveform, axes swapped, 2-D convs, two FC layers."""

    arch = "envnet-v2"

    def __init__(self, num_classes: int, input_length: int = 16000, sample_rate: int = 16000, *,
                 channels: tuple = (16, 32, 8, 32, 64), fc: int = 256, dropout: float = 0.5):
        super().__init__(num_classes, input_length, sample_rate)
        self.hparams = {"channels": list(channels), "fc": fc, "dropout": dropout}
        self._set_stages([("waveform", _EnvNetNet(num_classes, input_length, tuple(channels), fc, dropout))])
