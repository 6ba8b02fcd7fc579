"""The resemblyzer GE2E port (audioadv.models.speaker): embeddings match resemblyzer's own, the
framing rule, the split at three representations, and a linear head that learns."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from audioadv.models.speaker import (ResemblyzerSpeaker, VolumeNorm, fit_head, partial_slices,
                                    resemblyzer_weights_path)

REF = Path(__file__).parent / "data" / "resemblyzer_reference.json"





def synthetic_voice(seconds: float, sr: int = 16000) -> np.ndarray:
    """A voiced test signal: a harmonic tone whose pitch glides around 120 Hz."""
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 0.5 * t)) / sr
    env = (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2
    return (0.05 * env * sum(np.sin(k * phase) / k for k in range(1, 11))).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    try:
        resemblyzer_weights_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    torch.manual_seed(0)
    return ResemblyzerSpeaker(num_classes=3, input_length=16000).eval()


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a.flatten(), torch.as_tensor(b).flatten(), dim=0))


def test_partial_slices_rule():
    # resemblyzer: 160-frame partials every round(16000 / 1.3 / 160) = 77 frames, last kept at >= 75 % coverage.
    assert partial_slices(16000) == [(0, 160)]
    assert partial_slices(25000) == [(0, 160)]
    assert partial_slices(48000) == [(0, 160), (77, 237), (154, 314)]
    assert partial_slices(44000) == [(0, 160), (77, 237), (154, 314)]   # third covers 75.6 %: kept
    assert partial_slices(40000) == [(0, 160), (77, 237)]     # third covers 60 %: dropped


def test_volume_norm_matches_resemblyzer_rule():
    quiet = torch.full((1, 1000), 0.001)
    loud = torch.full((1, 1000), 0.5)
    assert VolumeNorm()(quiet).pow(2).mean().sqrt().item() == pytest.approx(10 ** (-30 / 20), rel=1e-5)
    assert torch.equal(VolumeNorm()(loud), loud)                # increase only


def test_embeddings_match_stored_resemblyzer_reference(model):
    ref = json.loads(REF.read_text())
    for seconds, expected in ref["synthetic"].items():
        with torch.no_grad():
            emb = model.embed_utterance(torch.from_numpy(synthetic_voice(float(seconds))))
        assert _cos(emb, expected) > 1 - 1e-3, seconds
        assert np.abs(emb.numpy() - np.array(expected)).max() < 1e-3


def test_embeddings_match_resemblyzer_on_real_speech(model, shared_data):
    import soundfile as sf
    ref = json.loads(REF.read_text())
    for rel, expected in ref["files"].items():
        wav, sr = sf.read(shared_data / rel, dtype="float32")
        with torch.no_grad():
            emb = model.embed_utterance(torch.from_numpy(wav))
        assert _cos(emb, expected) > 1 - 1e-3, rel


@pytest.mark.skipif(importlib.util.find_spec("librosa") is None or importlib.util.find_spec("webrtcvad") is None,
                    reason="resemblyzer's own audio module needs librosa and webrtcvad (not in audioadv's env)")
def test_embeddings_match_live_resemblyzer(model):
    from resemblyzer import VoiceEncoder, normalize_volume
    wav = synthetic_voice(2.2)
    expected = VoiceEncoder("cpu", verbose=False).embed_utterance(normalize_volume(wav, -30, increase_only=True))
    with torch.no_grad():
        assert _cos(model.embed_utterance(torch.from_numpy(wav)), expected) > 1 - 1e-3


def test_split_at_three_representations_and_gradient(model):
    x = torch.from_numpy(np.stack([synthetic_voice(1.0), 0.5 * synthetic_voice(1.0)[::-1].copy()]))
    with torch.no_grad():
        y = model(x)
    shapes = {"waveform": (2, 16000), "spectrogram": (2, 201, 161), "fbank": (2, 40, 161)}
    for at in model.representations():
        front, back = model.split(at)
        with torch.no_grad():
            z = front(x)
            assert tuple(z.shape) == shapes[at]
            assert torch.allclose(back(z), y, atol=1e-5)
    xg = x.clone().requires_grad_(True)
    model(xg)[:, 0].sum().backward()
    assert xg.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="expects 16000 samples"):
        model(torch.zeros(1, 8000))


def test_head_learns_and_checkpoint_roundtrip(model, tmp_path):
    """Three 'speakers' = three pitch ranges of the synthetic voice: a linear head on frozen
    embeddings separates them, and the checkpoint reloads without resemblyzer."""
    from audioadv.models import load_checkpoint, save_checkpoint
    sr, n = 16000, 16000
    t = np.arange(n) / sr
    waves, labels = [], []
    for c, f0 in enumerate((100.0, 180.0, 300.0)):
        for k in range(6):
            ph = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * k) + 20 * np.sin(2 * np.pi * (0.5 + k) * t)) / sr
            waves.append(0.05 * sum(np.sin(h * ph) / h for h in range(1, 8)))
            labels.append(c)
    waves, labels = torch.tensor(np.array(waves), dtype=torch.float32), torch.tensor(labels)
    with torch.no_grad():
        emb = model.embed(waves)
    before = model.encoder.linear.weight.clone()
    assert fit_head(model, emb, labels, steps=100, lr=0.1) == 1.0
    assert torch.equal(model.encoder.linear.weight, before)      # only the head is trained
    with torch.no_grad():
        assert (model(waves).argmax(1) == labels).float().mean() == 1.0
    save_checkpoint(model, tmp_path / "ck", {"classes": ["low", "mid", "high"]})
    again, cfg = load_checkpoint(tmp_path / "ck")
    assert cfg["hparams"]["pretrained"] is False
    with torch.no_grad():
        assert torch.allclose(again(waves), model(waves), atol=1e-5)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        resemblyzer_weights_path(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="16000 Hz"):
        ResemblyzerSpeaker(2, 8000, sample_rate=8000, pretrained=False)
