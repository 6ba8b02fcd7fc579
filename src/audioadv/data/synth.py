"""Synthetic speech from eSpeak NG (the `espeakng-loader` wheel), driven through ctypes.

`synthesize(text, voice="en-us", variant="m3", ...)` returns an `Utterance`: a float32 (T,)
waveform at `sample_rate` (eSpeak renders at 22050 Hz; we resample with `audioadv.io.resample`)
plus the phoneme and word events eSpeak reports, as `(name, start_s, end_s)` triples on the
returned waveform's time axis.

Voices are an eSpeak language voice (`english_voices()`: en-us, en, en-gb-x-rp, en-029, ...)
combined with a variant file from `espeak-ng-data/voices/!v` (`variants()`: m1-m8, f1-f5, croak,
whisper, klatt, and the contributed ones). `draw_params(rng, voices)` draws rate, pitch, pitch
range, amplitude, voice and optional degradations (additive noise at an SNR, a synthetic room
impulse response) for one utterance; `synthesize(text, **params)` renders them.

Determinism: eSpeak keeps its state in C globals, part of which (pitch flutter, glottal phase,
filter memories) carries over from one utterance to the next. Synthesis therefore runs in a
fork server (`espeak_worker.py`): each utterance is rendered by a freshly forked copy of a
just-initialised engine, with the voice and every parameter set and eSpeak's random generator
seeded from `seed`; calls are serialised by a lock. Same arguments, same samples, whatever was
spoken before.
"""
from __future__ import annotations

import atexit
import json
import os
import sys
import threading
from dataclasses import dataclass, field, asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

ESPEAK_RATE = 22050  # eSpeak NG's native output rate (the engine uses the rate espeak_Initialize reports)

