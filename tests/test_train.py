import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from audioadv import models
from audioadv.cli import main
from audioadv.data import AudioDataset
from audioadv.train import (TrainConfig, augment_waveform, confusion_matrix, evaluate, fit, format_confusion,
                            split_validation)

SR = 16000




def tones(n_per_class=20, length=4000, freqs=(300.0, 900.0, 2500.0), seed=0, name="tones"):
    """Tiny 3-class task: a tone at a class frequency with random phase, level, onset and noise."""
    g = torch.Generator().manual_seed(seed)
    waves, labels = [], []
    t = torch.arange(length) / SR
    for c, f in enumerate(freqs):
        for _ in range(n_per_class):
            amp = 0.05 + 0.4 * torch.rand(1, generator=g)
            phase = 2 * math.pi * torch.rand(1, generator=g)
            env = torch.zeros(length)
            start = int(torch.randint(0, length // 2, (1,), generator=g))
            env[start:start + length // 3] = 1.0
            w = amp * env * torch.sin(2 * math.pi * f * (1 + 0.02 * torch.randn(1, generator=g)) * t + phase)
            waves.append((w + 0.01 * torch.randn(length, generator=g)).clamp(-1, 1))
            labels.append(c)
    return AudioDataset(torch.stack(waves), torch.tensor(labels), [f"{int(f)}Hz" for f in freqs], SR, name=name)


def test_split_validation_is_stratified_disjoint_and_seeded():
    ds = tones(10)
    for i in range(len(ds)):
        ds.items.append({"i": i})
    tr, va = split_validation(ds, 0.2, seed=3)
    assert len(tr) + len(va) == len(ds)
    assert torch.bincount(va.labels).tolist() == [2, 2, 2]
    assert not {it["i"] for it in tr.items} & {it["i"] for it in va.items}
    tr2, va2 = split_validation(ds, 0.2, seed=3)
    assert [it["i"] for it in va.items] == [it["i"] for it in va2.items]
    _, va3 = split_validation(ds, 0.2, seed=4)
    assert [it["i"] for it in va.items] != [it["i"] for it in va3.items]
    with pytest.raises(ValueError):
        split_validation(ds, 1.5)


def test_confusion_matrix_by_hand():
    preds = torch.tensor([0, 1, 1, 2, 2, 2, 0])
    labels = torch.tensor([0, 1, 2, 2, 2, 0, 0])
    cm = confusion_matrix(preds, labels, 3)
    assert cm.tolist() == [[2, 0, 1], [0, 1, 0], [0, 1, 2]]
    text = format_confusion(cm, ["a", "b", "c"])
    assert "true" in text and text.splitlines()[-1].split() == ["c", "0", "1", "2"]


def test_augment_waveform():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(4, 100)
    x[:, 50] = 0.5
    y = augment_waveform(x, 0.0, 10, g)
    pos = y.abs().argmax(1)
    assert ((pos - 50).abs() <= 10).all() and torch.allclose(y.abs().amax(1), torch.full((4,), 0.5))
    y2 = augment_waveform(x, 6.0, 0, torch.Generator().manual_seed(0))
    gains = y2[:, 50] / 0.5
    assert ((gains >= 10 ** (-6 / 20) - 1e-6) & (gains <= 10 ** (6 / 20) + 1e-6)).all()
    assert torch.equal(augment_waveform(x, 6.0, 10, torch.Generator().manual_seed(1)),
                       augment_waveform(x, 6.0, 10, torch.Generator().manual_seed(1)))
    assert augment_waveform(x * 3, 6.0, 0, g).abs().max() <= 1.0


@pytest.mark.parametrize("name", ["logmel-cnn", "spchcmd"])
def test_short_training_beats_chance(name, tmp_path):
    torch.manual_seed(0)
    train, test = tones(24, seed=0), tones(10, seed=1)
    tr, va = split_validation(train, 0.2, seed=0)
    m = models.create(name, num_classes=3, input_length=4000)
    before = evaluate(m, test)["accuracy"]
    summary = fit(m, tr, va, TrainConfig(epochs=10, batch_size=8, lr=3e-3, seed=0), out_dir=tmp_path / "run",
                  config={"data": "tones"}, progress=False, log=lambda *_: None)
    acc = evaluate(m, test)["accuracy"]
    assert acc >= 0.8, (before, acc, summary["history"])  # chance is 1/3
    hist = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert len(hist) == 10 and hist[-1]["train_loss"] < hist[0]["train_loss"]
    # the saved checkpoint is the best epoch and reproduces the returned model
    loaded, cfg = models.load_checkpoint(tmp_path / "run")
    assert cfg["classes"] == ["300Hz", "900Hz", "2500Hz"] and cfg["data"] == "tones"
    assert cfg["metrics"]["best_epoch"] == summary["best"]["epoch"]
    assert torch.equal(loaded(test.waves[:4]), m(test.waves[:4]))


def test_noise_augmentation_at_fbank_and_errors():
    tr, va = tones(6, seed=0), tones(3, seed=1)
    m = models.create("logmel-cnn", num_classes=3, input_length=4000)
    s = fit(m, tr, va, TrainConfig(epochs=1, batch_size=8, noise_sigma=0.5, noise_at="fbank"), progress=False,
            log=lambda *_: None)
    assert len(s["history"]) == 1 and math.isfinite(s["history"][0]["train_loss"])
    raw = models.create("spchcmd", num_classes=3, input_length=4000)
    with pytest.raises(ValueError, match="can be split at waveform"):
        fit(raw, tr, va, TrainConfig(epochs=1, noise_sigma=0.1, noise_at="spectrogram"), progress=False)
    with pytest.raises(ValueError, match="classes"):
        fit(models.create("spchcmd", num_classes=5, input_length=4000), tr, va, TrainConfig(epochs=1), progress=False)


def _fsdd_folder(root, takes=8, sr=8000):
    """A tiny folder in the Free Spoken Digit Dataset layout: digit d is a tone at 300 + 250 d Hz."""
    root.mkdir()
    rng = np.random.default_rng(0)
    t = np.arange(int(0.3 * sr)) / sr
    for d in range(10):
        for take in range(takes):
            w = 0.3 * np.sin(2 * np.pi * (300 + 250 * d) * t + rng.uniform(0, 6.3)) + 0.01 * rng.standard_normal(len(t))
            sf.write(root / f"{d}_tester_{take}.wav", w.astype(np.float32), sr)
    return root


def test_train_and_eval_cli(tmp_path, capsys):
    data = f"fsdd:{_fsdd_folder(tmp_path / 'fsdd')}"
    out = tmp_path / "run"
    rc = main(["train", "--model", "logmel-cnn", "--data", data, "--epochs", "3", "--out", str(out),
               "--input-length", "6000", "--batch-size", "8", "--lr", "3e-3", "--quiet", "--val-fraction", "0.34"])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["arch"] == "logmel-cnn" and cfg["input_length"] == 6000 and cfg["classes"] == [str(d) for d in range(10)]
    assert cfg["training"]["epochs"] == 3 and "test_accuracy" in cfg["metrics"]
    capsys.readouterr()
    assert main(["eval", str(out), "--data", data, "--split", "test", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    cm = torch.tensor(res["confusion"])
    assert res["n"] == 50 and int(cm.sum()) == 50
    assert res["accuracy"] == pytest.approx(float(cm.trace()) / 50)
    assert res["accuracy"] == pytest.approx(cfg["metrics"]["test_accuracy"])
    assert main(["eval", str(out), "--data", data]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "true \\ predicted" in text
    # a corrupt checkpoint is a one-line error naming the file
    (out / "model.safetensors").write_bytes(b"garbage")
    assert main(["eval", str(out), "--data", data]) == 2
    assert "model.safetensors" in capsys.readouterr().err


def test_demo_experiment_writes_a_complete_run_folder(tmp_path, monkeypatch):
    # the full demo (make demo) takes minutes; experiments/demo.toml itself, scaled down
    from pathlib import Path
    monkeypatch.setenv("AUDIOADV_CACHE", str(tmp_path / "cache"))
    text = (Path(__file__).resolve().parents[1] / "experiments" / "demo.toml").read_text()
    for old, new in (("per_word=100", "per_word=4"), ("epochs = 15", "epochs = 1"), ("steps = 50", "steps = 3"),
                     ("examples = 20", "examples = 3"), ("eps = 0.002", "eps = 0.05")):
        assert old in text
        text = text.replace(old, new)
    exp = tmp_path / "demo.toml"
    exp.write_text(text)
    out = tmp_path / "demo"
    assert main(["run", str(exp), "--out", str(out), "--quiet", "--report"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    kinds = {j["kind"]: j for j in summary["jobs"]}
    assert kinds["train"]["status"] == kinds["attack"]["status"] == "done"
    assert 0 <= kinds["train"]["summary"]["accuracy"] <= 1
    from audioadv.experiments import Store
    store = Store(out, create=False)
    rows = store.examples(kinds["attack"]["job_id"])
    store.close()
    assert 1 <= len(rows) <= 3
    for r in rows:
        if "adv_wav" in r:
            clean, _ = sf.read(out / r["clean_wav"])
            adv, _ = sf.read(out / r["adv_wav"])
            assert len(clean) == len(adv) == 16000
            assert np.abs(adv - clean).max() <= 0.05 + 1e-6       # the l_inf budget (float WAVs)
    assert kinds["attack"]["summary"]["success_rate"] == pytest.approx(np.mean([r["success"] for r in rows]))
    model, cfg = models.load_checkpoint(out / "models" / "classifier")
    assert cfg["classes"][:3] == ["yes", "no", "up"]
    assert (out / "report.html").is_file()
