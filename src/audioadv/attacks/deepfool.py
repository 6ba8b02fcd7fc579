"""DeepFool l2 attack with overshoot.

Moosavi-Dezfooli, Fawzi, Frossard, "DeepFool: a simple and accurate method to fool deep neural
networks", CVPR 2016, Algorithm 2 (multi-class, l2). At each step the classifier is linearised
around the current point; the closest linearised boundary l = argmin_k |f'_k| / ||w'_k||_2 with
f'_k = f_k - f_y and w'_k = grad f_k - grad f_y is crossed by r = (|f'_l| + 1e-4) / ||w'_l||^2 * w'_l
(their Eq. 8 and Alg. 2). The accumulated perturbation is scaled by (1 + overshoot).

Targeted variant (used by Abdoli et al.'s iterative method when DeepFool is chosen): the
boundary crossed is the one between the target t and the strongest other class.
"""
from __future__ import annotations

import torch

from ._util import HIGH, LOW, bview, check_audio, is_adversarial, split_inputs


def deepfool(model, inputs, labels, *, targeted: bool = False, steps: int = 50, overshoot: float = 0.02,
             candidates: int | None = 10):
    """DeepFool-l2 (Moosavi-Dezfooli et al. 2016, Alg. 2). Returns adversarial inputs.

    labels: classes to move away from (untargeted; the paper uses the clean prediction) or target
    classes (targeted). candidates: only the classes with the highest clean logits are linearised
    (all classes when None). Points not fooled within ``steps`` get their last iterate.
    """
    audio, rebuild = split_inputs(inputs)
    check_audio(audio, labels, "deepfool")
    x = audio.detach()
    labels = labels.to(x.device)
    r_tot = torch.zeros_like(x)
    active = torch.ones(len(x), dtype=torch.bool, device=x.device)
    cand = None
    for _ in range(steps):
        idx = active.nonzero().flatten()
        if len(idx) == 0:
            break
        xa = ((x[idx] + (1 + overshoot) * r_tot[idx]).clamp(LOW, HIGH)).requires_grad_(True)
        logits = model(rebuild(xa) if not isinstance(inputs, dict) else _sub(inputs, idx, xa))
        y = labels[idx]
        adv = is_adversarial(logits.argmax(1), y, targeted)
        if cand is None:
            k = logits.shape[1] if candidates is None else min(candidates, logits.shape[1])
            order = logits.detach().argsort(dim=1, descending=True)[:, :k]
            cand = torch.zeros(len(x), k, dtype=torch.long, device=x.device)
            cand[idx] = order
        if targeted:
            c = logits.detach().clone()
            c.scatter_(1, y.view(-1, 1), float("-inf"))
            c = c.argmax(1)
            f = logits.gather(1, c.view(-1, 1)).squeeze(1) - logits.gather(1, y.view(-1, 1)).squeeze(1)
            w, = torch.autograd.grad(-f.sum(), xa)           # direction increasing f_t - f_c
            fd = f.detach()
            wn = w.flatten(1).norm(dim=1).clamp_min(1e-12)
            r = bview((fd.abs() + 1e-4) / wn ** 2, w) * w
        else:
            own = logits.gather(1, y.view(-1, 1)).squeeze(1)
            best_ratio = torch.full((len(idx),), float("inf"), device=x.device)
            r = torch.zeros_like(xa)
            ck = cand[idx]
            for j in range(ck.shape[1]):
                cls = ck[:, j]
                valid = cls != y
                if not valid.any():
                    continue
                fk = logits.gather(1, cls.view(-1, 1)).squeeze(1)
                # w'_k = grad(f_k - f_y) in one backward pass per candidate (no separate pass for grad f_y)
                w, = torch.autograd.grad((fk - own).sum(), xa, retain_graph=True)
                fd = (fk - own).detach()
                wn = w.flatten(1).norm(dim=1).clamp_min(1e-12)
                ratio = fd.abs() / wn
                better = valid & (ratio < best_ratio)
                best_ratio = torch.where(better, ratio, best_ratio)
                r = torch.where(bview(better, r), bview((fd.abs() + 1e-4) / wn ** 2, w) * w, r)
        with torch.no_grad():
            step = torch.where(bview(adv, r), torch.zeros_like(r), r)
            r_tot[idx] += step
            still = ~adv
            active[idx] = still
    return rebuild(((x + (1 + overshoot) * r_tot).clamp(LOW, HIGH)).detach())


def _sub(inputs: dict, idx: torch.Tensor, audio: torch.Tensor) -> dict:
    out = {}
    for k, v in inputs.items():
        out[k] = audio if k == "audio" else (v[idx] if torch.is_tensor(v) and len(v) == len(inputs["audio"]) else v)
    return out
