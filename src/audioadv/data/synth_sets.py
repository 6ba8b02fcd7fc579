"""Machinery shared by the built-in synthetic datasets: voice-disjoint splits, generation, loading.

Splits keep voices apart. The unit is a voice = (eSpeak language voice, variant) combination
(`synth.voice_pool()`); with `holdout="combo"` (default) the combinations are shuffled with the
seed and dealt 70/15/15 to train/val/test, so no test voice is ever heard in training. With
`holdout="variant"` whole variant files (speaker timbres) are dealt instead, which is stricter:
a test variant is never heard in training with any accent.

Every utterance draws its own parameters from `np.random.default_rng([seed, split, group, index])`,
so an utterance does not change when the dataset grows or other splits change size.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .base import AudioDataset, fix_length
from .synth import draw_params, synthesize_params, voice_pool

SPLITS = ("train", "val", "test")
FRACTIONS = (0.7, 0.15, 0.15)


def split_voices(pool: Sequence[tuple[str, str]] | None = None, *, seed: int = 0, holdout: str = "combo",
                 fractions: Sequence[float] = FRACTIONS) -> dict[str, list[tuple[str, str]]]:
    """Deal voices to train/val/test so that the splits share none (see module docstring)."""
    pool = list(pool or voice_pool())
    if holdout == "combo":
        units = [[c] for c in pool]
    elif holdout == "variant":
        by_variant: dict[str, list] = {}
        for c in pool:
            by_variant.setdefault(c[1], []).append(c)
        units = [by_variant[k] for k in sorted(by_variant)]
    else:
        raise ValueError(f"holdout must be 'combo' or 'variant', not {holdout!r}")
    if len(units) < len(SPLITS):
        raise ValueError(f"need at least {len(SPLITS)} voices to split, got {len(units)}")
    order = np.random.default_rng([seed, 104729]).permutation(len(units))
    total = float(sum(fractions))
    n_val = max(1, int(round(len(units) * fractions[1] / total)))
    n_test = max(1, int(round(len(units) * fractions[2] / total)))
    cut = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return {s: sorted(c for i in cut[s] for c in units[i]) for s in SPLITS}


def split_counts(total: int, fractions: Sequence[float] = FRACTIONS) -> dict[str, int]:
    """How many of `total` utterances go to each split (train takes the rounding remainder)."""
    f = np.asarray(fractions, dtype=float) / sum(fractions)
    val, test = int(round(total * f[1])), int(round(total * f[2]))
    if total >= 3:  # every split gets at least one
        val, test = max(1, val), max(1, test)
    return {"train": total - val - test, "val": val, "test": test}


def default_workers() -> int:
    """Parallel synthesis threads: $AUDIOADV_SYNTH_WORKERS, else min(2, CPU count)."""
    env = os.environ.get("AUDIOADV_SYNTH_WORKERS")
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"AUDIOADV_SYNTH_WORKERS must be a positive integer, not {env!r}")
        return int(env)
    return max(1, min(2, os.cpu_count() or 1))


def render_one(job: tuple[str, str, list[int], dict], voices: dict[str, list], *, sample_rate: int,
               noise: float, reverb: float) -> tuple[np.ndarray, dict]:
    """One utterance of a dataset: everything random comes from the job's own rng key."""
    text, split, key, extra = job
    extra = dict(extra)
    rng = np.random.default_rng(key)
    spoken = text + str(rng.choice(["", ".", "!", "?"], p=[0.4, 0.3, 0.15, 0.15])) if extra.pop("punctuate", False) else text
    params = draw_params(rng, voices[split], noise_prob=noise, rir_prob=reverb, snr_db=(15.0, 40.0))
    u = synthesize_params(spoken, params, sample_rate=sample_rate)
    item = {**extra, "text": text, "spoken": spoken, "split": split, **params.to_dict(),
            "num_samples": int(u.wav.shape[0]),
            "phonemes": [[p, round(a, 5), round(b, 5)] for p, a, b in u.phonemes],
            "words": [[w, round(a, 5), round(b, 5)] for w, a, b in u.words]}
    return u.wav.numpy(), item


