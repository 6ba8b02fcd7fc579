"""FGSM and projected gradient descent (PGD) under l_inf and l_2 bounds, for (B, T) waveforms.

- FGSM: Goodfellow, Shlens & Szegedy, "Explaining and harnessing adversarial examples", ICLR 2015,
  Eq. (3): x' = x + eps * sign(grad_x J(theta, x, y)).
- PGD: Madry et al., "Towards deep learning models resistant to adversarial attacks", ICLR 2018,
  Eq. (2): x^{t+1} = Pi_{x+S}(x^t + alpha * sign(grad_x L(theta, x^t, y))) for l_inf, with a random
  start in the ball; the l_2 version steps along the normalised gradient, alpha * g / ||g||_2.

Targeted attacks (labels = target classes) descend the loss of the target instead of ascending
the loss of the true class. Every iterate is clamped to the waveform range [-1, 1] and projected
onto the norm ball (clamping only shrinks |delta_i|, so both constraints hold together). `eps`
may be a float or a (B,) tensor (one budget per example, e.g. derived from dB_x). Call
`model.eval()` first: the attacks never change the model's mode or parameters.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._util import HIGH, LOW, bview, check_audio, hinge, is_adversarial, split_inputs

_NORMS = {"linf": math.inf, "inf": math.inf, "l2": 2.0, "2": 2.0}


def _norm_p(norm) -> float:
    if isinstance(norm, str):
        if norm.lower() not in _NORMS:
            raise ValueError(f"norm must be 'linf' or 'l2', not {norm!r}")
        return _NORMS[norm.lower()]
    if norm not in (math.inf, 2, 2.0):
        raise ValueError(f"norm must be inf or 2, not {norm!r}")
    return float(norm)


def _eps(eps, x: torch.Tensor) -> torch.Tensor:
    e = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if e.dim() == 0:
        e = e.expand(len(x))
    if e.shape != (len(x),):
        raise ValueError(f"eps must be a float or a ({len(x)},) tensor, got shape {tuple(e.shape)}")
    if (e < 0).any():
        raise ValueError("eps must be non-negative")
    return e


def _loss(logits, labels, loss: str, targeted: bool) -> torch.Tensor:
    """Per-example objective to *maximise*."""
    if loss == "ce":
        ce = F.cross_entropy(logits, labels, reduction="none")
        return -ce if targeted else ce
    if loss in ("margin", "cw"):
        return -hinge(logits, labels, targeted=targeted, kappa=float("inf"))
    raise ValueError(f"loss must be 'ce' or 'margin', not {loss!r}")


def _project(delta: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, p: float) -> torch.Tensor:
    if p == math.inf:
        delta = torch.maximum(torch.minimum(delta, bview(eps, delta)), -bview(eps, delta))
    else:
        n = delta.flatten(1).norm(dim=1)
        delta = delta * bview(torch.where(n > eps, eps / n.clamp_min(1e-12), torch.ones_like(n)), delta)
    return (x + delta).clamp(LOW, HIGH) - x


def _grad(model, rebuild, x, delta, labels, loss, targeted):
    delta = delta.detach().requires_grad_(True)
    logits = model(rebuild(x + delta))
    obj = _loss(logits, labels, loss, targeted)
    (g,) = torch.autograd.grad(obj.sum(), delta)
    return g, logits.detach()


def fgsm(model, inputs, labels, *, targeted: bool = False, eps: float | torch.Tensor = 0.002, loss: str = "ce"):
    """Fast gradient sign method (Goodfellow et al. 2015, Eq. 3), one l_inf step of size eps.

    labels: true classes (untargeted) or target classes (targeted). Returns the adversarial
    inputs (same type as `inputs`), clamped to [-1, 1].
    """
    audio, rebuild = split_inputs(inputs)
    check_audio(audio, labels, "fgsm")
    x = audio.detach()
    e = _eps(eps, x)
    g, _ = _grad(model, rebuild, x, torch.zeros_like(x), labels.to(x.device), loss, targeted)
    return rebuild(_project(bview(e, x) * g.sign(), x, e, math.inf) + x)


def pgd(model, inputs, labels, *, targeted: bool = False, eps: float | torch.Tensor = 0.002, norm="linf",
        steps: int = 40, alpha: float | torch.Tensor | None = None, random_start: bool = True,
        restarts: int = 1, loss: str = "ce", seed: int | None = 0, early_stop: bool = False, project=None):
    """Projected gradient descent (Madry et al. 2018, Eq. 2) in an l_inf or l_2 ball of radius eps.

    alpha: step size, default 2.5 * eps / steps (Madry et al.). random_start: start uniformly in
    the l_inf ball, or uniformly in the l_2 ball. restarts: independent random starts; an example
    keeps the first run that fools the model (else the last run). loss: "ce" (cross-entropy) or
    "margin" (logit difference, Carlini & Wagner). seed: random start generator seed.
    early_stop: stop an example as soon as it is adversarial (smaller perturbations, fewer
    queries) instead of running all steps. project: optional hook `project(delta, step=, total=,
    lengths=None) -> delta` applied after every step (e.g. the l0 step of `attacks.sparse`).
    Returns the adversarial inputs (same type as inputs).
    """
    p = _norm_p(norm)
    audio, rebuild = split_inputs(inputs)
    check_audio(audio, labels, "pgd")
    if steps < 1 or restarts < 1:
        raise ValueError("pgd: steps and restarts must be >= 1")
    x = audio.detach()
    labels = labels.to(x.device)
    e = _eps(eps, x)
    a = _eps(2.5 * e / steps if alpha is None else alpha, x)
    gen = torch.Generator(device=x.device)
    gen.manual_seed(0 if seed is None else int(seed))
    best = x.clone()
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        todo = ~fooled
        if not todo.any():
            break
        xs, ls, es, as_ = x[todo], labels[todo], e[todo], a[todo]
        sub_rebuild = _sub_rebuild(inputs, rebuild, todo)
        delta = torch.zeros_like(xs)
        if random_start:
            if p == math.inf:
                delta = (torch.rand(xs.shape, generator=gen, device=x.device) * 2 - 1) * bview(es, xs)
            else:
                d = torch.randn(xs.shape, generator=gen, device=x.device)
                r = torch.rand(len(xs), generator=gen, device=x.device) ** (1.0 / xs[0].numel())
                delta = d / bview(d.flatten(1).norm(dim=1).clamp_min(1e-12), d) * bview(r * es, d)
            delta = _project(delta, xs, es, p)
        done = torch.zeros(len(xs), dtype=torch.bool, device=x.device)
        for it in range(steps):
            g, logits = _grad(model, sub_rebuild, xs, delta, ls, loss, targeted)
            if early_stop:
                done |= is_adversarial(logits.argmax(1), ls, targeted)
                if done.all():
                    break
            if p == math.inf:
                step = bview(as_, g) * g.sign()
            else:
                step = bview(as_, g) * g / bview(g.flatten(1).norm(dim=1).clamp_min(1e-12), g)
            if early_stop:
                step = step * bview((~done).to(step.dtype), step)
            delta = _project(delta + step, xs, es, p)
            if project is not None:
                delta = project(delta, step=it, total=steps, lengths=None)
        with torch.no_grad():
            adv = xs + delta
            ok = is_adversarial(model(sub_rebuild(adv)).argmax(1), ls, targeted)
        idx = todo.nonzero().flatten()
        best[idx] = adv
        fooled[idx[ok]] = True
    return rebuild(best)


def _sub_rebuild(inputs, rebuild, mask):
    """Rebuild model inputs for a subset of the batch (other dict entries sliced the same way)."""
    if not isinstance(inputs, dict) or bool(mask.all()):
        return rebuild
    rest = {k: (v[mask] if torch.is_tensor(v) and v.dim() > 0 and len(v) == len(mask) else v)
            for k, v in inputs.items()}
    return lambda a_: {**rest, "audio": a_}


def pgd_linf(model, inputs, labels, *, targeted: bool = False, eps: float | torch.Tensor = 0.002, **kwargs):
    """PGD in the l_inf ball (Madry et al. 2018); see `pgd`."""
    return pgd(model, inputs, labels, targeted=targeted, eps=eps, norm="linf", **kwargs)


def pgd_l2(model, inputs, labels, *, targeted: bool = False, eps: float | torch.Tensor = 0.5, **kwargs):
    """PGD in the l_2 ball (Madry et al. 2018, normalised-gradient steps); see `pgd`."""
    return pgd(model, inputs, labels, targeted=targeted, eps=eps, norm="l2", **kwargs)
