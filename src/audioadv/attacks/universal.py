"""Universal adversarial audio perturbations: one vector v that fools a classifier on most inputs.

Abdoli, Hafemann, Rony, Ben Ayed, Cardinal, Koerich, "Universal Adversarial Audio Perturbations"
(arXiv 1908.03173). Two crafting methods, both returning ``(v, history)`` with ``v`` a (T,)
waveform-domain perturbation applied as ``clip(x + v, -1, 1)``:

- :func:`iterative` — the greedy algorithm of Sec. 3.1 (after Moosavi-Dezfooli et al. 2017): visit the
  crafting points, skip those that ``x_i + v`` already fools, otherwise add the minimal extra
  perturbation found by an inner attack (DDN by default; DeepFool or CW-l2), project onto the
  l_p ball of radius xi (Eq. 2), and stop once the success rate on the crafting points reaches
  1 - delta (Eq. 3) or after ``max_passes`` passes.
- :func:`penalty` — the penalty method of Sec. 3.2, Algorithm 1: minimise SPL(v') + c * mean G over
  mini-batches with Adam, G the hinge on logits (targeted Eq. 10, untargeted Eq. 11), the box
  constraint kept by the tanh change of variables (Eqs. 7-9).

Mapping of Eqs. 7-9 to audio in [-1, 1]. The paper's signals live in [0, 1]; with u = (x + 1) / 2,
its x' = arctanh((2u - 1)(1 - eps)) becomes x' = arctanh(x (1 - eps)), the perturbed signal
w = (tanh(x' + v') + 1) / 2 in [0, 1] maps back to tanh(x' + v') in [-1, 1], and Eq. 8,
v = (tanh(v') + 1 - eps) / (2 - 2 eps) in [0, 1], maps back to v = tanh(v') / (1 - eps): the
waveform-domain universal perturbation (what a silent input receives). The SPL term of Eqs. 10-11,
SPL(1/2 ln(w / (1 - w)) - x'), equals SPL(v') exactly. Crafting uses the tanh-space sum; the
stopping test (Eq. 3) and every reported figure apply v additively with clipping, as for the
iterative method, so both methods are evaluated identically. ``box="clip"`` optimises v directly
with clip(x + v) instead (no change of variables) for comparison.

Success (Eq. 3): untargeted, the prediction on x + v differs from the prediction on x;
targeted, the prediction is the target. In targeted mode, points whose true label is the target
are left out of crafting and evaluation.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch

from ..signal import linf as _linf, l2 as _l2, spl as _spl
from ._util import HIGH, LOW, hinge, is_adversarial

# Paper defaults (Sec. 4): index 0 untargeted, 1 targeted.
ITERATIVE_XI = (0.2, 0.12)
PENALTY_C = (0.2, 0.15)
PENALTY_KAPPA = (40.0, 10.0)


# ----------------------------------------------------------------------------- data helpers
def as_tensors(data) -> tuple[torch.Tensor, torch.Tensor]:
    """(waves (N, T), labels (N,)) from an AudioDataset, a (waves, labels) pair or an iterable of batches."""
    if hasattr(data, "waves") and hasattr(data, "labels"):
        return data.waves, data.labels
    if isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0]):
        waves, labels = data
    else:
        xs, ys = [], []
        for batch in data:
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
                raise ValueError("a loader must yield (waves, labels) batches")
            xs.append(batch[0])
            ys.append(batch[1])
        if not xs:
            raise ValueError("empty crafting data: no batches")
        waves, labels = torch.cat(xs), torch.cat(ys)
    waves, labels = torch.as_tensor(waves), torch.as_tensor(labels)
    if waves.dim() != 2 or len(waves) != len(labels):
        raise ValueError(f"crafting data must be (N, T) waves with N labels; got {tuple(waves.shape)} and {len(labels)}")
    if len(waves) == 0:
        raise ValueError("empty crafting data")
    return waves.float(), labels.long()


@torch.no_grad()
def predict(model, waves: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
    """Predicted classes for (N, T) waveforms, in batches."""
    out = [model(waves[i:i + batch_size]).argmax(1) for i in range(0, len(waves), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def apply(v: torch.Tensor, waves: torch.Tensor) -> torch.Tensor:
    """Add the universal perturbation to a batch and clip to [-1, 1]."""
    return (waves + v.to(waves)).clamp(LOW, HIGH)


@torch.no_grad()
def success_rate(model, waves, v, ref: torch.Tensor, *, target: int | None = None, batch_size: int = 100) -> float:
    """Eq. 3: fraction of points fooled by v. ``ref``: clean predictions (untargeted), ignored when targeted."""
    pred = predict(model, apply(v, waves), batch_size)
    if target is None:
        return float((pred != ref).float().mean())
    return float((pred == target).float().mean())


def project(v: torch.Tensor, p: float, xi: float | None) -> torch.Tensor:
    """Projection onto the l_p ball of radius xi (Eq. 2), p in {2, inf}."""
    if xi is None:
        return v
    if p == 2:
        n = v.norm()
        return v * (xi / n) if n > xi else v
    if math.isinf(p):
        return v.clamp(-xi, xi)
    raise ValueError(f"projection supports p = 2 or inf, not {p}")


@torch.no_grad()
def _check_target(model, waves: torch.Tensor, target: int | None) -> None:
    if target is None:
        return
    n = model(waves[:1]).shape[1]
    if not 0 <= target < n:
        raise ValueError(f"target class {target} out of range: the model has {n} classes")


def _inner(attack: str | Callable) -> Callable:
    if callable(attack):
        return attack
    if attack == "ddn":
        from .ddn import ddn
        return ddn
    if attack == "deepfool":
        from .deepfool import deepfool
        return deepfool
    if attack in ("cw", "cw_l2"):
        from .cw import cw_l2
        return cw_l2
    raise ValueError(f"unknown inner attack {attack!r}: ddn, deepfool or cw")


def _summary(v: torch.Tensor) -> dict:
    return {"linf": float(_linf(v)), "l2": float(_l2(v)), "spl": float(_spl(v))}


# ----------------------------------------------------------------------------- iterative (Sec. 3.1)
def iterative(model, data, *, targeted: int | None = None, p: float = math.inf, xi: float | None = None,
              delta: float = 0.1, max_passes: int = 100, attack: str | Callable = "ddn",
              attack_kwargs: dict | None = None, batch_size: int = 1, aggregate: str = "mean", seed: int = 0,
              eval_batch_size: int = 100, progress: bool = True, callback: Callable | None = None):
    """Iterative greedy universal perturbation (Abdoli et al. Sec. 3.1, Eqs. 1-3).

    targeted: target class, or None for untargeted. p, xi: l_p ball of Eq. 2 (defaults p = inf,
    xi = 0.2 untargeted / 0.12 targeted). delta: stop when success >= 1 - delta (Eq. 3).
    max_passes: passes over the crafting points (paper: 100). attack: inner minimal attack
    ("ddn", paper setting 50 steps and initial norm 0.2; "deepfool"; "cw"), with ``attack_kwargs``.
    batch_size: points whose extra perturbations are found together against the same v and then
    combined by ``aggregate`` ("mean" or "sum") before the projection (1 = the paper's sequential
    algorithm; larger is faster, an approximation: "sum" overshoots, each r_i alone already fools x_i). An extra
    perturbation is added only when the inner attack reached its goal (as in ART's implementation).
    seed: order of the points. callback(v, record) is called after each pass.
    Returns (v, history): v (T,) and one record per pass.
    """
    from tqdm import tqdm

    if aggregate not in ("mean", "sum"):
        raise ValueError(f"aggregate must be 'mean' or 'sum', not {aggregate!r}")
    waves, labels = as_tensors(data)
    t = None if targeted is None else int(targeted)
    _check_target(model, waves, t)
    if xi is None:
        xi = ITERATIVE_XI[t is not None]
    if t is not None:
        keep = labels != t
        waves, labels = waves[keep], labels[keep]
        if len(waves) == 0:
            raise ValueError(f"no crafting points outside the target class {t}")
    kwargs = {"steps": 50, "init_norm": 0.2} if attack == "ddn" else {}
    kwargs.update(attack_kwargs or {})
    inner = _inner(attack)
    ref = predict(model, waves, eval_batch_size)
    inner_labels = ref if t is None else torch.full_like(ref, t)
    g = torch.Generator().manual_seed(seed)
    v = torch.zeros(waves.shape[1])
    history = []
    start = time.perf_counter()
    for k in range(max_passes):
        order = torch.randperm(len(waves), generator=g)
        added = 0
        bar = tqdm(range(0, len(order), batch_size), desc=f"iterative pass {k + 1}", leave=False, disable=not progress)
        for i in bar:
            idx = order[i:i + batch_size]
            cur = apply(v, waves[idx])
            with torch.no_grad():
                fooled = is_adversarial(model(cur).argmax(1), inner_labels[idx], t is not None)
            if fooled.all():
                continue
            sel = (~fooled).nonzero().flatten()
            lab = inner_labels[idx][sel]
            adv = inner(model, cur[sel], lab, targeted=t is not None, **kwargs).detach()
            with torch.no_grad():  # keep only the extra perturbations that reached their goal
                ok = is_adversarial(model(adv).argmax(1), lab, t is not None)
            if not ok.any():
                continue
            r = (adv[ok] - cur[sel][ok])
            r = r.mean(0) if aggregate == "mean" else r.sum(0)
            v = project(v + r, p, xi)
            added += int(ok.sum())
        rate = success_rate(model, waves, v, ref, target=t, batch_size=eval_batch_size)
        rec = {"pass": k + 1, "success_rate": rate, "updates": added,
               "time_s": time.perf_counter() - start, **_summary(v)}
        history.append(rec)
        if callback:
            callback(v, rec)
        if rate >= 1 - delta:
            break
    return v.detach(), history


# ----------------------------------------------------------------------------- penalty (Sec. 3.2)
def to_tanh_space(x: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """x' = arctanh(x (1 - eps)): Eq. 7's arctanh((2u - 1)(1 - eps)) with u = (x + 1)/2, audio in [-1, 1]."""
    return torch.atanh(x.double() * (1 - eps)).to(x.dtype)


def from_tanh_space(xp: torch.Tensor, vp: torch.Tensor | None = None) -> torch.Tensor:
    """The perturbed waveform tanh(x' + v') in [-1, 1] (Eq. 7's w, mapped from [0, 1] to [-1, 1])."""
    return torch.tanh(xp if vp is None else xp + vp)


def perturbation_from_tanh(vp: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Eq. 8 mapped to [-1, 1]: v = tanh(v') / (1 - eps)."""
    return torch.tanh(vp) / (1 - eps)


def penalty_loss(logits: torch.Tensor, labels: torch.Tensor, vp: torch.Tensor, *, targeted: bool,
                 c: float, kappa: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPL(v') + c * mean_i G_i (Eqs. 10, 11; Algorithm 1 sums the per-example gradients, which
    differs from the mean by the constant batch size that Adam ignores). Returns (loss, spl, G per example)."""
    G = hinge(logits, labels, targeted=targeted, kappa=kappa)
    s = _spl(vp.reshape(1, -1))[0]
    return s + c * G.mean(), s, G


def penalty(model, data, *, targeted: int | None = None, c: float | None = None, kappa: float | None = None,
            batch_size: int = 100, delta: float = 0.1, max_iter: int = 100, lr: float = 0.002,
            xi: float | None = None, p: float = 2, eps: float = 1e-7, box: str = "tanh",
            check_every: int = 1, seed: int = 0, eval_batch_size: int = 100, progress: bool = True,
            callback: Callable | None = None):
    """Penalty method for universal perturbations (Abdoli et al. Sec. 3.2, Algorithm 1, Eqs. 4-11).

    targeted: target class, or None. c: penalty coefficient (0.2 untargeted / 0.15 targeted).
    kappa: hinge confidence on logits (40 / 10). batch_size: mini-batch S (100). delta: stop when
    the crafting-set success (Eq. 3, v applied additively) >= 1 - delta, checked every
    ``check_every`` iterations; max_iter: Adam iterations (100). lr: Adam step size (not given in
    the paper). xi, p: optional projection of v' onto the l_p ball (the paper used l2, xi = 6, for its
    speech-command model). eps: Eq. 7's epsilon. box: "tanh" (Eqs. 7-9) or "clip".
    Returns (v, history) with v (T,) in the waveform domain and one record per iteration.
    """
    from tqdm import tqdm

    if box not in ("tanh", "clip"):
        raise ValueError(f"box must be 'tanh' or 'clip', not {box!r}")
    waves, labels = as_tensors(data)
    t = None if targeted is None else int(targeted)
    _check_target(model, waves, t)
    c = PENALTY_C[t is not None] if c is None else c
    kappa = PENALTY_KAPPA[t is not None] if kappa is None else kappa
    if t is not None:
        keep = labels != t
        waves, labels = waves[keep], labels[keep]
        if len(waves) == 0:
            raise ValueError(f"no crafting points outside the target class {t}")
    ref = predict(model, waves, eval_batch_size)
    xp = to_tanh_space(waves, eps) if box == "tanh" else waves
    g = torch.Generator().manual_seed(seed)
    vp = torch.zeros(waves.shape[1], requires_grad=True)
    opt = torch.optim.Adam([vp], lr=lr)
    S = min(batch_size, len(waves))
    order, pos = torch.randperm(len(waves), generator=g), 0
    history = []
    start = time.perf_counter()
    current = lambda: perturbation_from_tanh(vp.detach(), eps) if box == "tanh" else vp.detach().clone()
    for k in tqdm(range(max_iter), desc="penalty", leave=False, disable=not progress):
        if pos + S > len(order):
            order, pos = torch.randperm(len(waves), generator=g), 0
        idx = order[pos:pos + S]
        pos += S
        xb = from_tanh_space(xp[idx], vp) if box == "tanh" else (waves[idx] + vp).clamp(LOW, HIGH)
        tgt = labels[idx] if t is None else torch.full_like(labels[idx], t)
        loss, s, G = penalty_loss(model(xb), tgt, vp, targeted=t is not None, c=c, kappa=kappa)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if xi is not None:
            with torch.no_grad():
                vp.copy_(project(vp, p, xi))
        rec = {"iter": k + 1, "loss": float(loss.detach()), "spl": float(s.detach()), "hinge": float(G.detach().mean()),
               "time_s": time.perf_counter() - start}
        done = False
        if (k + 1) % check_every == 0 or k + 1 == max_iter:
            v = current()
            rec["success_rate"] = success_rate(model, waves, v, ref, target=t, batch_size=eval_batch_size)
            rec.update(_summary(v))
            done = rec["success_rate"] >= 1 - delta
        history.append(rec)
        if callback:
            callback(current(), rec)
        if done:
            break
    return current(), history


def craft(method: str, model, data, **kwargs):
    """Dispatch by name: ``craft("penalty" | "iterative", model, data, **kwargs)``."""
    if method == "penalty":
        return penalty(model, data, **kwargs)
    if method == "iterative":
        return iterative(model, data, **kwargs)
    raise ValueError(f"unknown universal method {method!r}: penalty or iterative")
