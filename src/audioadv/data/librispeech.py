"""LibriSpeech (or a flat subset of it) from a local folder, for speaker recognition and ASR.

Layouts accepted (found automatically):

Standard, one subset folder of the distribution (e.g. `LibriSpeech/test-clean`)::

    ROOT/{speaker}/{chapter}/{speaker}-{chapter}-{utt:04d}.flac
    ROOT/{speaker}/{chapter}/{speaker}-{chapter}.trans.txt   lines "SPEAKER-CHAPTER-UTT TRANSCRIPT"

Flat, as in the project's `librispeech-10spk` folder::

    ROOT/{speaker}/{speaker}-{chapter}-{utt:04d}.flac        (transcripts optional, same .trans.txt format)
    ROOT/SPEAKERS.TXT                                        optional: "ID | SEX | SUBSET | MINUTES | NAME"

Split rule (the one in the project's data README): per speaker, utterances sorted by file name;
the first `round(train_fraction * n)` (default 0.7, i.e. 7 of 10) are "train", the rest "test";
"all" takes everything. Labels are speakers (classes = speaker ids, sorted numerically). Items
carry the transcript in "text" when a .trans.txt is present, and the speaker's sex from
SPEAKERS.TXT. Waves: `align="center"` (default) crops/pads each utterance with `fix_length` to
`input_length` (default 3 s); `align="start"` keeps each utterance from its start, zero-padded at
the end to `input_length` (None = the longest utterance), with its true length in
`items[i]["num_samples"]` (the ASR convention).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .align import stack_left_aligned
from .base import AudioDataset, stack_clips

_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)\.(flac|wav)$", re.IGNORECASE)


def _speakers_txt(root: Path) -> dict[str, dict]:
    info = {}
    for name in ("SPEAKERS.TXT", "../SPEAKERS.TXT"):
        p = root / name
        if p.is_file():
            for ln in p.read_text(errors="replace").splitlines():
                if ln.startswith(";") or "|" not in ln:
                    continue
                f = [x.strip() for x in ln.split("|")]
                if len(f) >= 5:
                    info[f[0]] = {"sex": f[1], "subset": f[2], "name": f[4]}
            break
    return info


def _transcripts(folder: Path) -> dict[str, str]:
    out = {}
    for t in folder.glob("*.trans.txt"):
        for ln in t.read_text(errors="replace").splitlines():
            key, _, text = ln.strip().partition(" ")
            if key:
                out[key] = text.strip()
    return out


def scan_librispeech(root) -> list[dict]:
    """Every utterance under root as dicts {path, speaker, chapter, utterance, id, text?}, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"LibriSpeech folder not found: {root}")
    rows = []
    for spk in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
        folders = [spk] + sorted(p for p in spk.iterdir() if p.is_dir())
        for folder in folders:
            texts = _transcripts(folder)
            for f in sorted(folder.iterdir()):
                m = _NAME.match(f.name)
                if not m:
                    continue
                if m.group(1) != spk.name:
                    raise ValueError(f"{f}: file of speaker {m.group(1)} inside speaker folder {spk.name}")
                uid = f"{m.group(1)}-{m.group(2)}-{m.group(3)}"
                row = {"path": str(f), "speaker": m.group(1), "chapter": m.group(2), "utterance": int(m.group(3)), "id": uid}
                if uid in texts:
                    row["text"] = texts[uid]
                rows.append(row)
    if not rows:
        raise FileNotFoundError(f"{root}: no LibriSpeech audio (expected SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac "
                                f"or SPEAKER/SPEAKER-CHAPTER-UTT.flac)")
    rows.sort(key=lambda r: (int(r["speaker"]), Path(r["path"]).name))
    return rows


def load_librispeech(root, split: str = "train", *, input_length: int | None = None, sample_rate: int = 16000,
                     train_fraction: float = 0.7, align: str = "center", segment: int | None = None) -> AudioDataset:
    """Load one split of a LibriSpeech folder (layouts and split rule in the module docstring).

    input_length defaults to 48000 samples (3 s). segment=N instead cuts every utterance into non-overlapping
    N-sample segments (the last partial one dropped; an utterance shorter than N gives one zero-padded segment),
    each an example with its source path and start sample, as speaker-identification studies do."""
    if segment is not None:
        segment = int(segment)
        if input_length is not None and int(input_length) != segment:
            raise ValueError(f"LibriSpeech: segment={segment} but input_length={input_length}; they must agree")
        return _segments(load_librispeech(root, split, input_length=None, sample_rate=sample_rate,
                                          train_fraction=train_fraction, align="start"), segment)
    if input_length is None and align == "center":
        input_length = 48000
    from ..io import load
    from tqdm import tqdm

    if split not in ("train", "test", "all"):
        raise ValueError(f"LibriSpeech split must be train, test or all, not {split!r}")
    if align not in ("center", "start"):
        raise ValueError(f"LibriSpeech align must be 'center' or 'start', not {align!r}")
    rows = scan_librispeech(root)
    speakers = sorted({r["speaker"] for r in rows}, key=int)
    by_spk: dict[str, list[dict]] = {}
    for r in rows:
        by_spk.setdefault(r["speaker"], []).append(r)
    chosen = []
    for spk in speakers:
        utts = by_spk[spk]
        k = int(round(float(train_fraction) * len(utts)))
        for j, r in enumerate(utts):
            r["split"] = "train" if j < k else "test"
            if split in ("all", r["split"]):
                chosen.append(r)
    if not chosen:
        raise FileNotFoundError(f"{root}: no utterances in split {split!r} (train_fraction={train_fraction})")
    sex = _speakers_txt(Path(root))
    for r in chosen:
        if r["speaker"] in sex:
            r["sex"] = sex[r["speaker"]]["sex"]
    it = tqdm(chosen, desc=f"librispeech {split}", leave=False, disable=len(chosen) < 200)
    clips = [load(r["path"], sample_rate) for r in it]
    for r, c in zip(chosen, clips):
        r["duration"] = round(c.shape[0] / sample_rate, 4)
    if align == "center":
        if input_length is None:
            raise ValueError("LibriSpeech: align='center' needs an input_length")
        waves = stack_clips(clips, int(input_length))
        for r, c in zip(chosen, clips):
            r["num_samples"] = min(int(c.shape[0]), int(input_length))
    else:
        waves, lengths = stack_left_aligned(clips, None if input_length is None else int(input_length))
        for r, n in zip(chosen, lengths):
            r["num_samples"] = n
    index = {s: i for i, s in enumerate(speakers)}
    labels = torch.tensor([index[r["speaker"]] for r in chosen])
    return AudioDataset(waves, labels, speakers, sample_rate, chosen, name=f"librispeech-{split}")


def _segments(ds: AudioDataset, length: int) -> AudioDataset:
    waves, labels, items = [], [], []
    for i, item in enumerate(ds.items):
        wav = ds.waves[i, :item["num_samples"]]
        for start in range(0, max(1, len(wav) - length + 1), length):
            seg = wav[start:start + length]
            waves.append(torch.nn.functional.pad(seg, (0, length - len(seg))))
            labels.append(int(ds.labels[i]))
            items.append({**item, "start": start, "num_samples": len(seg)})
    return AudioDataset(torch.stack(waves), torch.tensor(labels), ds.classes, ds.sample_rate, items,
                        name=f"{ds.name}-segments")


__all__ = ["load_librispeech", "scan_librispeech"]
