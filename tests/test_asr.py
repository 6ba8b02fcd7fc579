"""Character CTC recogniser: vocabulary, CTC loss and decoding on hand-made cases, the model's
shapes / padding / checkpoint round trip, text error rates and the Hugging Face adapter."""
import json
import math

import pytest
import torch

from audioadv.metrics.text import cer, edit_distance, wer
from audioadv.models.asr import (CharVocab, CTCRecognizer, HFWav2Vec2Recognizer, Recognizer, beam_search_decode,
                                 ctc_loss, greedy_decode, load_recognizer, recognizer_card, save_recognizer,
                                 transcribe)


class Fixed:
    """A Recognizer returning fixed frame log-probabilities (for hand-computed CTC values)."""

    sample_rate, blank = 16000, 0

    def __init__(self, probs, chars="ab"):
        self.logits = torch.log(torch.tensor(probs, dtype=torch.float64))[None]
        self.vocab = CharVocab(chars)

    def frame_logits(self, wav, lengths=None):
        return self.logits.expand(len(wav), -1, -1), torch.full((len(wav),), self.logits.shape[1])

    def encode_text(self, text):
        return self.vocab.encode(text)

    def decode_labels(self, ids):
        return self.vocab.decode(ids)


def test_vocab_normalises_and_round_trips():
    v = CharVocab()
    assert v.normalize("Call Mom, 2 times!") == "call mom two times"
    ids = v.encode("it's ok")
    assert 0 not in ids and v.decode(ids) == "it's ok"
    assert len(v) == 29 and v.blank == 0
    with pytest.raises(ValueError):
        CharVocab("aa")


def test_ctc_loss_hand_computed():
    # two frames over (blank, a): "a" is emitted by (a,a), (a,-), (-,a)
    m = Fixed([[0.4, 0.6, 1e-12], [0.3, 0.7, 1e-12]])
    p = 0.6 * 0.7 + 0.6 * 0.3 + 0.4 * 0.7
    loss = ctc_loss(m, torch.zeros(1, 10), None, ["a"])
    assert loss.item() == pytest.approx(-math.log(p), rel=1e-5)
    # "aa" needs a blank between the two a's: impossible in two frames
    assert torch.isinf(ctc_loss(m, torch.zeros(1, 10), None, ["aa"])).all()
    # "ab" over two frames: only (a, b)
    m2 = Fixed([[0.1, 0.5, 0.4], [0.2, 0.3, 0.5]])
    assert ctc_loss(m2, torch.zeros(1, 10), None, ["ab"]).item() == pytest.approx(-math.log(0.5 * 0.5), rel=1e-5)


def test_greedy_and_beam_decoding():
    # best path a a - a b b - -> "aab"
    seq = [1, 1, 0, 1, 2, 2, 0]
    logits = torch.full((1, len(seq), 3), -5.0)
    logits[0, torch.arange(len(seq)), torch.tensor(seq)] = 0.0
    assert greedy_decode(logits, None, 0) == [[1, 1, 2]]
    assert greedy_decode(logits, torch.tensor([3]), 0) == [[1]]
    assert beam_search_decode(logits, None, 0, beam_width=4) == [[1, 1, 2]]
    # greedy picks blank twice (0.36) but "a" has 0.64 summed over its three paths
    probs = torch.log(torch.tensor([[[0.6, 0.4], [0.6, 0.4]]]))
    assert greedy_decode(probs, None, 0) == [[]]
    assert beam_search_decode(probs, None, 0, beam_width=4) == [[1]]


def test_error_rates():
    assert edit_distance("kitten", "sitting") == 3
    assert wer("call mom now", "call tom now") == pytest.approx(1 / 3)
    assert cer("abcd", "abd") == pytest.approx(1 / 4)
    assert wer(["a b", "c"], ["a b", "d"]) == pytest.approx(1 / 3)
    assert cer("", "") == 0.0


