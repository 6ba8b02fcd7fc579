"""Open-vocabulary sentences for speech recognition (the second part of synth-phrases).

Sentences of 4-8 words drawn uniformly from the `n_words` most frequent alphabetic English
words of the `wordfreq` package (``asr`` extra). A seeded tenth of that vocabulary is held out:
training sentences never use it, and every test sentence contains at least one held-out word,
so test scores measure spelling of words never heard in training.
"""
from __future__ import annotations

import random
import re

# Kept out of generated text (wordfreq's list is web text).
_BLOCK = {"porn", "sex", "fuck", "shit", "dick", "cock", "pussy", "bitch", "nude", "nigga", "nigger",
          "fucking", "ass", "gay", "rape", "xxx", "cum", "tits", "boobs", "anal", "slut", "whore", "penis",
          "vagina", "sexy", "horny", "porno", "milf", "hentai", "dildo", "damn", "hell", "sucks", "naked",
          "bitches", "fucked", "shitty", "asshole", "bullshit", "lesbian", "erotic", "escort", "viagra"}


def open_vocabulary(n_words: int = 3000, held_out: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """(training words, held-out words) from wordfreq's English top list."""
    try:
        from wordfreq import top_n_list
    except ImportError as exc:
        raise ImportError("open-vocabulary sentences need wordfreq: pip install 'audioadv[asr]'") from exc
    words, seen = [], set()
    for w in top_n_list("en", n_words * 3):
        if re.fullmatch(r"[a-z]+", w) and (len(w) > 1 or w in ("a", "i")) and w not in _BLOCK and w not in seen:
            words.append(w)
            seen.add(w)
        if len(words) == n_words:
            break
    if len(words) < n_words:
        raise ValueError(f"wordfreq gave only {len(words)} usable words, {n_words} asked")
    rng = random.Random(seed)
    pool = sorted(words)
    rng.shuffle(pool)
    n_out = int(round(held_out * n_words))
    return sorted(pool[n_out:]), sorted(pool[:n_out])


def open_sentences(n: int, split: str = "train", *, n_words: int = 3000, held_out: float = 0.1,
                   min_words: int = 4, max_words: int = 8, seed: int = 0) -> list[str]:
    """`n` sentences; split "train" uses training words only, "test"/"val" put >= 1 held-out word in each."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"open_sentences: unknown split {split!r} (train, val or test)")
    train_words, unseen = open_vocabulary(n_words, held_out, seed=0)
    rng = random.Random(f"{seed}-{split}")
    out = []
    for _ in range(n):
        k = rng.randint(min_words, max_words)
        if split == "train":
            words = [rng.choice(train_words) for _ in range(k)]
        else:
            words = [rng.choice(train_words + unseen) for _ in range(k)]
            if not set(words) & set(unseen):
                words[rng.randrange(k)] = rng.choice(unseen)
        out.append(" ".join(words))
    return out


# --- text sources for synth-phrases (`synth-phrases?source=open` / `?source=open-unseen`) ---------
_VOCAB_CACHE: dict = {}


def _vocab() -> tuple[list[str], list[str]]:
    if "v" not in _VOCAB_CACHE:
        _VOCAB_CACHE["v"] = open_vocabulary()
    return _VOCAB_CACHE["v"]


def open_sentence(rng, *, unseen: bool = False, min_words: int = 4, max_words: int = 8) -> tuple[str, str]:
    """One (sentence, "sentence") from a numpy Generator: training words only, or (unseen=True)
    words from the whole vocabulary with at least one held-out word."""
    train_words, held = _vocab()
    k = int(rng.integers(min_words, max_words + 1))
    if not unseen:
        return " ".join(train_words[int(i)] for i in rng.integers(0, len(train_words), size=k)), "sentence"
    pool = train_words + held
    words = [pool[int(i)] for i in rng.integers(0, len(pool), size=k)]
    if not any(w in set(held) for w in words):
        words[int(rng.integers(k))] = held[int(rng.integers(len(held)))]
    return " ".join(words), "sentence"


def register_open_sources() -> None:
    """Register `open` (training vocabulary) and `open-unseen` (>= 1 held-out word per sentence)."""
    from .phrases import register_text_source, text_sources
    if "open" not in text_sources():
        register_text_source("open", open_sentence, ["sentence"], version="open-1")
        register_text_source("open-unseen", lambda rng: open_sentence(rng, unseen=True), ["sentence"],
                             version="open-1")


register_open_sources()
