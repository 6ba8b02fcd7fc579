"""Google Speech Commands (v0.02, also v0.01) from a local folder.

Layout (the extracted `speech_commands_v0.02.tar.gz`)::

    ROOT/
      yes/0a7c2a8d_nohash_0.wav     one folder per word; file = {speaker}_nohash_{take}.wav
      no/...
      _background_noise_/*.wav      ignored (long noise recordings, not utterances)
      validation_list.txt           relative paths (word/file.wav) of the validation split
      testing_list.txt              relative paths of the test split
      LICENSE, README.md, ...

Split (the dataset's own): files listed in `testing_list.txt` are "test", those in
`validation_list.txt` "val", every other utterance "train"; "all" takes everything.

Labels: `words="all"` (default) makes every word folder a class (35 in v0.02);
`words="commands"` keeps the ten command words yes, no, up, down, left, right, on, off, stop, go;
or a comma list. With `unknown=1`, the utterances of the other words are kept as one extra
class `_unknown_` (the usual 11-way task, without the synthetic silence class); otherwise they
are dropped. Clips (1 s at 16 kHz) go through `fix_length` to `input_length`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .base import AudioDataset, load_clips

COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN = "_unknown_"


def _read_list(path: Path) -> set[str]:
    if not path.exists():
        raise FileNotFoundError(f"Speech Commands: {path} is missing (the dataset ships validation_list.txt and "
                                f"testing_list.txt next to the word folders)")
    return {ln.strip().replace("\\", "/") for ln in path.read_text().splitlines() if ln.strip()}


def load_speechcommands(root, split: str = "train", *, input_length: int = 16000, sample_rate: int = 16000,
                        words: str = "all", unknown: int | bool = False) -> AudioDataset:
    """Load one split of Speech Commands from `root` (layout in the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Speech Commands folder not found: {root}")
    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"Speech Commands split must be train, val, test or all, not {split!r}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if not folders:
        raise FileNotFoundError(f"{root}: no word folders (expected ROOT/<word>/*.wav)")
    if words == "all":
        chosen = folders
    elif words == "commands":
        chosen = list(COMMANDS)
    else:
        chosen = [w.strip() for w in str(words).split(",") if w.strip()]
    missing = [w for w in chosen if w not in folders]
    if missing:
        raise FileNotFoundError(f"{root}: no folder for word(s) {', '.join(missing)}")
    classes = list(chosen) + ([UNKNOWN] if unknown and set(folders) - set(chosen) else [])
    val, test = _read_list(root / "validation_list.txt"), _read_list(root / "testing_list.txt")
    rows = []
    for w in folders:
        if w not in chosen and not unknown:
            continue
        for p in sorted((root / w).glob("*.wav")):
            rel = f"{w}/{p.name}"
            s = "test" if rel in test else "val" if rel in val else "train"
            if split in ("all", s):
                speaker, _, take = p.stem.partition("_nohash_")
                rows.append((p, w, s, speaker, int(take) if take.isdigit() else 0))
    if not rows:
        raise FileNotFoundError(f"{root}: no .wav files for split {split!r} in the word folders")
    index = {c: i for i, c in enumerate(classes)}
    waves = load_clips([r[0] for r in rows], sample_rate, input_length, progress=f"speechcommands {split}")
    labels = torch.tensor([index[r[1] if r[1] in chosen else UNKNOWN] for r in rows])
    items = [{"path": str(r[0]), "word": r[1], "split": r[2], "speaker": r[3], "take": r[4]} for r in rows]
    return AudioDataset(waves, labels, classes, sample_rate, items, name=f"speechcommands-{split}")


__all__ = ["load_speechcommands", "COMMANDS"]
