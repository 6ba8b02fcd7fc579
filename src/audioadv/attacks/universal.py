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
from ._util import HIGH, LOW, hinge, is_adversarial, num_inputs, take

# Paper defaults (Sec. 4): index 0 untargeted, 1 targeted.
ITERATIVE_XI = (0.2, 0.12)
PENALTY_C = (0.2, 0.15)
PENALTY_KAPPA = (40.0, 10.0)


# ----------------------------------------------------------------------------- data helpers
# Inputs are an (N, T) waveform tensor or a dict of tensors batched along dim 0 (e.g. audio-visual models);
# only the entry named by ``key`` is perturbed: ``key`` if given, else "audio", else the dict's only entry.
def audio_key(inputs: dict, key: str | None = None) -> str:
    """Name of the perturbed entry of dict inputs (``key``, else "audio", else the only key)."""
    if key is not None:
        if key not in inputs:
            raise ValueError(f"key {key!r} not in the inputs (keys: {sorted(inputs)})")
        return key
    if "audio" in inputs:
        return "audio"
    if len(inputs) == 1:
        return next(iter(inputs))
    raise ValueError(f"dict inputs with keys {sorted(inputs)} and no 'audio': name the perturbed entry with key=")


def audio_of(inputs, key: str | None = None) -> torch.Tensor:
    """The (N, T) waveforms of a tensor or dict input."""
    if isinstance(inputs, dict):
        return inputs[audio_key(inputs, key)]
    if not torch.is_tensor(inputs):
        raise TypeError(f"inputs must be a tensor or a dict of tensors, not {type(inputs).__name__}")
    return inputs


def with_audio(inputs, audio: torch.Tensor, key: str | None = None):
    """``inputs`` with its waveforms replaced by ``audio`` (the other dict entries unchanged)."""
    return {**inputs, audio_key(inputs, key): audio} if isinstance(inputs, dict) else audio


def _cat(parts: list):
    if isinstance(parts[0], dict):
        return {k: (torch.cat([p[k] for p in parts]) if torch.is_tensor(parts[0][k]) and parts[0][k].dim() else parts[0][k])
                for k in parts[0]}
    return torch.cat(parts)


def as_tensors(data, key: str | None = None) -> tuple:
    """(inputs, labels (N,)) from an AudioDataset, an (inputs, labels) pair or an iterable of batches.

    inputs: (N, T) waveforms, or a dict of batched tensors whose ``key`` entry holds them (see :func:`audio_key`).
    """
    if hasattr(data, "waves") and hasattr(data, "labels"):
        return data.waves, data.labels
    if isinstance(data, (tuple, list)) and len(data) == 2 and (torch.is_tensor(data[0]) or isinstance(data[0], dict)):
        inputs, labels = data
    else:
        xs, ys = [], []
        for batch in data:
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
                raise ValueError("a loader must yield (waves, labels) batches")
            xs.append(batch[0])
            ys.append(batch[1])
        if not xs:
            raise ValueError("empty crafting data: no batches")
        inputs, labels = _cat(xs), torch.cat([torch.as_tensor(y) for y in ys])
    if isinstance(inputs, dict):
        k = audio_key(inputs, key)
        inputs = {**inputs, k: torch.as_tensor(inputs[k]).float()}
        waves = inputs[k]
    else:
        inputs = waves = torch.as_tensor(inputs).float()
    labels = torch.as_tensor(labels)
    if waves.dim() != 2 or len(waves) != len(labels):
        raise ValueError(f"crafting data must be (N, T) waves with N labels; got {tuple(waves.shape)} and {len(labels)}")
    if len(waves) == 0:
        raise ValueError("empty crafting data")
    if isinstance(inputs, dict):
        num_inputs(inputs)                      # every batched entry must have N rows
    return inputs, labels.long()


