"""UrbanSound8K from a local folder.

Layout (the extracted `UrbanSound8K.tar.gz`)::

    ROOT/metadata/UrbanSound8K.csv   slice_file_name,fsID,start,end,salience,fold,classID,class
    ROOT/audio/fold1/*.wav ... ROOT/audio/fold10/*.wav

Split by the predefined folds (never shuffle clips across folds: slices of one recording share a
fold). `test_folds` (default "10") are "test", `val_folds` (default "9") "val", the rest "train";
"all" takes every fold, and "foldK" one fold (for the 10-fold protocol). Classes are the ten
class names ordered by classID. Clips (<= 4 s, various rates and channels) are mixed to mono,
resampled and put through `fix_length` to `input_length` (default 4 s).
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch

from .base import AudioDataset, load_clips

_COLUMNS = ("slice_file_name", "fold", "classID", "class")


def _folds(spec) -> set[int]:
    if spec in (None, ""):
        return set()
    return {int(x) for x in str(spec).replace(";", ",").split(",") if str(x).strip()}


def load_urbansound8k(root, split: str = "train", *, input_length: int = 64000, sample_rate: int = 16000,
                      test_folds="10", val_folds="9") -> AudioDataset:
    """Load one split of UrbanSound8K from `root` (layout and split rule in the module docstring)."""
    root = Path(root)
    meta = root / "metadata" / "UrbanSound8K.csv"
    if not meta.is_file():
        raise FileNotFoundError(f"UrbanSound8K: metadata file not found: {meta}")
    test, val = _folds(test_folds), _folds(val_folds)
    if test & val:
        raise ValueError(f"UrbanSound8K: folds {sorted(test & val)} are both test and val folds")
    if split.startswith("fold") and split[4:].isdigit():
        wanted = lambda fold: fold == int(split[4:])  # noqa: E731
    elif split in ("train", "val", "test", "all"):
        wanted = lambda fold: split == "all" or split == ("test" if fold in test else "val" if fold in val else "train")  # noqa: E731
    else:
        raise ValueError(f"UrbanSound8K split must be train, val, test, all or foldK, not {split!r}")
    with meta.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{meta}: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    names: dict[int, str] = {}
    for i, r in enumerate(rows, start=2):
        try:
            r["fold"], r["classID"] = int(r["fold"]), int(r["classID"])
        except ValueError:
            raise ValueError(f"{meta}, line {i}: fold and classID must be integers") from None
        names.setdefault(r["classID"], r["class"])
    classes = [names[k] for k in sorted(names)]
    cls_index = {k: i for i, k in enumerate(sorted(names))}
    chosen = [r for r in rows if wanted(r["fold"])]
    if not chosen:
        raise FileNotFoundError(f"{meta}: no clips in split {split!r}")
    paths = [root / "audio" / f"fold{r['fold']}" / r["slice_file_name"] for r in chosen]
    waves = load_clips(paths, sample_rate, input_length, progress=f"urbansound8k {split}")
    labels = torch.tensor([cls_index[r["classID"]] for r in chosen])
    items = [{"path": str(p), "fold": r["fold"], "class": r["class"], "fsID": r.get("fsID"),
              "salience": r.get("salience")} for p, r in zip(paths, chosen)]
    return AudioDataset(waves, labels, classes, sample_rate, items, name=f"urbansound8k-{split}")


__all__ = ["load_urbansound8k"]
