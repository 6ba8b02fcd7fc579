"""Iterative proportional clipping (IPC) attack on speech-to-text.

Zhang, Zhou, Yan & Liu, "Generating robust audio adversarial examples with temporal dependency",
IJCAI 2020: the perturbation of every sample is clipped to a bound proportional to the clean
sample's magnitude, |delta_i| <= r |x_i| (their proportional clipping, applied after every
iteration), so the perturbation follows the speech envelope and silence stays silent. The
objective is the CW one, ||delta||_2^2 + c * l_CTC(x + delta, t), optimised with Adam; on every
success the ratio shrinks, r <- shrink * r (as CW shrinks tau), and the last success is returned.

Silence: where the clean audio is exactly 0 (synthetic speech has digital silence) the bound is
0 and the perturbation stays 0. That is the attack's premise (the perturbation follows the
speech envelope; perturbing silence is what a listener hears first), so it is kept as defined,
sample by sample; the price is fewer samples to perturb. The sparse wrapper's l0 step
(`attacks.sparse.joint_score`) never spends its budget on such samples, and ranks the others in
the bound's own units |delta_i| / (r |x_i|) (the box exposes its bounds as `box.limits`).
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import _ctc


class _ProportionalBox(_ctc.Hooks):
    """|delta_i| <= r |x_i| sample by sample; r <- shrink * r on success."""

    def __init__(self, n: int, ratio: float, shrink: float, like: torch.Tensor):
        self.ratio = torch.full((n,), float(ratio), dtype=like.dtype, device=like.device)
        self.shrink = shrink
        self._x, self._ax = None, None

    def limits(self, rows, x):  # the per-sample bounds, for the sparse l0 step's ranking
        if self._x is not x:  # |x| once per batch layout, not every step
            self._x, self._ax = x, x.abs()
        return self.ratio[rows][:, None] * self._ax

    def box(self, d, rows, x):
        lim = self.limits(rows, x)
        return torch.maximum(torch.minimum(d, lim), -lim)

    def on_success(self, ok, d, rows):
        idx = torch.tensor(rows, device=d.device)[ok]
        self.ratio[idx] = self.ratio[idx] * self.shrink

    def record(self, i):
        return {"bound": float(self.ratio[i])}


def ipc(model, inputs, labels: Sequence[str], *, lengths=None, targeted: bool = True, ratio: float = 0.5,
        shrink: float = 0.9, lr: float = 1e-3, max_iter: int = 1000, c: float = 1.0, l2_weight: float = 1.0,
        project=None, stop_after: int | None = None, patience: int | None = None,
        batch_size: int = _ctc.BATCH_SIZE):
    """IPC (Zhang et al. 2020), batched; arguments as `cw_ctc`, with the proportional bound
    |delta_i| <= ratio * |x_i| sample by sample (ratio shrinks by `shrink` on each success).
    Returns (adversarial inputs, records); a record's `bound` is the final ratio.
    """
    x, lengths, mask, rebuild = _ctc.prepare(model, inputs, labels, lengths, "ipc")
    hooks = _ProportionalBox(len(x), ratio, shrink, x)
    best, records = _ctc.optimize(model, x, lengths, labels, targeted=targeted, hooks=hooks, lr=lr,
                                  max_iter=max_iter, c=c, l2_weight=l2_weight, project=project,
                                  batch_size=batch_size, stop_after=stop_after, patience=patience)
    return rebuild(_ctc.assemble(x, best)), records