def test_model_shapes_padding_and_gradient(tmp_path):
    torch.manual_seed(0)
    m = CTCRecognizer(n_mels=20, channels=16, hidden=16, layers=2).eval()
    assert isinstance(m, Recognizer)
    x = 0.1 * torch.randn(2, 16000)
    lengths = torch.tensor([16000, 9600])
    logp, frames = m(x, lengths)
    assert logp.shape == (2, 51, 29) and frames.tolist() == [51, 31]
    assert torch.allclose(logp.exp().sum(-1), torch.ones(2, 51), atol=1e-5)
    # the padded utterance gives the same frames as alone (up to the rounding of another batch size)
    alone, _ = m(x[1:, :9600])
    assert torch.allclose(logp[1, :31], alone[0], atol=1e-5)
    # gradient reaches the waveform
    xr = x.clone().requires_grad_(True)
    ctc_loss(m, xr, lengths, ["hello", "hi"]).sum().backward()
    assert xr.grad.abs().sum() > 0 and xr.grad[1, 9600 + 512:].abs().sum() == 0
    # checkpoint round trip (safetensors + json)
    save_recognizer(m, tmp_path / "ckpt")
    m2 = load_recognizer(tmp_path / "ckpt")
    assert torch.equal(m2(x, lengths)[0], logp)
    assert transcribe(m2, x, lengths) == transcribe(m, x, lengths)
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["architecture"] == "ctc-bigru"
    assert all(p.requires_grad for p in m2.parameters())
    m3 = load_recognizer(tmp_path / "ckpt", frozen=True)                 # for attacks: no weight gradients
    assert not any(p.requires_grad for p in m3.parameters()) and torch.allclose(m3(x, lengths)[0], logp, atol=1e-5)
    xr = x.clone().requires_grad_(True)
    ctc_loss(m3, xr, lengths, ["hello", "hi"]).sum().backward()
    assert xr.grad.abs().sum() > 0
    assert recognizer_card(tmp_path / "ckpt").startswith("checkpoint written 20")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        (tmp_path / "ckpt" / "model.safetensors").unlink()
        load_recognizer(tmp_path / "ckpt")


def test_hf_wav2vec2_adapter(tmp_path):
    pytest.importorskip("transformers")
    from _hf_tiny import save_tiny_wav2vec2
    vocab = save_tiny_wav2vec2(tmp_path)
    rec = HFWav2Vec2Recognizer.from_pretrained(tmp_path)
    assert isinstance(rec, Recognizer) and rec.blank == 0
    assert rec.encode_text("eat a tea") == [vocab[c] for c in "EAT|A|TEA"]
    assert rec.decode_labels([vocab["T"], vocab["|"], vocab["A"]]) == "t a"
    x = (0.1 * torch.randn(2, 8000)).requires_grad_(True)
    logits, frames = rec.frame_logits(x, torch.tensor([8000, 4000]))
    assert logits.shape[0] == 2 and logits.shape[2] == len(vocab) and frames[0] > frames[1]
    ctc_loss(rec, x, torch.tensor([8000, 4000]), ["tea", "at"]).sum().backward()
    assert x.grad.abs().sum() > 0
    assert len(transcribe(rec, x.detach(), torch.tensor([8000, 4000]))) == 2


