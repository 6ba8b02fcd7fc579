"""A generic manifest of audio files: CSV or JSONL with `path` and `label` and/or `text`.

Formats (chosen by the file extension):

- CSV (`.csv`, `.tsv` tab-separated) with a header row naming the columns;
- JSON Lines (`.jsonl`, `.ndjson`): one object per line.

Columns/keys: `path` (required; a relative path is resolved against the manifest's own folder),
`label` (class name) and/or `text` (transcript), optional `split` (train/val/test/...); any other
column is kept in `items`. With a `split` column, `split="train"` selects its rows ("all" takes
every row); without one, only `split="all"` is accepted (we never invent a train/test split).

Classes: the distinct labels of the whole manifest, sorted (numerically when all are integers),
or `classes="a,b,c"` to fix the order. A manifest with `text` and no `label` is an ASR list: every
row gets label 0 of the single class "utterance", waves are left-aligned (`align="start"`,
`input_length` None = the longest clip) with the true length in `items[i]["num_samples"]`.
Labelled manifests use `fix_length` (centre) to `input_length` (default 16000).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from .align import stack_left_aligned
from .base import AudioDataset, stack_clips


def read_manifest(path) -> list[dict]:
    """Rows of a CSV/TSV/JSONL manifest with `path` resolved to an absolute path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    ext = path.suffix.lower()
    rows: list[dict] = []
    if ext in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ",")
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise ValueError(f"{path}: the header must have a 'path' column (found {reader.fieldnames})")
            for line, r in enumerate(reader, start=2):
                rows.append({"_line": line, **{k.strip(): (v or "").strip() for k, v in r.items() if k}})
    elif ext in (".jsonl", ".ndjson"):
        for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {line}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or "path" not in obj:
                raise ValueError(f"{path}, line {line}: each line must be an object with a 'path' key")
            rows.append({"_line": line, **obj})
    else:
        raise ValueError(f"{path}: unsupported manifest type {ext!r} (use .csv, .tsv, .jsonl or .ndjson)")
    if not rows:
        raise ValueError(f"{path}: the manifest has no rows")
    if not any("label" in r for r in rows) and not any("text" in r for r in rows):
        raise ValueError(f"{path}: the manifest needs a 'label' or a 'text' column")
    for r in rows:
        p = Path(str(r["path"]))
        if not str(r["path"]).strip():
            raise ValueError(f"{path}, line {r['_line']}: empty path")
        r["path"] = str(p if p.is_absolute() else (path.parent / p))
    return rows


def _sorted_labels(labels: set[str]) -> list[str]:
    if labels and all(lab.lstrip("-").isdigit() for lab in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def load_manifest(path, split: str = "all", *, input_length: int | None = None, sample_rate: int = 16000,
                  classes: str | None = None, align: str | None = None) -> AudioDataset:
    """Load the rows of a manifest for one split (format and rules in the module docstring)."""
    from ..io import load
    from tqdm import tqdm

    rows = read_manifest(path)
    has_label = any(str(r.get("label", "")) != "" for r in rows)
    if has_label:
        unlabeled = [r["_line"] for r in rows if str(r.get("label", "")) == ""]
        if unlabeled:
            raise ValueError(f"{path}: rows without a label at line(s) {unlabeled[:5]}")
        names = _sorted_labels({str(r["label"]) for r in rows}) if classes is None else \
            [c.strip() for c in str(classes).split(",") if c.strip()]
        unknown = sorted({str(r["label"]) for r in rows} - set(names))
        if unknown:
            raise ValueError(f"{path}: label(s) {unknown[:5]} are not among classes {names}")
    else:
        names = ["utterance"]
    has_split = any("split" in r for r in rows)
    if split != "all":
        if not has_split:
            raise ValueError(f"{path}: the manifest has no 'split' column, so only split='all' is possible "
                             f"(asked for {split!r})")
        rows = [r for r in rows if str(r.get("split", "")) == split]
        if not rows:
            raise ValueError(f"{path}: no rows with split {split!r}")
    align = align or ("center" if has_label else "start")
    it = tqdm(rows, desc=f"manifest {split}", leave=False, disable=len(rows) < 200)
    clips = [load(r["path"], sample_rate) for r in it]
    if align == "center":
        length = int(input_length or 16000)
        waves = stack_clips(clips, length)
        lengths = [min(int(c.shape[0]), length) for c in clips]
    elif align == "start":
        waves, lengths = stack_left_aligned(clips, None if input_length is None else int(input_length))
    else:
        raise ValueError(f"manifest align must be 'center' or 'start', not {align!r}")
    index = {c: i for i, c in enumerate(names)}
    labels = torch.tensor([index[str(r["label"])] if has_label else 0 for r in rows], dtype=torch.long)
    items = []
    for r, n in zip(rows, lengths):
        item = {k: v for k, v in r.items() if k != "_line"}
        item["num_samples"] = n
        items.append(item)
    return AudioDataset(waves, labels, names, sample_rate, items, name=f"manifest-{Path(path).stem}-{split}")


__all__ = ["read_manifest", "load_manifest"]
