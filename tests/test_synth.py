"""eSpeak NG synthesis, the synthetic datasets and their cache."""
import json

import numpy as np
import pytest
import torch

from audioadv.data import load_dataset
from audioadv.data import synth
from audioadv.data.synth_sets import split_voices
from audioadv.signal import snr


@pytest.fixture(scope="module")
def cache(private_cache):
    return private_cache


def test_voices_and_variants_listed_from_data_folder():
    voices, var = synth.english_voices(), synth.variants()
    assert "en-us" in voices and "en-gb-x-rp" in voices
    assert {"m1", "m3", "f1", "f5", "croak", "whisper"} <= set(var)
    assert not set(var) & synth.NOVELTY_VARIANTS and "Alicia" not in var and "RicishayMax" not in var
    broad = synth.variants("broad")
    assert set(var) < set(broad) < set(synth.variants("all")) and "Alicia" in broad and "Demonic" not in broad
    assert len(synth.voice_pool()) == len(voices) * len(var)


def test_same_arguments_same_samples_whatever_was_spoken_before():
    a = synth.synthesize("stop", "en-gb-x-rp", "whisper", rate=160, seed=3)
    synth.synthesize("a completely different sentence", "en-029", "klatt", pitch=80)
    synth.synthesize("go", "en-us", "f2")
    b = synth.synthesize("stop", "en-gb-x-rp", "whisper", rate=160, seed=3)
    assert a.wav.dtype == torch.float32 and a.wav.dim() == 1
    assert torch.equal(a.wav, b.wav)
    assert a.phonemes == b.phonemes


def test_parameters_and_seed_change_the_samples():
    base = dict(text="left", voice="en-us", variant="m3", snr_db=20.0, rt60=0.2)
    a = synth.synthesize(**base, seed=1)
    b = synth.synthesize(**base, seed=2)
    assert a.wav.shape == b.wav.shape and not torch.equal(a.wav, b.wav)  # noise and RIR follow the seed
    slow = synth.synthesize("left", "en-us", "m3", rate=100)
    fast = synth.synthesize("left", "en-us", "m3", rate=300)
    assert slow.duration > 1.5 * fast.duration
    f = synth.synthesize("left", "en-us", "f1")
    assert f.wav.shape != slow.wav.shape or not torch.equal(f.wav, slow.wav)


def test_draw_params_deterministic_for_a_seed():
    pool = synth.voice_pool()
    p = [synth.draw_params(np.random.default_rng(5), pool, noise_prob=0.5, rir_prob=0.5) for _ in range(2)]
    q = synth.draw_params(np.random.default_rng(6), pool, noise_prob=0.5, rir_prob=0.5)
    assert p[0] == p[1] and p[0] != q
    assert (p[0].voice, p[0].variant) in pool


def test_phoneme_and_word_events_monotone_and_inside_the_audio():
    u = synth.synthesize("turn on the kitchen lights", "en-us", "m1")
    assert u.sample_rate == 16000
    assert len(u.phonemes) >= 12
    starts = [s for _, s, _ in u.phonemes]
    assert starts == sorted(starts)
    for name, s, e in u.phonemes:
        assert name and 0.0 <= s < e <= u.duration + 1e-6
    for (_, _, e1), (_, s2, _) in zip(u.phonemes, u.phonemes[1:]):
        assert e1 <= s2 + 1e-9
    words = [w for w, _, _ in u.words]
    assert " ".join(words).split() == "turn on the kitchen lights".split()
    assert [s for _, s, _ in u.words] == sorted(s for _, s, _ in u.words)
    ipa = synth.synthesize("kitchen", "en-us", "m1", ipa=True)
    assert any(ord(c) > 127 for p, _, _ in ipa.phonemes for c in p)  # IPA symbols, not ASCII mnemonics


def test_sample_rate_conversion():
    a = synth.synthesize("yes", sample_rate=16000)
    b = synth.synthesize("yes", sample_rate=8000)
    assert abs(b.wav.shape[0] - a.wav.shape[0] / 2) <= 2
    assert a.wav.abs().max() <= 1.0


