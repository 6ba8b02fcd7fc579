"""A toy speech-recognition task that a tiny CTC model learns in seconds (for attack tests).

Letters a-d are tones (300, 700, 1300, 2100 Hz) of 80 ms with a Hann envelope, separated by
40 ms of a -50 dB noise floor; an "utterance" of a letter string is their concatenation.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from audioadv.models.asr import CTCRecognizer, encode_targets

SR = 16000
FREQS = {"a": 300.0, "b": 700.0, "c": 1300.0, "d": 2100.0}


def utterance(text: str, gen: torch.Generator) -> torch.Tensor:
    seg, gap = int(0.08 * SR), int(0.04 * SR)
    t = torch.arange(seg) / SR
    env = torch.hann_window(seg, periodic=False)
    parts = [torch.zeros(gap)]
    for ch in text:
        f = FREQS[ch] * (1 + 0.03 * (torch.rand(1, generator=gen).item() - 0.5))
        parts += [0.3 * env * torch.sin(2 * math.pi * f * t), torch.zeros(gap)]
    x = torch.cat(parts)
    return x + 0.003 * torch.randn(x.shape, generator=gen)


def batch(texts, seed=0):
    g = torch.Generator().manual_seed(seed)
    waves = [utterance(t, g) for t in texts]
    lengths = torch.tensor([len(w) for w in waves])
    x = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        x[i, :len(w)] = w
    return x.clamp(-1, 1), lengths


def random_texts(n, seed=0, lo=2, hi=5):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(lo, hi + 1, (1,), generator=g))
        out.append("".join("abcd"[int(i)] for i in torch.randint(0, 4, (k,), generator=g)))
    return out


@functools.lru_cache(maxsize=None)  # trained once per test session, shared read-only
def train_toy(steps=80, seed=0):
    torch.manual_seed(seed)
    model = CTCRecognizer(n_mels=20, channels=32, hidden=32, layers=1, alphabet="abcd", dropout=0.0,
                          feature_norm="global")
    texts = random_texts(48, seed)
    x, lengths = batch(texts, seed)
    model.set_feature_stats(x, lengths)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    targets, tl = encode_targets(model, texts)
    for _ in range(steps):
        logp, frames = model(x, lengths)
        loss = F.ctc_loss(logp.transpose(0, 1), targets, frames, tl, blank=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
