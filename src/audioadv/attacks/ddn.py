"""Decoupled Direction and Norm (DDN) l2 attack.

Rony, Hafemann, Oliveira, Ben Ayed, Sabourin, Granger, "Decoupling Direction and Norm for Efficient
Gradient-Based L2 Adversarial Attacks and Defenses", CVPR 2019, Algorithm 1.

Each step takes a normalised gradient step on the cross-entropy (descent towards the target,
ascent away from the true class) with a cosine-annealed step size, then rescales the perturbation
to a norm ``eps`` that shrinks by (1 - gamma) while the point is adversarial and grows by
(1 + gamma) while it is not, and projects ``x + delta`` back into [-1, 1]. The smallest adversarial
perturbation seen is returned. Abdoli et al. (universal perturbations, Sec. 4) use 50 steps and an
initial norm of 0.2 inside their iterative method.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._util import HIGH, LOW, bview, check_audio, is_adversarial, seeded_generators, split_inputs


def ddn(model, inputs, labels, *, targeted: bool = False, steps: int = 100, init_norm: float = 1.0,
        gamma: float = 0.05, alpha: float = 1.0, alpha_min: float = 0.01, seed: int = 0):
    """DDN l2 attack (Rony et al. 2019, Alg. 1). Returns adversarial inputs (same structure as ``inputs``).

    steps: iterations K. init_norm: starting norm eps_0. gamma: norm update factor.
    alpha, alpha_min: step size, annealed from alpha to alpha_min by a cosine schedule.
    labels: true classes (untargeted) or target classes (targeted). Points never made
    adversarial are returned unchanged. ``seed`` drives the random direction used when a gradient is zero
    (one generator per example, so results do not depend on the batch).
    """
    audio, rebuild = split_inputs(inputs)
    check_audio(audio, labels, "ddn")
    x = audio.detach()
    labels = labels.to(x.device)
    gens = None             # per-example generators, made when a gradient first vanishes
    sign = 1.0 if targeted else -1.0
    delta = torch.zeros_like(x, requires_grad=True)
    norm = torch.full((len(x),), float(init_norm), device=x.device, dtype=x.dtype)
    best_l2 = torch.full((len(x),), float("inf"), device=x.device, dtype=x.dtype)
    best_delta = torch.zeros_like(x)
    lo, hi = LOW - x, HIGH - x      # the box for delta, so that x + delta stays in [-1, 1]
    for i in range(steps):
        alpha_i = alpha_min + 0.5 * (alpha - alpha_min) * (1 + math.cos(math.pi * i / steps))
        logits = model(rebuild(x + delta))
        l2 = delta.detach().flatten(1).norm(dim=1)
        adv = is_adversarial(logits.argmax(1), labels, targeted)
        better = adv & (l2 < best_l2)
        if better.any():
            best_l2 = torch.where(better, l2, best_l2)
            best_delta[better] = delta.detach()[better]
        loss = sign * F.cross_entropy(logits, labels, reduction="sum")
        grad, = torch.autograd.grad(loss, delta)
        gnorm = grad.flatten(1).norm(dim=1)
        zero = gnorm == 0
        if zero.any():
            if gens is None:
                gens = seeded_generators(seed, range(len(x)), "cpu")
            grad[zero] = torch.stack([torch.randn(x.shape[1:], generator=gens[j])
                                      for j in zero.nonzero().flatten().tolist()]).to(grad)
            gnorm = grad.flatten(1).norm(dim=1)
        with torch.no_grad():
            delta.sub_(grad.mul_(bview(alpha_i / gnorm, grad)))   # descent on sign * CE
            norm.mul_(1 - (2 * adv.to(x.dtype) - 1) * gamma)       # shrink if adversarial, else grow
            dnorm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            delta.mul_(bview(norm / dnorm, delta))
            torch.clamp(delta, lo, hi, out=delta)
    # the final iterate may also be the best
    with torch.no_grad():
        logits = model(rebuild(x + delta))
        l2 = delta.flatten(1).norm(dim=1)
        better = is_adversarial(logits.argmax(1), labels, targeted) & (l2 < best_l2)
        best_delta[better] = delta.detach()[better]
    return rebuild((x + best_delta).clamp(LOW, HIGH))
