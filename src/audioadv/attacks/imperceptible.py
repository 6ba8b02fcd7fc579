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

import inspect
from typing import Sequence

import torch

from ..signal.masking import HOP, N_FFT, masking_loss, masking_threshold
from . import _ctc
from .cw_ctc import INT16_STEP, cw_ctc


class _Masking(_ctc.Hooks):
    """Stage 2: the stage-1 l_inf bound, the weighted masking loss and alpha's schedule, per utterance."""

    def __init__(self, bound, alpha, *, alpha_up, alpha_down, up_every, down_every, alpha_min, loss_scale,
                 patience):
        n, like = len(bound), bound
        self.bound = bound
        self.alpha = torch.full((n,), float(alpha), dtype=like.dtype, device=like.device)
        self.up, self.down, self.up_every, self.down_every = alpha_up, alpha_down, up_every, down_every
        self.alpha_min, self.loss_scale, self.patience = alpha_min, loss_scale, patience
        self.theta: dict[int, torch.Tensor] = {}
        self.psd_max = torch.zeros(n, dtype=like.dtype, device=like.device)
        self.ml_now = torch.zeros(n, dtype=like.dtype, device=like.device)
        self.ml_best = torch.full((n,), float("inf"), dtype=like.dtype, device=like.device)
        self.last_gain = torch.zeros(n, dtype=torch.long)
        self._batch: tuple = ((), 0, None)

    def enter(self, i, x):
        # the clean utterance's masking threshold, once, from its own samples
        theta, pmax = masking_threshold(pad_to_window(x[None]), lengths=torch.tensor([len(x)], device=x.device))
        self.theta[i], self.psd_max[i] = theta[0], pmax[0]

    def thresholds(self, rows, width: int) -> torch.Tensor:
        """(B, K, frames) thresholds of the rows for perturbations `width` samples long."""
        if self._batch[:2] != (tuple(rows), width):
            frames = (width - N_FFT) // HOP + 1
            th = self.theta[rows[0]]
            out = torch.zeros(len(rows), th.shape[0], frames, dtype=th.dtype, device=th.device)
            for k, i in enumerate(rows):
                f = min(frames, self.theta[i].shape[1])
                out[k, :, :f] = self.theta[i][:, :f]
            self._batch = (tuple(rows), width, out)
        return self._batch[2]

    def loss(self, d, rows, lengths):
        d = pad_to_window(d)
        return masking_loss(d, self.thresholds(rows, d.shape[1]), self.psd_max[rows], lengths)

    def box(self, d, rows, x):
        b = self.bound[rows][:, None]
        return torch.maximum(torch.minimum(d, b), -b)

    def extra_loss(self, d, rows, lengths, steps):
        ml = self.loss(d, rows, lengths)
        self.ml_now[rows] = ml.detach()
        return self.alpha[rows] * self.loss_scale * ml

    def after_check(self, ok, rows, steps):
        idx = torch.tensor(rows, device=self.alpha.device)
        s = steps.to(self.alpha.device)
        up = ok & (s > 0) & (s % self.up_every == 0)
        down = ~ok & (s > 0) & (s % self.down_every == 0)
        self.alpha[idx[up]] *= self.up
        self.alpha[idx[down]] = (self.alpha[idx[down]] * self.down).clamp_min(self.alpha_min)

    def leave(self, ok, rows, steps):
        if self.patience is None:
            return None
        idx = torch.tensor(rows, device=self.alpha.device)
        ok = ok.to(self.alpha.device)
        now, best = self.ml_now[idx], self.ml_best[idx]
        gain = (ok & (now < best * 0.99)).cpu()
        self.last_gain[idx.cpu()[gain]] = steps[gain]
        self.ml_best[idx] = torch.where(ok, torch.minimum(best, now), best)
        return (torch.isfinite(self.ml_best[idx]).cpu() & (steps - self.last_gain[idx.cpu()] >= self.patience))


def pad_to_window(d: torch.Tensor) -> torch.Tensor:
    """Zero padding up to one masking-model window (the PSD frames need N_FFT samples)."""
    return d if d.shape[-1] >= N_FFT else torch.nn.functional.pad(d, (0, N_FFT - d.shape[-1]))


