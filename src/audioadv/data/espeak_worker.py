"""eSpeak NG through ctypes, and a fork server that gives every utterance a fresh engine.

eSpeak NG keeps synthesis state in C globals that survive from one utterance to the next
(pitch-flutter phase, glottal wave phase, sample counters, Klatt filter memories) and that
`espeak_Initialize` does not reset, so the same text and parameters give different samples
depending on what was spoken before. To make synthesis a pure function of its arguments, a
small worker process (this file run as a script; stdlib and ctypes only) initialises eSpeak once
and never speaks itself: for each request it forks a child, which inherits the pristine
just-initialised state, renders the one utterance, writes it to stdout and exits.

Protocol (stdin/stdout of the worker): one JSON request per line ->
a JSON header line `{"ok": true, "rate": R, "n": N, "events": [[type, text_pos, length, sample, id_hex], ...]}`
followed by N little-endian int16 samples; or `{"ok": false, "error": "..."}`.
"""
from __future__ import annotations

import ctypes
import json
import os
import sys

AUDIO_OUTPUT_SYNCHRONOUS = 2
INIT_PHONEME_EVENTS, INIT_DONT_EXIT = 0x0001, 0x8000
CHARS_UTF8 = 1
EV_LIST_TERMINATED = 0
P_RATE, P_VOLUME, P_PITCH, P_RANGE, P_WORDGAP = 1, 2, 3, 4, 7


class Event(ctypes.Structure):
    """espeak_EVENT from speak_lib.h."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(Event))


class Engine:
    """The eSpeak NG library of this process, initialised for synchronous output with phoneme events."""

    def __init__(self, library_path: str, data_path: str):
        lib = ctypes.CDLL(library_path)
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetPhonemeEvents.argtypes = [ctypes.c_int, ctypes.c_int]
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), INIT_PHONEME_EVENTS | INIT_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed (returned {rate}) with data folder {data_path}")
        self.lib, self.rate = lib, rate
        self.chunks: list[bytes] = []
        self.events: list[list] = []
        self._cb = CALLBACK(self._collect)  # keep a reference: C holds only the pointer
        lib.espeak_SetSynthCallback(self._cb)

    def _collect(self, wav, n, events):
        if n > 0 and wav:
            self.chunks.append(ctypes.string_at(wav, 2 * n))
        i = 0
        while events[i].type != EV_LIST_TERMINATED:
            e = events[i]
            self.events.append([e.type, e.text_position, e.length, e.sample, bytes(e.id).hex()])
            i += 1
        return 0

    def render(self, req: dict) -> tuple[bytes, list]:
        """int16 PCM bytes at self.rate and the events for one request dict."""
        lib = self.lib
        if lib.espeak_SetVoiceByName(req["voice_name"].encode("utf-8")) != 0:
            raise ValueError(f"eSpeak NG has no voice {req['voice_name']!r}")
        for p, key in ((P_RATE, "rate"), (P_VOLUME, "amplitude"), (P_PITCH, "pitch"), (P_RANGE, "pitch_range"),
                       (P_WORDGAP, "word_gap")):
            lib.espeak_SetParameter(p, int(req[key]), 0)
        lib.espeak_ng_SetPhonemeEvents(1, int(bool(req.get("ipa", False))))
        lib.espeak_ng_SetRandSeed(int(req.get("seed", 0)) & 0x7FFFFFFF)
        data = req["text"].encode("utf-8") + b"\0"
        self.chunks, self.events = [], []
        status = lib.espeak_Synth(data, len(data), 0, 0, 0, CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed with status {status}")
        return b"".join(self.chunks), self.events


def _serve(library_path: str, data_path: str) -> None:
    engine = Engine(library_path, data_path)
    out = sys.stdout.buffer
    out.write((json.dumps({"ok": True, "ready": True, "rate": engine.rate}) + "\n").encode())
    out.flush()
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: pristine engine state inherited from the parent
            os.close(r)
            try:
                try:
                    pcm, events = engine.render(json.loads(line))
                    head = {"ok": True, "rate": engine.rate, "n": len(pcm) // 2, "events": events}
                except Exception as exc:  # reported to the caller, never raised here
                    pcm, head = b"", {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                with os.fdopen(w, "wb") as f:
                    f.write((json.dumps(head) + "\n").encode() + pcm)
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            payload = f.read()
        _, status = os.waitpid(pid, 0)
        if status != 0 or not payload:
            payload = (json.dumps({"ok": False, "error": f"synthesis process died (wait status {status})"}) + "\n").encode()
        out.write(payload)
        out.flush()


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2])
