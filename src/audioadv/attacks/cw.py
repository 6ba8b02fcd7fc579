"""Carlini-Wagner l2 attack with a binary search over the trade-off constant c.

Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017, Sec. V-A:
minimise ||x' - x||_2^2 + c * g(x') over the change of variables x' = tanh(w) (keeps the
waveform in [-1, 1]; the paper's images live in [0, 1], audio in [-1, 1] needs no rescaling),
with g the hinge on logits (their f_6): untargeted max(Z_y - max_{j != y} Z_j, -kappa), targeted
max(max_{j != t} Z_j - Z_t, -kappa). Adam, lr 0.01; c found by binary search per example
(x10 until the first success, then bisection). The smallest adversarial found is returned.
"""
from __future__ import annotations

import torch

from ._util import bview, check_audio, hinge, is_adversarial, split_inputs

_EPS = 1e-6


def cw_l2(model, inputs, labels, *, targeted: bool = False, c: float = 1e-3, kappa: float = 0.0,
          steps: int = 1000, binary_search_steps: int = 9, lr: float = 0.01, abort_early: bool = True):
    """CW-l2 (Carlini & Wagner 2017). Returns adversarial inputs; points never fooled come back unchanged.

    c: initial trade-off constant. kappa: confidence. steps: Adam iterations per search step.
    binary_search_steps: outer search steps over c. abort_early: stop an inner run when the
    loss has not decreased by 0.01% over steps/10 iterations.
    """
    audio, rebuild = split_inputs(inputs)
    check_audio(audio, labels, "cw_l2")
    x = audio.detach()
    labels = labels.to(x.device)
    n = len(x)
    const = torch.full((n,), float(c), device=x.device, dtype=x.dtype)
    lower = torch.zeros_like(const)
    upper = torch.full_like(const, 1e10)
    best_l2 = torch.full_like(const, float("inf"))
    best_adv = x.clone()
    w0 = torch.atanh(x * (1 - _EPS))
    for _ in range(binary_search_steps):
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=lr)
        success = torch.zeros(n, dtype=torch.bool, device=x.device)
        prev = float("inf")
        check = max(steps // 10, 1)
        for it in range(steps):
            xa = torch.tanh(w)
            logits = model(rebuild(xa))
            dist = (xa - x).flatten(1).pow(2).sum(1)
            loss_i = dist + const * hinge(logits, labels, targeted=targeted, kappa=kappa)
            loss = loss_i.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                adv = is_adversarial(logits.argmax(1), labels, targeted)
                if kappa > 0:
                    adv &= hinge(logits, labels, targeted=targeted, kappa=kappa) <= -kappa
                l2 = dist.sqrt()
                better = adv & (l2 < best_l2)
                best_l2 = torch.where(better, l2, best_l2)
                best_adv = torch.where(bview(better, x), xa.detach(), best_adv)
                success |= adv
            if abort_early and (it + 1) % check == 0:
                if loss.item() > prev * 0.9999:
                    break
                prev = loss.item()
        with torch.no_grad():
            upper = torch.where(success, torch.minimum(upper, const), upper)
            lower = torch.where(success, lower, torch.maximum(lower, const))
            bisect = upper < 1e9
            const = torch.where(bisect, (lower + upper) / 2, const * 10)
    return rebuild(best_adv.detach())
