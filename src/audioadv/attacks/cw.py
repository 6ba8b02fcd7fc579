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
fell by less than 0.01 %. Here the test is per example: an example whose run stops starts its next
search step at once, and one whose search is over leaves the batch for the next waiting example, so
iterations only pay for examples still improving (the authors test the summed loss of their batch). Because the first check records the loss at the unperturbed start, a run whose
first Adam steps overshoot (lr 0.01 moves every sample by ~0.01 per step, loud for audio) stops at
the second check; ``abort_warmup`` delays the first check by that many iterations, which lets such
runs converge to much smaller perturbations at the price of more iterations.
"""
from __future__ import annotations

import math

import torch

from ._util import ADAM_BETAS, ADAM_EPS, batch_loop, bview, check_audio, hinge, is_adversarial, split_inputs

_EPS = 1e-6


def cw_l2(model, inputs, labels, *, targeted: bool = False, c: float = 1e-3, kappa: float = 0.0,
          steps: int = 1000, binary_search_steps: int = 9, lr: float = 0.01, abort_early: bool = True,
          abort_warmup: int = 0, batch_size: int | None = None):
    """CW-l2 (Carlini & Wagner 2017). Returns adversarial inputs; points never fooled come back unchanged.

    c: initial trade-off constant. kappa: confidence. steps: Adam iterations per search step (lr: its
    step size). binary_search_steps: outer search steps over c. abort_early: per example, stop
    when the loss fell by less than 0.01 % since the previous check (every ceil(steps / 10) iterations,
    the first check at iteration ``abort_warmup``; 0 = the authors' rule). batch_size: examples attacked
    together (None: all). Each example runs its own search: when its inner run stops it starts its next
    search step at once, and when its search is over the next waiting example takes its place.
    """
    audio, rebuild = split_inputs(inputs)
    check_audio(audio, labels, "cw_l2")
    if steps < 1 or binary_search_steps < 1 or abort_warmup < 0:
        raise ValueError(f"cw_l2: steps and binary_search_steps must be >= 1 and abort_warmup >= 0 "
                         f"(got {steps}, {binary_search_steps}, {abort_warmup})")
    x = audio.detach()
    dev, dt = x.device, x.dtype
    labels = labels.to(dev)
    best_l2 = torch.full((len(x),), math.inf, device=dev, dtype=dt)
    best_adv = x.clone()
    check = math.ceil(steps / 10)
    b1, b2 = ADAM_BETAS
    last = binary_search_steps - 1

    def restart(st, rows):
        """Fresh inner run (w at the clean input, zero Adam moments) for state rows ``rows``."""
        st["w"][rows] = torch.atanh(st["x"][rows] * (1 - _EPS))
        st["m"][rows] = 0
        st["s"][rows] = 0
        st["it"][rows] = 0
        st["prev"][rows] = math.inf
        st["ok"][rows] = False

    def start(ids):
        ids = ids.to(dev)
        k = len(ids)
        xs = x[ids]
        st = {"ids": ids, "x": xs, "y": labels[ids], "w": torch.empty_like(xs), "m": torch.empty_like(xs),
              "s": torch.empty_like(xs), "it": torch.empty(k, dtype=torch.long, device=dev),
              "prev": torch.empty(k, device=dev, dtype=dt), "ok": torch.empty(k, dtype=torch.bool, device=dev),
              "search": torch.zeros(k, dtype=torch.long, device=dev),
              "const": torch.full((k,), float(c), device=dev, dtype=dt),
              "lower": torch.zeros(k, device=dev, dtype=dt), "upper": torch.full((k,), 1e10, device=dev, dtype=dt)}
        restart(st, slice(None))
        return st

    def step(st):
        w = st["w"].requires_grad_(True)
        xa = torch.tanh(w)
        logits = model(rebuild(xa, rows=st["ids"]))
        dist = (xa - st["x"]).flatten(1).pow(2).sum(1)
        h = hinge(logits, st["y"], targeted=targeted, kappa=kappa)
        loss = dist + st["const"] * h
        g, = torch.autograd.grad(loss.sum(), w)
        with torch.no_grad():
            adv = is_adversarial(logits.argmax(1), st["y"], targeted)
            if kappa > 0:
                adv &= h <= -kappa
            l2 = dist.sqrt()
            ids = st["ids"]
            better = adv & (l2 < best_l2[ids])
            if better.any():
                best_l2[ids[better]] = l2[better]
                best_adv[ids[better]] = xa[better]
            st["ok"] |= adv
            # Adam (Kingma & Ba) with each row's own step count t, bias-corrected per row
            it = st["it"]
            t = (it + 1).to(dt)
            m, s = st["m"], st["s"]
            m.lerp_(g, 1 - b1)
            s.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = s.sqrt().div_(bview((1 - b2 ** t).sqrt(), s)).add_(ADAM_EPS)
            denom.mul_(bview(-(1 - b1 ** t) / lr, s))
            w = w.detach()
            w.addcdiv_(m, denom)
            st["w"] = w
            end = it + 1 >= steps
            if abort_early:
                checked = (it >= abort_warmup) & ((it - abort_warmup) % check == 0)
                end |= checked & (loss > 0.9999 * st["prev"])
                st["prev"] = torch.where(checked, loss, st["prev"])
            st["it"] = it + 1
            done = torch.zeros_like(end)
            if end.any():            # this search step is over for these rows: bisect c (CW Sec. V-A)
                e = end.nonzero().flatten()
                ok, const = st["ok"][e], st["const"][e]
                upper = torch.where(ok, torch.minimum(st["upper"][e], const), st["upper"][e])
                lower = torch.where(ok, st["lower"][e], torch.maximum(st["lower"][e], const))
                const = torch.where(upper < 1e9, (lower + upper) / 2, const * 10)
                search = st["search"][e] + 1
                if binary_search_steps >= 10:   # final rerun at the upper bound
                    const = torch.where(search == last, torch.minimum(upper, torch.full_like(upper, 1e10)), const)
                st["upper"][e], st["lower"][e], st["const"][e], st["search"][e] = upper, lower, const, search
                done[e] = search > last
                again = e[search <= last]
                if len(again):
                    restart(st, again)
        return done

    batch_loop(len(x), batch_size, start, step, lambda rows: None)
    return rebuild(best_adv.detach())
