"""On-disk cache for generated datasets: generated once, reused by every later load.

Location: `$AUDIOADV_CACHE`, else `~/.cache/audioadv`. A dataset lives in
`<cache>/<name>/<key>/` where `key` hashes the generation parameters and the generator's version,
so changing either generates a new copy and never reuses stale audio. Contents:

- `audio.npy`: every clip concatenated, int16 PCM (full scale 32767);
- `offsets.npy`: int64 start of each clip in `audio.npy` (length N + 1);
- `meta.json`: `{"name", "version", "params", "sample_rate", "seconds", "items": [...]}`.

Writes are atomic: the folder is built under a temporary name and renamed into place, so an
interrupted generation leaves nothing that a later load would trust; two processes generating the
same key at once both succeed and one copy wins.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


def cache_dir() -> Path:
    """The cache root: $AUDIOADV_CACHE or ~/.cache/audioadv."""
    root = os.environ.get("AUDIOADV_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "audioadv"


def cache_key(name: str, version: str, params: dict) -> str:
    blob = json.dumps({"name": name, "version": version, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ClipStore:
    """A loaded cache entry: variable-length clips (memory-mapped) and their metadata."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / "meta.json").read_text())
            self.audio = np.load(self.folder / "audio.npy", mmap_mode="r")
            self.offsets = np.load(self.folder / "offsets.npy")
        except (OSError, ValueError) as exc:
            raise OSError(f"dataset cache {self.folder} is unreadable or incomplete ({exc}); delete the folder "
                          f"to regenerate it") from exc
        if len(self.offsets) != len(self.meta["items"]) + 1 or self.offsets[-1] != len(self.audio):
            raise OSError(f"dataset cache {self.folder} is inconsistent (offsets vs items vs audio); delete it to regenerate")
        self.items: list[dict] = self.meta["items"]
        self.sample_rate: int = int(self.meta["sample_rate"])

    def __len__(self) -> int:
        return len(self.items)

    def clip(self, i: int) -> np.ndarray:
        """Clip i as float32 in [-1, 1]."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return np.asarray(self.audio[a:b], dtype=np.float32) / 32767.0


def write_store(folder: Path, clips: Sequence[np.ndarray], items: list[dict], meta: dict) -> None:
    """Write clips + metadata atomically to `folder` (see module docstring)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        lengths = np.array([len(c) for c in clips], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        audio = np.empty(int(offsets[-1]), dtype=np.int16)
        for c, a in zip(clips, offsets[:-1]):
            audio[a:a + len(c)] = np.round(np.clip(c, -1.0, 1.0) * 32767.0).astype(np.int16)
        np.save(tmp / "audio.npy", audio)
        np.save(tmp / "offsets.npy", offsets)
        (tmp / "meta.json").write_text(json.dumps({**meta, "items": items}))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same key first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cached_clips(name: str, version: str, params: dict, sample_rate: int,
                 build: Callable[[], tuple[list[np.ndarray], list[dict]]]) -> ClipStore:
    """Load `name` generated with `params` from the cache, building and storing it on first use."""
    params = {**params, "sample_rate": int(sample_rate)}
    folder = cache_dir() / name / cache_key(name, version, params)
    if not (folder / "meta.json").exists():
        t0 = time.perf_counter()
        clips, items = build()
        seconds = time.perf_counter() - t0
        write_store(folder, clips, items, {"name": name, "version": version, "params": params,
                                           "sample_rate": int(sample_rate), "seconds": round(seconds, 2),
                                           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return ClipStore(folder)


__all__ = ["cache_dir", "cache_key", "cached_clips", "ClipStore", "write_store"]