@torch.no_grad()
def predict(model, inputs, batch_size: int = 100) -> torch.Tensor:
    """Predicted classes for (N, T) waveforms or a dict of batched inputs, in batches."""
    n = num_inputs(inputs)
    out = [model(take(inputs, slice(i, i + batch_size))).argmax(1) for i in range(0, n, batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def apply(v: torch.Tensor, inputs, *, key: str | None = None):
    """Add the universal perturbation to a batch and clip to [-1, 1] (dict inputs: to the ``key`` entry)."""
    waves = audio_of(inputs, key)
    return with_audio(inputs, (waves + v.to(waves)).clamp(LOW, HIGH), key)


@torch.no_grad()
def success_rate(model, inputs, v, ref: torch.Tensor, *, target: int | None = None, batch_size: int = 100,
                 key: str | None = None) -> float:
    """Eq. 3: fraction of points fooled by v. ``ref``: clean predictions (untargeted), ignored when targeted."""
    pred = predict(model, apply(v, inputs, key=key), batch_size)
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
    n = model(take(waves, slice(0, 1))).shape[1]
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
              eval_batch_size: int = 100, progress: bool = True, callback: Callable | None = None,
              key: str | None = None):
    """Iterative greedy universal perturbation (Abdoli et al. Sec. 3.1, Eqs. 1-3).

    The paper's algorithm (the default, ``batch_size=1``): visit the crafting points one at a time in a
    random order; skip x_i if x_i + v is already fooled (targeted: classified as the target); otherwise
    find the minimal extra perturbation r_i with the inner attack on clip(x_i + v), v <- P_{p,xi}(v + r_i)
    (Eq. 2); stop when the success rate on the crafting points reaches 1 - delta (Eq. 3) or after
    ``max_passes`` passes. An r_i is added only when the inner attack reached its goal (as in ART).

    targeted: target class, or None for untargeted. p, xi: l_p ball of Eq. 2 (defaults p = inf,
    xi = 0.2 untargeted / 0.12 targeted). delta: stop when success >= 1 - delta (Eq. 3).
    max_passes: passes over the crafting points (paper: 100). attack: inner minimal attack
    ("ddn", paper setting 50 steps and initial norm 0.2; "deepfool", whose overshoot (default 0.02)
    sets how far past the boundary each x_i is pushed; "cw"; or a callable with the signature of
    :func:`audioadv.attacks.ddn`), with ``attack_kwargs``.
    batch_size > 1 (optional speed-up, an approximation): the extra perturbations of ``batch_size``
    points are found together against the same v, then combined by ``aggregate``: "sequential"
    adds them one by one in the visiting order, skipping a point that the updated v already fools
    (closest to the paper; costs one forward pass per point), "mean" adds their mean (undershoots:
    each r_i alone is what x_i needs), "sum" their sum (overshoots).
    data: an AudioDataset, an (inputs, labels) pair or an iterable of such batches; inputs are (N, T)
    waveforms or a dict of batched tensors whose ``key`` entry (default "audio") is perturbed.
    seed: order of the points. callback(v, record) is called after each pass.
    Returns (v, history): v (T,) and one record per pass.
    """
    from tqdm import tqdm

    if aggregate not in ("mean", "sum", "sequential"):
        raise ValueError(f"aggregate must be 'mean', 'sum' or 'sequential', not {aggregate!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    inputs, labels = as_tensors(data, key)
    t = None if targeted is None else int(targeted)
    _check_target(model, inputs, t)
    if xi is None:
        xi = ITERATIVE_XI[t is not None]
    if t is not None:
        keep = labels != t
        inputs, labels = take(inputs, keep), labels[keep]
        if len(labels) == 0:
            raise ValueError(f"no crafting points outside the target class {t}")
    kwargs = {"steps": 50, "init_norm": 0.2} if attack == "ddn" else {}
    kwargs.update(attack_kwargs or {})
    inner = _inner(attack)
    imodel, to_inner = _inner_io(model, inputs, key)
    ref = predict(model, inputs, eval_batch_size)
    inner_labels = ref if t is None else torch.full_like(ref, t)
    tgt = t is not None
    g = torch.Generator().manual_seed(seed)
    v = torch.zeros(audio_of(inputs, key).shape[1])

    def fooled(rows, lab, v):
        with torch.no_grad():
            return is_adversarial(model(apply(v, rows, key=key)).argmax(1), lab, tgt)

    history = []
    start = time.perf_counter()
    for k in range(max_passes):
        order = torch.randperm(len(labels), generator=g)
        added = 0
        bar = tqdm(range(0, len(order), batch_size), desc=f"iterative pass {k + 1}", leave=False, disable=not progress)
        for i in bar:
            idx = order[i:i + batch_size]
            rows, lab = take(inputs, idx), inner_labels[idx]
            todo = ~fooled(rows, lab, v)
            if not todo.any():
                continue
            rows, lab = take(rows, todo), lab[todo]
            cur = audio_of(apply(v, rows, key=key), key)
            adv = audio_of(inner(imodel, to_inner(rows, cur), lab, targeted=tgt, **kwargs), "audio").detach()
            # keep only the extra perturbations that reached their goal
            ok = _reached(model, rows, adv, lab, tgt, key)
            if not ok.any():
                continue
            r = adv[ok] - cur[ok]
            if aggregate == "sequential":
                rows_ok, lab_ok = take(rows, ok), lab[ok]
                for j in range(len(r)):
                    # the first r_j was found against the current v; later ones only if v still misses x_j
                    if j == 0 or not fooled(take(rows_ok, slice(j, j + 1)), lab_ok[j:j + 1], v)[0]:
                        v = project(v + r[j], p, xi)
                        added += 1
                continue
            v = project(v + (r.mean(0) if aggregate == "mean" else r.sum(0)), p, xi)
            added += int(ok.sum())
        rate = success_rate(model, inputs, v, ref, target=t, batch_size=eval_batch_size, key=key)
        rec = {"pass": k + 1, "success_rate": rate, "updates": added,
               "time_s": time.perf_counter() - start, **_summary(v)}
        history.append(rec)
        if callback:
            callback(v, rec)
        if rate >= 1 - delta:
            break
    return v.detach(), history


def _reached(model, rows, adv: torch.Tensor, lab: torch.Tensor, targeted: bool, key: str | None) -> torch.Tensor:
    """Whether the inner attack's output ``adv`` (waveforms of ``rows``) reached its goal."""
    with torch.no_grad():
        return is_adversarial(model(with_audio(rows, adv, key)).argmax(1), lab, targeted)


def _inner_io(model, inputs, key: str | None):
    """(model, to_inner) so that an inner attack sees tensors, or dicts whose waveforms are under "audio"
    (the convention of ddn/deepfool/cw_l2) whatever the entry's name in ``inputs``."""
    if not isinstance(inputs, dict):
        return model, lambda rows, audio: audio
    k = audio_key(inputs, key)
    if k == "audio":
        return model, lambda rows, audio: with_audio(rows, audio, k)
    if "audio" in inputs:
        raise ValueError(f"dict inputs perturbed at {k!r} must not also hold an 'audio' entry (the inner attacks perturb 'audio')")
    rename = lambda d: {**{n: x for n, x in d.items() if n != "audio"}, k: d["audio"]}
    return (lambda d: model(rename(d))), (lambda rows, audio: {**{n: x for n, x in rows.items() if n != k}, "audio": audio})


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


def snr_radius(waves: torch.Tensor, snr_db: float) -> float:
    """The l2 norm of a v whose mean SNR (Eq. 14) over these clips is snr_db: with v fixed, SNR_i = SPL(x_i) - SPL(v),
    so ||v||_2 = sqrt(T) 10^((mean_i SPL(x_i) - snr_db) / 20). Silent clips have no SNR and are left out, as in
    evaluate()."""
    level = _spl(waves.double())
    level = level[torch.isfinite(level)]
    if len(level) == 0:
        raise ValueError("every clip is silent, so no SNR budget can be set")
    return math.sqrt(waves.shape[-1]) * 10.0 ** ((float(level.mean()) - float(snr_db)) / 20.0)


def penalty_loss(logits: torch.Tensor, labels: torch.Tensor, vp: torch.Tensor, *, targeted: bool,
                 c: float, kappa: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPL(v') + c * mean_i G_i (Eqs. 10, 11; Algorithm 1 sums the per-example gradients, which
    differs from the mean by the constant batch size that Adam ignores). Returns (loss, spl, G per example)."""
    G = hinge(logits, labels, targeted=targeted, kappa=kappa)
    s = _spl(vp.reshape(1, -1))[0]
    return s + c * G.mean(), s, G


# SPL(v) = 20 log10 rms(v) has gradient norm SPL_SLOPE / ||v|| (see penalty()'s docstring on choosing c).
SPL_SLOPE = 20.0 / math.log(10.0)


def first_step_c(grad_hinge: torch.Tensor, lr: float) -> float:
    """c* = SPL_SLOPE / (lr ||grad G||_1): the c above which Adam's first step from v' = 0 lands where the hinge
    outweighs SPL (a diagnostic recorded by :func:`penalty` as ``c_star``).

    Along a fixed direction u, d/dr SPL(r u) = SPL_SLOPE / r, while d/dr c G(r u) ~ -c |grad G . u| does not depend
    on r: the loss SPL + c G has an *unstable* stationary point at r* = SPL_SLOPE / (c |grad G . u|); below r*
    v shrinks to 0 (the collapse), above it v grows. Adam's first step moves every sample by lr against the sign of
    the gradient (SPL has no gradient at v = 0), u = -sign(grad G) / sqrt(T), r = lr sqrt(T), so the step lands
    beyond r* iff c > c*. Measured on our zoo, c* is not a sharp threshold (Adam's momentum carries v past r* for
    several steps: c = 3 < c* ~ 6-7 did not collapse on FSDD cnn1d-gamma), hence escalation, not c*, picks c.
    """
    g1 = float(grad_hinge.abs().sum())
    return SPL_SLOPE / (lr * g1) if g1 > 0 and math.isfinite(g1) else math.inf


def penalty(model, data, *, targeted: int | None = None, c: float | str | None = None, kappa: float | None = None,
            batch_size: int = 100, delta: float = 0.1, max_iter: int = 100, lr: float = 0.002,
            xi: float | None = None, p: float = 2, eps: float = 1e-7, box: str = "tanh",
            check_every: int | None = None, check_margin: float = 0.05, escalate: bool | None = None,
            c_factor: float = 3.0, collapse_db: float = 6.0, stall_iters: int | None = None, max_escalations: int = 6,
            restart: str = "peak", refine: int = 0, refine_kappa: float | None = None, kappa_margin: float | None = None,
            c_retries: int = 0, min_snr: float | None = None, shrink: bool = False,
            shrink_steps: int = 6, key: str | None = None, seed: int = 0, eval_batch_size: int = 100,
            progress: bool = True, callback: Callable | None = None):
    """Penalty method for universal perturbations (Abdoli et al. Sec. 3.2, Algorithm 1, Eqs. 4-11).

    targeted: target class, or None. c: penalty coefficient: a number (paper: 0.2 untargeted / 0.15
    targeted, the default) or "auto" (below). kappa: hinge confidence on logits (40 / 10); kappa_margin (ours, off
    by default): kappa = kappa_margin * the median clean logit margin f_y - max_{j != y} f_j of the crafting points
    (below). batch_size:
    mini-batch S (100). delta: stop when the crafting-set success (Eq. 3, v applied additively) >= 1 - delta.
    max_iter: Adam iterations in all (100; escalations of c included). lr: Adam step size (not given in the
    paper). xi, p: optional projection of v' onto the l_p ball (the paper used l2, xi = 6, for its
    speech-command model). eps: Eq. 7's epsilon. box: "tanh" (Eqs. 7-9) or "clip".
    key: for dict inputs, the entry that holds the waveforms (default "audio" or the only entry).

    Choosing c. SPL(v') is scale-free: its gradient (20 / ln 10) v' / ||v'||^2 grows without bound as v'
    shrinks, while the hinge's does not depend on ||v'||. The loss therefore has an unstable point: a v'
    quieter than r* = 8.69 / (c |dG/dv'|) is pulled to 0 (v collapses, success stays 0), a louder one grows
    until the crafting points are fooled. With our models' logit margins (~5-10) the paper's c = 0.2 always
    collapses and a fixed c that works on one model collapses on another (c = 3 on FSDD spchcmd targeted).
    Yet c should be as small as possible: the SPL term is what removes the energy of v that the hinge does
    not need, and a larger c leaves v louder at the same success (measured: c = 12 instead of 3, 21.8 instead
    of 32.1 dB, synth-commands spchcmd; notes/uap-penalty.md). ``c="auto"`` looks for the smallest c that does
    not collapse, upward from the paper's value, as CW's search raises c until an attack succeeds: it starts
    at the paper's c and escalates: when the SPL of v' falls ``collapse_db`` (6 dB, v halved) below its peak
    while the mini-batch success is under 1 - delta, v is collapsing; optionally (``stall_iters``, off by
    default) also when the mini-batch success (mean of the last 5 batches) has not improved by 0.01 for
    ``stall_iters`` iterations while under 1 - delta (v settled below the goal; measured with 15 on FSDD
    logmel-cnn untargeted: 0.893 test success at 16.2 dB instead of 0.827 at 35.4 dB, c rose to 16.2, so it
    trades loudness for success and is not the default); either way c is
    multiplied by ``c_factor`` (3: the c used is within 3x of the smallest that works; CW uses 10) and Adam
    restarts (fresh moments, which the large SPL gradients of the collapse dominate) from the loudest v'
    seen, at most ``max_escalations`` times. The first record also holds ``c_star``, the c above which
    Adam's first step escapes the collapse (:func:`first_step_c`), to compare with the c found.
    ``escalate=True`` adds the escalation to a numeric c. Every record holds the c in force.

    Stopping rule, cheaply. Each iteration's mini-batch logits (v' before the step) give the fraction of
    the batch fooled; the full crafting-set check of Eq. 3 (v applied additively, with clipping) runs only
    when that estimate reaches 1 - delta - ``check_margin`` (after a check that fails, the next estimate-triggered
    one waits 1, 2, 4, then 8 iterations: a run whose success hovers just under the goal would otherwise pay
    the full check at every iteration), every ``check_every`` iterations if set (1 = the old check at every
    iteration), and after the last iteration; the run stops only on the full check.
    shrink: after the stopping rule holds, scale v down by bisection (``shrink_steps`` halvings) to the
    quietest alpha v whose crafting success still meets 1 - delta (Adam's last step usually overshoots).

    restart: where Adam restarts after an escalation of c: "peak" (the loudest v' seen; the default) or "zero"
    (v' = 0, as if the run had started with the escalated c: the energy v gathered on the way to the collapse
    and after it is discarded; the iterations already spent still count toward ``max_iter``).

    refine (our extension beyond Algorithm 1; 0 = off, the paper's behaviour): once the Eq. 3 stop holds, run
    up to ``refine`` more Adam iterations (fresh moments, no escalation) on the same SPL(v') + c * mean G and
    return the quietest v whose full crafting-set success still meets 1 - delta (never louder than the v at the
    stop). Only iterates quieter than the best so far whose mini-batch estimate is within ``check_margin`` of
    the goal get the full check; the crafting set alone decides, never held-out data. A run that does not
    reach the stop within ``max_iter`` is not refined. ``refine_kappa`` replaces kappa during refine (None:
    keep kappa). A floor of 0 (points already fooled stop pulling, so SPL strips every bit of energy the
    others do not need) overfits the crafting set: measured on synth-commands logmel-cnn targeted, 200
    crafting clips, test success 0.758 (39.4 dB) against 0.985 (34.1 dB) with kappa kept (notes/uap-bar.md).

    kappa_margin. The paper's kappa is on raw logits, so its effect depends on the model's logit scale: on our zoo
    the median clean margin is 4.6-9.5, the untargeted kappa = 40 is never reached (fooled points keep pulling v
    louder until the stop or max_iter) and the targeted 10 is about one margin. kappa_margin = 1 ties the hinge's
    floor to that scale (a point stops pulling once it is fooled by one typical clean margin). The first history
    record holds ``margin_median`` and the ``kappa`` used. Measured (notes/uap-fsdd.md): alone it trades success
    for loudness along the same frontier (FSDD cnn1d-rand untargeted: 0.720 crafting success at 22.1 dB instead
    of 0.855 at 10.0 dB); with 500 crafting points it closed FSDD logmel-cnn's untargeted generalisation gap.

    c_retries (ours, 0 = off): CW's outer search over c across whole runs. With a hinge floor the model can reach
    (kappa_margin), v stops growing where SPL balances c * G, so c, not max_iter, sets the loudness, and a c too
    small for the stop settles below it without collapsing (no escalation fires). If a run ends without the Eq. 3
    stop, the whole run is repeated from v' = 0 with c * c_factor (the c in force at its end times c_factor), at
    most ``c_retries`` times; the first run that meets the stop is returned (else the last). Every record carries
    ``run`` (0, 1, ...); each run has its own ``max_iter``. Measured: synth-commands cnn1d-gamma untargeted, 500
    crafting clips, kappa_margin 1: c = 3 settles at 0.676 crafting success (30.1 dB), c = 9 meets the stop
    (0.902, 21.3 dB; notes/uap-fsdd.md).

    min_snr (ours, off by default): a loudness budget stated as the bar states it, a mean SNR in dB (Eq. 14) over the
    crafting points (targeted: those outside the target). With v fixed, SNR_i = 20 log10 P(x_i) - SPL(v), so the
    mean is at least min_snr iff SPL(v) <= mean_i 20 log10 P(x_i) - min_snr, i.e. ||v||_2 <= xi with
    xi = sqrt(T) 10^((mean_i 20 log10 P(x_i) - min_snr) / 20): v' is projected onto that l2 ball after every step
    (the paper's optional Eq. 2 projection, radius from the budget; |tanh(v')| <= |v'| and clipping only shrink the
    applied perturbation, so the bound holds for v). Excludes ``xi``; p is 2; the first record holds the ``xi``.
    With a large c (the SPL term then barely pulls) the run looks for the most successful v at that loudness,
    which tells a model that cannot be fooled at the budget from an optimiser that stopped too early
    (notes/uap-ball.md).

    Returns (v, history) with v (T,) in the waveform domain and one record per iteration (refine iterations
    carry ``phase: "refine"``; the first one that met the stop carries ``stop: True``; with refine the last
    record holds ``returned_iter``, the iteration whose v is returned, and that v's crafting success).
    """
    from tqdm import tqdm

    if c_retries:
        if c_retries < 0:
            raise ValueError(f"c_retries must be >= 0, not {c_retries}")
        args = {k: x for k, x in locals().items() if k not in ("tqdm", "c_retries")}
        args["escalate"] = isinstance(c, str) if escalate is None else escalate
        history = []
        for run in range(c_retries + 1):
            v, h = penalty(**args)
            for r in h:
                r["run"] = run
            history += h
            if any(r.get("stop") for r in h) or run == c_retries:
                return v, history
            args["c"] = h[-1]["c"] * c_factor
    if box not in ("tanh", "clip"):
        raise ValueError(f"box must be 'tanh' or 'clip', not {box!r}")
    if restart not in ("peak", "zero"):
        raise ValueError(f"restart must be 'peak' or 'zero', not {restart!r}")
    if refine < 0:
        raise ValueError(f"refine must be >= 0 iterations, not {refine}")
    auto = isinstance(c, str)
    if auto and c != "auto":
        raise ValueError(f"c must be a number, None (paper default) or 'auto', not {c!r}")
    if c_factor <= 1:
        raise ValueError(f"c_factor must be > 1 to escalate c, got {c_factor}")
    escalate = auto if escalate is None else escalate
    inputs, labels = as_tensors(data, key)
    t = None if targeted is None else int(targeted)
    _check_target(model, inputs, t)
    c_paper = PENALTY_C[t is not None]
    c_now = c_paper if c is None or auto else float(c)
    if kappa_margin is not None and (kappa is not None or not kappa_margin > 0):
        raise ValueError(f"kappa_margin must be a positive multiple and excludes kappa, got kappa_margin={kappa_margin}, "
                         f"kappa={kappa}")
    kappa = PENALTY_KAPPA[t is not None] if kappa is None else kappa
    if t is not None:
        keep = labels != t
        inputs, labels = take(inputs, keep), labels[keep]
        if len(labels) == 0:
            raise ValueError(f"no crafting points outside the target class {t}")
    waves = audio_of(inputs, key)
    if min_snr is not None:
        if xi is not None or p != 2:
            raise ValueError(f"min_snr sets an l2 radius: it excludes xi and needs p=2, got min_snr={min_snr}, xi={xi}, "
                             f"p={p}")
        xi = snr_radius(waves, min_snr)
    with torch.no_grad():               # one clean pass: reference predictions and the logit scale
        clean = torch.cat([model(take(inputs, slice(i, i + eval_batch_size)))
                           for i in range(0, len(labels), eval_batch_size)])
    ref = clean.argmax(1)
    own = clean.gather(1, labels.view(-1, 1)).squeeze(1)
    margin_median = float((own - clean.scatter(1, labels.view(-1, 1), float("-inf")).amax(1)).median())
    if kappa_margin is not None:
        kappa = kappa_margin * margin_median
    xp = to_tanh_space(waves, eps) if box == "tanh" else waves
    g = torch.Generator().manual_seed(seed)
    vp = torch.zeros(waves.shape[1], requires_grad=True)
    opt = torch.optim.Adam([vp], lr=lr)
    S = min(batch_size, len(labels))
    order, pos = torch.randperm(len(labels), generator=g), 0
    history = []
    start = time.perf_counter()
    current = lambda: perturbation_from_tanh(vp.detach(), eps) if box == "tanh" else vp.detach().clone()
    full_rate = lambda v: success_rate(model, inputs, v, ref, target=t, batch_size=eval_batch_size, key=key)
    loudness = lambda v: float(_spl(v.reshape(1, -1))[0])
    peak_s, peak_vp, escalations = -math.inf, None, 0
    recent, best_ma, last_up = [], -1.0, 0   # stall detection: moving average of the batch success
    next_check, wait = 0, 1             # back-off of the estimate-triggered full checks
    best = None                         # refine phase: (SPL, v, iteration, crafting success) of the quietest v at the goal
    kappa_now, k, end = kappa, 0, max_iter
    bar = tqdm(total=max_iter + refine, desc="penalty", leave=False, disable=not progress)
    while k < end:
        if pos + S > len(order):
            order, pos = torch.randperm(len(labels), generator=g), 0
        idx = order[pos:pos + S]
        pos += S
        xb = from_tanh_space(xp[idx], vp) if box == "tanh" else (waves[idx] + vp).clamp(LOW, HIGH)
        tgt = labels[idx] if t is None else torch.full_like(labels[idx], t)
        logits = model(with_audio(take(inputs, idx), xb, key))
        opt.zero_grad()
        loss, s, G = penalty_loss(logits, tgt, vp, targeted=t is not None, c=c_now, kappa=kappa_now)
        loss.backward()
        with torch.no_grad():           # running estimate of Eq. 3 from the logits already computed
            est = float(is_adversarial(logits.argmax(1), ref[idx] if t is None else tgt, t is not None).float().mean())
        s_val = float(s.detach())
        rec = {"iter": k + 1, "c": c_now, "loss": float(loss.detach()), "spl": s_val,
               "hinge": float(G.detach().mean()), "batch_success": est}
        if best is not None:
            rec["phase"] = "refine"
        if k == 0:
            rec.update(margin_median=margin_median, kappa=kappa)
            if min_snr is not None:
                rec["xi"] = xi
        if k == 0 and c_now > 0:        # v' = 0: SPL has no gradient there, the gradient is c grad G
            rec["c_star"] = first_step_c(vp.grad / c_now, lr)
        if s_val > peak_s:
            peak_s, peak_vp = s_val, vp.detach().clone()
        recent = (recent + [est])[-5:]
        ma = sum(recent) / len(recent)
        if ma > best_ma + 0.01:
            best_ma, last_up = ma, k
        why = ("collapse" if s_val < peak_s - collapse_db and est < 1 - delta else
               "stall" if stall_iters and k - last_up >= stall_iters and ma < 1 - delta else None)
        if escalate and why and escalations < max_escalations and best is None:
            # raise c and restart Adam (its moments are the collapse's) from the loudest v' seen or from 0
            escalations += 1
            recent, best_ma, last_up = [], -1.0, k
            rec["escalation"] = why
            c_now *= c_factor
            with torch.no_grad():
                vp.copy_(peak_vp if restart == "peak" else torch.zeros_like(vp))
            opt = torch.optim.Adam([vp], lr=lr)
            peak_s = float(_spl(vp.detach().reshape(1, -1))[0]) if restart == "peak" else -math.inf
            rec["escalated_to"] = c_now
            next_check, wait = 0, 1
        else:
            opt.step()
            if xi is not None:
                with torch.no_grad():
                    vp.copy_(project(vp, p, xi))
        rec["time_s"] = time.perf_counter() - start
        done = False
        if best is None:
            gated = est >= 1 - delta - check_margin and k >= next_check
            if gated or (check_every and (k + 1) % check_every == 0) or k + 1 == max_iter:
                v = current()
                rec["success_rate"] = full_rate(v)
                rec.update(_summary(v))
                done = rec["success_rate"] >= 1 - delta
                if gated and not done:
                    next_check, wait = k + 1 + wait, min(2 * wait, 8)
        else:                           # refine: only a quieter iterate can replace the best
            v = current()
            if est >= 1 - delta - check_margin and loudness(v) < best[0]:
                rec["success_rate"] = full_rate(v)
                rec.update(_summary(v))
                if rec["success_rate"] >= 1 - delta:
                    best = (loudness(v), v, k + 1, rec["success_rate"])
        history.append(rec)
        if callback:
            callback(current(), rec)
        k += 1
        bar.update(1)
        if done:
            rec["stop"] = True
            if not refine:
                break
            v = current()
            best = (loudness(v), v, k, rec["success_rate"])
            kappa_now = kappa if refine_kappa is None else refine_kappa
            opt = torch.optim.Adam([vp], lr=lr)
            end = k + refine
    bar.close()
    v = current()
    if best is not None:
        v = best[1]
        history[-1].update({"returned_iter": best[2], "success_rate": best[3], **_summary(v)})
    if shrink and history[-1].get("success_rate", 0.0) >= 1 - delta:
        lo, hi = 0.0, 1.0               # invariant: hi * v meets 1 - delta
        for _ in range(shrink_steps):
            mid = (lo + hi) / 2
            if full_rate(mid * v) >= 1 - delta:
                hi = mid
            else:
                lo = mid
        v = hi * v
        history[-1].update({"shrink_scale": hi, "success_rate": full_rate(v), **_summary(v),
                            "time_s": time.perf_counter() - start})
    return v, history


def craft(method: str, model, data, **kwargs):
    """Dispatch by name: ``craft("penalty" | "iterative", model, data, **kwargs)``."""
    if method == "penalty":
        return penalty(model, data, **kwargs)
    if method == "iterative":
        return iterative(model, data, **kwargs)
    raise ValueError(f"unknown universal method {method!r}: penalty or iterative")
