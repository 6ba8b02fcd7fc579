"""Log-mel 2-D CNN: the conventional baseline of the zoo.

waveform -> `Spectrogram` (|STFT|, 25 ms Hann window, 10 ms hop, n_fft 512) -> `LogMel`
(40 Slaney mel bands) -> `MeanVarNorm` (per-utterance, per-band) -> four 3x3 conv blocks
(16, 32, 64, 64 channels, batch norm, ReLU, 2x2 max-pool after the first three) -> mean over
time -> FC 128 -> output. It can be split at "waveform", "spectrogram" and "fbank" (log mel
energies before normalisation) for randomized smoothing.
"""
from __future__ import annotations

from torch import nn

from ..signal import LogMel, MeanVarNorm, Spectrogram
from .base import AudioClassifier


class _CNN2D(nn.Module):
    def __init__(self, num_classes, n_mels, channels, dropout):
        super().__init__()
        layers, cin = [], 1
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            cin = c
        self.convs = nn.Sequential(*layers)
        f = n_mels
        for _ in range(len(channels) - 1):
            f = -(-f // 2)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin * f, 128), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(128, num_classes))

    def forward(self, feats):  # (B, n_mels, frames)
        x = self.convs(feats.unsqueeze(1))
        return self.head(x.mean(dim=-1))


class LogMelCNN(AudioClassifier):
    """`logmel-cnn`: Spectrogram -> LogMel -> MeanVarNorm -> small 2-D CNN."""

    arch = "logmel-cnn"

    def __init__(self, num_classes: int, input_length: int = 16000, sample_rate: int = 16000, *,
                 n_fft: int = 512, win_ms: float = 25.0, hop_ms: float = 10.0, n_mels: int = 40,
                 channels: tuple = (16, 32, 64, 64), dropout: float = 0.3):
        super().__init__(num_classes, input_length, sample_rate)
        win, hop = int(round(win_ms * 1e-3 * sample_rate)), int(round(hop_ms * 1e-3 * sample_rate))
        if win > n_fft:
            raise ValueError(f"logmel-cnn: window of {win} samples exceeds n_fft={n_fft}")
        self.hparams = {"n_fft": n_fft, "win_ms": win_ms, "hop_ms": hop_ms, "n_mels": n_mels,
                        "channels": list(channels), "dropout": dropout}
        self._set_stages([
            ("waveform", Spectrogram(n_fft=n_fft, win_length=win, hop_length=hop)),
            ("spectrogram", LogMel(sample_rate, n_fft, n_mels)),
            ("fbank", nn.Sequential(MeanVarNorm(), _CNN2D(num_classes, n_mels, tuple(channels), dropout))),
        ])