def test_additive_noise_hits_the_requested_snr():
    clean = synth.synthesize("no", "en-us", "m2", amplitude=60, seed=4)
    noisy = synth.synthesize("no", "en-us", "m2", amplitude=60, seed=4, snr_db=12.0, noise="pink")
    assert noisy.wav.abs().max() < 0.99  # no peak limiting, so the SNR is exact
    measured = snr(clean.wav[None], (noisy.wav - clean.wav)[None]).item()
    assert abs(measured - 12.0) < 0.05


def test_room_impulse_response_decays():
    h = synth.room_impulse_response(0.4, 16000, np.random.default_rng(0))
    assert h[0] == 1.0 and len(h) == int(0.4 * 16000)
    tail = h[1:]
    e_first, e_last = np.sum(tail[:640] ** 2), np.sum(tail[-640:] ** 2)
    assert 10 * np.log10(e_first / e_last) > 45  # ~ -60 dB over rt60, a few dB lost to windowing


def test_bad_voice_and_text_raise_clear_errors():
    with pytest.raises(synth.SynthError, match="no-such-voice"):
        synth.synthesize("yes", "no-such-voice")
    with pytest.raises(ValueError, match="non-empty"):
        synth.synthesize("   ")
    with pytest.raises(ValueError, match="noise kind"):
        synth.synthesize("yes", snr_db=10, noise="purple")


@pytest.mark.parametrize("holdout", ["combo", "variant"])
def test_split_voices_are_disjoint(holdout):
    s = split_voices(seed=0, holdout=holdout)
    assert all(s[k] for k in s)
    assert not set(s["train"]) & set(s["test"])
    assert not set(s["train"]) & set(s["val"]) and not set(s["val"]) & set(s["test"])
    if holdout == "variant":
        assert not {v for _, v in s["train"]} & {v for _, v in s["test"]}
    assert s == split_voices(seed=0, holdout=holdout)
    assert s != split_voices(seed=1, holdout=holdout)


def test_synth_commands_splits_disjoint_cached_and_deterministic(cache, monkeypatch):
    spec = "synth-commands?per_word=4"
    train = load_dataset(spec, "train")
    test = load_dataset(spec, "test")
    val = load_dataset(spec, "val")
    assert train.classes == ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
    assert train.waves.shape == (20, 16000) and len(val) == 10 and len(test) == 10
    assert torch.bincount(train.labels, minlength=10).tolist() == [2] * 10
    voice = lambda d: {(it["voice"], it["variant"]) for it in d.items}  # noqa: E731
    assert not voice(train) & voice(test) and not voice(train) & voice(val)
    assert all(it["word"] == train.classes[lab] for it, lab in zip(train.items, train.labels.tolist()))
    assert train.waves.abs().max() <= 1.0 and (train.waves.abs().amax(1) > 0.01).all()
    # phoneme times were moved onto the centred 1 s window
    it = train.items[0]
    assert it["phonemes"] and all(0 <= s < e <= 1.0 for _, s, e in it["phonemes"])

    folders = [p for p in (cache / "synth-commands").iterdir() if p.is_dir()]  # no .partial left behind
    assert len(folders) == 1 and json.loads((folders[0] / "meta.json").read_text())["params"]["per_word"] == 4

    def boom(*a, **k):
        raise AssertionError("resynthesised although the cache holds the data")
    monkeypatch.setattr("audioadv.data.synth_sets.synthesize_params", boom)
    again = load_dataset(spec, "train")
    assert torch.equal(again.waves, train.waves) and again.items == train.items
    with pytest.raises(AssertionError, match="resynthesised"):  # other parameters: a new entry is built
        load_dataset("synth-commands?per_word=4&seed=1", "train")


def test_synth_commands_regenerated_is_identical(cache, tmp_path, monkeypatch):
    a = load_dataset("synth-commands?per_word=3&noise=1&reverb=1", "test")
    monkeypatch.setenv("AUDIOADV_CACHE", str(tmp_path))
    b = load_dataset("synth-commands?per_word=3&noise=1&reverb=1", "test")
    assert len(a) == 10 and torch.equal(a.waves, b.waves)
    assert all(it["snr_db"] is not None and it["rt60"] is not None for it in a.items)


