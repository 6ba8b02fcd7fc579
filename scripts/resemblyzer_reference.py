"""Write tests/data/resemblyzer_reference.json: utterance embeddings computed by the `resemblyzer`
package itself (VoiceEncoder.embed_utterance after normalize_volume(-30 dBFS, increase_only)),
which tests/test_speaker.py compares with audioadv.models.speaker.

resemblyzer's audio module needs librosa and webrtcvad, which audioadv's environment does not
install; run this with any Python that has them, e.g.
    python3 -m venv /tmp/rzref && /tmp/rzref/bin/pip install resemblyzer librosa webrtcvad-wheels soundfile
    /tmp/rzref/bin/python scripts/resemblyzer_reference.py [SHARED_DATA_DIR]
"""
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "resemblyzer_reference.json"
FILES = ["librispeech-10spk/1688/1688-142285-0000.flac", "librispeech-10spk/533/533-1066-0009.flac"]


def synthetic_voice(seconds: float, sr: int = 16000) -> np.ndarray:
    """A deterministic voiced sound (gliding 120 Hz harmonics, 3 Hz syllable envelope); same formula in the test."""
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 0.5 * t)) / sr
    env = (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2
    return (0.05 * env * sum(np.sin(k * phase) / k for k in range(1, 11))).astype(np.float32)


def main() -> None:
    import librosa
    import resemblyzer
    from resemblyzer import VoiceEncoder, normalize_volume

    enc = VoiceEncoder("cpu", verbose=False)
    embed = lambda w: enc.embed_utterance(normalize_volume(w, -30, increase_only=True).astype(np.float32))
    ref = {"resemblyzer": getattr(resemblyzer, "__version__", "0.1.4"), "librosa": librosa.__version__,
           "synthetic": {str(s): [round(float(v), 8) for v in embed(synthetic_voice(s))] for s in (1.0, 3.0)},
           "files": {}}
    shared = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data"
    for rel in FILES:
        wav, sr = sf.read(shared / rel, dtype="float32")
        assert sr == 16000, f"{rel}: {sr} Hz"
        ref["files"][rel] = [round(float(v), 8) for v in embed(wav)]
    OUT.write_text(json.dumps(ref, indent=0))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
