"""Transcript error rates: word and character error rate by Levenshtein distance.

WER = (S + D + I) / N over words, CER the same over characters (spaces included), where N is
the reference length; corpus rates sum edits and lengths over all pairs (as jiwer does).
"""
from __future__ import annotations

from typing import Sequence


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, deletions, insertions all cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def _rate(refs, hyps, split) -> float:
    if isinstance(refs, str):
        refs, hyps = [refs], [hyps]
    if len(refs) != len(hyps):
        raise ValueError(f"error rate: {len(refs)} references but {len(hyps)} hypotheses")
    edits = total = 0
    for r, h in zip(refs, hyps):
        r, h = split(r), split(h)
        edits += edit_distance(r, h)
        total += len(r)
    if total == 0:
        return 0.0 if edits == 0 else float("inf")
    return edits / total


def wer(refs: str | Sequence[str], hyps: str | Sequence[str]) -> float:
    """Word error rate of one pair or a corpus (whitespace-separated words)."""
    return _rate(refs, hyps, lambda s: s.split())


def cer(refs: str | Sequence[str], hyps: str | Sequence[str]) -> float:
    """Character error rate of one pair or a corpus (after collapsing runs of whitespace)."""
    return _rate(refs, hyps, lambda s: list(" ".join(s.split())))
