"""A tiny tone classifier trained in a few seconds, shared by the universal-perturbation tests."""
from __future__ import annotations

import math

import torch
from torch import nn

FREQS = (250.0, 500.0, 1000.0, 2000.0)
SR, T = 8000, 2048


def tones(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n noisy tones, label = which of FREQS, amplitude 0.1-0.3, random phase and slight detuning."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, len(FREQS), (n,), generator=g)
    f = torch.tensor(FREQS)[y] * (1 + 0.05 * (torch.rand(n, generator=g) - 0.5))
    amp = 0.1 + 0.2 * torch.rand(n, generator=g)
    ph = 2 * math.pi * torch.rand(n, generator=g)
    t = torch.arange(T) / SR
    x = amp[:, None] * torch.sin(2 * math.pi * f[:, None] * t + ph[:, None])
    x = x + 0.01 * torch.randn(n, T, generator=g)
    return x.clamp(-1, 1), y


class TinyNet(nn.Module):
    def __init__(self, classes: int = len(FREQS)):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(1, 8, 64, stride=8), nn.ReLU(), nn.Conv1d(8, 16, 8, stride=4), nn.ReLU())
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        h = self.conv(x.unsqueeze(1))
        return self.fc(torch.log1p(h.pow(2).mean(-1) * 100))


def trained_model(seed: int = 0, steps: int = 150) -> tuple[nn.Module, tuple, tuple]:
    torch.manual_seed(seed)
    model = TinyNet()
    xtr, ytr = tones(512, seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for i in range(steps):
        idx = torch.randint(0, len(xtr), (64,))
        loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, (xtr, ytr), tones(200, seed + 2)


class DictNet(nn.Module):
    """Wraps a waveform model for dict inputs {"audio": (B, T), "gain": (B,)}: the extra entry scales the
    audio, so that the tests see whether it is sliced along with the batch."""

    def __init__(self, net: nn.Module, key: str = "audio"):
        super().__init__()
        self.net, self.key = net, key

    def forward(self, inputs: dict):
        x = inputs[self.key]
        return self.net(x * inputs["gain"].view(-1, 1) if "gain" in inputs else x)
