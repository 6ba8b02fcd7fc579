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


def ipc(model, inputs, labels: Sequence[str], *, targeted: bool = True, lengths=None, ratio: float = 0.5,
        shrink: float = 0.9, lr: float = 1e-3, max_iter: int = 1000, c: float = 1.0, l2_weight: float = 1.0,
        project=None, stop_after: int | None = None, patience: int | None = None,
        info: dict | None = None):
    """IPC (Zhang et al. 2020), batched; arguments as `cw_ctc`, with the proportional bound
    |delta_i| <= ratio * |x_i| sample by sample (ratio shrinks by `shrink` on each success).
    info gets the final per-utterance ratio. stop_after / patience: as `cw_ctc`. Returns the
    adversarial inputs.
    """
    t0 = _ctc.now()
    x, lengths, mask, rebuild = _ctc.prepare(model, inputs, labels, lengths, "ipc")
    r = torch.full((len(x),), float(ratio), dtype=x.dtype, device=x.device)
    ax = x.abs()

    def box(d):
        lim = r[:, None] * ax
        return torch.maximum(torch.minimum(d, lim), -lim)

    box.limits = lambda: r[:, None] * ax  # the per-sample bounds, for the sparse l0 step's ranking

    def on_success(ok, d):
        r[ok] = r[ok] * shrink

    tracker = _ctc.optimize(model, x, lengths, mask, labels, targeted=targeted, box=box, on_success=on_success,
                            lr=lr, max_iter=max_iter, c=c, l2_weight=l2_weight, project=project,
                            stop_after=stop_after, patience=patience)
    _ctc.fill_info(info, tracker, _ctc.now() - t0, ratio=r.tolist())
    return _ctc.finish(tracker, x, rebuild)
