"""Carlini & Wagner targeted attack on speech-to-text (CTC recognisers).

Carlini & Wagner, "Audio adversarial examples: targeted attacks on speech-to-text", IEEE S&P
Workshops 2018, Sec. IV: minimise ||delta||_2^2 + c * l_CTC(x + delta, t) subject to
dB_x(delta) <= tau, i.e. ||delta||_inf <= tau (Eq. 1-2 with the l_inf box of their code), by Adam.
Whenever the transcript equals the target, tau <- 0.8 * min(tau, ||delta||_inf) and the
optimisation continues from the current delta; the last successful delta is returned.
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import _ctc

INT16_STEP = 100 / 32768  # CW's released attack.py (--lr 100) and Qin et al.'s stage 1, int16 scale


class _Box(_ctc.Hooks):
    """|delta| <= tau per utterance; tau <- shrink * min(tau, ||delta||_inf) on success."""

    def __init__(self, n: int, tau: float, shrink: float, like: torch.Tensor):
        self.bound = torch.full((n,), float(tau), dtype=like.dtype, device=like.device)
        self.shrink = shrink

    def box(self, d, rows, x):
        b = self.bound[rows][:, None]
        return torch.maximum(torch.minimum(d, b), -b)

    def on_success(self, ok, d, rows):
        idx = torch.tensor(rows, device=d.device)[ok]
        self.bound[idx] = torch.minimum(self.bound[idx], d[ok].abs().amax(1)) * self.shrink

    def record(self, i):
        return {"bound": float(self.bound[i])}


def cw_ctc(model, inputs, labels: Sequence[str], *, lengths=None, targeted: bool = True, tau: float = 0.05,
           shrink: float = 0.8, lr: float = INT16_STEP, max_iter: int = 1000, c: float = 1.0, l2_weight: float = 1.0,
           project=None, stop_after: int | None = None, patience: int | None = None,
           batch_size: int = _ctc.BATCH_SIZE):
    """Carlini-Wagner CTC attack (CW 2018, Sec. IV, Eq. 1-2), batched over utterances of different lengths.

    model: a `Recognizer` (frame logits, blank, text <-> labels). inputs: (B, T) waveforms in
    [-1, 1] (zero padded; `lengths` in samples) or a dict with "audio". labels: target transcripts
    (targeted, default) or the original ones (untargeted: the CTC loss of them is maximised).
    tau: initial l_inf bound (CW: 2000 / 32768 ~ 0.06; shrunk by `shrink` on every success).
    lr: Adam step, 100 / 32768: the step of CW's released code (its `--lr 100` on the int16 scale, 1000
    iterations) and of Qin et al.'s stage 1; ART uses the same (benchmarks/cw_step_check.py compares it
    with 1e-3 on held-out utterances).
    c, l2_weight: weights of the CTC and ||delta||^2 terms (l2_weight=0 is the setting of CW's
    released code, whose l2 penalty is off by default: the loudness is then set by the shrinking
    tau alone, an l_inf-minimising attack). project: per-iteration projection hook (e.g. the l0
    step of `attacks.sparse`). stop_after: an utterance stops after that many successes.
    patience: an utterance stops once that many steps passed without a success, i.e. once tau no
    longer shrinks (a convergence test that treats every utterance, dense or sparse, alike).
    batch_size: utterances optimised together (continuous batching, `attacks._ctc`; the result
    does not depend on it).

    Returns (adversarial inputs, records): one dict per utterance with success, first_success,
    last_success, successes, iterations, loss, seconds and the final bound (tau).
    """
    x, lengths, mask, rebuild = _ctc.prepare(model, inputs, labels, lengths, "cw_ctc")
    hooks = _Box(len(x), tau, shrink, x)
    best, records = _ctc.optimize(model, x, lengths, labels, targeted=targeted, hooks=hooks, lr=lr,
                                  max_iter=max_iter, c=c, l2_weight=l2_weight, project=project,
                                  batch_size=batch_size, stop_after=stop_after, patience=patience)
    return rebuild(_ctc.assemble(x, best)), records
