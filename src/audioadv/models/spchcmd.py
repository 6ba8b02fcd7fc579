"""SpchCMD: the TensorFlow speech-commands challenge winner's raw-waveform model as described by
Abdoli et al., "Universal adversarial audio perturbations" (supplementary Table 17).

The waveform is cut into overlapping 40-sample slices with a 20-sample hop, stacked as 40 input
channels; a 1-D conv (64 filters, kernel 3, stride 2) is followed by eleven depth-wise separable
1-D convs (depth-wise kernel 3 + point-wise conv; 128, 192, 192, 256, 256, 320, 320, 384, 384,
448, 448 maps, every second one with stride 2), each with batch norm and ReLU, then a self-
attention layer, global average pooling and the output layer. `width` scales the channel counts
(0.5 by default so that it trains on a CPU in minutes).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import AudioClassifier

_CHANNELS = (128, 192, 192, 256, 256, 320, 320, 384, 384, 448, 448)
_STRIDES = (1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1)


class _SepConv(nn.Sequential):
    def __init__(self, cin, cout, stride):
        super().__init__(nn.Conv1d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
                         nn.Conv1d(cin, cout, 1, bias=False), nn.BatchNorm1d(cout), nn.ReLU())


class _Attention(nn.Module):
    """Single-head scaled dot-product self-attention over time with a residual connection."""

    def __init__(self, c):
        super().__init__()
        self.qkv = nn.Conv1d(c, 3 * c, 1)
        self.scale = 1.0 / math.sqrt(c)

    def forward(self, x):  # (B, C, L)
        q, k, v = self.qkv(x).chunk(3, dim=1)
        a = torch.softmax(torch.einsum("bct,bcs->bts", q, k) * self.scale, dim=-1)
        return x + torch.einsum("bts,bcs->bct", a, v)


class _SpchCMDNet(nn.Module):
    def __init__(self, num_classes, slice_len, slice_hop, width, dropout):
        super().__init__()
        self.slice_len, self.slice_hop = slice_len, slice_hop
        chans = [max(8, int(round(c * width))) for c in _CHANNELS]
        c0 = max(8, int(round(64 * width)))
        layers = [nn.Conv1d(slice_len, c0, 3, stride=2, bias=False), nn.BatchNorm1d(c0), nn.ReLU()]
        cin = c0
        for c, s in zip(chans, _STRIDES):
            layers.append(_SepConv(cin, c, s))
            cin = c
        self.convs = nn.Sequential(*layers)
        self.attention = _Attention(cin)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(cin, num_classes))

    def forward(self, wav):
        x = wav.unfold(-1, self.slice_len, self.slice_hop).transpose(1, 2)  # (B, slice_len, slices)
        x = self.attention(self.convs(x))
        return self.head(x.mean(dim=-1))


class SpchCMD(AudioClassifier):
    """`spchcmd`: sliced waveform -> conv -> depth-wise separable convs -> attention -> GAP -> FC."""

    arch = "spchcmd"

    def __init__(self, num_classes: int, input_length: int = 16000, sample_rate: int = 16000, *,
                 slice_len: int = 40, slice_hop: int = 20, width: float = 0.5, dropout: float = 0.2):
        super().__init__(num_classes, input_length, sample_rate)
        if input_length < slice_len + 2 * slice_hop:
            raise ValueError(f"spchcmd needs input_length >= {slice_len + 2 * slice_hop}, got {input_length}")
        self.hparams = {"slice_len": slice_len, "slice_hop": slice_hop, "width": width, "dropout": dropout}
        self._set_stages([("waveform", _SpchCMDNet(num_classes, slice_len, slice_hop, width, dropout))])
