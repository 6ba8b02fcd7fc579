"""Left-aligned fixed length for variable-length speech (ASR): the complement of `fix_length`.

`fix_length` (base.py) centres a clip in a classification window. Transcribed speech instead
keeps its start at sample 0: `left_align` zero-pads at the end, or crops the end when the clip is
longer, and returns the number of real samples, so `wave[:n]` is the utterance.
"""
from __future__ import annotations

from typing import Sequence

import torch


def left_align(clip: torch.Tensor, length: int) -> tuple[torch.Tensor, int]:
    """(T,) -> ((length,), n) with clip[:n] at the start and zeros after it."""
    n = min(int(clip.shape[-1]), int(length))
    out = clip.new_zeros(int(length))
    out[:n] = clip[:n]
    return out, n


def stack_left_aligned(clips: Sequence[torch.Tensor], length: int | None = None) -> tuple[torch.Tensor, list[int]]:
    """Stack clips left-aligned; length None = the longest clip. Returns (waves (N, L), true lengths)."""
    if length is None:
        length = max((int(c.shape[-1]) for c in clips), default=0)
    rows = [left_align(c, length) for c in clips]
    waves = torch.stack([r[0] for r in rows]) if rows else torch.zeros(0, int(length))
    return waves, [r[1] for r in rows]


__all__ = ["left_align", "stack_left_aligned"]
