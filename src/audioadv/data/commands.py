"""`synth-commands`: the ten Speech Commands words spoken by eSpeak NG voices, voice-disjoint splits.

Words: yes, no, up, down, left, right, on, off, stop, go (the classes, in this order). Each
utterance has its own voice (language voice x variant), rate, pitch, pitch range, amplitude and
sentence punctuation (".", "!", "?" change the intonation), and with probability `noise` additive
white/pink/brown noise at 15-40 dB SNR and with probability `reverb` a synthetic room response
(RT60 0.1-0.6 s). `per_word` utterances per word in total are dealt 70/15/15 to train/val/test,
whose voices are disjoint (`synth_sets.split_voices`; `holdout="variant"` for disjoint variants).

Generated on first use into the cache (`cache.cache_dir()`) and reused. Clips are centred in the
`input_length` window by `fix_length`; items carry the word, voice, all synthesis parameters and
phoneme/word times on the returned window.

Voices: `variant_set="humanlike"` (default; `synth.humanlike_variant` screens out robots, heavy
echo and extreme formant shifts, which turn one vowel into another), "broad" or "all".
The voice split itself is part of the cache key (and stored in meta.json).

Spec: `synth-commands?per_word=50&seed=1&noise=0&reverb=0&holdout=variant&variant_set=broad`.
"""
from __future__ import annotations

from .base import AudioDataset
from .cache import cached_clips
from .synth import voice_pool
from .synth_sets import SPLITS, render_all, split_counts, split_voices, store_to_dataset

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
VERSION = "commands-2"


def load_synth_commands(path=None, split: str = "train", *, input_length: int = 16000, sample_rate: int = 16000,
                        per_word: int = 300, seed: int = 0, noise: float = 0.25, reverb: float = 0.25,
                        holdout: str = "combo", words: str | None = None, variant_set: str = "humanlike") -> AudioDataset:
    """Load (generating on first use) a split of synth-commands; see the module docstring."""
    if path:
        raise ValueError("synth-commands is built in and takes no folder ('synth-commands', not 'synth-commands:PATH')")
    vocab = list(WORDS) if words is None else [w.strip() for w in str(words).split(",") if w.strip()]
    if len(vocab) < 2 or len(set(vocab)) != len(vocab):
        raise ValueError(f"synth-commands: words must be two or more distinct words, got {vocab}")
    if int(per_word) < 3:
        raise ValueError(f"synth-commands: per_word must be at least 3 (one per split), got {per_word}")
    per_word, seed, noise, reverb = int(per_word), int(seed), float(noise), float(reverb)
    voices = split_voices(voice_pool(variant_names=variant_set), seed=seed, holdout=holdout)
    params = dict(words=vocab, per_word=per_word, seed=seed, noise=noise, reverb=reverb, holdout=holdout,
                  voices=voices)

    def build(partial):
        counts = split_counts(per_word)
        jobs = [(w, s, [seed, k, j, i], {"word": w, "punctuate": True})
                for k, s in enumerate(SPLITS) for j, w in enumerate(vocab) for i in range(counts[s])]
        return render_all(jobs, voices, sample_rate=sample_rate, noise=noise, reverb=reverb, total=len(jobs),
                          desc="synth-commands", checkpoint=partial)

    store = cached_clips("synth-commands", VERSION, params, sample_rate, build)
    return store_to_dataset(store, split, vocab, "word", input_length=input_length, align="center",
                            name="synth-commands")


__all__ = ["WORDS", "load_synth_commands"]
