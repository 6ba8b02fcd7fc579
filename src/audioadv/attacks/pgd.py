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

from ._util import HIGH, LOW, batch_loop, bview, check_audio, hinge, is_adversarial, seeded_generators, split_inputs

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
        restarts: int = 1, loss: str = "ce", seed: int | None = 0, early_stop: bool = False, project=None,
        batch_size: int | None = None):
    """Projected gradient descent (Madry et al. 2018, Eq. 2) in an l_inf or l_2 ball of radius eps.

    alpha: step size, default 2.5 * eps / steps (Madry et al.). random_start: start uniformly in
    the l_inf ball, or uniformly in the l_2 ball. restarts: independent random starts; an example
    keeps the first run that fools the model (else the last run). loss: "ce" (cross-entropy) or
    "margin" (logit difference, Carlini & Wagner). seed: random starts, drawn per example (example i
    of the call has its own generator), so results do not depend on the batch. early_stop: stop an
    example as soon as it is adversarial (smaller perturbations, fewer queries) instead of running
    all steps. project: optional hook `project(delta, step=, total=, lengths=None) -> delta` applied
    after every step (e.g. the l0 step of `attacks.sparse`). batch_size: examples attacked together
    (None: all); an example that finishes (early stop, or a restart that fooled the model) leaves and
    the next one takes its place. Returns the adversarial inputs (same type as inputs).
    """
    p = _norm_p(norm)
    audio, rebuild = split_inputs(inputs)
    check_audio(audio, labels, "pgd")
    if steps < 1 or restarts < 1:
        raise ValueError("pgd: steps and restarts must be >= 1")
    x = audio.detach()
    dev = x.device
    labels = labels.to(dev)
    e = _eps(eps, x)
    a = _eps(2.5 * e / steps if alpha is None else alpha, x)
    gens = seeded_generators(seed, range(len(x)), dev) if random_start else []
    best = x.clone()

    def init(ids, xs, es):
        if not random_start:
            return torch.zeros_like(xs)
        rows = []
        for i, e_i in zip(ids.tolist(), es):
            g = gens[i]
            if p == math.inf:
                rows.append((torch.rand(xs.shape[1:], generator=g, device=dev) * 2 - 1) * e_i)
            else:
                d = torch.randn(xs.shape[1:], generator=g, device=dev)
                r = torch.rand((), generator=g, device=dev) ** (1.0 / d.numel())
                rows.append(d / d.norm().clamp_min(1e-12) * (r * e_i))
        return _project(torch.stack(rows), xs, es, p)

    def start(ids):
        ids = ids.to(dev)
        xs, es = x[ids], e[ids]
        zero = torch.zeros(len(ids), dtype=torch.long, device=dev)
        return {"ids": ids, "x": xs, "y": labels[ids], "e": es, "a": a[ids], "delta": init(ids, xs, es),
                "it": zero, "run": zero.clone()}

    def step(st):
        xs, ls, d = st["x"], st["y"], st["delta"]
        g, logits = _grad(model, lambda v: rebuild(v, rows=st["ids"]), xs, d, ls, loss, targeted)
        fooled = is_adversarial(logits.argmax(1), ls, targeted) if early_stop else None
        as_ = bview(st["a"], g)
        if p == math.inf:
            upd = as_ * g.sign()
        else:
            upd = as_ * g / bview(g.flatten(1).norm(dim=1).clamp_min(1e-12), g)
        new = _project(d + upd, xs, st["e"], p)
        if project is not None:     # rows at different steps (restarts) get their own step index
            for t in st["it"].unique().tolist():
                rows = st["it"] == t
                part = project(new[rows], step=t, total=steps, lengths=None)
                new = part if bool(rows.all()) else new.index_put((rows,), part)
        if fooled is not None:      # a fooled example keeps the iterate that fooled it
            new = torch.where(bview(fooled, new), d, new)
        st["delta"] = new
        st["it"] = st["it"] + 1
        done = fooled.clone() if fooled is not None else torch.zeros(len(xs), dtype=torch.bool, device=dev)
        check = (st["it"] >= steps) & ~done
        if check.any():             # end of a run: keep it if it fools the model, else restart
            idx = check.nonzero().flatten()
            with torch.no_grad():
                adv = xs[idx] + new[idx]
                ok = is_adversarial(model(rebuild(adv, rows=st["ids"][idx])).argmax(1), ls[idx], targeted)
            stop = ok | (st["run"][idx] >= restarts - 1)
            done[idx] = stop
            again = idx[~stop]
            if len(again):
                st["run"][again] += 1
                st["it"][again] = 0
                st["delta"][again] = init(st["ids"][again], xs[again], st["e"][again])
        return done

    def finish(rows):
        best[rows["ids"]] = rows["x"] + rows["delta"]

    batch_loop(len(x), batch_size, start, step, finish)
    return rebuild(best)


def pgd_linf(model, inputs, labels, *, targeted: bool = False, eps: float | torch.Tensor = 0.002, **kwargs):
    """PGD in the l_inf ball (Madry et al. 2018); see `pgd`."""
    return pgd(model, inputs, labels, targeted=targeted, eps=eps, norm="linf", **kwargs)


def pgd_l2(model, inputs, labels, *, targeted: bool = False, eps: float | torch.Tensor = 0.5, **kwargs):
    """PGD in the l_2 ball (Madry et al. 2018, normalised-gradient steps); see `pgd`."""
    return pgd(model, inputs, labels, targeted=targeted, eps=eps, norm="l2", **kwargs)
