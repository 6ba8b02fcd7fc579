"""`synth-phrases`: short spoken commands with transcripts, for speech recognition.

Texts come from a *text source*: a function `sample(rng) -> (text, category)` plus the list of
categories, registered under a name with `register_text_source`. The built-in source
`"grammar"` is the small command grammar of `phrase_grammar()` (home control, calls, timers,
alarms, media, navigation, digit strings). Other sources (e.g. open-vocabulary sentences) plug in
with `register_text_source("open", sample_fn, categories, version="...")` and are selected with
`synth-phrases?source=open`; a source's name and version are part of the cache key.

Transcripts are lower-case words without punctuation (digits spelled out), in `items[i]["text"]`;
the label is the phrase's category (`classes`). `n` utterances in total are dealt 70/15/15 to
train/val/test with disjoint voices, as in synth-commands. Waves are left-aligned: the utterance
occupies `waves[i, :items[i]["num_samples"]]`, zero-padded after it; the default `input_length`
is the longest clip of the generated set (all splits), so nothing is cropped.

Voices: `variant_set="broad"` (default; every variant file but the robots of
`synth.NOVELTY_VARIANTS`, so more timbres for training recognisers) or "humanlike" (the screened
set synth-commands uses). The cache key of the default set has stayed the same since the first
release of this module (version "phrases-1"); the voice pool is derived from the eSpeak data.

Spec: `synth-phrases?n=2000&seed=0&noise=0.25&reverb=0.25&source=grammar&variant_set=humanlike`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .base import AudioDataset
from .cache import cached_clips
from .synth import voice_pool
from .synth_sets import SPLITS, render_all, split_counts, split_voices, store_to_dataset

VERSION = "phrases-1"

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def phrase_grammar() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The command grammar: (templates by category, slot fillers). `{slot}` marks a slot.

    `{digits}` is special: a string of 3-7 spoken digits.
    """
    templates = {
        "lights": ["turn on the {room} lights", "turn off the {room} lights", "switch {onoff} the {room} lights",
                   "dim the {room} lights", "turn the lights {onoff}"],
        "call": ["call {person}", "phone {person}", "call {person} on speaker", "send a message to {person}"],
        "timer": ["set a timer for {number} minutes", "set a timer for {number} seconds", "cancel the timer",
                  "how much time is left"],
        "alarm": ["wake me up at {number} {ampm}", "set an alarm for {number} {ampm}", "turn off the alarm"],
        "media": ["play some {genre} music", "pause the music", "next song", "turn the volume {updown}",
                  "stop the music"],
        "navigation": ["go {direction}", "turn {leftright} at the next corner", "navigate to {place}",
                       "how far is the {place}"],
        "weather": ["what is the weather today", "will it rain tomorrow", "what is the temperature in the {room}"],
        "digits": ["{digits}", "dial {digits}", "my code is {digits}"],
    }
    slots = {
        "room": ["kitchen", "bedroom", "living room", "bathroom", "office", "garage", "hallway"],
        "onoff": ["on", "off"],
        "person": ["mom", "dad", "alice", "bob", "grandma", "the doctor", "my sister", "my brother"],
        "number": ["one", "two", "three", "five", "seven", "ten", "fifteen", "twenty", "thirty"],
        "ampm": ["a m", "p m"],
        "genre": ["jazz", "rock", "classical", "pop", "country"],
        "updown": ["up", "down"],
        "direction": ["up", "down", "left", "right", "home", "back"],
        "leftright": ["left", "right"],
        "place": ["station", "airport", "library", "hospital", "nearest store", "office"],
    }
    return templates, slots