# Variant files that are deliberately non-human (robots, demons) or whose file name has a space;
# always left out of the default voice pool (usable by name). Others are screened by
# `humanlike_variant` from their settings.
NOVELTY_VARIANTS = frozenset({
    "Demonic", "UniRobot", "anikaRobot", "Mr serious",
    "robosoft", "robosoft2", "robosoft3", "robosoft4", "robosoft5", "robosoft6", "robosoft7", "robosoft8",
})
# Language voices that read Latin-script English text as English (en-Shaw expects Shavian script).
ENGLISH_VOICES = ("en-us", "en", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd", "en-us-nyc")

# espeak event types (speak_lib.h)
_EV_WORD, _EV_END, _EV_MSG_TERMINATED, _EV_PHONEME = 1, 5, 6, 7


class SynthError(RuntimeError):
    """eSpeak NG could not be loaded or refused a voice/text; the message says which."""


class _Engine:
    """Client of the eSpeak fork server (`espeak_worker.py`): every utterance gets a fresh engine.

    Where `os.fork` is missing (Windows) eSpeak runs in this process instead, and the samples
    then depend on what was spoken before (a warning says so).
    """

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise SynthError("synthetic speech needs the 'espeakng-loader' package (pip install espeakng-loader)") from exc
        self.library_path = espeakng_loader.get_library_path()
        self.data_path = espeakng_loader.get_data_path()
        self.lock = threading.Lock()
        self.proc = None
        self.local = None
        self.rate = ESPEAK_RATE
        if hasattr(os, "fork"):
            self._start()
        else:  # pragma: no cover - non-POSIX
            import warnings
            from .espeak_worker import Engine
            warnings.warn("os.fork is unavailable: eSpeak runs in-process and synthesis is not bit-exact reproducible")
            self.local = Engine(self.library_path, self.data_path)
            self.rate = self.local.rate

    def _start(self):
        import subprocess
        worker = Path(__file__).with_name("espeak_worker.py")
        self.proc = subprocess.Popen([sys.executable, str(worker), self.library_path, self.data_path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        head = self._read_header()
        if not head.get("ready"):
            raise SynthError(f"eSpeak worker failed to start: {head.get('error', head)}")
        self.rate = int(head["rate"])
        self.pid = os.getpid()
        atexit.register(self.close)

    def _read_header(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.poll()
            raise SynthError(f"eSpeak worker ({self.library_path}) exited unexpectedly (exit code {code})")
        return json.loads(line)

    def close(self):
        if self.proc is not None and self.proc.poll() is None and getattr(self, "pid", None) == os.getpid():
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except Exception:  # pragma: no cover
                self.proc.kill()

    def render(self, req: dict) -> tuple[np.ndarray, list]:
        """int16 samples at self.rate and the event list [(type, text_pos, length, sample, id_bytes)]."""
        with self.lock:
            if self.local is not None:  # pragma: no cover - non-POSIX
                try:
                    pcm, events = self.local.render(req)
                except Exception as exc:
                    raise SynthError(f"{exc} (text {req['text']!r})") from None
            else:
                if self.pid != os.getpid() or self.proc.poll() is not None:
                    self._start()  # a forked copy of this process (e.g. DataLoader worker) or a dead worker
                try:
                    self.proc.stdin.write((json.dumps(req) + "\n").encode())
                    self.proc.stdin.flush()
                    head = self._read_header()
                    if head["ok"]:
                        pcm = self.proc.stdout.read(2 * head["n"])
                        if len(pcm) != 2 * head["n"]:
                            raise SynthError(f"eSpeak worker sent {len(pcm)} of {2 * head['n']} bytes")
                except BaseException:  # interrupted mid-exchange: the stream is out of step, restart next time
                    self.proc.kill()
                    self.proc.wait()
                    raise
                if not head["ok"]:
                    raise SynthError(f"eSpeak NG: {head['error']} (text {req['text']!r}, voice {req['voice_name']!r})")
                events = head["events"]
        wav = np.frombuffer(pcm, dtype="<i2").astype(np.int16)
        return wav, [(t, pos, ln, smp, bytes.fromhex(i)) for t, pos, ln, smp, i in events]


_ENGINE: _Engine | None = None
_ENGINE_LOCK = threading.Lock()


_THREAD = threading.local()


def engine() -> _Engine:
    """The engine bound to the calling thread (`bind_engine`), else the shared one."""
    global _ENGINE
    private = getattr(_THREAD, "engine", None)
    if private is not None:
        return private
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = _Engine()
        return _ENGINE


_POOL: list[_Engine] = []


def engine_pool(n: int) -> list[_Engine]:
    """n independent eSpeak fork servers, created once and reused by later calls."""
    with _ENGINE_LOCK:
        while len(_POOL) < n:
            _POOL.append(_Engine())
        return _POOL[:n]


def bind_engine(eng: _Engine | None) -> None:
    """Make the calling thread synthesise with `eng` (None: back to the shared engine).

    Lets a thread pool synthesise in parallel, one engine per thread; results do not depend on
    which engine renders them.
    """
    _THREAD.engine = eng


def data_path() -> Path:
    import espeakng_loader
    return Path(espeakng_loader.get_data_path())


def english_voices() -> list[str]:
    """eSpeak language voices used for English (those present in this eSpeak data folder)."""
    present = {p.name.lower() for p in (data_path() / "lang" / "gmw").iterdir()}
    return [v for v in ENGLISH_VOICES if v in present]


def variant_settings(name: str) -> dict:
    """The settings of a variant file that decide whether it sounds like a person.

    Returns {"formants": {k: (freq %, strength %, width %)}, "echo": (delay ms, amplitude %) or None,
    "pitch": (base Hz, max Hz) or None}.
    """
    path = data_path() / "voices" / "!v" / name
    if not path.is_file():
        raise SynthError(f"no eSpeak variant {name!r} (no file {path})")
    out: dict = {"formants": {}, "echo": None, "pitch": None}
    for line in path.read_text(errors="replace").splitlines():
        f = line.split("//")[0].split()
        if not f or f[0].startswith("#"):
            continue
        try:
            if f[0] == "formant" and len(f) >= 5:
                out["formants"][int(f[1])] = tuple(int(x) for x in f[2:5])
            elif f[0] == "echo" and len(f) >= 3:
                out["echo"] = (int(f[1]), int(f[2]))
            elif f[0] == "pitch" and len(f) >= 3:
                out["pitch"] = (int(f[1]), int(f[2]))
        except ValueError:
            continue
    return out


def humanlike_variant(name: str) -> bool:
    """Screen for the default voice pool: a variant passes unless it is in NOVELTY_VARIANTS, sets a
    loud echo (amplitude > 50 %), scales a vowel formant F1-F3 outside 55-145 % of the language
    voice's frequency, or weakens one below 30 % strength (which removes vowels' identity).
    """
    if name in NOVELTY_VARIANTS:
        return False
    st = variant_settings(name)
    if st["echo"] and st["echo"][1] > 50:
        return False
    for k in (1, 2, 3):
        if k in st["formants"]:
            freq, strength = st["formants"][k][:2]
            if not 55 <= freq <= 145 or strength < 30:
                return False
    return True


VARIANT_SETS = ("humanlike", "broad", "all")


def variants(kind: str = "humanlike") -> list[str]:
    """Variant files in `espeak-ng-data/voices/!v`, sorted.

    kind="humanlike" (default): those passing `humanlike_variant`; "broad": every file except
    NOVELTY_VARIANTS (keeps heavy echo and extreme formant shifts); "all": every file.
    """
    if kind is True or kind == "all":
        keep = lambda n: True  # noqa: E731
    elif kind == "broad":
        keep = lambda n: n not in NOVELTY_VARIANTS  # noqa: E731
    elif kind == "humanlike" or kind is False:
        keep = humanlike_variant
    else:
        raise ValueError(f"variant set must be one of {', '.join(VARIANT_SETS)}, not {kind!r}")
    folder = data_path() / "voices" / "!v"
    return [n for n in sorted(p.name for p in folder.iterdir() if p.is_file()) if keep(n)]


def voice_pool(voices: Sequence[str] | None = None, variant_names: Sequence[str] | str | None = None) -> list[tuple[str, str]]:
    """All (language voice, variant) combinations, the unit that dataset splits keep apart.

    `variant_names` is a list of variant files or the name of a set for `variants()`.
    """
    if variant_names is None or isinstance(variant_names, str):
        variant_names = variants(variant_names or "humanlike")
    return [(v, m) for v in (voices or english_voices()) for m in variant_names]


@dataclass
class Utterance:
    """One synthesised utterance. Event times are in seconds on `wav`'s time axis."""

    wav: torch.Tensor
    sample_rate: int
    text: str
    phonemes: list[tuple[str, float, float]] = field(default_factory=list)
    words: list[tuple[str, float, float]] = field(default_factory=list)
    params: dict = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.wav.shape[-1] / self.sample_rate


@dataclass(frozen=True)
class SynthParams:
    """Everything that determines one utterance besides its text (all JSON-serialisable)."""

    voice: str = "en-us"
    variant: str | None = None
    rate: int = 175          # words per minute (eSpeak: 80-450)
    pitch: int = 50          # base pitch, 0-100
    pitch_range: int = 50    # intonation range, 0-100
    amplitude: int = 100     # eSpeak volume, 0-200
    word_gap: int = 0        # extra pause between words, units of 10 ms
    snr_db: float | None = None   # additive noise at this SNR (dB); None = clean
    noise: str = "white"          # "white", "pink" or "brown"
    rt60: float | None = None     # synthetic room impulse response with this RT60 (s); None = dry
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def draw_params(rng: np.random.Generator, voices: Sequence[tuple[str, str]], *,
                rate=(130, 210), pitch=(25, 75), pitch_range=(25, 85), amplitude=(60, 130), word_gap=(0, 0),
                noise_prob: float = 0.0, snr_db=(10.0, 40.0), rir_prob: float = 0.0, rt60=(0.1, 0.6)) -> SynthParams:
    """Draw one utterance's parameters: a voice from `voices` and uniform ranges for the rest."""
    if not voices:
        raise ValueError("draw_params: the voice pool is empty")
    v, m = voices[int(rng.integers(len(voices)))]
    uni = lambda r: int(rng.integers(r[0], r[1] + 1))  # noqa: E731
    p = dict(voice=v, variant=m, rate=uni(rate), pitch=uni(pitch), pitch_range=uni(pitch_range),
             amplitude=uni(amplitude), word_gap=uni(word_gap))
    noisy, reverb = rng.random() < noise_prob, rng.random() < rir_prob
    p["snr_db"] = round(float(rng.uniform(*snr_db)), 2) if noisy else None
    p["noise"] = str(rng.choice(["white", "pink", "brown"])) if noisy else "white"
    p["rt60"] = round(float(rng.uniform(*rt60)), 3) if reverb else None
    p["seed"] = int(rng.integers(2**31 - 1))
    return SynthParams(**p)


def colored_noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance white, pink (1/f) or brown (1/f^2) Gaussian noise of n samples."""
    white = rng.standard_normal(n)
    if kind == "white" or n < 2:
        out = white
    elif kind in ("pink", "brown"):
        spec = np.fft.rfft(white)
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        spec /= np.sqrt(f) if kind == "pink" else f
        out = np.fft.irfft(spec, n)
    else:
        raise ValueError(f"noise kind must be white, pink or brown, not {kind!r}")
    out = out - out.mean()
    return (out / (out.std() + 1e-12)).astype(np.float32)


def room_impulse_response(rt60: float, sample_rate: int, rng: np.random.Generator, *, direct_ratio: float = 1.0) -> np.ndarray:
    """A simple synthetic RIR: a unit direct path followed by exponentially decaying Gaussian noise.

    The decay reaches -60 dB after `rt60` seconds (envelope exp(-6.908 t / rt60)); the response is
    truncated there. `direct_ratio` scales the tail's energy relative to the direct path.
    """
    if rt60 <= 0:
        raise ValueError(f"rt60 must be positive, got {rt60}")
    n = max(2, int(rt60 * sample_rate))
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.908 * t / rt60)
    tail[0] = 0.0
    tail *= np.sqrt(direct_ratio / (np.sum(tail ** 2) + 1e-12))
    h = tail
    h[0] = 1.0
    return h.astype(np.float32)


def _events_to_segments(events, n_raw: int, text: str, scale: float):
    """Phoneme and word (name, start_s, end_s) lists from eSpeak events (sample positions).

    A phoneme lasts until the next phoneme event (pauses `_`, `_:` are dropped: the gaps show
    them). A word spans the phonemes that follow its WORD event in the event stream. eSpeak may
    merge a clitic into the previous word ("on the"); the word's text then covers both.
    """
    ends = [s for (typ, _, _, s, _) in events if typ in (_EV_END, _EV_MSG_TERMINATED)]
    last = min(max(ends), n_raw) if ends else n_raw
    stream = [(typ, pos, length, s, e_id) for (typ, pos, length, s, e_id) in events if typ in (_EV_PHONEME, _EV_WORD)]
    pho_idx = [k for k, ev in enumerate(stream) if ev[0] == _EV_PHONEME]
    phon_at: dict[int, tuple[str, float, float]] = {}
    for j, k in enumerate(pho_idx):
        s = stream[k][3]
        end = stream[pho_idx[j + 1]][3] if j + 1 < len(pho_idx) else last
        name = stream[k][4].split(b"\0")[0].decode("utf-8", "replace")
        if name.startswith("_") or end <= s:
            continue
        phon_at[k] = (name, s * scale, end * scale)
    word_idx = [k for k, ev in enumerate(stream) if ev[0] == _EV_WORD]
    words = []
    for j, k in enumerate(word_idx):
        nxt = word_idx[j + 1] if j + 1 < len(word_idx) else len(stream)
        _, pos, length, s, _ = stream[k]
        inside = [phon_at[i] for i in range(k + 1, nxt) if i in phon_at]
        if j + 1 < len(word_idx) and stream[nxt][1] > pos:
            word = text[pos - 1:stream[nxt][1] - 1]
        else:
            word = text[pos - 1:pos - 1 + length]
        word = word.strip().strip(",.!?;:")
        if inside:
            words.append((word, inside[0][1], inside[-1][2]))
        elif word:
            words.append((word, s * scale, s * scale))
    return [phon_at[k] for k in sorted(phon_at)], words


def synthesize(text: str, voice: str = "en-us", variant: str | None = None, *, rate: int = 175, pitch: int = 50,
               pitch_range: int = 50, amplitude: int = 100, word_gap: int = 0, sample_rate: int = 16000,
               snr_db: float | None = None, noise: str = "white", rt60: float | None = None, seed: int = 0,
               ipa: bool = False) -> Utterance:
    """Speak `text` with eSpeak NG and return an `Utterance` at `sample_rate`.

    Order of processing: eSpeak (22050 Hz, int16) -> float in [-1, 1] -> polyphase resampling to
    `sample_rate` -> optional reverberation (convolution with `room_impulse_response(rt60)`, scaled
    back to the dry signal's RMS) -> optional additive `noise` scaled so that
    SNR = 20 log10(rms(speech) / rms(noise)) = `snr_db` -> peak limited to 0.99 if it exceeds full
    scale. `seed` drives eSpeak's own random generator, the RIR and the noise.
    """
    from ..io import resample
    from ..signal import rms

    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"synthesize: text must be a non-empty string, got {text!r}")
    eng = engine()
    name = voice if not variant else f"{voice}+{variant}"
    raw, events = eng.render(dict(text=text, voice_name=name, rate=rate, pitch=pitch, pitch_range=pitch_range,
                                  amplitude=amplitude, word_gap=word_gap, seed=seed, ipa=ipa))
    if raw.size == 0:
        raise SynthError(f"eSpeak NG produced no audio for text {text!r} with voice {name!r}")
    phon, words = _events_to_segments(events, raw.size, text, 1.0 / eng.rate)
    wav = resample(raw.astype(np.float32) / 32768.0, eng.rate, sample_rate).astype(np.float32)
    rng = np.random.default_rng([int(seed) & 0x7FFFFFFF, 7919])
    if rt60:
        dry_rms = float(rms(torch.from_numpy(wav)))
        wav = _fftconv(wav, room_impulse_response(rt60, sample_rate, rng))
        wav *= dry_rms / (float(rms(torch.from_numpy(wav))) + 1e-12)
    if snr_db is not None:
        n = colored_noise(len(wav), noise, rng)
        wav = wav + n * float(rms(torch.from_numpy(wav))) / (10 ** (snr_db / 20))
    peak = float(np.abs(wav).max())
    if peak > 0.99:
        wav = wav * (0.99 / peak)
    params = SynthParams(voice=voice, variant=variant, rate=rate, pitch=pitch, pitch_range=pitch_range,
                         amplitude=amplitude, word_gap=word_gap, snr_db=snr_db, noise=noise, rt60=rt60,
                         seed=seed).to_dict()
    return Utterance(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)), sample_rate, text,
                     phon, words, params)


def _fftconv(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    from scipy.signal import fftconvolve
    return fftconvolve(x, h)[: len(x)].astype(np.float32)


def synthesize_params(text: str, params: SynthParams, *, sample_rate: int = 16000, ipa: bool = False) -> Utterance:
    """`synthesize` with a `SynthParams` (as drawn by `draw_params`)."""
    return synthesize(text, sample_rate=sample_rate, ipa=ipa, **params.to_dict())


__all__ = ["engine_pool", "bind_engine", "Utterance", "SynthParams", "SynthError", "synthesize", "synthesize_params", "draw_params",
           "english_voices", "variants", "voice_pool", "room_impulse_response", "colored_noise",
           "NOVELTY_VARIANTS", "ESPEAK_RATE", "variant_settings", "humanlike_variant", "VARIANT_SETS"]
