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