def render_all(jobs: Iterable[tuple[str, str, list[int], dict]], voices: dict[str, list], *, sample_rate: int,
               noise: float, reverb: float, total: int, desc: str, checkpoint: Path | None = None,
               workers: int | None = None) -> tuple[list[np.ndarray], list[dict]]:
    """Synthesise every job (text, split, rng key, extra item fields) with tqdm progress.

    With `checkpoint` (a folder), finished utterances are saved every `cache.CHUNK` and the ones
    already there are reused, so an interrupted run resumes. `workers` threads (default
    `default_workers()`) each drive their own eSpeak fork server; the output does not depend on it.
    """
    import itertools
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from . import cache
    from .synth import bind_engine, engine_pool

    clips, items = cache.load_chunks(checkpoint) if checkpoint is not None else ([], [])
    done = saved = len(items)
    workers = default_workers() if workers is None else int(workers)
    todo = itertools.islice(iter(jobs), done, None)
    one = lambda job: render_one(job, voices, sample_rate=sample_rate, noise=noise, reverb=reverb)  # noqa: E731
    pool = None
    if workers > 1:
        engines, slot = engine_pool(workers), itertools.count()
        pool = ThreadPoolExecutor(workers, initializer=lambda: bind_engine(engines[next(slot)]))
    try:
        results = pool.map(one, todo) if pool else map(one, todo)
        for clip, item in tqdm(results, total=total, initial=done, desc=desc, unit="utt", mininterval=1.0):
            clips.append(clip)
            items.append(item)
            if checkpoint is not None and len(items) - saved >= cache.CHUNK:
                cache.save_chunk(checkpoint, saved, clips[saved:], items[saved:])
                saved = len(items)
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
    return clips, items


def _shift_events(events, dt: float, length_s: float):
    out = []
    for name, a, b in events:
        a, b = a + dt, b + dt
        if b > 0 and a < length_s:
            out.append([name, max(a, 0.0), min(b, length_s)])
    return out


def store_to_dataset(store, split: str, classes: list[str], label_key: str, *, input_length: int | None,
                     align: str, name: str) -> AudioDataset:
    """Select a split from a ClipStore and make fixed-length waves.

    align="center": `fix_length` (centre crop / centred zero padding; input_length required).
    align="start": the utterance starts at sample 0 and is zero-padded at the end (cropped at the
    end when longer; `items[i]["truncated"]` says so); input_length None = the longest clip of the
    whole store (all splits), so every split has the same length.
    Phoneme/word times in items are moved onto the returned window; `num_samples` is the number of
    samples of speech in the window (before padding).
    """
    if split not in (*SPLITS, "all"):
        raise ValueError(f"{name}: split must be one of {', '.join(SPLITS)} or all, not {split!r}")
    index = [i for i, it in enumerate(store.items) if split == "all" or it["split"] == split]
    sr = store.sample_rate
    if input_length is None:
        if align == "center":
            raise ValueError(f"{name}: input_length is required")
        input_length = int(np.diff(store.offsets).max())
    input_length = int(input_length)
    cls = {c: k for k, c in enumerate(classes)}
    waves = np.zeros((len(index), input_length), dtype=np.float32)
    labels, items = [], []
    for row, i in enumerate(index):
        clip = store.clip(i)
        t = clip.shape[0]
        it = dict(store.items[i])
        if align == "center":
            waves[row] = fix_length(torch.from_numpy(clip), input_length).numpy()
            shift = ((input_length - t) // 2) if t <= input_length else -((t - input_length) // 2)
        elif align == "start":  # the rule of align.left_align, written in place
            n = min(t, input_length)
            waves[row, :n] = clip[:n]
            shift = 0
            it["truncated"] = t > input_length
        else:
            raise ValueError(f"align must be 'center' or 'start', not {align!r}")
        dt, length_s = shift / sr, input_length / sr
        it["phonemes"] = _shift_events(it.get("phonemes", []), dt, length_s)
        it["words"] = _shift_events(it.get("words", []), dt, length_s)
        it["num_samples"] = int(min(t, input_length))
        it["offset_samples"] = int(shift)
        it["index"] = i
        labels.append(cls[it[label_key]])
        items.append(it)
    return AudioDataset(torch.from_numpy(waves), torch.tensor(labels, dtype=torch.long), list(classes), sr, items, name=f"{name}-{split}")


__all__ = ["SPLITS", "FRACTIONS", "split_voices", "split_counts", "render_all", "render_one", "default_workers",
           "store_to_dataset"]
