"""Audio-visual synthetic speech: `synth-av-commands` and `synth-av-phrases`.

The audio is the built-in synthetic speech set (`synth-commands`, `synth-phrases`, eSpeak NG);
the video is a talking mouth rendered from the phoneme events eSpeak reported for that very
utterance (`items[i]["phonemes"]`, times on the returned window). Each phoneme maps to a
viseme, a target mouth shape (opening, width, lip rounding, visible teeth; `VISEMES`); diphthongs
move from their first to their second vowel's shape. Frames are sampled at `fps` (25), the
shape follows its target through a first-order lag (time constant `lag_s`, coarticulation), and
each frame is drawn as a grayscale `size` x `size` image: skin, lips (a ring whose thickness grows
with rounding), a dark mouth opening, and teeth when the mouth is open and spread.

Speakers look different: the voice (language voice x variant, the unit the splits keep apart)
seeds the skin and lip shades, mouth size and position, so a test voice also has an unseen face.
Each utterance adds its own small head motion and pixel noise (seeded by its synthesis seed).
The video alone therefore carries what is said (tests: a video-only model beats chance).

Returned datasets are `AVDataset`s: an `AudioDataset` (waves, labels, classes, items) plus
`video` (N, F, H, W) float32 in [0, 1], F = ceil(input_length / sample_rate * fps).
`ds.inputs()` gives the model input dict {"audio": waves, "video": video}.

Caching: the audio comes from the synth sets' own cache (generated on first use, resumable);
the video of a split is rendered once into `<cache>/synth-av-*/<key>/<split>.npy` (uint8), with the
key hashing the audio set's parameters and the renderer's settings and version.

Specs: `synth-av-commands?per_word=100&words=yes,no`, `synth-av-phrases?n=600`; options are those of
the audio sets plus `fps`, `size`, `lag_s`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from .base import AudioDataset

VERSION = "av-1"

# viseme: (opening 0-1, width 0-1, rounding 0-1, teeth 0-1)
VISEMES = {
    "rest": (0.05, 0.50, 0.0, 0.0),
    "bilabial": (0.00, 0.50, 0.1, 0.0),      # p b m
    "labiodental": (0.10, 0.50, 0.0, 0.8),   # f v
    "dental": (0.25, 0.55, 0.0, 1.0),        # th
    "alveolar": (0.20, 0.60, 0.0, 0.7),      # t d n l s z
    "postalveolar": (0.25, 0.40, 0.6, 0.6),  # sh zh ch j
    "r": (0.20, 0.40, 0.5, 0.2),
    "w": (0.10, 0.25, 1.0, 0.0),
    "j": (0.15, 0.70, 0.0, 0.5),
    "velar": (0.30, 0.55, 0.0, 0.3),         # k g ng h
    "i": (0.15, 0.85, 0.0, 0.8),
    "I": (0.20, 0.75, 0.0, 0.7),
    "e": (0.35, 0.75, 0.0, 0.6),
    "a": (0.80, 0.65, 0.0, 0.3),
    "V": (0.50, 0.60, 0.0, 0.2),
    "@": (0.30, 0.55, 0.1, 0.2),
    "O": (0.60, 0.45, 0.6, 0.0),
    "o": (0.40, 0.35, 0.8, 0.0),
    "u": (0.20, 0.30, 1.0, 0.0),
}

# eSpeak NG phoneme mnemonics (stress marks and variant digits stripped) -> viseme(s)
_PHONEMES = {
    **{p: "bilabial" for p in ("p", "b", "m")},
    **{p: "labiodental" for p in ("f", "v")},
    **{p: "dental" for p in ("T", "D")},
    **{p: "alveolar" for p in ("t", "d", "n", "l", "s", "z", "t#", "d#", "n-", "l-")},
    **{p: "postalveolar" for p in ("S", "Z", "tS", "dZ")},
    **{p: "velar" for p in ("k", "g", "N", "h", "x")},
    "r": "r", "r-": "r", "w": "w", "j": "j",
    **{p: "i" for p in ("i", "i:", "i@")}, "I": "I", "I#": "I", "I2": "I",
    **{p: "e" for p in ("e", "E", "e@", "E2")}, **{p: "a" for p in ("a", "A:", "A@", "a#", "A", "aa")},
    "V": "V", **{p: "@" for p in ("@", "3", "3:", "@L", "@r", "@5")},
    **{p: "O" for p in ("O", "O:", "0", "O@")}, **{p: "o" for p in ("o", "o@")},
    **{p: "u" for p in ("u", "u:", "U", "U@")},
    # diphthongs: first half, second half
    "aI": ("a", "I"), "aU": ("a", "u"), "oU": ("o", "u"), "eI": ("e", "I"), "OI": ("O", "I"),
    "aI@": ("a", "@"), "aU@": ("a", "@"), "I@": ("I", "@"), "e@": ("e", "@"), "U@": ("u", "@"),
}


def viseme_of(phoneme: str):
    """The viseme name (or (first, second) for a diphthong) of an eSpeak phoneme mnemonic."""
    name = phoneme.lstrip("',%=")
    for cand in (name, name.rstrip("0123456789"), name[:2], name[:1]):
        if cand in _PHONEMES:
            return _PHONEMES[cand]
    return "@"  # an unknown vowel-like sound: a neutral half-open mouth


def viseme_track(phonemes, num_frames: int, fps: float = 25.0, lag_s: float = 0.04) -> np.ndarray:
    """(num_frames, 4) mouth parameters (opening, width, rounding, teeth) for one utterance.

    The target at frame f is the viseme of the phoneme sounding at its centre (f + 0.5) / fps
    ("rest" in silence); the shape follows it with a first-order lag of time constant lag_s,
    evaluated on a 1 ms grid so that short phonemes still pull the mouth."""
    dt = 1e-3
    n_fine = int(math.ceil(num_frames / fps / dt))
    t = (np.arange(n_fine) + 0.5) * dt
    target = np.tile(np.asarray(VISEMES["rest"], np.float64), (n_fine, 1))
    for name, a, b in phonemes:
        v = viseme_of(name)
        sel = (t >= a) & (t < b)
        if isinstance(v, tuple):
            mid = (a + b) / 2
            target[sel & (t < mid)] = VISEMES[v[0]]
            target[sel & (t >= mid)] = VISEMES[v[1]]
        else:
            target[sel] = VISEMES[v]
    alpha = 1.0 - math.exp(-dt / lag_s) if lag_s > 0 else 1.0
    state = np.asarray(VISEMES["rest"], np.float64)
    out = np.empty_like(target)
    for i in range(n_fine):
        state = state + alpha * (target[i] - state)
        out[i] = state
    centres = np.minimum(((np.arange(num_frames) + 0.5) / fps / dt).astype(int), n_fine - 1)
    return out[centres]


def speaker_look(voice: str, variant: str | None) -> dict:
    """Appearance drawn from the voice's name (stable across runs and machines)."""
    h = int(hashlib.sha256(f"{voice}+{variant}".encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(h)
    return {"skin": rng.uniform(0.45, 0.8), "lip": rng.uniform(0.15, 0.4), "inside": rng.uniform(0.0, 0.1),
            "teeth": rng.uniform(0.85, 1.0), "scale": rng.uniform(0.8, 1.2), "dx": rng.uniform(-0.08, 0.08),
            "dy": rng.uniform(-0.06, 0.1), "lip_width": rng.uniform(0.8, 1.3), "shade": rng.uniform(-0.15, 0.15)}


def render_mouth(track: np.ndarray, look: dict, size: int = 32, *, seed: int = 0, noise=(0.01, 0.04)) -> np.ndarray:
    """(F, size, size) float32 frames in [0, 1] drawing the mouth shapes of `track` (soft edges)."""
    rng = np.random.default_rng([int(seed) & 0x7FFFFFFF, 2027])
    f = len(track)
    yy, xx = np.meshgrid((np.arange(size) + 0.5) / size - 0.5, (np.arange(size) + 0.5) / size - 0.5, indexing="ij")
    # head motion: a slow random walk of the mouth centre
    walk = np.cumsum(rng.normal(0, 0.004, size=(f, 2)), axis=0)
    sigma = rng.uniform(*noise)
    soft = size / 1.5  # edge sharpness (about one pixel)
    frames = np.empty((f, size, size), np.float32)
    base = look["skin"] + look["shade"] * yy  # lighting gradient over the face
    for i, (op, wd, rd, th) in enumerate(track):
        cx, cy = look["dx"] + walk[i, 0], look["dy"] + walk[i, 1]
        s = look["scale"]
        half_w = s * (0.12 + 0.22 * wd) * (1.0 - 0.3 * rd)
        half_h = s * (0.01 + 0.16 * op)
        lip = s * 0.035 * look["lip_width"] * (1.0 + 0.8 * rd)
        u, v = (xx - cx), (yy - cy)
        r_in = np.sqrt((u / half_w) ** 2 + (v / half_h) ** 2)
        r_out = np.sqrt((u / (half_w + lip)) ** 2 + (v / (half_h + lip)) ** 2)
        lips = 1 / (1 + np.exp(-(1 - r_out) * soft * (half_w + lip)))
        inside = 1 / (1 + np.exp(-(1 - r_in) * soft * min(half_w, half_h + 0.02)))
        img = base * (1 - lips) + look["lip"] * lips
        teeth = th * np.clip(1 - (v + half_h) / (0.6 * half_h + 1e-6), 0, 1) * (op > 0.08)
        mouth = look["inside"] * (1 - teeth) + look["teeth"] * teeth
        img = img * (1 - inside) + mouth * inside
        frames[i] = img + rng.normal(0, sigma, size=img.shape)
    return np.clip(frames, 0.0, 1.0)


def render_video(ds: AudioDataset, *, fps: float = 25.0, size: int = 32, lag_s: float = 0.04) -> np.ndarray:
    """(N, F, size, size) uint8 video of every item of an audio dataset with phoneme times."""
    num_frames = int(math.ceil(ds.input_length / ds.sample_rate * fps - 1e-9))
    out = np.empty((len(ds), num_frames, size, size), np.uint8)
    for i, it in enumerate(ds.items):
        track = viseme_track(it.get("phonemes", []), num_frames, fps, lag_s)
        look = speaker_look(it.get("voice", ""), it.get("variant"))
        out[i] = np.round(render_mouth(track, look, size, seed=it.get("seed", i)) * 255).astype(np.uint8)
    return out


@dataclass
class AVDataset(AudioDataset):
    """An `AudioDataset` with a video track per clip: `video` (N, F, H, W) float32 in [0, 1]."""

    video: torch.Tensor | None = None
    fps: float = 25.0

    def __post_init__(self):
        super().__post_init__()
        if self.video is None or self.video.dim() != 4 or len(self.video) != len(self.waves):
            shape = None if self.video is None else tuple(self.video.shape)
            raise ValueError(f"AVDataset {self.name!r}: video must be (N, F, H, W) with N = {len(self.waves)}, got {shape}")

    def __getitem__(self, i):
        return {"audio": self.waves[i], "video": self.video[i]}, self.labels[i]

    def inputs(self, index=None) -> dict:
        """Model input dict {"audio": (n, T), "video": (n, F, H, W)} of all clips or of `index`."""
        if index is None:
            return {"audio": self.waves, "video": self.video}
        index = torch.as_tensor(index, dtype=torch.long)
        return {"audio": self.waves[index], "video": self.video[index]}

    def subset(self, index) -> "AVDataset":
        index = torch.as_tensor(index, dtype=torch.long)
        a = super().subset(index)
        return AVDataset(a.waves, a.labels, a.classes, a.sample_rate, a.items, a.name, self.video[index], self.fps)


def _with_video(ds: AudioDataset, name: str, audio_params: dict, split: str, *, fps: float, size: int,
                lag_s: float) -> AVDataset:
    from .cache import cache_dir, cache_key

    if size < 16 or fps <= 0 or lag_s < 0:
        raise ValueError(f"{name}: need size >= 16, fps > 0 and lag_s >= 0 (got {size}, {fps}, {lag_s})")
    params = {"audio": audio_params, "input_length": ds.input_length, "fps": fps, "size": size, "lag_s": lag_s}
    folder = cache_dir() / name / cache_key(name, VERSION, params)
    path = folder / f"{split}.npy"
    if path.exists():
        video = np.load(path)
    else:
        video = render_video(ds, fps=fps, size=size, lag_s=lag_s)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "params.json").write_text(json.dumps(params, sort_keys=True, default=str))
        tmp = folder / f".{split}.{os.getpid()}.tmp.npy"
        np.save(tmp, video)
        os.replace(tmp, path)
    v = torch.from_numpy(video.astype(np.float32) / 255.0)
    return AVDataset(ds.waves, ds.labels, ds.classes, ds.sample_rate, ds.items, ds.name.replace("synth-", "synth-av-"),
                     v, float(fps))


def load_synth_av_commands(path=None, split: str = "train", *, per_word: int = 100, noise: float = 0.0,
                           reverb: float = 0.0, fps: float = 25.0, size: int = 32, lag_s: float = 0.04,
                           **kw) -> AVDataset:
    """synth-commands (defaults here: 100 clean utterances per word) with a talking mouth."""
    from .commands import load_synth_commands
    if path:
        raise ValueError("synth-av-commands is built in and takes no folder")
    ds = load_synth_commands(None, split, per_word=per_word, noise=noise, reverb=reverb, **kw)
    params = {"set": "synth-commands", "per_word": per_word, "noise": noise, "reverb": reverb, **kw}
    return _with_video(ds, "synth-av-commands", params, split, fps=float(fps), size=int(size), lag_s=float(lag_s))


def load_synth_av_phrases(path=None, split: str = "train", *, n: int = 600, noise: float = 0.0, reverb: float = 0.0,
                          fps: float = 25.0, size: int = 32, lag_s: float = 0.04, **kw) -> AVDataset:
    """synth-phrases (defaults here: 600 clean utterances) with a talking mouth."""
    from .phrases import load_synth_phrases
    if path:
        raise ValueError("synth-av-phrases is built in and takes no folder")
    ds = load_synth_phrases(None, split, n=n, noise=noise, reverb=reverb, **kw)
    params = {"set": "synth-phrases", "n": n, "noise": noise, "reverb": reverb, **kw}
    return _with_video(ds, "synth-av-phrases", params, split, fps=float(fps), size=int(size), lag_s=float(lag_s))


__all__ = ["AVDataset", "VISEMES", "viseme_of", "viseme_track", "speaker_look", "render_mouth", "render_video",
           "load_synth_av_commands", "load_synth_av_phrases"]
