"""Open-vocabulary target transcripts for targeted attacks on speech recognisers, drawn
reproducibly (seeded): the first word from the tenth of the word list held out of training.
Choosing utterances a recogniser gets right needs the recogniser: `audioadv.asr_targets.select`.
"""
from __future__ import annotations

import random
from typing import Sequence


def open_targets(originals: Sequence[str], seed: int) -> list[str]:
    """Open-vocabulary targets: words from the open vocabulary, the first one held out of training,
    as many as fit in the source transcript's length (at least one)."""
    from .phrases_open import open_vocabulary
    train_words, held = open_vocabulary()
    rng = random.Random(f"open-targets-{seed}")
    out = []
    for o in originals:
        words = [rng.choice([w for w in held if len(w) <= max(len(o), 2)] or held)]
        while True:
            w = rng.choice(train_words + held)
            if len(" ".join(words + [w])) > len(o):
                break
            words.append(w)
        out.append(" ".join(words))
    return out
