"""Carlini-Wagner l2 attack with a binary search over the trade-off constant c.

Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017, Sec. V-A:
minimise ||x' - x||_2^2 + c * g(x') over the change of variables x' = tanh(w) (keeps the
waveform in [-1, 1]; the paper's images live in [0, 1], audio in [-1, 1] needs no rescaling),
with g the hinge on logits (their f_6): untargeted max(Z_y - max_{j != y} Z_j, -kappa), targeted
max(max_{j != t} Z_j - Z_t, -kappa). Adam, lr 0.01; c found by binary search per example
(x10 until the first success, then bisection; with >= 10 search steps the last one reruns at the
upper bound, as in the authors' code). The smallest adversarial found is returned.

Early abort (the authors' code, ``abort_early``): every ceil(steps / 10) iterations, starting at the
first one, the loss is compared with its value at the previous check and the inner run stops when it
fell by less than 0.01 %. Here the test is per example and an example that stops leaves the batch,
so the remaining iterations only pay for the examples still improving (the authors test the summed
loss of their batch). Because the first check records the loss at the unperturbed start, a run whose
first Adam steps overshoot (lr 0.01 moves every sample by ~0.01 per step, loud for audio) stops at
the second check; ``abort_warmup`` delays the first check by that many iterations, which lets such
runs converge to much smaller perturbations at the price of more iterations.
"""
from __future__ import annotations

import math

import torch

from ._util import ADAM_BETAS, ADAM_EPS, check_audio, hinge, is_adversarial, split_inputs, take

_EPS = 1e-6


def _rows(inputs, rest_rows, audio):
    """Model input for a subset of rows: the perturbed audio plus the other dict entries of those rows."""
    return audio if not isinstance(inputs, dict) else {**rest_rows, "audio": audio}


def cw_l2(model, inputs, labels, *, targeted: bool = False, c: float = 1e-3, kappa: float = 0.0,
          steps: int = 1000, binary_search_steps: int = 9, lr: float = 0.01, abort_early: bool = True,
          abort_warmup: int = 0):
    """CW-l2 (Carlini & Wagner 2017). Returns adversarial inputs; points never fooled come back unchanged.

    c: initial trade-off constant. kappa: confidence. steps: Adam iterations per search step (lr: its
    step size). binary_search_steps: outer search steps over c. abort_early: per example, stop
    when the loss fell by less than 0.01 % since the previous check (every ceil(steps / 10) iterations,
    the first check at iteration ``abort_warmup``; 0 = the authors' rule).
    """
    audio, _ = split_inputs(inputs)
    check_audio(audio, labels, "cw_l2")
    if steps < 1 or binary_search_steps < 1 or abort_warmup < 0:
        raise ValueError(f"cw_l2: steps and binary_search_steps must be >= 1 and abort_warmup >= 0 "
                         f"(got {steps}, {binary_search_steps}, {abort_warmup})")
    x = audio.detach()
    labels = labels.to(x.device)
    n = len(x)
    const = torch.full((n,), float(c), device=x.device, dtype=x.dtype)
    lower = torch.zeros_like(const)
    upper = torch.full_like(const, 1e10)
    best_l2 = torch.full_like(const, math.inf)
    best_adv = x.clone()
    w0 = torch.atanh(x * (1 - _EPS))
    check = math.ceil(steps / 10)
    b1, b2 = ADAM_BETAS
    for search in range(binary_search_steps):
        if binary_search_steps >= 10 and search == binary_search_steps - 1:
            const = torch.minimum(upper, torch.full_like(upper, 1e10))   # final rerun at the upper bound
        # state of the rows still optimising, compacted: a row that stops is dropped from every tensor
        act = torch.arange(n, device=x.device)
        w = w0.clone()
        m, s = torch.zeros_like(w), torch.zeros_like(w)      # Adam moments
        xr, lab, cst = x, labels, const.clone()
        prev = torch.full_like(const, math.inf)
        rest_rows = inputs if isinstance(inputs, dict) else None
        success = torch.zeros(n, dtype=torch.bool, device=x.device)
        for it in range(steps):
            w.requires_grad_(True)
            xa = torch.tanh(w)
            logits = model(_rows(inputs, rest_rows, xa))
            dist = (xa - xr).flatten(1).pow(2).sum(1)
            h = hinge(logits, lab, targeted=targeted, kappa=kappa)
            loss = dist + cst * h
            g, = torch.autograd.grad(loss.sum(), w)
            with torch.no_grad():
                adv = is_adversarial(logits.argmax(1), lab, targeted)
                if kappa > 0:
                    adv &= h <= -kappa
                l2 = dist.sqrt()
                better = adv & (l2 < best_l2[act])
                if better.any():
                    best_l2[act[better]] = l2[better]
                    best_adv[act[better]] = xa[better]
                success[act[adv]] = True
                # Adam (Kingma & Ba); the active rows share the step count since rows only ever leave
                t = it + 1
                w = w.detach()
                m.mul_(b1).add_(g, alpha=1 - b1)
                s.mul_(b2).addcmul_(g, g, value=1 - b2)
                w.addcdiv_(m, s.sqrt().div_(math.sqrt(1 - b2 ** t)).add_(ADAM_EPS), value=-lr / (1 - b1 ** t))
                if abort_early and it >= abort_warmup and (it - abort_warmup) % check == 0:
                    stalled = loss > 0.9999 * prev
                    prev = loss.detach()
                    if stalled.any():
                        keep = ~stalled
                        act, w, m, s, xr, lab, cst, prev = (q[keep] for q in (act, w, m, s, xr, lab, cst, prev))
                        if len(act) == 0:
                            break
                        if rest_rows is not None:
                            rest_rows = take(inputs, act)
        with torch.no_grad():
            upper = torch.where(success, torch.minimum(upper, const), upper)
            lower = torch.where(success, lower, torch.maximum(lower, const))
            const = torch.where(upper < 1e9, (lower + upper) / 2, const * 10)
    out = best_adv.detach()
    return {**inputs, "audio": out} if isinstance(inputs, dict) else out
