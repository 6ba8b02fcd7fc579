import json
import math

import pytest
import torch

from audioadv import models
from audioadv.models import load_checkpoint, save_checkpoint
from audioadv.models.layers import SincConv1d, erb, erb_space, gammatone_filters

L = 6000  # 0.375 s keeps the tests fast; every architecture accepts other lengths too




REQUIRED = {"cnn1d-rand", "cnn1d-gamma", "sincnet", "sincnet-vgg", "envnet-v2", "spchcmd", "logmel-cnn"}


def _make(name, n=5, length=L):
    torch.manual_seed(0)
    return models.create(name, num_classes=n, input_length=length).eval()


def test_registry():
    assert REQUIRED <= set(models.names())
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        models.create("nope", num_classes=3)
    with pytest.raises(ValueError, match="bad hyper-parameters"):
        models.create("sincnet", num_classes=3, input_length=L, not_a_param=1)
    with pytest.raises(ValueError, match="num_classes"):
        models.create("spchcmd", num_classes=1, input_length=L)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_shape_and_input_gradient(name):
    m = _make(name)
    x = (0.1 * torch.randn(3, L)).requires_grad_(True)
    out = m(x)
    assert out.shape == (3, 5)
    assert torch.isfinite(out).all()
    (g,) = torch.autograd.grad(out[:, 1].sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # each example's logits depend on its own waveform only (no batch mixing in eval mode)
    (g0,) = torch.autograd.grad(m(x)[0, 0], x)
    assert g0[1:].abs().max() == 0 and g0[0].abs().sum() > 0
    # the (B, T) contract is checked
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        m(torch.zeros(2, 1, L))


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_other_input_length(name):
    m = _make(name, n=3, length=12000)
    assert m(torch.zeros(2, 12000)).shape == (2, 3)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_split_consistency(name):
    m = _make(name)
    x = 0.1 * torch.randn(2, L)
    reps = m.representations()
    assert reps[0] == "waveform" and set(reps) <= set(models.REPRESENTATIONS)
    ref = m(x)
    for at in reps:
        front, back = m.split(at)
        z = front(x)
        torch.testing.assert_close(back(z), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="cannot be split at"):
        m.split("mfcc")


def test_logmel_split_representations():
    m = _make("logmel-cnn")
    assert m.representations() == ["waveform", "spectrogram", "fbank"]
    x = 0.1 * torch.randn(2, L)
    spec = m.split("spectrogram")[0](x)
    fbank = m.split("fbank")[0](x)
    assert spec.shape[:2] == (2, 257) and (spec >= 0).all()
    assert fbank.shape[:2] == (2, 40)
    # noise added at the split point changes the output: the halves really are the model
    front, back = m.split("fbank")
    assert not torch.allclose(back(front(x) + 1.0 * torch.randn_like(fbank)), m(x))


def test_gammatone_filters_peak_at_centre_frequency():
    sr, n = 16000, 16
    g = gammatone_filters(n, 512, sr, 100.0, 8000.0).double()
    fc = erb_space(100.0, min(8000.0, 0.45 * sr), n)
    spec = torch.fft.rfft(g, n=8192).abs()
    peak_hz = spec.argmax(dim=1).double() * sr / 8192
    # the magnitude response of a gammatone filter peaks at its centre frequency (within a quarter ERB)
    assert ((peak_hz - fc).abs() < 0.25 * erb(fc)).all(), (peak_hz, fc)
    torch.testing.assert_close(spec.amax(dim=1), torch.ones(n, dtype=torch.float64), rtol=1e-2, atol=1e-2)
    m = _make("cnn1d-gamma")
    frozen = [b for name, b in m.named_buffers() if name.endswith("weight") and b.shape[-1] == 512]
    assert frozen and all(not p.shape[-1] == 512 for p in m.parameters())  # not a trainable parameter


def test_sinc_filters_are_band_pass():
    layer = SincConv1d(8, 251, sample_rate=16000)
    with torch.no_grad():
        layer.low_hz_.fill_(950.0)  # low cutoff = 1000 Hz (with min_low_hz 50)
        layer.band_hz_.fill_(950.0)  # high cutoff = 2000 Hz (with min_band_hz 50)
    h = layer.filters()[0, 0].double()
    resp = torch.fft.rfft(h, n=16000).abs()  # 1 Hz bins
    # SincNet scales each filter by 1 / (2 band): centre tap 1, pass-band gain sr / (2 band) = 8 here
    torch.testing.assert_close(h[125], torch.tensor(1.0, dtype=torch.float64))
    assert 0.9 * 8 < resp[1500] < 1.1 * 8
    assert resp[200] < 0.05 * 8 and resp[4000] < 0.05 * 8
    # the cutoffs are learnable
    assert layer.low_hz_.requires_grad and layer.band_hz_.requires_grad


def test_checkpoint_round_trip(tmp_path):
    m = _make("sincnet", n=4)
    with torch.no_grad():  # make the batch-norm statistics non-trivial
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.uniform_(-1, 1)
    x = 0.1 * torch.randn(3, L)
    save_checkpoint(m, tmp_path / "ck", {"classes": ["a", "b", "c", "d"], "training": {"epochs": 1}})
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["arch"] == "sincnet" and cfg["input_length"] == L and cfg["classes"] == ["a", "b", "c", "d"]
    m2, cfg2 = load_checkpoint(tmp_path / "ck")
    assert not m2.training and cfg2["training"] == {"epochs": 1}
    assert torch.equal(m(x), m2(x))
    # loading via the weights file path works too
    m3, _ = load_checkpoint(tmp_path / "ck" / "model.safetensors")
    assert torch.equal(m(x), m3(x))
    assert all(p.requires_grad for p in m2.parameters())
    m4, _ = load_checkpoint(tmp_path / "ck", frozen=True)
    assert not any(p.requires_grad for p in m4.parameters()) and torch.equal(m(x), m4(x))


@pytest.mark.parametrize("name", ["logmel-cnn", "spchcmd", "cnn1d-gamma", "envnet-v2", "sincnet-vgg", "cnn1d-rand"])
def test_checkpoint_round_trip_every_model(tmp_path, name):
    m = _make(name, n=3)
    save_checkpoint(m, tmp_path / name)
    m2, _ = load_checkpoint(tmp_path / name)
    x = 0.1 * torch.randn(2, L)
    assert torch.equal(m(x), m2(x))


def test_checkpoint_errors(tmp_path):
    m = _make("logmel-cnn", n=3)
    ck = save_checkpoint(m, tmp_path / "ck")
    (ck / "model.safetensors").write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt"):
        load_checkpoint(ck)
    save_checkpoint(m, ck)
    (ck / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json: corrupt"):
        load_checkpoint(ck)
    (ck / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_checkpoint(ck)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "missing")
    # weights of another architecture: clear mismatch error, not a silent partial load
    ck2 = save_checkpoint(_make("spchcmd", n=3), tmp_path / "ck2")
    cfg = json.loads((ck2 / "config.json").read_text())
    cfg.update(arch="logmel-cnn", hparams={})
    (ck2 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match architecture 'logmel-cnn'"):
        load_checkpoint(ck2)
    # a missing weights file is named
    (ck2 / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load_checkpoint(ck2)


def test_checkpoint_never_unpickles(tmp_path):
    import pickle
    m = _make("spchcmd", n=3)
    ck = save_checkpoint(m, tmp_path / "ck")
    (ck / "model.safetensors").write_bytes(pickle.dumps(m.state_dict()))
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(ck)
