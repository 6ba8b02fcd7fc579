"""Audio file I/O: load any file libsndfile reads as float32 mono in [-1, 1]; save with clipping reported."""
from __future__ import annotations

import math
import os
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

DEFAULT_MAX_SECONDS = 600.0


class AudioError(ValueError):
    """A problem with an audio file; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly) along the last axis."""
    if orig_sr == target_sr:
        return wav
    from scipy.signal import resample_poly
    ratio = Fraction(int(target_sr), int(orig_sr))
    return resample_poly(wav, ratio.numerator, ratio.denominator, axis=-1).astype(np.float32)


def wav_frames(path) -> tuple[int, int] | None:
    """(frames the header of a RIFF/WAVE file declares, frames the file holds), or None for other files.

    libsndfile silently returns only the frames present when a WAV file was cut short (an interrupted copy or
    download), so :func:`load` compares the two itself."""
    import struct

    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        align = None
        while True:
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                fmt = fh.read(size + (size & 1))
                align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else None
            elif cid == b"data":
                if not align or size in (0, 0xFFFFFFFF):      # streamed or odd headers: nothing to compare
                    return None
                present = os.fstat(fh.fileno()).st_size - fh.tell()
                return size // align, max(present, 0) // align
            else:
                fh.seek(size + (size & 1), 1)


def load(path, sample_rate: int | None = 16000, *, max_seconds: float | None = DEFAULT_MAX_SECONDS,
         mono: bool = True, allow_truncated: bool = False) -> torch.Tensor:
    """Read an audio file into a float32 tensor in [-1, 1], shape (T,) (mono) or (C, T).

    Stereo is mixed down by averaging the channels; the result is resampled to
    `sample_rate` (None keeps the file's rate). Raises AudioError naming the file for a
    missing, unreadable, corrupt or unsupported file, zero samples, NaN/inf samples, a
    file longer than `max_seconds`, or a WAV file whose header promises more samples than it
    holds (a truncated file; ``allow_truncated=True`` loads what is there with a warning).
    Samples of a float file outside [-1, 1] are clipped with a warning.
    """
    import soundfile as sf

    p = Path(path)
    if not p.exists():
        raise AudioError(p, "file not found")
    if p.is_dir():
        raise AudioError(p, "is a directory, not an audio file")
    if not os.access(p, os.R_OK):
        raise AudioError(p, "permission denied (not readable)")
    try:
        info = sf.info(str(p))
    except Exception as exc:  # libsndfile's messages are terse; keep them but name the file
        kind = "unsupported format or corrupt file" if p.stat().st_size else "empty file (0 bytes)"
        raise AudioError(p, f"{kind} ({str(exc).strip().splitlines()[-1] if str(exc) else type(exc).__name__})") from None
    frames = wav_frames(p)
    if frames is not None and frames[1] < frames[0]:
        problem = f"truncated: the header declares {frames[0]} samples but the file holds {frames[1]}"
        if not allow_truncated:
            raise AudioError(p, problem + " (allow_truncated=True loads what is there)")
        warnings.warn(f"{p}: {problem}; loading the {frames[1]} present", stacklevel=2)
    if info.frames == 0:
        raise AudioError(p, "contains zero samples")
    duration = info.frames / info.samplerate
    if max_seconds is not None and duration > max_seconds:
        raise AudioError(p, f"too long: {duration:.1f} s exceeds the limit of {max_seconds:.1f} s (max_seconds)")
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(p, f"corrupt or truncated audio data ({exc})") from None
    if data.shape[0] == 0:
        raise AudioError(p, "contains zero samples")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioError(p, f"contains {bad} NaN or infinite sample(s)")
    over = int((np.abs(data) > 1.0).sum())
    if over:
        warnings.warn(f"{p}: {over} sample(s) outside [-1, 1] (peak {float(np.abs(data).max()):.3g}) were clipped "
                      "to full scale", stacklevel=2)
    wav = data.T  # (C, T)
    if mono:
        wav = wav.mean(axis=0)
    if sample_rate is not None and sr != sample_rate:
        wav = resample(wav, sr, sample_rate)
    wav = np.clip(wav, -1.0, 1.0)  # resampling may ring past full scale
    return torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))


def save(path, wav, sample_rate: int = 16000, *, subtype: str = "PCM_16", warn_clipping: bool = True) -> int:
    """Write a (T,) or (C, T) waveform. Default 16-bit PCM; subtype="FLOAT" keeps float32.

    Samples outside [-1, 1] are clipped for integer formats and reported with a warning.
    Returns the number of clipped samples.
    """
    import soundfile as sf

    x = wav.detach().cpu().numpy() if torch.is_tensor(wav) else np.asarray(wav)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:
        x = x.T
    elif x.ndim != 1:
        raise AudioError(path, f"cannot save an array of shape {x.shape}: expected (T,) or (C, T)")
    if not np.isfinite(x).all():
        raise AudioError(path, "refusing to save NaN or infinite samples")
    clipped = 0
    if subtype.upper() != "FLOAT" and subtype.upper() != "DOUBLE":
        clipped = int((np.abs(x) > 1.0).sum())
        if clipped:
            if warn_clipping:
                warnings.warn(f"{path}: {clipped} sample(s) outside [-1, 1] were clipped when saving as {subtype}",
                              stacklevel=2)
            x = np.clip(x, -1.0, 1.0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        sf.write(str(path), x, int(sample_rate), subtype=subtype)
    except Exception as exc:
        raise AudioError(path, f"cannot write ({exc})") from None
    return clipped
