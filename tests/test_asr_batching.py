"""Continuous batching of the speech-to-text attacks: an utterance's result and record do not
depend on which utterances share its batch, nor on the batch size (alone, a batch that refills
as utterances leave, all at once), bit for bit on one CPU thread."""
import pytest
import torch

from _asr_toy import batch, random_texts, train_toy
from audioadv.attacks import cw_ctc, imperceptible, ipc, sparse

N = 7


@pytest.fixture(scope="module")
def setup():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = train_toy()
    x, lengths = batch(random_texts(N, seed=4, lo=2, hi=6), seed=5)
    targets = random_texts(N, seed=6, lo=2, hi=4)
    yield model, x, lengths, targets
    torch.set_num_threads(threads)


def same(a, b):
    """Equal records apart from wall time."""
    drop = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    return [drop(r) for r in a] == [drop(r) for r in b]


CASES = {
    "cw": (cw_ctc, dict(tau=0.2, lr=3e-3, max_iter=40, patience=4)),
    "ipc": (ipc, dict(ratio=1.0, lr=3e-3, max_iter=40, stop_after=2)),
    "imperceptible": (imperceptible, dict(tau=0.2, lr_stage1=3e-3, max_iter_stage1=25, stop_after=1,
                                          max_iter_stage2=20, lr_stage2=1e-3, up_every=3, down_every=5,
                                          patience_stage2=4)),
    "sparse-cw": (sparse(cw_ctc, 0.4, ramp=0.2), dict(tau=0.2, lr=3e-3, max_iter=40, patience=6)),
    "sparse-ipc": (sparse(ipc, 0.3), dict(ratio=1.0, lr=3e-3, max_iter=30, stop_after=1)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_result_does_not_depend_on_the_batch(setup, name):
    model, x, lengths, targets = setup
    attack, kw = CASES[name]
    full, rec_full = attack(model, x, targets, lengths=lengths, batch_size=N, **kw)
    cont, rec_cont = attack(model, x, targets, lengths=lengths, batch_size=3, **kw)
    assert torch.equal(full, cont) and same(rec_full, rec_cont)
    # the stop rules fired at different steps, so slots were refilled mid-run
    assert len({r["iterations"] for r in rec_full}) > 1
    assert any(r["success"] for r in rec_full)
    i = N - 1                                            # an utterance alone
    n = int(lengths[i])
    alone, rec = attack(model, x[i:i + 1, :n], targets[i:i + 1], batch_size=1, **kw)
    assert torch.equal(alone[0], full[i, :n]) and same(rec, rec_full[i:i + 1])


def test_masking_threshold_once_per_utterance(setup, monkeypatch):
    import importlib
    mod = importlib.import_module("audioadv.attacks.imperceptible")  # the module, not the function
    model, x, lengths, targets = setup
    calls = []
    real = mod.masking_threshold

    def counting(wav, **kw):
        calls.append(len(wav))
        return real(wav, **kw)
    monkeypatch.setattr(mod, "masking_threshold", counting)
    _, rec = imperceptible(model, x, targets, lengths=lengths, tau=0.2, lr_stage1=3e-3, max_iter_stage1=10,
                           max_iter_stage2=20, batch_size=3)
    assert calls == [1] * N and all(r["iterations"] == 30 for r in rec)


def test_batch_size_must_be_positive(setup):
    model, x, lengths, targets = setup
    with pytest.raises(ValueError, match="batch_size"):
        cw_ctc(model, x, targets, lengths=lengths, max_iter=2, batch_size=0)


def test_trajectory_does_not_depend_on_the_batch_with_per_utterance_features(setup):
    # per-utterance log-mel normalisation (the recogniser's default) sums over each utterance's own
    # frames, forward and backward: the last objective of every utterance is the same bit for bit
    from audioadv.models.asr import CTCRecognizer
    _, x, lengths, targets = setup
    torch.manual_seed(1)
    model = CTCRecognizer(n_mels=20, channels=24, hidden=24, layers=1, alphabet="abcd").eval()
    assert model.feature_norm == "utterance"
    kw = dict(tau=0.2, lr=3e-3, max_iter=8)
    _, full = cw_ctc(model, x, targets, lengths=lengths, batch_size=N, **kw)
    for b in (1, 2):
        _, part = cw_ctc(model, x, targets, lengths=lengths, batch_size=b, **kw)
        assert same(full, part)
