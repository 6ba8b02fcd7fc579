"""Randomized smoothing (audioadv.certify): bounds, radius, PREDICT/CERTIFY behaviour, where the
noise lands, resumable certification runs and the max-radius table."""
import json

import numpy as np
import pytest
import torch
from scipy.stats import binom
from torch import nn

from audioadv.certify import (Smooth, NoisySoftmax, certified_accuracy, certify_dataset, lower_confidence_bound,
                              max_radius, radius, read_results, split_model, summarize)





class Constant(nn.Module):
    def __init__(self, c, k=4):
        super().__init__()
        self.c, self.k = c, k

    def forward(self, x):
        out = torch.zeros(x.shape[0], self.k)
        out[:, self.c] = 1.0
        return out


class SignOfFirst(nn.Module):
    """Class 1 when the first coordinate is positive, else 0: a coin flip under noise at 0."""

    def forward(self, x):
        first = x.flatten(1)[:, 0]
        return torch.stack([-first, first], 1)


class TwoStage(nn.Module):
    """Waveform (B, 8) -> 'spectrogram' (B, 2, 8) via a fixed map -> linear classifier."""

    def __init__(self):
        super().__init__()
        self.front_end = nn.Linear(8, 16)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))

    def representations(self):
        return ["waveform", "spectrogram"]

    def split(self, at):
        to_spec = nn.Sequential(self.front_end, nn.Unflatten(1, (2, 8)))
        if at == "waveform":
            return nn.Identity(), nn.Sequential(to_spec, self.classifier)
        return to_spec, self.classifier

    def forward(self, x):
        back = self.split("waveform")[1]
        return back(x)


def test_clopper_pearson_known_values():
    # k = n: the bound solves p^n = alpha.
    assert lower_confidence_bound(10000, 10000, 0.001) == pytest.approx(0.001 ** (1 / 10000), rel=1e-12)
    assert lower_confidence_bound(0, 100, 0.001) == 0.0
    # Definition: the lower bound L has P(X >= k | p = L) = alpha.
    for k, n, alpha in [(50, 100, 0.05), (990, 1000, 0.001), (7, 10, 0.01)]:
        low = lower_confidence_bound(k, n, alpha)
        assert binom.sf(k - 1, n, low) == pytest.approx(alpha, rel=1e-6)
    # k = 1: Beta(1, n) has the closed-form quantile 1 - (1 - alpha)^(1/n).
    assert lower_confidence_bound(1, 20, 0.05) == pytest.approx(1 - 0.95 ** (1 / 20), rel=1e-9)
    with pytest.raises(ValueError):
        lower_confidence_bound(5, 4, 0.01)


def test_radius_formula():
    assert radius(0.25, 0.9) == pytest.approx(0.25 * 1.2815515655446004, rel=1e-12)
    assert radius(1.0, 0.975) == pytest.approx(1.959963984540054, rel=1e-12)
    assert radius(0.5, 0.5) == 0.0 and radius(0.5, 0.3) == 0.0
    assert max_radius(0.25, 10000, 0.001) == pytest.approx(0.7996, abs=1e-4)   # the study's 0.800
    assert max_radius(0.5, 10000, 0.001) == pytest.approx(1.5993, abs=1e-4)    # the study prints 1.160


def test_constant_classifier_certifies_max_radius():
    smooth = Smooth(Constant(2), num_classes=4, sigma=0.5)
    x = torch.randn(100)
    cls, rad = smooth.certify(x, n0=10, n=1000, alpha=0.001, batch_size=300)
    assert cls == 2
    assert rad == pytest.approx(max_radius(0.5, 1000, 0.001), rel=1e-12)
    assert smooth.predict(x, n=50, alpha=0.001, batch_size=16) == 2


