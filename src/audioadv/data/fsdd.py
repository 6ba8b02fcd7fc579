"""Free Spoken Digit Dataset from a local folder.

Layout: one folder of `{digit}_{speaker}_{take}.wav` files (8 kHz mono), as in the
dataset's `recordings/` folder. Split (the dataset README's): takes 0-4 of every digit
and speaker are the test set, takes 5-49 train. `label="speaker"` gives the speaker task.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .base import AudioDataset, load_clips

_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")


def load_fsdd(root, split: str = "train", *, input_length: int = 16000, sample_rate: int = 16000,
              label: str = "digit") -> AudioDataset:
    root = Path(root)
    if (root / "recordings").is_dir():
        root = root / "recordings"
    if not root.is_dir():
        raise FileNotFoundError(f"FSDD folder not found: {root}")
    if split not in ("train", "test", "all"):
        raise ValueError(f"FSDD split must be train, test or all, not {split!r}")
    if label not in ("digit", "speaker"):
        raise ValueError(f"FSDD label must be 'digit' or 'speaker', not {label!r}")
    rows = []
    for p in sorted(root.iterdir()):
        m = _NAME.match(p.name)
        if not m:
            continue
        digit, speaker, take = m.group(1), m.group(2), int(m.group(3))
        if split == "all" or (split == "test") == (take < 5):
            rows.append((p, digit, speaker, take))
    if not rows:
        raise FileNotFoundError(f"{root}: no FSDD files named {{digit}}_{{speaker}}_{{take}}.wav")
    if label == "digit":
        classes = [str(d) for d in range(10)]
    else:
        classes = sorted({m.group(2) for p in root.iterdir() if (m := _NAME.match(p.name))})
    index = {c: i for i, c in enumerate(classes)}
    waves = load_clips([r[0] for r in rows], sample_rate, input_length, progress=f"fsdd {split}")
    labels = torch.tensor([index[r[1] if label == "digit" else r[2]] for r in rows])
    items = [{"path": str(r[0]), "digit": r[1], "speaker": r[2], "take": r[3]} for r in rows]
    return AudioDataset(waves, labels, classes, sample_rate, items, name=f"fsdd-{split}")
