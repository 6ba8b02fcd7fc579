"""Utterance / target pairs for targeted attacks on speech recognisers, drawn reproducibly
(seeded): `select` picks utterances a recogniser transcribes correctly and gives each another
phrase of the same set as its target; `open_targets` (from `audioadv.data.targets`) gives
open-vocabulary targets. `audioadv attack-asr` and the benchmarks draw their targets here, so the
same seed names the same pairs everywhere.
"""
from __future__ import annotations

import random
import sys

from .data.targets import open_targets
from .models.asr import transcribe

__all__ = ["select", "open_targets"]


def select(model, data, n: int, seed: int, require_correct: bool = True):
    """First n utterances of `data` (an `Utterances`, in a seeded order) that `model` transcribes
    correctly (any, with require_correct=False), each with a target drawn from the other phrases of
    the set: a different text, at most as many characters. Returns (indices, originals, targets)."""
    order = list(range(len(data)))
    random.Random(seed).shuffle(order)
    refs = [model.normalize_text(t) for t in data.texts]
    chosen, wrong = [], []
    for start in range(0, len(order), 64):
        idx = order[start:start + 64]
        wav, lengths, _ = data.batch(idx)
        for i, hyp in zip(idx, transcribe(model, wav, lengths)):
            if (hyp == refs[i] or not require_correct) and len(chosen) < n + 5:
                chosen.append(i)
            elif hyp != refs[i]:
                wrong.append(i)
        if len(chosen) >= n + 5:
            break
    if len(chosen) < n + 5:  # top up with utterances the model gets wrong (the callers report how many)
        print(f"only {len(chosen)} of {len(data)} utterances are transcribed correctly; "
              f"topping up with others", file=sys.stderr)
        chosen += wrong[:n + 5 - len(chosen)]
    rng = random.Random(seed + 1)
    pool = sorted(set(refs))
    kept, targets = [], []
    for i in chosen:
        options = [t for t in pool if t != refs[i] and len(t) <= len(refs[i])]
        if options:  # the very shortest phrases have no shorter target and are left out
            kept.append(i)
            targets.append(rng.choice(options))
    kept, targets = kept[:n], targets[:n]
    return kept, [refs[i] for i in kept], targets