def test_synth_phrases_transcripts_lengths_and_splits(cache):
    train = load_dataset("synth-phrases?n=20", "train")
    test = load_dataset("synth-phrases?n=20", "test")
    assert len(train) == 14 and len(test) == 3
    assert train.input_length == test.input_length  # one length for every split
    for wav, it in zip(train.waves, train.items):
        n = it["num_samples"]
        assert it["text"] and it["text"] == it["text"].lower()
        assert (wav[n:] == 0).all() and wav[:n].abs().max() > 0.01
        assert it["category"] in train.classes
    assert not {(i["voice"], i["variant"]) for i in train.items} & {(i["voice"], i["variant"]) for i in test.items}
    short = load_dataset("synth-phrases?n=20", "train", input_length=8000)
    assert short.waves.shape == (14, 8000) and all(it["num_samples"] <= 8000 for it in short.items)
    assert any(it["truncated"] for it in short.items)


def test_text_source_hook(cache):
    from audioadv.data.phrases import register_text_source

    register_text_source("test-yesno", lambda rng: (["yes please", "no thanks"][int(rng.integers(2))], "answer"),
                         ["answer"], version="t1")
    d = load_dataset("synth-phrases?n=6&source=test-yesno", "train")
    assert d.classes == ["answer"] and {it["text"] for it in d.items} <= {"yes please", "no thanks"}
    with pytest.raises(ValueError, match="unknown text source"):
        load_dataset("synth-phrases?n=6&source=nope", "train")


def test_cli_say_writes_a_wav(tmp_path, capsys):
    from audioadv.cli import main
    from audioadv.io import load

    out = tmp_path / "go.wav"
    assert main(["say", "go left", "--variant", "f3", "--out", str(out)]) == 0
    wav = load(out)
    assert 0.2 < wav.shape[0] / 16000 < 2.0 and wav.abs().max() > 0.05
    assert "go@" in capsys.readouterr().out


def test_interrupted_generation_resumes_to_the_same_data(tmp_path, monkeypatch):
    from audioadv.data import synth_sets

    spec = "synth-commands?per_word=3&words=yes,no,up,down,left"  # 15 utterances
    monkeypatch.setenv("AUDIOADV_CACHE", str(tmp_path / "a"))
    monkeypatch.setattr("audioadv.data.cache.CHUNK", 4)
    real, calls = synth_sets.synthesize_params, {"n": 0, "fail_at": 11}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise RuntimeError("interrupted")
        return real(*a, **k)

    monkeypatch.setattr("audioadv.data.synth_sets.synthesize_params", flaky)
    with pytest.raises(RuntimeError, match="interrupted"):
        load_dataset(spec, "all")
    (partial,) = (tmp_path / "a" / "synth-commands").glob("*.partial")
    assert len(list(partial.glob("chunk-*.npz"))) == 2  # 8 utterances checkpointed
    calls.update(n=0, fail_at=-1)
    resumed = load_dataset(spec, "all")
    assert calls["n"] == 15 - 8 and not partial.exists()
    monkeypatch.setenv("AUDIOADV_CACHE", str(tmp_path / "b"))
    fresh = load_dataset(spec, "all")
    assert calls["n"] == 7 + 15
    assert torch.equal(resumed.waves, fresh.waves) and resumed.items == fresh.items


def test_worker_restarts_after_dying():
    a = synth.synthesize("up", "en-us", "m4")
    eng = synth.engine()
    eng.proc.kill()
    eng.proc.wait()
    assert torch.equal(synth.synthesize("up", "en-us", "m4").wav, a.wav)


def test_parallel_generation_gives_the_same_data(tmp_path, monkeypatch):
    spec = "synth-phrases?n=8&noise=0.5&reverb=0.5"
    out = {}
    for workers in ("1", "2"):
        monkeypatch.setenv("AUDIOADV_CACHE", str(tmp_path / workers))
        monkeypatch.setenv("AUDIOADV_SYNTH_WORKERS", workers)
        out[workers] = load_dataset(spec, "all")
    assert len(out["1"]) == 8
    assert torch.equal(out["1"].waves, out["2"].waves) and out["1"].items == out["2"].items
