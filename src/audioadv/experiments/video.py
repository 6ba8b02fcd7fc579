"""The report's videos of audio-visual examples: clean, adversarial and perturbation-alone clips with their sound.

A run saves each shown AV example's frames (`RUN_DIR/video/JOB/ID.npz`, float32 clean and adversarial frames and
their fps); the report encodes them with ffmpeg (Debian's, else the binary pip's imageio-ffmpeg ships), muxing the
matching saved WAV as the sound. Encoding happens at report time so that a run needs no encoder, and a clip is
encoded again only when its inputs are newer than it, so a report written a second time costs little.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

# (extension, encoders ffmpeg must list, output arguments), best first: H.264 + AAC in MP4 plays in every browser
# (yuv420p: the one pixel format all H.264 decoders take); VP9 + Opus in WebM where libx264 is not built in
FORMATS = (
    ("mp4", ("libx264", "aac"), ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
                                 "-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart"]),
    ("webm", ("libvpx-vp9", "libopus"), ["-c:v", "libvpx-vp9", "-b:v", "0", "-crf", "30", "-pix_fmt", "yuv420p",
                                         "-c:a", "libopus", "-ar", "48000"]),
)
SIDE = 256          # displayed frame size: tiny frames are upscaled with nearest neighbour (pixels stay visible)


def ffmpeg() -> str | None:
    """Path of an ffmpeg binary: Debian's on PATH, else imageio-ffmpeg's; None when neither is there."""
    if shutil.which("ffmpeg"):
        return shutil.which("ffmpeg")
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None


def encoder() -> tuple[str, str, list] | None:
    """(ffmpeg binary, file extension, output arguments) of the best format it can write, or None."""
    binary = ffmpeg()
    if binary is None:
        return None
    try:
        listing = subprocess.run([binary, "-hide_banner", "-encoders"], capture_output=True, text=True,
                                 timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for ext, needs, args in FORMATS:
        if all(re.search(rf"\s{re.escape(n)}\s", listing) for n in needs):
            return binary, ext, args
    return None


def clips(npz: Path) -> tuple[dict, float, float | None]:
    """({"clean", "adv", "delta"}: uint8 (F, H, W) frames, fps, gain): the perturbation alone is centred at grey and
    amplified by `gain` so that its largest change spans half the grey range (it is often below one grey level);
    gain is None where the video is unchanged."""
    with np.load(npz) as z:
        clean, adv, fps = z["clean"], z["adv"], float(z["fps"])
    delta = adv - clean
    peak = float(np.abs(delta).max())
    gain = 0.5 / peak if peak > 0 else None
    to8 = lambda v: np.round(np.clip(v, 0, 1) * 255).astype(np.uint8)    # noqa: E731
    return {"clean": to8(clean), "adv": to8(adv), "delta": to8(0.5 + (gain or 0.0) * delta)}, fps, gain


def _scale(h: int, w: int) -> tuple[int, int]:
    """An integer upscale to about SIDE pixels with an even width and height (yuv420p halves both for chroma)."""
    k = max(1, SIDE // max(h, w))
    if (k * h) % 2 or (k * w) % 2:
        k += 1
    return k * w, k * h


def encode(enc: tuple, frames: np.ndarray, fps: float, wav: Path, out: Path) -> None:
    """Write frames (F, H, W) uint8 with wav as the sound to `out`; raises RuntimeError with ffmpeg's message."""
    binary, _, args = enc
    f, h, w = frames.shape
    sw, sh = _scale(h, w)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}{out.suffix}")      # a killed report leaves no half clip
    cmd = [binary, "-hide_banner", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{w}x{h}", "-r", f"{fps:g}", "-i", "pipe:0",
           "-i", str(wav), "-map", "0:v", "-map", "1:a", "-vf", f"scale={sw}:{sh}:flags=neighbor", *args, str(tmp)]
    try:
        proc = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"ffmpeg did not run: {exc}") from None
    if proc.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"ffmpeg failed: {lines[-1] if lines else f'exit status {proc.returncode}'}")
    os.replace(tmp, out)


def fresh(out: Path, *inputs: Path) -> bool:
    """Whether `out` exists and is not older than any of its inputs (then it need not be encoded again)."""
    return out.is_file() and all(out.stat().st_mtime >= p.stat().st_mtime for p in inputs)
