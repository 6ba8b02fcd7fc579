"""Audio-visual synthetic data and models: the video carries what is said; MSAE fools a trained AV model."""

import pytest
import torch
import torch.nn.functional as F

from audioadv import models
from audioadv.data import load_dataset
from audioadv.data.synth_av import VISEMES, viseme_of, viseme_track

SPEC = "synth-av-commands?per_word=20&words=no,up,stop"


@pytest.fixture(scope="module")
def cache(private_cache):
    return private_cache


@pytest.fixture(scope="module")
def splits(cache):
    return {s: load_dataset(SPEC, s) for s in ("train", "val", "test")}


def test_viseme_track_follows_phonemes():
    assert viseme_of("p") == "bilabial" and viseme_of("'oU") == ("o", "u") and viseme_of("O2") == "O"
    t = viseme_track([("'A:", 0.2, 0.6)], 25)
    rest = VISEMES["rest"][0]
    assert t[0, 0] == pytest.approx(rest, abs=1e-6)  # silence before
    assert t[12, 0] > 0.7  # mid vowel: open
    assert viseme_track([("u:", 0.2, 0.6)], 25)[12, 2] > 0.9  # rounded


def test_dataset_shapes_cache_and_video_range(splits, cache):
    tr = splits["train"]
    assert tr.video.shape == (len(tr), 25, 32, 32) and tr.video.dtype == torch.float32
    assert 0 <= float(tr.video.min()) and float(tr.video.max()) <= 1
    assert tr.classes == ["no", "up", "stop"]
    x = tr.inputs([0, 1])
    assert set(x) == {"audio", "video"} and x["video"].shape[0] == 2
    sub = tr.subset([2, 0])
    assert torch.equal(sub.video[1], tr.video[0])
    files = list((cache / "synth-av-commands").rglob("train.npy"))
    assert len(files) == 1
    again = load_dataset(SPEC, "train")
    assert torch.equal(again.video, tr.video)


def test_video_differs_between_words_video_only_model_beats_chance(splits):
    """A linear model on the (appearance-removed, pooled) video of training voices classifies
    unseen voices well above chance (1/3)."""
    def feats(v):
        p = F.avg_pool2d(v, 4)
        return (p - p.mean(1, keepdim=True)).flatten(1)
    tr, te = splits["train"], splits["val"].subset(range(len(splits["val"])))
    xtr, xte = feats(tr.video), torch.cat([feats(te.video), feats(splits["test"].video)])
    yte = torch.cat([te.labels, splits["test"].labels])
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    w = torch.zeros(xtr.shape[1], 3, requires_grad=True)
    opt = torch.optim.Adam([w], lr=1e-2)
    for _ in range(150):
        loss = F.cross_entropy(xtr @ w, tr.labels) + 1e-3 * w.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = float(((xte @ w).argmax(1) == yte).float().mean())
    assert acc >= 0.7, acc


def test_av_models_example_inputs_and_errors():
    net = models.create("av-commands", num_classes=5, input_length=8000)
    x = net.example_inputs(3)
    assert x["audio"].shape == (3, 8000) and x["video"].shape == (3, 13, 32, 32)
    assert net.eval()(x).shape == (3, 5)
    with pytest.raises(ValueError, match="video"):
        net({"audio": x["audio"]})
    with pytest.raises(ValueError, match="modalities"):
        models.create("av-commands", num_classes=5, modalities="smell")
    a_only = models.create("av-commands", num_classes=5, input_length=8000, modalities="audio").eval()
    assert a_only({"audio": x["audio"]}).shape == (3, 5)
    from audioadv.models.av import AVRecognizer
    rec = AVRecognizer(size=16, channels=16, hidden=16, n_mels=16).eval()
    y = rec.example_inputs(2, seconds=0.5)
    logp, frames = rec.frame_logits(y, torch.tensor([8000, 4000]))
    assert logp.shape[0] == 2 and logp.shape[2] == len(rec.vocab) and frames.tolist()[1] < frames.tolist()[0]


def test_fit_av_checkpoint_and_msae_fools_trained_model(splits, tmp_path):
    from audioadv.attacks.msae import msae
    from audioadv.models.av import accuracy, fit_av
    from audioadv.train import TrainConfig
    tr, va = splits["train"], splits["val"]
    net = models.create("av-commands", num_classes=3, dim=16)
    fit_av(net, tr, va, TrainConfig(epochs=6, batch_size=8, lr=3e-3), out_dir=tmp_path / "ck", seed=0, log=lambda s: None)
    again, cfg = models.load_checkpoint(tmp_path / "ck")
    x = va.inputs([0, 1, 2])
    assert torch.allclose(again(x), net(x), atol=1e-5) and cfg["hparams"]["modalities"] == "audio,video"
    assert accuracy(net, va) >= 0.6  # a trained model, not a constant one
    target = (net(x).argmax(1) + 1) % 3
    adv, rec = msae(net, x, target, sparsity={"audio": 0.3, "video": 0.3}, warmup=20, rounds=30, finetune=30)
    assert all(r["success"] for r in rec)
    assert torch.equal(net(adv).argmax(1), target)
    for k in ("audio", "video"):
        assert ((adv[k] != x[k]).flatten(1).float().mean(1) <= 0.3).all()


def test_av_phrases_and_recogniser_training(cache):
    from audioadv.models.av import AVRecognizer, cer_av, fit_av_recognizer
    tr = load_dataset("synth-av-phrases?n=12", "train")
    va = load_dataset("synth-av-phrases?n=12", "val")
    assert tr.video.shape[1] == -(-tr.input_length * 25 // 16000) and "text" in tr.items[0]
    torch.manual_seed(0)
    rec = AVRecognizer(size=32, channels=16, hidden=16, n_mels=16)
    out = fit_av_recognizer(rec, tr, va, epochs=2, batch_size=4, log=lambda s: None)
    assert len(out["history"]) == 2 and out["best_val_cer"] == min(h["val_cer"] for h in out["history"])
    assert cer_av(rec, va) == pytest.approx(out["best_val_cer"])
    assert cer_av(rec, va, snr_db=0.0) >= 0


def test_train_asr_av_saves_a_recogniser_that_eval_asr_and_load_read(cache, tmp_path, capsys):
    import json

    from audioadv.cli import main
    from audioadv.models.av import AVRecognizer, cer_av
    spec = "synth-av-phrases?n=12"
    out = tmp_path / "av-asr"
    assert main(["train-asr", "--av", "--data", spec, "--epochs", "1", "--hidden", "16", "--channels", "16",
                 "--n-mels", "16", "--out", str(out)]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    model, cfg = models.load(out)
    assert cfg["kind"] == "av-recognizer" and isinstance(model, AVRecognizer) and model.modalities == ("audio", "video")
    test = load_dataset(spec, "test")
    assert cer_av(model, test) == pytest.approx(summary["test_cer"])
    assert cer_av(model, test, snr_db=0.0) == pytest.approx(summary["test_cer_0db"])
    capsys.readouterr()
    assert main(["eval-asr", str(out), "--data", spec, "--snr", "0", "--json", str(tmp_path / "e.json")]) == 0
    res = json.loads((tmp_path / "e.json").read_text())[spec]
    assert res["cer"] == pytest.approx(summary["test_cer"]) and res["cer_0db"] == pytest.approx(summary["test_cer_0db"])
    # options the audio-visual loop has no counterpart for are refused, naming them
    assert main(["train-asr", "--av", "--data", spec, "--steps", "3", "--out", str(tmp_path / "x")]) == 2
    assert "--steps not available" in capsys.readouterr().err