def test_utterance_feature_norm_is_gain_invariant_and_old_configs_load(tmp_path):
    torch.manual_seed(0)
    x = 0.1 * torch.randn(2, 16000)
    lengths = torch.tensor([16000, 9600])
    m = CTCRecognizer(n_mels=20, channels=16, hidden=16, layers=1, feature_norm="utterance").eval()
    g = CTCRecognizer(n_mels=20, channels=16, hidden=16, layers=1, feature_norm="global").eval()
    assert CTCRecognizer(n_mels=20, channels=16, hidden=16, layers=1).feature_norm == "utterance"  # the default
    g.load_state_dict(m.state_dict())
    with torch.no_grad():
        # a 4x louder input shifts every log-mel by log(16): removed per utterance, not globally
        assert torch.allclose(m(4 * x, lengths)[0], m(x, lengths)[0], atol=1e-3)
        assert not torch.allclose(g(4 * x, lengths)[0], g(x, lengths)[0], atol=1e-2)
        # statistics come from the valid frames only: padding does not change them
        alone, _ = m(x[1:, :9600])
        assert torch.allclose(m(x, lengths)[0][1, :20], alone[0, :20], atol=5e-3)
    save_recognizer(m, tmp_path / "utt")
    assert load_recognizer(tmp_path / "utt").feature_norm == "utterance"
    # checkpoints written before the option existed (no "feature_norm" key) keep global statistics
    save_recognizer(g, tmp_path / "old")
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    del cfg["feature_norm"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    assert load_recognizer(tmp_path / "old").feature_norm == "global"
    with pytest.raises(ValueError, match="feature_norm"):
        CTCRecognizer(feature_norm="batch")


def test_one_cycle_schedule_and_step_budget(tmp_path):
    from audioadv.asr_train import one_cycle, train_recognizer
    from audioadv.data.utterances import Utterances
    assert one_cycle(0.0, 1.0, 0.2) == pytest.approx(0.04)
    assert one_cycle(0.2, 1.0, 0.2) == pytest.approx(1.0)
    assert one_cycle(1.0, 1.0, 0.2, final=1e-3) == pytest.approx(1e-3)
    assert one_cycle(0.1, 1.0, 0.2) < one_cycle(0.2, 1.0, 0.2) > one_cycle(0.6, 1.0, 0.2)
    torch.manual_seed(0)
    waves = [0.1 * torch.randn(4000 + 400 * i) for i in range(40)]
    data = Utterances(waves, ["ab" if i % 2 else "ba" for i in range(40)])
    kw = dict(epochs=1000, max_steps=7, batch_seconds=0.5, eval_every=5, log=lambda *_: None,
              model_kwargs=dict(n_mels=20, channels=16, hidden=16, layers=1))
    model, summary = train_recognizer(data, data.subset(range(4)), tmp_path / "run", **kw)
    # the step budget, not the 1000 epochs, ended training (mid-epoch); the best weights were saved
    assert summary["steps"] == 7 and summary["epochs"] < 1000
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert len((tmp_path / "run" / "train_log.jsonl").read_text().splitlines()) >= 1
    again, _ = train_recognizer(data, data.subset(range(4)), tmp_path / "again", **kw)   # same seed, same weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="max_steps"):
        train_recognizer(data, data, tmp_path / "bad", **{**kw, "max_steps": 0})


def test_reverb_augmentation_keeps_level_length_and_seed():
    from audioadv.asr_train import _augment, room_responses
    g = torch.Generator().manual_seed(0)
    h = room_responses(torch.tensor([0.1, 0.5]), 16000, g)
    # direct path 1, tail of equal energy, silent after its own RT60
    assert h.shape == (2, 8000) and torch.all(h[:, 0] == 1)
    assert torch.allclose(h[:, 1:].pow(2).sum(1), torch.ones(2), atol=1e-4)
    assert h[0, 1601:].abs().max() == 0 and h[1, 7000:].abs().max() > 0
    # a click becomes a decaying tail; padding stays zero; the rms level is kept
    wav = torch.zeros(3, 16000)
    wav[:, 100] = 0.5
    wav[:, 3000:3100] = 0.2 * torch.randn(3, 100)
    lengths = torch.tensor([16000, 12000, 8000])
    out_dry = _augment(wav, lengths, torch.Generator().manual_seed(1), reverb=0.0)
    out = _augment(wav, lengths, torch.Generator().manual_seed(1), reverb=1.0)
    again = _augment(wav, lengths, torch.Generator().manual_seed(1), reverb=1.0)
    assert torch.equal(out, again)
    assert out[1, 12000:].abs().max() == 0 and out[2, 8000:].abs().max() == 0
    # energy spread after the click (reverberation), absent in the dry version
    assert out[:, 400:2900].pow(2).sum() > 20 * out_dry[:, 400:2900].pow(2).sum()
    # same level up to the random gain (+-6 dB) and added noise
    ratio = out.pow(2).sum(1) / out_dry.pow(2).sum(1)
    assert torch.all(ratio > 10 ** (-12 / 10)) and torch.all(ratio < 10 ** (12 / 10))


def test_eval_reports_reverberant_and_dry_subsets():
    from audioadv.commands.asr import subset_error_rates
    items = [{"rt60": 0.3}, {"rt60": None}, {"rt60": 0.0}, {"rt60": 0.2}]
    refs = ["ab", "cd", "ef", "gh"]
    hyps = ["ab", "cd", "ex", "xx"]
    out = subset_error_rates(items, refs, hyps)
    assert out["reverberant"]["n"] == 2 and out["reverberant"]["cer"] == pytest.approx(0.5)
    assert out["dry"]["n"] == 2 and out["dry"]["cer"] == pytest.approx(0.25)
    assert subset_error_rates([{"text": "a"}], ["a"], ["a"]) == {}


def test_an_utterance_decodes_the_same_however_far_it_is_padded():
    # the last frames of a centred STFT read past the end: zeros, whether the tensor ends there or not
    torch.manual_seed(0)
    m = CTCRecognizer(n_mels=20, channels=16, hidden=16, layers=1).eval()
    x = 0.1 * torch.randn(1, 8000)
    with torch.no_grad():
        a, fa = m(x)
        b, fb = m(torch.cat([x, 0.5 * torch.ones(1, 3000)], 1), torch.tensor([8000]))  # garbage after it
    assert torch.equal(fa, fb) and torch.equal(a, b[:, :a.shape[1]])
