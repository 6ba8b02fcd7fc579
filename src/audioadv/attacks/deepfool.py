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

from ._util import HIGH, LOW, batch_loop, bview, check_audio, is_adversarial, split_inputs


def deepfool(model, inputs, labels, *, targeted: bool = False, steps: int = 50, overshoot: float = 0.02,
             candidates: int | None = 10, batch_size: int | None = None):
    """DeepFool-l2 (Moosavi-Dezfooli et al. 2016, Alg. 2). Returns adversarial inputs.

    labels: classes to move away from (untargeted; the paper uses the clean prediction) or target
    classes (targeted). candidates: the classes linearised, the label and the candidates - 1 other
    classes with the highest clean logits (all classes when None); each costs one backward pass per
    step. Points not fooled within ``steps`` get their last iterate. batch_size: examples attacked
    together (None: all); a fooled example leaves and the next one takes its place.
    """
    audio, rebuild = split_inputs(inputs)
    check_audio(audio, labels, "deepfool")
    x = audio.detach()
    dev = x.device
    labels = labels.to(dev)
    out = x.clone()
    width = [1]                      # candidate columns, known after the first forward pass

    def start(ids):
        ids = ids.to(dev)
        z = torch.zeros(len(ids), dtype=torch.long, device=dev)
        return {"ids": ids, "x": x[ids], "y": labels[ids], "r": torch.zeros_like(x[ids]), "it": z,
                "cand": torch.full((len(ids), width[0]), -1, dtype=torch.long, device=dev)}

    def step(st):
        xs, y = st["x"], st["y"]
        xa = ((xs + (1 + overshoot) * st["r"]).clamp(LOW, HIGH)).requires_grad_(True)
        logits = model(rebuild(xa, rows=st["ids"]))
        adv = is_adversarial(logits.argmax(1), y, targeted)
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
            fresh = st["cand"][:, 0] < 0
            if fresh.any():          # the classes to linearise, from the logits at the clean input
                st["cand"] = _candidates(logits.detach(), y, candidates, st["cand"], fresh)
                width[0] = st["cand"].shape[1]
            own = logits.gather(1, y.view(-1, 1)).squeeze(1)
            best_ratio = torch.full((len(xs),), float("inf"), device=dev)
            r = torch.zeros_like(xa)
            ck = st["cand"]
            for j in range(ck.shape[1]):
                fk = logits.gather(1, ck[:, j:j + 1]).squeeze(1)
                # w'_k = grad(f_k - f_y) in one backward pass per candidate (no separate pass for grad f_y)
                w, = torch.autograd.grad((fk - own).sum(), xa, retain_graph=j < ck.shape[1] - 1)
                fd = (fk - own).detach()
                wn = w.flatten(1).norm(dim=1).clamp_min(1e-12)
                ratio = fd.abs() / wn
                better = ratio < best_ratio
                best_ratio = torch.where(better, ratio, best_ratio)
                r = torch.where(bview(better, r), bview((fd.abs() + 1e-4) / wn ** 2, w) * w, r)
        with torch.no_grad():
            st["r"] = st["r"] + torch.where(bview(adv, r), torch.zeros_like(r), r)
            st["it"] = st["it"] + 1
        return adv | (st["it"] >= steps)

    def finish(rows):
        out[rows["ids"]] = (rows["x"] + (1 + overshoot) * rows["r"]).clamp(LOW, HIGH)

    batch_loop(len(x), batch_size, start, step, finish)
    return rebuild(out)


def _candidates(logits, y, candidates, cand, fresh):
    """Per row, the other classes with the highest logits (``candidates - 1`` of them, all when None)."""
    num = logits.shape[1]
    k = num - 1 if candidates is None else max(1, min(candidates, num) - 1)
    masked = logits.scatter(1, y.view(-1, 1), float("-inf"))
    order = masked.argsort(dim=1, descending=True)[:, :k]
    if cand.shape[1] != k:
        cand = cand.new_full((len(cand), k), -1)
    return torch.where(fresh[:, None], order, cand)