def test_abstains_when_top_class_not_significant():
    smooth = Smooth(SignOfFirst(), num_classes=2, sigma=1.0)
    x = torch.zeros(5)
    assert smooth.predict(x, n=200, alpha=0.001, batch_size=64) == Smooth.ABSTAIN
    assert smooth.certify(x, n0=20, n=200, alpha=0.001, batch_size=64) == (Smooth.ABSTAIN, 0.0)
    # Far from the boundary the same classifier is confident.
    x[0] = 5.0
    assert smooth.predict(x, n=200, alpha=0.001, batch_size=64) == 1
    cls, rad = smooth.certify(x, n0=20, n=200, alpha=0.001, batch_size=64)
    assert cls == 1 and rad > 1.0


def test_seeded_and_batch_independent_counts():
    smooth = Smooth(SignOfFirst(), num_classes=2, sigma=1.0)
    x = torch.zeros(3)
    g = lambda: torch.Generator().manual_seed(7)
    a = smooth.sample_counts(x, 500, 100, generator=g())
    b = smooth.sample_counts(x, 500, 100, generator=g())
    assert a.sum() == 500 and (a == b).all()
    assert smooth.certify(x, 10, 300, 0.1, 64, seed=3) == smooth.certify(x, 10, 300, 0.1, 64, seed=3)


@pytest.mark.parametrize("at", ["waveform", "spectrogram"])
def test_noise_lands_at_the_chosen_representation(at):
    torch.manual_seed(0)
    model = TwoStage().eval()
    sigma = 0.3
    smooth = Smooth(model, num_classes=3, sigma=sigma, at=at)
    seen = {}
    hooks = [model.front_end.register_forward_pre_hook(lambda m, a: seen.setdefault("front_in", []).append(a[0])),
             model.classifier.register_forward_pre_hook(lambda m, a: seen.setdefault("back_in", []).append(a[0]))]
    x = torch.randn(8)
    smooth.sample_counts(x, 400, 400, generator=torch.Generator().manual_seed(0))
    for h in hooks:
        h.remove()
    with torch.no_grad():
        clean_spec = model.front_end(x[None]).view(1, 2, 8)
    if at == "waveform":
        noise = seen["front_in"][-1] - x                       # the front end saw noisy waveforms
        assert noise.shape == (400, 8)
    else:
        assert len(seen["front_in"]) == 1 and torch.equal(seen["front_in"][0][0], x)  # clean waveform once
        noise = seen["back_in"][-1] - clean_spec              # noise added to the spectrogram
        assert noise.shape == (400, 2, 8)
    assert noise.std().item() == pytest.approx(sigma, rel=0.05)
    assert abs(noise.mean().item()) < 0.02


def test_split_model_errors():
    with pytest.raises(ValueError, match="no split"):
        split_model(nn.Linear(3, 2), "fbank")
    with pytest.raises(ValueError, match="cannot be split"):
        split_model(TwoStage(), "fbank")
    with pytest.raises(ValueError, match="unknown representation"):
        split_model(TwoStage(), "mfcc")
    front, back = split_model(nn.Linear(3, 2), "waveform")
    assert isinstance(front, nn.Identity)


def test_certified_accuracy():
    labels, preds, radii = [0, 1, 2, 1], [0, 1, -1, 0], [0.3, 0.1, 0.0, 0.9]
    assert certified_accuracy(labels, preds, radii, 0.0) == 0.5
    assert certified_accuracy(labels, preds, radii, [0.05, 0.2, 0.5]) == [0.5, 0.25, 0.0]


