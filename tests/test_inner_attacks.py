"""DDN, DeepFool and CW-l2 on a tiny tone classifier trained in the test."""
import pytest
import torch

from _uap_tiny import trained_model

from audioadv.attacks.cw import cw_l2
from audioadv.attacks.ddn import ddn
from audioadv.attacks.deepfool import deepfool


@pytest.fixture(scope="module")
def setup():
    model, _, (x, y) = trained_model()
    keep = model(x).argmax(1) == y
    return model, x[keep][:24], y[keep][:24]


def _check(model, x, adv, lab, targeted, min_rate):
    assert adv.shape == x.shape and adv.min() >= -1 and adv.max() <= 1
    pred = model(adv).argmax(1)
    ok = pred == lab if targeted else pred != lab
    assert ok.float().mean() >= min_rate, f"success {ok.float().mean():.2f}"
    d = (adv - x).norm(dim=1)
    # minimal perturbations: random noise of the same l2 norm almost never fools the model
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    noisy = (x + noise / noise.norm(dim=1, keepdim=True) * d[:, None]).clamp(-1, 1)
    pn = model(noisy).argmax(1)
    noise_ok = pn == lab if targeted else pn != lab
    assert noise_ok.float().mean() <= 0.5 * ok.float().mean()
    return ok, d


@pytest.mark.parametrize("targeted", [False, True])
def test_ddn(setup, targeted):
    model, x, y = setup
    lab = (y + 1) % 4 if targeted else y
    steps, init, gamma = 60, 0.5, 0.05
    adv = ddn(model, x, lab, targeted=targeted, steps=steps, init_norm=init, gamma=gamma)
    ok, d = _check(model, x, adv, lab, targeted, 0.9)
    # within its norm: the norm schedule can never exceed init * (1 + gamma)^steps
    assert d.max() <= init * (1 + gamma) ** steps + 1e-4
    # unfooled points come back unchanged
    assert torch.equal(adv[~ok], x[~ok])


@pytest.mark.parametrize("targeted", [False, True])
def test_deepfool(setup, targeted):
    model, x, y = setup
    lab = (y + 1) % 4 if targeted else y
    adv = deepfool(model, x, lab, targeted=targeted, steps=50, overshoot=0.02)
    _check(model, x, adv, lab, targeted, 0.95)


@pytest.mark.parametrize("targeted", [False, True])
def test_cw_l2(setup, targeted):
    model, x, y = setup
    x, y = x[:12], y[:12]
    lab = (y + 1) % 4 if targeted else y
    adv = cw_l2(model, x, lab, targeted=targeted, c=1.0, steps=60, binary_search_steps=4, lr=0.02)
    ok, d = _check(model, x, adv, lab, targeted, 0.9)
    assert torch.equal(adv[~ok], x[~ok])


def test_ddn_is_smaller_than_deepfool_without_overshoot_blowup(setup):
    """DDN's norm search returns smaller perturbations than its starting radius suggests and no larger
    than DeepFool's (a minimal-norm attack that overshoots)."""
    model, x, y = setup
    d_ddn = (ddn(model, x, y, steps=100, init_norm=0.5) - x).norm(dim=1)
    d_df = (deepfool(model, x, y) - x).norm(dim=1)
    assert d_ddn.median() <= 1.1 * d_df.median()


def test_bad_inputs(setup):
    model, x, y = setup
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        ddn(model, x * 10, y)
    with pytest.raises(ValueError, match="labels"):
        deepfool(model, x, y[:3])
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        cw_l2(model, x[0], y[:1])


class _Counted(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.rows = net, 0

    def forward(self, x):
        self.rows += len(x["audio"] if isinstance(x, dict) else x)
        return self.net(x)


def test_cw_abort_early_is_per_example_and_warmup_trades_time_for_size(setup):
    """Authors' abort rule (first check at the start), judged per example: examples whose loss stalls
    leave the batch (fewer model rows than without abort); a warm-up delays the checks (more rows,
    perturbations no larger)."""
    model, x, y = setup
    x, y = x[:8], y[:8]
    kw = dict(c=0.1, steps=40, binary_search_steps=3, lr=0.01)
    fast, slow, full = _Counted(model), _Counted(model), _Counted(model)
    a = cw_l2(fast, x, y, **kw)
    b = cw_l2(slow, x, y, abort_warmup=4, **kw)
    cw_l2(full, x, y, abort_early=False, **kw)
    assert full.rows == 3 * 40 * len(x)
    assert fast.rows < slow.rows < full.rows
    # each example is judged alone: the result for one clip does not depend on the rest of the batch
    one = cw_l2(model, x[:1], y[:1], **kw)
    assert torch.allclose(one, a[:1], atol=1e-6)
    da, db = (a - x).norm(dim=1), (b - x).norm(dim=1)
    okb = model(b).argmax(1) != y
    assert okb.float().mean() >= 0.9 and db[okb].median() <= da[okb].median()


def test_inner_attacks_take_dict_inputs(setup):
    from _uap_tiny import DictNet

    model, x, y = setup
    x, y = x[:6], y[:6]
    gain = torch.ones(len(x))
    gain[::2] = 0.8
    dm = DictNet(model)
    inputs = {"audio": x, "gain": gain}
    for fn, kw in ((cw_l2, dict(c=1.0, steps=30, binary_search_steps=2, lr=0.02, abort_warmup=3)),
                   (deepfool, {}), (ddn, dict(steps=60, init_norm=0.5))):
        out = fn(dm, inputs, y, **kw)
        assert torch.equal(out["gain"], gain)
        ok = dm(out).argmax(1) != y
        assert ok.float().mean() >= 0.8, fn.__name__
        assert out["audio"].abs().max() <= 1


def test_iterative_dict_inputs_and_sequential_batches():
    from _uap_tiny import DictNet, trained_model

    from audioadv.attacks import universal as U

    model, (x, y), (xte, yte) = trained_model()
    x, y = x[:60], y[:60]
    kw = dict(attack_kwargs={"steps": 20, "init_norm": 0.5}, max_passes=2, seed=0, progress=False, xi=0.2)
    v_t, h_t = U.iterative(model, (x, y), **kw)
    # the same data as a dict under another name gives the same perturbation (gain 1 everywhere)
    wm = DictNet(model, key="wave")
    v_d, h_d = U.iterative(wm, ({"wave": x, "gain": torch.ones(len(x))}, y), key="wave", **kw)
    assert torch.allclose(v_t, v_d, atol=1e-6) and h_t[-1]["success_rate"] == h_d[-1]["success_rate"]
    assert h_t[-1]["success_rate"] >= 0.6
    # batched inner attack, combined sequentially: within the ball, near the sequential result
    v_s, h_s = U.iterative(model, (x, y), batch_size=6, aggregate="sequential", **kw)
    assert v_s.abs().max() <= 0.2 + 1e-6 and h_s[-1]["success_rate"] >= h_t[-1]["success_rate"] - 0.15
    with pytest.raises(ValueError, match="aggregate"):
        U.iterative(model, (x, y), aggregate="median", max_passes=1, progress=False)
