"""Imperceptible targeted attack on speech-to-text with a psychoacoustic masking loss.

Qin, Carlini, Cottrell, Goodfellow & Raffel, "Imperceptible, robust, and targeted adversarial
examples for automatic speech recognition", ICML 2019, Sec. 3-4:
- stage 1: the CW attack, min l_CTC(x + delta, t) with ||delta||_inf <= tau, tau shrinking on
  success (`cw_ctc` with no l2 term, their setting);
- stage 2: min l_CTC(x + delta, t) + alpha * l_theta(x, delta) (Eq. 9) under the final stage-1 bound,
  l_theta = mean_k relu(p_bar_delta(k) - theta_x(k)): the perturbation's PSD, normalised with the
  clean audio's maximum, above the clean audio's global masking threshold
  (`audioadv.signal.masking`, computed once per utterance). Every `up_every` steps alpha is raised
  (x1.2) for utterances that currently transcribe as the target; every `down_every` steps it is
  lowered (x0.8, floor `alpha_min`) for those that do not. The last stage-2 success is returned,
  else the stage-1 result.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..signal.masking import masking_loss, masking_threshold
from . import _ctc
from .cw_ctc import INT16_STEP, cw_ctc


def imperceptible(model, inputs, labels: Sequence[str], *, targeted: bool = True, lengths=None,
                  tau: float = 0.05, lr_stage1: float = INT16_STEP, max_iter_stage1: int = 1000, c: float = 1.0,
                  lr_stage2: float = 1e-4, max_iter_stage2: int = 4000, alpha: float = 0.05,
                  alpha_up: float = 1.2, alpha_down: float = 0.8, up_every: int = 20, down_every: int = 50,
                  alpha_min: float = 5e-4, loss_scale: float = 1.0, stop_after: int | None = None,
                  patience: int | None = None, patience_stage2: int | None = None, project=None,
                  info: dict | None = None):
    """Qin et al. 2019 attack (two stages, see module docstring), batched with masks.

    lr_stage1 / lr_stage2: Adam steps (Qin: 100 and 1 on the int16 scale, 1000 and 4000 steps).
    alpha: initial weight of the masking loss; loss_scale multiplies l_theta (1: Qin's linear-power
    loss). project: per-iteration hook applied in both stages (e.g. `attacks.sparse`).
    stop_after / patience: stage 1's stop rules (`cw_ctc`). Stage 2 runs its max_iter_stage2 steps
    (Qin), unless patience_stage2 (ours, off by default): an utterance that has reached the target in
    stage 2 leaves once that many steps pass without its masking loss l_theta, over the iterates
    that reach the target, falling 1% below its best (the stage-2 objective has converged).
    info: per-utterance success (final), first-success iteration (stage 1 + stage 2 count),
    stage-2 success, final alpha and the masking loss of the result.
    """
    if patience_stage2 is not None and patience_stage2 < 1:
        raise ValueError(f"imperceptible: patience_stage2 must be at least 1, got {patience_stage2}")
    t0 = _ctc.now()
    x, lengths, mask, rebuild = _ctc.prepare(model, inputs, labels, lengths, "imperceptible")
    info1: dict = {}
    adv1 = cw_ctc(model, x, labels, targeted=targeted, lengths=lengths, tau=tau, lr=lr_stage1,
                  max_iter=max_iter_stage1, c=c, l2_weight=0.0, project=project, stop_after=stop_after,
                  patience=patience, info=info1)
    d1 = (adv1 - x) * mask
    ok1 = torch.tensor(info1["success"], dtype=torch.bool, device=x.device)
    bound = torch.tensor(info1["tau"], dtype=x.dtype, device=x.device) / 0.8  # last successful bound
    bound = torch.where(ok1, torch.maximum(bound, d1.abs().amax(1)), torch.full_like(bound, tau))
    theta, psd_max = masking_threshold(x, lengths=lengths)
    a = torch.full((len(x),), float(alpha), dtype=x.dtype, device=x.device)
    state = {"ok": torch.zeros(len(x), dtype=torch.bool, device=x.device), "step": 0}
    ml_now = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    ml_best = torch.full((len(x),), float("inf"), dtype=x.dtype, device=x.device)
    last_gain = torch.zeros(len(x), dtype=torch.long, device=x.device)

    def box(d):
        return torch.maximum(torch.minimum(d, bound[:, None]), -bound[:, None])

    def extra(d, step, idx):
        ml = masking_loss(d, theta[idx], psd_max[idx], lengths[idx])
        ml_now[idx] = ml.detach()
        return a[idx] * loss_scale * ml

    def after_check(ok, step):
        state["ok"], state["step"] = ok, step
        if step and step % up_every == 0:
            a[ok] *= alpha_up
        if step and step % down_every == 0:
            a[~ok] = (a[~ok] * alpha_down).clamp_min(alpha_min)

    def leave():
        ok, step = state["ok"], state["step"]
        gain = ok & (ml_now < ml_best * 0.99)
        last_gain[gain] = step
        ml_best.copy_(torch.where(ok, torch.minimum(ml_best, ml_now), ml_best))
        return torch.isfinite(ml_best) & (step - last_gain >= patience_stage2)

    tracker = _ctc.optimize(model, x, lengths, mask, labels, targeted=targeted, box=box, on_success=None,
                            lr=lr_stage2, max_iter=max_iter_stage2, c=1.0, l2_weight=0.0, project=project,
                            delta_init=d1, extra_loss=extra, after_check=after_check,
                            leave=None if patience_stage2 is None else leave)
    ok2 = tracker.success
    final = torch.where(ok2[:, None], tracker.best, d1)
    success = ok2 | ok1
    with torch.no_grad():
        th_loss = masking_loss(final, theta, psd_max, lengths)
    if info is not None:
        first = [f1 if s1 else (max_iter_stage1 + f2 if s2 else max_iter_stage1 + max_iter_stage2)
                 for f1, s1, f2, s2 in zip(info1["iterations"], info1["success"], tracker.first.tolist(),
                                           ok2.tolist())]
        info.update(success=success.tolist(), iterations=first, stage1_success=info1["success"],
                    stage2_success=ok2.tolist(), alpha=a.tolist(), masking_loss=th_loss.tolist(),
                    successes=(tracker.count + torch.tensor(info1["successes"])).tolist(),
                    steps=(tracker.steps + torch.tensor(info1["steps"])).tolist(),
                    seconds=_ctc.now() - t0)
    return rebuild((x + final).clamp(-1.0, 1.0))