def test_noisy_softmax_gradient_and_mean():
    model = TwoStage().eval()
    smooth = Smooth(model, num_classes=3, sigma=0.2, at="spectrogram")
    x = torch.randn(2, 8, requires_grad=True)
    out = NoisySoftmax(smooth, samples=8)(x)
    assert out.shape == (2, 3) and torch.allclose(out.exp().sum(1), torch.ones(2), atol=1e-5)
    out[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_noisy_softmax_keeps_gradient_for_confident_models():
    # a base model 60 logits sure of class 0: mean softmax of the others is ~1e-26, below any clamp
    class Sure(nn.Module):
        def forward(self, x):
            return torch.stack([60 + x.sum(1), x[:, 0], -x[:, 1]], 1)

    sur = NoisySoftmax(Smooth(Sure(), 3, 0.01, at="waveform"), samples=4)
    x = torch.zeros(2, 5, requires_grad=True)
    out = sur(x)
    assert torch.isfinite(out).all() and out[:, 1].max() < -50
    out[:, 1].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_certify_dataset_resumes(tmp_path):
    calls = []

    class Counting(Constant):
        def forward(self, x):
            calls.append(x.shape[0])
            return super().forward(x)

    smooth = Smooth(Counting(1, k=3), num_classes=3, sigma=0.1)
    waves, labels = torch.randn(4, 10), torch.tensor([1, 0, 1, 1])
    out = tmp_path / "r.jsonl"
    rows = certify_dataset(smooth, waves, labels, out, n0=5, n=50, alpha=0.01, batch_size=64, progress=False)
    assert [r["correct"] for r in rows] == [True, False, True, True]
    first = out.read_text().splitlines()
    # Simulate a run killed while writing example 3: keep 2 lines and half of the third.
    out.write_text("\n".join(first[:2]) + "\n" + first[2][:15])
    calls.clear()
    rows2 = certify_dataset(smooth, waves, labels, out, n0=5, n=50, alpha=0.01, batch_size=64, progress=False)
    assert sum(calls) == 2 * (5 + 50)     # two examples redone; their noisy copies share the batches
    assert calls == [60, 50]              # first fit: n0 and n of example 2 with n0 of example 3, then its n
    strip = lambda r: {k: v for k, v in r.items() if k != "time_s"}
    assert [strip(r) for r in read_results(out)] == [strip(json.loads(line)) for line in first]
    assert [r["radius"] for r in rows2] == [r["radius"] for r in rows]
    s = summarize(rows2, radii=[0.0, 0.5])
    assert s["certified_accuracy"]["0.0"] == 0.75 and s["abstain"] == 0.0
    with pytest.raises(ValueError, match="other settings"):
        certify_dataset(Smooth(Constant(1, k=3), 3, sigma=0.2), waves, labels, out, n0=5, n=50, alpha=0.01,
                        batch_size=64, progress=False)


def test_max_radius_table_cli(capsys):
    from audioadv.cli import main
    assert main(["certify", "--max-radius-table"]) == 0
    out = capsys.readouterr().out
    assert "0.800" in out and "1.599" in out and "1.160" in out   # ours and the study's sigma=0.5 typo
    lines = [line for line in out.splitlines() if line.startswith("| 0.50")]
    assert lines and "WRONG" in lines[0]
    assert "| 0.25 " in out and "WRONG" not in [line for line in out.splitlines() if line.startswith("| 0.25")][0]


def test_certify_cli_writes_jsonl_and_resumes(tmp_path, capsys):
    """`audioadv certify CKPT --data manifest:...` on a checkpoint and clips written here."""
    import soundfile as sf
    from audioadv import models
    from audioadv.cli import main

    rows = ["path,label,split"]
    for i in range(4):
        tone = 0.1 * np.sin(2 * np.pi * (200 + 300 * (i % 2)) * np.arange(4000) / 16000)
        sf.write(tmp_path / f"c{i}.wav", tone.astype(np.float32), 16000)
        rows.append(f"c{i}.wav,{'ab'[i % 2]},test")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    torch.manual_seed(0)
    model = models.create("logmel-cnn", num_classes=2, input_length=4000).eval()
    models.save_checkpoint(model, tmp_path / "ck", {"classes": ["a", "b"]})
    argv = ["certify", str(tmp_path / "ck"), "--data", f"manifest:{tmp_path / 'm.csv'}", "--at", "fbank",
            "--sigma", "0.5", "--n0", "4", "--n", "16", "--batch-size", "8", "--max-examples", "3",
            "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    result = tmp_path / "out" / "certify-fbank-sigma0.5-n16.jsonl"
    lines = result.read_text().splitlines()
    assert len(lines) == 3 and {json.loads(x)["index"] for x in lines} == {0, 1, 2}
    assert (tmp_path / "out" / "certify-fbank-sigma0.5-n16.summary.json").exists()
    assert main(argv) == 0                                   # resumes: nothing new to do
    assert result.read_text().splitlines() == lines
    assert main(["certify", "--data", "x"]) == 2              # missing CKPT: one clear error line
    assert "needs CKPT" in capsys.readouterr().err


class Sizes(nn.Module):
    """A fixed random linear classifier that records its batch sizes."""

    def __init__(self, dim=16, k=3):
        super().__init__()
        self.lin = nn.Linear(dim, k)
        self.sizes = []

    def forward(self, x):
        self.sizes.append(len(x))
        return self.lin(x)


def test_certify_many_packs_examples_and_matches_certify_alone():
    torch.manual_seed(0)
    model = Sizes().eval()
    smooth = Smooth(model, num_classes=3, sigma=0.5)
    xs = 0.3 * torch.randn(7, 16)
    seeds = [11 + i for i in range(7)]
    alone = [smooth.certify(x, n0=8, n=64, alpha=0.01, batch_size=32, seed=s) for x, s in zip(xs, seeds)]
    model.sizes.clear()
    many = {i: (c, r) for i, c, r, _ in smooth.certify_many(xs, 8, 64, 0.01, 32, seeds=seeds)}
    assert [many[i] for i in range(7)] == alone
    assert len({c for c, _ in alone}) > 1 and len({r for _, r in alone}) > 2   # not a trivial model
    # chunks of 8, 32 and 32 per example, first fit into batches of 32: the n0 stages of four examples
    # share one batch; only the n0 stages of the last three leave a batch part-empty
    sizes = model.sizes
    assert sum(sizes) == 7 * (8 + 64) and sizes.count(32) == len(sizes) - 1 and 24 in sizes
    assert len(sizes) < 7 * 3                                    # each alone needs 3 passes
    # the draws are those of the stage-by-stage algorithm: n0 then n samples from the example's generator
    g = torch.Generator().manual_seed(seeds[2])
    c0 = smooth.sample_counts(xs[2], 8, 32, generator=g)
    c1 = smooth.sample_counts(xs[2], 64, 32, generator=g)
    c_a = int(c0.argmax())
    pa = lower_confidence_bound(int(c1[c_a]), 64, 0.01)
    assert alone[2] == ((c_a, radius(0.5, pa)) if pa >= 0.5 else (Smooth.ABSTAIN, 0.0))
    with pytest.raises(ValueError, match="seeds"):
        list(smooth.certify_many(xs, 8, 64, 0.01, 32, seeds=seeds[:3]))
    with pytest.raises(ValueError, match="batch_size"):
        smooth.certify(xs[0], 8, 64, 0.01, 0)


def test_certify_dataset_is_independent_of_batch_size(tmp_path):
    torch.manual_seed(1)
    smooth = Smooth(Sizes().eval(), num_classes=3, sigma=0.5)
    waves, labels = 0.3 * torch.randn(5, 16), torch.tensor([0, 1, 2, 0, 1])
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]
    a = certify_dataset(smooth, waves, labels, tmp_path / "a.jsonl", n0=5, n=40, alpha=0.01, batch_size=16,
                        progress=False)
    b = certify_dataset(smooth, waves, labels, tmp_path / "b.jsonl", n0=5, n=40, alpha=0.01, batch_size=100,
                        progress=False)
    assert strip(a) == strip(b) and [r["index"] for r in a] == list(range(5))
    assert all(r["time_s"] >= 0 for r in a)


def test_certify_cli_takes_defaults_from_the_library(capsys):
    import inspect

    from audioadv.cli import main
    from audioadv.commands.certify import library_defaults

    assert main(["certify", "--show-defaults"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == library_defaults()
    assert shown["n0"] == inspect.signature(certify_dataset).parameters["n0"].default
    assert shown["sigma"] == inspect.signature(Smooth.__init__).parameters["sigma"].default
