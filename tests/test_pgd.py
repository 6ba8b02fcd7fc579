import math

import pytest
import torch
import torch.nn.functional as F

from audioadv import models
from audioadv.attacks import fgsm, pgd, pgd_l2, pgd_linf

T = 400




class Linear(torch.nn.Module):
    """logits = W x: the optimal l_inf / l_2 perturbations are known in closed form."""

    def __init__(self, c=3, t=T, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(c, t, generator=g) / math.sqrt(t))

    def forward(self, x):
        return x @ self.w.T


def _data(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, T, generator=g).clamp(-3, 3)
    return x, torch.arange(n) % 3


def _ce(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def test_fgsm_is_one_signed_step_and_raises_loss():
    m, (x, y) = Linear(), _data()
    adv = fgsm(m, x, y, eps=0.01)
    d = adv - x
    assert d.abs().max() <= 0.01 + 1e-7
    # for a linear model the step is eps * sign(w_j - w_y) direction of the CE gradient: all |d| = eps
    assert torch.allclose(d.abs(), torch.full_like(d, 0.01), atol=1e-6)
    assert (_ce(m, adv, y) > _ce(m, x, y)).all()
    # targeted FGSM lowers the loss of the target
    t = (y + 1) % 3
    adv_t = fgsm(m, x, t, targeted=True, eps=0.01)
    assert (_ce(m, adv_t, t) < _ce(m, x, t)).all()


@pytest.mark.parametrize("norm,eps", [("linf", 0.005), ("l2", 0.1)])
def test_pgd_raises_loss_and_respects_bound(norm, eps):
    m, (x, y) = Linear(), _data()
    adv = pgd(m, x, y, eps=eps, norm=norm, steps=20, seed=0)
    d = adv - x
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (size <= eps * (1 + 1e-5)).all()
    assert (_ce(m, adv, y) > _ce(m, x, y) + 1e-4).all()
    # PGD is at least as strong as FGSM with the same l_inf budget on this convex problem
    if norm == "linf":
        assert (_ce(m, adv, y) >= _ce(m, fgsm(m, x, y, eps=eps), y) - 1e-4).all()


def test_pgd_l2_reaches_optimum_of_linear_binary_problem():
    # two classes: the best l2 perturbation increases the margin by eps * ||w_0 - w_1||
    m = Linear(c=2)
    x, _ = _data(4)
    y = torch.zeros(4, dtype=torch.long)
    eps = 0.2
    adv = pgd_l2(m, x, y, eps=eps, steps=30, random_start=False)
    with torch.no_grad():
        gain = (m(x)[:, 0] - m(x)[:, 1]) - (m(adv)[:, 0] - m(adv)[:, 1])
    best = eps * (m.w[0] - m.w[1]).norm()
    torch.testing.assert_close(gain, best.detach().expand(4), rtol=1e-3, atol=1e-4)


def test_clamped_to_waveform_range():
    m, (x, y) = Linear(), _data()
    x = x.sign() * 0.999  # near full scale: most steps would leave [-1, 1]
    for norm, eps in (("linf", 0.05), ("l2", 1.0)):
        adv = pgd(m, x, y, eps=eps, norm=norm, steps=5)
        assert adv.min() >= -1 and adv.max() <= 1
    adv = fgsm(m, x, y, eps=0.05)
    assert adv.min() >= -1 and adv.max() <= 1


def test_targeted_pgd_reaches_target():
    m, (x, y) = Linear(), _data()
    t = (y + 1) % 3
    adv = pgd_linf(m, x, t, targeted=True, eps=0.2, steps=30)
    assert (m(adv).argmax(1) == t).all()
    assert (_ce(m, adv, t) < _ce(m, x, t)).all()


def test_seed_and_per_example_eps():
    m, (x, y) = Linear(), _data()
    a1 = pgd(m, x, y, eps=0.01, steps=3, seed=5)
    a2 = pgd(m, x, y, eps=0.01, steps=3, seed=5)
    a3 = pgd(m, x, y, eps=0.01, steps=3, seed=6, alpha=1e-4)
    a4 = pgd(m, x, y, eps=0.01, steps=3, seed=5, alpha=1e-4)
    assert torch.equal(a1, a2)
    assert not torch.equal(a3, a4)  # random start differs
    eps = torch.tensor([0.001, 0.002, 0.004, 0.008, 0.016, 0.0])
    adv = pgd(m, x, y, eps=eps, steps=5)
    assert ((adv - x).abs().amax(1) <= eps + 1e-7).all()
    assert torch.equal(adv[-1], x[-1])
    with pytest.raises(ValueError, match="eps"):
        pgd(m, x, y, eps=torch.ones(2))
    with pytest.raises(ValueError, match="norm"):
        pgd(m, x, y, norm="l1")
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        pgd(m, 2 * torch.ones(2, T), y[:2])


def test_restarts_and_early_stop():
    m, (x, y) = Linear(), _data()
    adv = pgd(m, x, y, eps=0.3, steps=10, restarts=3, early_stop=True, seed=0)
    assert (m(adv).argmax(1) != y).all()
    # early stop returns smaller perturbations than running all steps
    full = pgd(m, x, y, eps=0.3, steps=10, seed=0)
    assert (adv - x).abs().sum() < (full - x).abs().sum()


def test_dict_inputs_perturb_audio_only():
    lin = Linear()

    class AV(torch.nn.Module):
        def forward(self, inputs):
            return lin(inputs["audio"]) + inputs["video"].mean(1, keepdim=True)

    x, y = _data()
    video = torch.randn(len(x), 5)
    out = pgd(AV(), {"audio": x, "video": video}, y, eps=0.01, steps=5, restarts=2)
    assert set(out) == {"audio", "video"} and torch.equal(out["video"], video)
    assert (out["audio"] - x).abs().max() <= 0.01 + 1e-7
    assert not torch.equal(out["audio"], x)


def test_pgd_on_zoo_model_raises_loss_and_keeps_mode():
    torch.manual_seed(0)
    m = models.create("logmel-cnn", num_classes=4, input_length=4000).eval()
    x = 0.05 * torch.randn(4, 4000)
    y = m(x).argmax(1).detach()
    adv = pgd(m, x, y, eps=0.002, steps=5, seed=0)
    assert (adv - x).abs().max() <= 0.002 + 1e-7
    assert _ce(m, adv, y).mean() > _ce(m, x, y).mean()
    assert not m.training and all(p.grad is None for p in m.parameters())