def imperceptible(model, inputs, labels: Sequence[str], *, lengths=None, targeted: bool = True,
                  tau: float = 0.05, lr_stage1: float = INT16_STEP, max_iter_stage1: int = 1000, c: float = 1.0,
                  lr_stage2: float = 1e-4, max_iter_stage2: int = 4000, alpha: float = 0.05,
                  alpha_up: float = 1.2, alpha_down: float = 0.8, up_every: int = 20, down_every: int = 50,
                  alpha_min: float = 5e-4, loss_scale: float = 1.0, stop_after: int | None = None,
                  patience: int | None = None, patience_stage2: int | None = None, project=None,
                  batch_size: int = _ctc.BATCH_SIZE):
    """Qin et al. 2019 attack (two stages, see module docstring; stage 2 minimises Eq. 9's objective),
    batched with masks.

    lr_stage1 / lr_stage2: Adam steps (Qin: 100 and 1 on the int16 scale, 1000 and 4000 steps).
    alpha: initial weight of the masking loss; loss_scale multiplies l_theta (1: Qin's linear-power
    loss). project: per-iteration hook applied in both stages (e.g. `attacks.sparse`).
    stop_after / patience: stage 1's stop rules (`cw_ctc`). Stage 2 runs its max_iter_stage2 steps
    (Qin), unless patience_stage2 (ours, off by default): an utterance that has reached the target in
    stage 2 leaves once that many steps pass without its masking loss l_theta, over the iterates
    that reach the target, falling 1% below its best (the stage-2 objective has converged).
    batch_size: utterances optimised together in each stage (continuous batching; the result does
    not depend on it).

    Returns (adversarial inputs, records): per utterance success (final), first_success and
    iterations (stage 1 + stage 2 steps), stage1_success, stage2_success, bound (the stage-2
    l_inf bound), alpha (final), masking_loss of the result, loss, seconds.
    """
    if patience_stage2 is not None and patience_stage2 < 1:
        raise ValueError(f"imperceptible: patience_stage2 must be at least 1, got {patience_stage2}")
    x, lengths, mask, rebuild = _ctc.prepare(model, inputs, labels, lengths, "imperceptible")
    adv1, rec1 = cw_ctc(model, x, labels, targeted=targeted, lengths=lengths, tau=tau, lr=lr_stage1,
                        max_iter=max_iter_stage1, c=c, l2_weight=0.0, project=project, stop_after=stop_after,
                        patience=patience, batch_size=batch_size)
    d1 = (adv1 - x) * mask
    ok1 = torch.tensor([r["success"] for r in rec1], dtype=torch.bool, device=x.device)
    shrink = inspect.signature(cw_ctc).parameters["shrink"].default
    bound = torch.tensor([r["bound"] for r in rec1], dtype=x.dtype, device=x.device) / shrink  # last successful
    bound = torch.where(ok1, torch.maximum(bound, d1.abs().amax(1)), torch.full_like(bound, tau))
    hooks = _Masking(bound, alpha, alpha_up=alpha_up, alpha_down=alpha_down, up_every=up_every,
                     down_every=down_every, alpha_min=alpha_min, loss_scale=loss_scale, patience=patience_stage2)
    best2, rec2 = _ctc.optimize(model, x, lengths, labels, targeted=targeted, hooks=hooks, lr=lr_stage2,
                                max_iter=max_iter_stage2, c=1.0, l2_weight=0.0, project=project,
                                batch_size=batch_size, delta_init=d1)
    records, finals = [], []
    for i, (r1, r2) in enumerate(zip(rec1, rec2)):
        n = int(lengths[i])
        final = best2[i] if r2["success"] else d1[i, :n]
        finals.append(final)
        if i not in hooks.theta:
            hooks.enter(i, x[i, :n])
        with torch.no_grad():
            ml = masking_loss(pad_to_window(final[None]), hooks.theta[i][None], hooks.psd_max[i:i + 1],
                              lengths[i:i + 1])
        s1, s2 = r1["success"], r2["success"]
        first = r1["first_success"] if s1 else (r1["iterations"] + r2["first_success"] if s2 else None)
        last = r1["iterations"] + r2["last_success"] if s2 else r1["last_success"]
        records.append({"success": s1 or s2, "first_success": first, "last_success": last,
                        "successes": r1["successes"] + r2["successes"], "iterations": r1["iterations"] + r2["iterations"],
                        "loss": r2["loss"], "seconds": r1["seconds"] + r2["seconds"], "stage1_success": s1,
                        "stage2_success": s2, "bound": float(bound[i]), "alpha": float(hooks.alpha[i]),
                        "masking_loss": float(ml[0])})
    return rebuild(_ctc.assemble(x, finals)), records
