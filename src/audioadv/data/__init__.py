"""Datasets: built-in synthetic speech (eSpeak NG) and loaders for real corpora in local folders.

`load_dataset(spec, split)` is the one entry point the CLI and benchmarks use. A spec is
`NAME` for built-in data (e.g. `synth-commands`) or `NAME:PATH` for a local corpus
(e.g. `fsdd:../shared/data/fsdd`). Options after a `?` are passed to the loader
(`fsdd:PATH?label=speaker`).

Registered: `synth-commands`, `synth-phrases` (built in, generated into the cache on first use),
`fsdd:PATH`, `speechcommands:PATH`, `librispeech:PATH`, `urbansound8k:PATH`, `manifest:FILE`;
each loader's module documents its folder layout and split rule. Split names "validation",
"valid" and "dev" mean "val".
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


def _lazy(module: str, func: str):
    """A loader that imports its module on first use (keeps `import audioadv.data` light)."""
    def load(path, split, **kw):
        import importlib
        return getattr(importlib.import_module(f"{__name__}.{module}"), func)(path, split, **kw)
    load.__name__ = func
    return load


register_loader("synth-commands", False)(_lazy("commands", "load_synth_commands"))
register_loader("synth-phrases", False)(_lazy("phrases", "load_synth_phrases"))
register_loader("speechcommands", True)(_lazy("speechcommands", "load_speechcommands"))
register_loader("librispeech", True)(_lazy("librispeech", "load_librispeech"))
register_loader("urbansound8k", True)(_lazy("urbansound", "load_urbansound8k"))
register_loader("manifest", True)(_lazy("manifest", "load_manifest"))
register_loader("synth-av-commands", False)(_lazy("synth_av", "load_synth_av_commands"))
register_loader("synth-av-phrases", False)(_lazy("synth_av", "load_synth_av_phrases"))


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


# Other names callers use for a split; loaders see the canonical one ("val").
SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val"}


def load_dataset(spec: str, split: str = "train", **kwargs) -> AudioDataset:
    """Load a dataset by spec (`synth-commands`, `fsdd:PATH`, `speechcommands:PATH`, ...)."""
    name, path, opts = parse_spec(spec)
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r} in spec {spec!r}; known: {', '.join(loader_names())}")
    fn, needs_path = _LOADERS[name]
    if needs_path and not path:
        raise ValueError(f"dataset {name!r} needs a folder: use '{name}:PATH'")
    if path and not Path(path).exists():
        raise FileNotFoundError(f"dataset {name!r}: path not found: {path}")
    split = SPLIT_ALIASES.get(split, split)
    return fn(path, split, **{**opts, **kwargs})


__all__ = ["AudioDataset", "fix_length", "stack_clips", "load_clips", "load_fsdd", "load_dataset", "SPLIT_ALIASES",
           "register_loader", "loader_names", "parse_spec"]
