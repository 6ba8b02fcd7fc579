"""Datasets: built-in synthetic speech (eSpeak NG) and loaders for real corpora in local folders.

`load_dataset(spec, split)` is the one entry point the CLI and benchmarks use. A spec is
`NAME` for built-in data (e.g. `synth-commands`) or `NAME:PATH` for a local corpus
(e.g. `fsdd:../shared/data/fsdd`). Options after a `?` are passed to the loader
(`fsdd:PATH?label=speaker`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .base import AudioDataset, fix_length, stack_clips, load_clips
from .fsdd import load_fsdd

# name -> (loader(path_or_None, split, **kw) -> AudioDataset, needs_path)
_LOADERS: dict[str, tuple[Callable, bool]] = {}


def register_loader(name: str, needs_path: bool):
    def deco(fn):
        _LOADERS[name] = (fn, needs_path)
        return fn
    return deco


register_loader("fsdd", True)(lambda path, split, **kw: load_fsdd(path, split, **kw))


def loader_names() -> list[str]:
    return sorted(_LOADERS)


def parse_spec(spec: str) -> tuple[str, str | None, dict]:
    opts: dict = {}
    if "?" in spec:
        spec, query = spec.split("?", 1)
        for kv in filter(None, query.split("&")):
            k, _, v = kv.partition("=")
            opts[k] = int(v) if v.isdigit() else v
    name, _, path = spec.partition(":")
    return name, (path or None), opts


def load_dataset(spec: str, split: str = "train", **kwargs) -> AudioDataset:
    """Load a dataset by spec (`synth-commands`, `fsdd:PATH`, `speechcommands:PATH`, ...)."""
    name, path, opts = parse_spec(spec)
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r} in spec {spec!r}; known: {', '.join(loader_names())}")
    fn, needs_path = _LOADERS[name]
    if needs_path and not path:
        raise ValueError(f"dataset {name!r} needs a folder: use '{name}:PATH'")
    if path and not Path(path).exists():
        raise FileNotFoundError(f"dataset {name!r}: folder not found: {path}")
    return fn(path, split, **{**opts, **kwargs})


__all__ = ["AudioDataset", "fix_length", "stack_clips", "load_clips", "load_fsdd", "load_dataset",
           "register_loader", "loader_names", "parse_spec"]
