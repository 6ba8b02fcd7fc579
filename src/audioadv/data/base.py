"""In-memory audio datasets and the fixed-length rule shared by every loader.

Fixed-length rule (`fix_length`): a clip longer than `length` is cropped to its centre
(or at a seeded random offset for training augmentation); a shorter clip is zero-padded
equally on both sides (the extra sample, if odd, goes to the end). Models then see the
speech near the middle of the window whatever its duration.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset


def fix_length(wav: torch.Tensor, length: int, *, mode: str = "center",
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop or pad a (T,) waveform to `length` samples following the module's rule."""
    t = wav.shape[-1]
    if t > length:
        if mode == "center":
            start = (t - length) // 2
        elif mode == "random":
            start = int(torch.randint(0, t - length + 1, (1,), generator=generator))
        elif mode == "start":
            start = 0
        else:
            raise ValueError(f"fix_length: unknown mode {mode!r} (center, random or start)")
        return wav[..., start:start + length]
    if t < length:
        left = (length - t) // 2
        return torch.nn.functional.pad(wav, (left, length - t - left))
    return wav


@dataclass
class AudioDataset(Dataset):
    """Clips held in memory as one (N, T) tensor (fixed length) with integer labels.

    `items[i]` is a dict of per-example metadata (source path, speaker, transcript, ...), so
    every result downstream can be traced back to its file.
    """

    waves: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    sample_rate: int = 16000
    items: list[dict] = field(default_factory=list)
    name: str = ""

    def __post_init__(self):
        if self.waves.dim() != 2:
            raise ValueError(f"AudioDataset {self.name!r}: waves must be (N, T), got {tuple(self.waves.shape)}")
        if len(self.labels) != len(self.waves):
            raise ValueError(f"AudioDataset {self.name!r}: {len(self.waves)} clips but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, i):
        return self.waves[i], self.labels[i]

    @property
    def input_length(self) -> int:
        return self.waves.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index: Sequence[int] | torch.Tensor) -> "AudioDataset":
        index = torch.as_tensor(index, dtype=torch.long)
        return AudioDataset(self.waves[index], self.labels[index], list(self.classes), self.sample_rate,
                            [self.items[i] for i in index.tolist()] if self.items else [], self.name)

    def per_class(self, k: int, seed: int = 0) -> "AudioDataset":
        """k examples of each class drawn with a seed (e.g. the single-sample UAP setting)."""
        g = torch.Generator().manual_seed(seed)
        picks = []
        for c in range(self.num_classes):
            idx = (self.labels == c).nonzero().flatten()
            picks.append(idx[torch.randperm(len(idx), generator=g)[:k]])
        return self.subset(torch.cat(picks))


def stack_clips(clips: Sequence[torch.Tensor], length: int) -> torch.Tensor:
    if not clips:
        return torch.zeros(0, length)
    return torch.stack([fix_length(c, length) for c in clips])


def load_clips(paths: Sequence[Path], sample_rate: int, length: int, progress: str | None = None) -> torch.Tensor:
    """Load, resample and fix the length of many files (AudioError names any bad one)."""
    from ..io import load
    from tqdm import tqdm

    it = tqdm(paths, desc=progress, leave=False, disable=progress is None or len(paths) < 200)
    return stack_clips([load(p, sample_rate) for p in it], length)
