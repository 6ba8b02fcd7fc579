"""On-disk cache for generated datasets: generated once, reused by every later load.

Location: `$AUDIOADV_CACHE`, else `~/.cache/audioadv`. A dataset lives in
`<cache>/<name>/<key>/` where `key` hashes the generation parameters and the generator's version,
so changing either generates a new copy and never reuses stale audio. Contents:

- `audio.npy`: every clip concatenated, int16 PCM (full scale 32767);
- `offsets.npy`: int64 start of each clip in `audio.npy` (length N + 1);
- `meta.json`: `{"name", "version", "params", "sample_rate", "seconds", "items": [...]}`.

Writes are atomic: the folder is built under a temporary name and renamed into place, so an
interrupted generation leaves nothing that a later load would trust. While generating, every
`CHUNK` utterances are checkpointed in `<key>.partial/` and a rerun resumes from there (each
utterance depends only on its own seed, so a resumed set is identical to an uninterrupted one).
A lock file `<key>.lock` makes concurrent processes wait for one generation instead of
duplicating it.
"""
from __future__ import annotations

import contextlib
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


CHUNK = 250  # utterances per resume checkpoint


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """An exclusive advisory lock (POSIX flock); a no-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def save_chunk(partial: Path, start: int, clips: Sequence[np.ndarray], items: list[dict]) -> None:
    """Checkpoint utterances start..start+len(clips) of a generation in progress (atomic)."""
    lengths = np.array([len(c) for c in clips], dtype=np.int64)
    audio = np.concatenate([np.round(np.clip(c, -1.0, 1.0) * 32767.0).astype(np.int16) for c in clips]) \
        if clips else np.zeros(0, np.int16)
    tmp = partial / f".chunk-{start:08d}.tmp.npz"
    np.savez(tmp, audio=audio, lengths=lengths, items=np.array(json.dumps(items)))
    os.replace(tmp, partial / f"chunk-{start:08d}.npz")


def load_chunks(partial: Path) -> tuple[list[np.ndarray], list[dict]]:
    """The contiguous checkpointed prefix of a generation (clips as float32, items)."""
    clips: list[np.ndarray] = []
    items: list[dict] = []
    for f in sorted(Path(partial).glob("chunk-*.npz")):
        if int(f.stem.split("-")[1]) != len(items):
            break  # a gap: keep only the contiguous prefix
        try:
            with np.load(f) as z:
                audio, lengths, meta = z["audio"], z["lengths"], json.loads(str(z["items"]))
        except (OSError, ValueError, KeyError):
            break
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        clips += [audio[a:b].astype(np.float32) / 32767.0 for a, b in zip(offsets[:-1], offsets[1:])]
        items += meta
    return clips, items


def cached_clips(name: str, version: str, params: dict, sample_rate: int,
                 build: Callable[[Path], tuple[list[np.ndarray], list[dict]]]) -> ClipStore:
    """Load `name` generated with `params` from the cache, building and storing it on first use.

    `build(partial)` generates every clip; it may checkpoint into the folder `partial`
    (`save_chunk`/`load_chunks`) so that an interrupted generation resumes where it stopped.
    Processes generating the same entry take turns (a file lock), so it is built once.
    """
    params = {**params, "sample_rate": int(sample_rate)}
    folder = cache_dir() / name / cache_key(name, version, params)
    if not (folder / "meta.json").exists():
        with _exclusive(folder.with_name(folder.name + ".lock")):
            if not (folder / "meta.json").exists():
                partial = folder.with_name(folder.name + ".partial")
                partial.mkdir(parents=True, exist_ok=True)
                t0 = time.perf_counter()
                clips, items = build(partial)
                seconds = time.perf_counter() - t0
                write_store(folder, clips, items, {"name": name, "version": version, "params": params,
                                                   "sample_rate": int(sample_rate), "seconds": round(seconds, 2),
                                                   "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
                shutil.rmtree(partial, ignore_errors=True)
    return ClipStore(folder)


__all__ = ["cache_dir", "cache_key", "cached_clips", "ClipStore", "write_store", "save_chunk", "load_chunks", "CHUNK"]
