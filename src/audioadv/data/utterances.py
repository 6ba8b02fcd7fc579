"""Variable-length utterances with transcripts: the `Utterances` container, zero padding into
batches (`pad_batch`), batches of similar length (`length_batches`) and loading them from any
dataset spec whose items carry a transcript (`load_utterances`)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

import torch


@dataclass
class Utterances:
    """Variable-length speech: waveforms (list of 1-D float tensors) and transcripts."""

    waves: list[torch.Tensor]
    texts: list[str]
    items: list[dict] = field(default_factory=list)
    sample_rate: int = 16000

    def __post_init__(self):
        if len(self.waves) != len(self.texts):
            raise ValueError(f"Utterances: {len(self.waves)} waveforms but {len(self.texts)} transcripts")

    def __len__(self) -> int:
        return len(self.waves)

    def subset(self, index: Sequence[int]) -> "Utterances":
        return Utterances([self.waves[i] for i in index], [self.texts[i] for i in index],
                          [self.items[i] for i in index] if self.items else [], self.sample_rate)

    def __add__(self, other: "Utterances") -> "Utterances":
        items = (self.items or [{}] * len(self)) + (other.items or [{}] * len(other))
        return Utterances(self.waves + other.waves, self.texts + other.texts, items, self.sample_rate)

    def batch(self, index: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Zero-padded (B, T_max) waveforms, lengths (B,) and transcripts."""
        return pad_batch([self.waves[i] for i in index]) + ([self.texts[i] for i in index],)


def pad_batch(waves: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    out = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        out[i, :len(w)] = torch.as_tensor(w, dtype=torch.float32)
    return out, lengths


def length_batches(lengths: Sequence[int], max_samples: int, seed: int) -> list[list[int]]:
    """Indices grouped by similar length so that each padded batch holds <= max_samples samples."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, cur, cur_max = [], [], 0
    for i in order:
        m = max(cur_max, lengths[i])
        if cur and m * (len(cur) + 1) > max_samples:
            batches.append(cur)
            cur, m = [], lengths[i]
        cur.append(i)
        cur_max = m
    if cur:
        batches.append(cur)
    random.Random(seed).shuffle(batches)
    return batches


def load_utterances(spec: str, split: str, *, limit: int | None = None) -> Utterances:
    """Utterances with transcripts from any dataset spec whose items carry a "text"
    (synth-phrases, synth-phrases?source=open, librispeech:PATH, manifest:PATH with text).

    Waves are cut to each item's `num_samples` (left-aligned sets) so no padding is kept.
    """
    from . import load_dataset
    from . import phrases_open  # noqa: F401  (registers the open-vocabulary text sources)

    name = spec.split("?")[0].split(":")[0]
    kwargs = {"input_length": None} if name in ("synth-phrases",) else {}
    if name == "librispeech":
        kwargs = {"input_length": None, "align": "start"}
        split = {"val": "test"}.get(split, split)
    ds = load_dataset(spec, split, **kwargs)
    if not ds.items or "text" not in ds.items[0]:
        raise ValueError(f"dataset {spec!r} has no transcripts (items need a 'text' field)")
    waves, texts, items = [], [], []
    n = len(ds) if limit is None else min(limit, len(ds))
    for i in range(n):
        it = ds.items[i]
        k = int(it.get("num_samples", ds.waves.shape[1]))
        waves.append(ds.waves[i, :k].clone())
        texts.append(it["text"])
        items.append({**it, "spec": spec, "split": split, "index": i})
    return Utterances(waves, texts, items, ds.sample_rate)
