"""Continuous batching of the classifier attacks (an example that finishes leaves, the next one takes its
place: same results as attacking the whole batch at once) and dict inputs passing through unchanged."""
import pytest
import torch

from _uap_tiny import DictNet, trained_model

from audioadv.attacks import cw_l2, ddn, deepfool, fgsm, pgd
from audioadv.attacks._util import batch_loop, split_inputs


@pytest.fixture(scope="module")
def setup():
    model, _, (x, y) = trained_model()
    keep = model(x).argmax(1) == y
    return model, x[keep][:10], y[keep][:10]


class Sizes(torch.nn.Module):
    """Records the batch size of every forward pass that needs a gradient (the attack iterations)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.sizes = net, []

    def forward(self, x):
        a = x["audio"] if isinstance(x, dict) else x
        if torch.is_grad_enabled() and a.requires_grad:
            self.sizes.append(len(a))
        return self.net(x)


CASES = {
    "pgd": (pgd, dict(eps=0.05, steps=12, restarts=3, early_stop=True, seed=4)),
    "deepfool": (deepfool, dict(steps=30, overshoot=0.02)),
    "cw_l2": (cw_l2, dict(c=0.5, steps=30, binary_search_steps=3, lr=0.02)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_continuous_batching_matches_whole_batch(setup, name):
    model, x, y = setup
    fn, kw = CASES[name]
    all_in = Sizes(model)
    whole = fn(all_in, x, y, **kw)
    counted = Sizes(model)
    slots = fn(counted, x, y, batch_size=3, **kw)
    assert torch.allclose(slots, whole, atol=1e-6, rtol=0)
    # examples leave at different times (early stop / abort) yet the passes stay full until the queue is
    # empty, and each example does the same iterations as in the whole batch
    sizes = counted.sizes
    assert len(set(all_in.sizes)) > 1, "no example left early: the test checks nothing"
    last_full = len(sizes) - 1 - sizes[::-1].index(3)
    assert all(s == 3 for s in sizes[:last_full + 1]) and all(s < 3 for s in sizes[last_full + 1:])
    assert sum(sizes) == sum(all_in.sizes)
    # and results do not depend on which examples share a batch
    one = fn(model, x[3:4], y[3:4], **kw) if name != "pgd" else None
    if one is not None:
        assert torch.allclose(one, whole[3:4], atol=1e-6, rtol=0)


def test_pgd_random_start_is_per_example(setup):
    model, x, y = setup
    kw = dict(eps=0.05, steps=3, seed=9)
    whole = pgd(model, x, y, **kw)
    assert torch.equal(pgd(model, x, y, batch_size=4, **kw), whole)
    assert not torch.equal(pgd(model, x, y, eps=0.05, steps=3, seed=10), whole)


def test_batch_loop_refills_and_rejects_bad_size():
    seen = []

    def start(ids):
        return {"ids": ids, "left": ids % 3 + 1}

    def step(st):
        seen.append(sorted(st["ids"].tolist()))
        st["left"] = st["left"] - 1
        return st["left"] == 0

    done = []
    batch_loop(7, 3, start, step, lambda rows: done.extend(rows["ids"].tolist()))
    assert sorted(done) == list(range(7))
    assert seen[0] == [0, 1, 2] and seen[1] == [1, 2, 3]     # example 0 left after one step, 3 came in
    assert all(len(s) == 3 for s in seen[:4])
    with pytest.raises(ValueError, match="batch_size"):
        batch_loop(3, 0, start, step, lambda rows: None)


ALL = {
    "fgsm": (fgsm, dict(eps=0.05)),
    "pgd": (pgd, dict(eps=0.05, steps=5, restarts=2, early_stop=True, random_start=False)),
    "ddn": (ddn, dict(steps=20, init_norm=0.5)),
    **{k: v for k, v in CASES.items() if k != "pgd"},
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_dict_inputs_pass_through_unchanged(setup, name):
    model, x, y = setup
    fn, kw = ALL[name]
    gain = torch.linspace(0.8, 1.2, len(x))
    video = torch.randn(len(x), 3, 4)
    inputs = {"audio": x, "gain": gain, "video": video, "fps": 25}
    kw = dict(kw, batch_size=4) if name != "fgsm" and name != "ddn" else kw
    out = fn(DictNet(model), inputs, y, **kw)
    assert set(out) == set(inputs)
    assert out["gain"] is gain and out["video"] is video and out["fps"] == 25
    assert torch.equal(gain, torch.linspace(0.8, 1.2, len(x)))      # not modified in place
    assert out["audio"].shape == x.shape and not torch.equal(out["audio"], x)
    # the attack saw each example's own gain: same result as the model with the gain folded in
    kw.pop("batch_size", None)
    ref = torch.cat([fn(_Fold(model, gain[i:i + 1]), x[i:i + 1], y[i:i + 1], **kw) for i in range(0, len(x), 3)])
    assert torch.allclose(out["audio"][::3], ref, atol=1e-6, rtol=0)


class _Fold(torch.nn.Module):
    def __init__(self, net, gain):
        super().__init__()
        self.net, self.gain = net, gain

    def forward(self, x):
        return self.net(x * self.gain.view(-1, 1))


def test_rebuild_slices_other_entries_once_per_row_set():
    video = torch.arange(12.0).view(4, 3)
    audio, rebuild = split_inputs({"audio": torch.zeros(4, 5), "video": video})
    rows = torch.tensor([2, 0])
    a = rebuild(torch.ones(2, 5), rows=rows)
    b = rebuild(torch.ones(2, 5), rows=rows)
    assert torch.equal(a["video"], video[[2, 0]]) and a["video"] is b["video"]
    c = rebuild(torch.ones(2, 5), rows=torch.tensor([1, 3]))
    assert torch.equal(c["video"], video[[1, 3]])
    assert rebuild(audio)["video"] is video


@pytest.mark.parametrize("name", sorted(CASES))
def test_empty_batch_and_bad_batch_size(setup, name):
    model, x, y = setup
    fn, kw = CASES[name]
    out = fn(model, x[:0], y[:0], batch_size=4, **kw)
    assert out.shape == (0, x.shape[1])
    with pytest.raises(ValueError, match="batch_size"):
        fn(model, x, y, batch_size=0, **kw)
