"""`audioadv.models.load`: one loader for every saved model kind, dispatched on config.json's
`kind` (older folders by their keys, Hugging Face folders by their own config), clear errors."""
import json

import pytest
import torch

from audioadv import models
from audioadv.models.asr import CTCRecognizer, save_recognizer


def test_loads_a_zoo_classifier(tmp_path):
    torch.manual_seed(0)
    net = models.create("cnn1d-rand", num_classes=3, input_length=4000)
    models.save_checkpoint(net, tmp_path / "clf")
    assert json.loads((tmp_path / "clf" / "config.json").read_text())["kind"] == "classifier"
    model, cfg = models.load(tmp_path / "clf")
    x = torch.randn(2, 4000) * 0.1
    assert cfg["kind"] == "classifier" and torch.equal(model(x), net.eval()(x))
    _, cfg = models.load(tmp_path / "clf" / "model.safetensors")        # a file in the folder
    assert cfg["arch"] == "cnn1d-rand"


def test_loads_the_speaker_head(tmp_path):
    torch.manual_seed(0)
    net = models.create("resemblyzer-speaker", num_classes=2, input_length=8000)
    models.save_checkpoint(net, tmp_path / "spk")
    model, cfg = models.load(tmp_path / "spk", frozen=True)
    assert cfg["kind"] == "speaker" and type(model).__name__ == "ResemblyzerSpeaker"
    assert not any(p.requires_grad for p in model.parameters())


def test_loads_a_ctc_recognizer_and_an_old_one_without_kind(tmp_path):
    torch.manual_seed(0)
    rec = CTCRecognizer(n_mels=20, channels=16, hidden=16, layers=1, alphabet="abcd", dropout=0.0)
    save_recognizer(rec, tmp_path / "asr")
    model, cfg = models.load(tmp_path / "asr")
    x = torch.randn(1, 3200) * 0.1
    assert cfg["kind"] == "ctc-recognizer" and torch.equal(model(x)[0], rec.eval()(x)[0])
    old = json.loads((tmp_path / "asr" / "config.json").read_text())
    del old["kind"]
    (tmp_path / "asr" / "config.json").write_text(json.dumps(old))
    assert models.load(tmp_path / "asr")[1]["kind"] == "ctc-recognizer"


def test_loads_a_hugging_face_wav2vec2_folder(tmp_path):
    pytest.importorskip("transformers", reason="the Hugging Face case needs transformers (the hf extra)")
    from _hf_tiny import save_tiny_wav2vec2
    vocab = save_tiny_wav2vec2(tmp_path / "hf")
    model, cfg = models.load(tmp_path / "hf")
    assert cfg["kind"] == "hf-wav2vec2" and type(model).__name__ == "HFWav2Vec2Recognizer"
    logits, frames = model.frame_logits(torch.randn(2, 1600) * 0.1, torch.tensor([1600, 800]))
    assert logits.shape[-1] == len(vocab) and frames.tolist()[0] > frames.tolist()[1]


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model not found"):
        models.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.load(tmp_path / "empty")
    rec = CTCRecognizer(n_mels=20, channels=16, hidden=16, layers=1, alphabet="abcd")
    save_recognizer(rec, tmp_path / "asr")
    (tmp_path / "asr" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        models.load(tmp_path / "asr")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"kind": "vocoder"}))
    with pytest.raises(ValueError, match="unknown model kind 'vocoder'"):
        models.load(tmp_path / "odd")
    (tmp_path / "odd" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        models.load(tmp_path / "odd")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"architectures": ["Wav2Vec2ForCTC"]}))
    with pytest.raises(FileNotFoundError, match="weights"):
        models.load(tmp_path / "hf")