def grammar_phrase(rng: np.random.Generator) -> tuple[str, str]:
    """One (transcript, category) from `phrase_grammar()`: category, template and slots uniform."""
    templates, slots = phrase_grammar()
    cats = sorted(templates)
    cat = cats[int(rng.integers(len(cats)))]
    tpl = templates[cat][int(rng.integers(len(templates[cat])))]

    def fill(m: re.Match) -> str:
        name = m.group(1)
        if name == "digits":
            return " ".join(DIGITS[int(d)] for d in rng.integers(0, 10, size=int(rng.integers(3, 8))))
        choices = slots[name]
        return choices[int(rng.integers(len(choices)))]

    return re.sub(r"\{(\w+)\}", fill, tpl), cat


@dataclass(frozen=True)
class TextSource:
    name: str
    sample: Callable[[np.random.Generator], tuple[str, str]]
    categories: tuple[str, ...]
    version: str


_SOURCES: dict[str, TextSource] = {}


def register_text_source(name: str, sample: Callable[[np.random.Generator], tuple[str, str]],
                         categories, version: str = "1") -> TextSource:
    """Make `synth-phrases?source=NAME` speak texts from `sample(rng) -> (text, category)`.

    `sample` must be deterministic given the generator; `categories` lists every category it
    returns (they become the dataset's classes). Bump `version` whenever the texts change.
    """
    src = TextSource(name, sample, tuple(categories), str(version))
    _SOURCES[name] = src
    return src


# Sources defined in other modules of this package, imported on first use.
_LAZY_SOURCES = {"open": "phrases_open", "open-unseen": "phrases_open"}


def text_sources() -> list[str]:
    return sorted(_SOURCES)


register_text_source("grammar", grammar_phrase, sorted(phrase_grammar()[0]), version=VERSION)


def normalise_transcript(text: str) -> str:
    """Lower case, letters/digits/apostrophes/spaces only, single spaces."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def load_synth_phrases(path=None, split: str = "train", *, input_length: int | None = None, sample_rate: int = 16000,
                       n: int = 2000, seed: int = 0, noise: float = 0.25, reverb: float = 0.25,
                       holdout: str = "combo", source: str = "grammar", variant_set: str = "broad") -> AudioDataset:
    """Load (generating on first use) a split of synth-phrases; see the module docstring."""
    if path:
        raise ValueError("synth-phrases is built in and takes no folder ('synth-phrases', not 'synth-phrases:PATH')")
    if source not in _SOURCES and source in _LAZY_SOURCES:
        import importlib
        importlib.import_module(f"{__package__}.{_LAZY_SOURCES[source]}")  # registers itself on import
    if source not in _SOURCES:
        raise ValueError(f"synth-phrases: unknown text source {source!r}; registered: {', '.join(text_sources())}")
    if int(n) < 3:
        raise ValueError(f"synth-phrases: n must be at least 3 (one per split), got {n}")
    src = _SOURCES[source]
    n, seed, noise, reverb = int(n), int(seed), float(noise), float(reverb)
    voices = split_voices(voice_pool(variant_names=variant_set), seed=seed, holdout=holdout)
    params = dict(n=n, seed=seed, noise=noise, reverb=reverb, holdout=holdout, source=source,
                  source_version=src.version)
    if variant_set != "broad":
        params["variant_set"] = variant_set

    def jobs():
        counts = split_counts(n)
        for k, s in enumerate(SPLITS):
            for i in range(counts[s]):
                text, cat = src.sample(np.random.default_rng([seed, k, 7, i]))
                text = normalise_transcript(text)
                yield text, s, [seed, k, 0, i], {"category": cat}

    def build(partial):
        return render_all(jobs(), voices, sample_rate=sample_rate, noise=noise,
                          reverb=reverb, total=n, desc=f"synth-phrases ({source})", checkpoint=partial)

    name = "synth-phrases" if source == "grammar" else f"synth-phrases-{source}"
    store = cached_clips("synth-phrases", VERSION, params, sample_rate, build)
    return store_to_dataset(store, split, list(src.categories), "category", input_length=input_length,
                            align="start", name=name)


__all__ = ["phrase_grammar", "grammar_phrase", "register_text_source", "text_sources", "TextSource",
           "normalise_transcript", "load_synth_phrases", "DIGITS"]
