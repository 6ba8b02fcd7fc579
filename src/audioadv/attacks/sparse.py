"""Sparse adversarial examples by proximal gradient descent: an l0 proximal step after every
iteration of any iterative attack.

"Sparse Audio Adversarial Examples via Proximal Gradient Descent" (the seed paper): after each
iteration of the base attack, the perturbation is replaced by its hard thresholding, the
proximal operator (Euclidean projection) of the constraint ||delta||_0 <= k: keep the k entries of
largest |delta_i| and zero the rest, with k = (1 - s) N for a target sparsity s over the N valid
samples of the utterance.

Schedule (default `ramp=0.3`, linear): at step t of T the sparsity is
s_t = s * min(1, (t + 1) / ceil(ramp * T)), so the attack first finds a dense direction and then
reaches the target sparsity after 30% of its iterations; from then on every iterate has exactly
(at most) k non-zeros. Successes are only recorded once the target sparsity holds
(`HardThreshold.ready_step`). `ramp=0` thresholds at the target sparsity from the first step.

`sparse(attack, sparsity=0.4)` returns the same attack with the projection hooked in: works for
`cw_ctc`, `imperceptible`, `ipc` (their `project=` argument) and `pgd` (same hook).
"""
from __future__ import annotations

import functools
import math

import torch


def hard_threshold(delta: torch.Tensor, k, lengths=None) -> torch.Tensor:
    """Keep exactly k[b] entries of largest |delta| in each row (within its first lengths[b]
    samples), zero the rest. Ties are broken by position. k: int or (B,) tensor."""
    d = delta.unsqueeze(0) if delta.dim() == 1 else delta
    b, n = d.shape
    lengths = torch.full((b,), n, dtype=torch.long, device=d.device) if lengths is None else \
        torch.as_tensor(lengths, dtype=torch.long, device=d.device)
    k = torch.as_tensor(k, dtype=torch.long, device=d.device).expand(b).clamp(min=0)
    k = torch.minimum(k, lengths)
    valid = torch.arange(n, device=d.device)[None, :] < lengths[:, None]
    score = torch.where(valid, d.abs(), torch.full_like(d, -1.0))
    order = score.argsort(dim=1, descending=True, stable=True)
    keep_sorted = torch.arange(n, device=d.device)[None, :] < k[:, None]
    keep = torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)
    out = d * keep
    return out[0] if delta.dim() == 1 else out


class HardThreshold:
    """The l0 projection hook with the ramp schedule of the module docstring."""

    def __init__(self, sparsity: float = 0.4, ramp: float = 0.3):
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
        if not 0.0 <= ramp <= 1.0:
            raise ValueError(f"ramp must lie in [0, 1], got {ramp}")
        self.sparsity, self.ramp = float(sparsity), float(ramp)

    def ramp_steps(self, total: int) -> int:
        return max(1, math.ceil(self.ramp * total))

    def sparsity_at(self, step: int, total: int) -> float:
        return self.sparsity * min(1.0, (step + 1) / self.ramp_steps(total))

    def ready_step(self, total: int) -> int:
        """First step whose projection uses the target sparsity."""
        return self.ramp_steps(total) - 1

    def keep(self, lengths: torch.Tensor, step: int, total: int) -> torch.Tensor:
        s = self.sparsity_at(step, total)
        return torch.floor((1.0 - s) * lengths.to(torch.float64) + 1e-9).long()

    def __call__(self, delta: torch.Tensor, *, step: int, total: int, lengths=None) -> torch.Tensor:
        d = delta if delta.dim() == 2 else delta.flatten(1)
        n = torch.full((d.shape[0],), d.shape[1], dtype=torch.long, device=d.device) if lengths is None \
            else torch.as_tensor(lengths, dtype=torch.long, device=d.device)
        return hard_threshold(d, self.keep(n, step, total), n).view_as(delta)


def chain(*hooks):
    """Apply several projection hooks in order (None entries skipped)."""
    hooks = [h for h in hooks if h is not None]
    if len(hooks) == 1:
        return hooks[0]

    class _Chain:
        def __call__(self, delta, **kw):
            for h in hooks:
                delta = h(delta, **kw)
            return delta

        def ready_step(self, total):
            return max((h.ready_step(total) for h in hooks if hasattr(h, "ready_step")), default=-1)

    return _Chain()


def sparse(attack, sparsity: float = 0.4, *, ramp: float = 0.3):
    """Sparse version of an iterative attack: l0 hard thresholding (k = (1 - sparsity) N) after
    every iteration, reached with the linear `ramp` schedule (module docstring).

    The returned function has the attack's signature; a `project=` given to it runs before the
    l0 step. Example: `sparse(cw_ctc, 0.4)(model, wav, targets, lengths=lengths)`.
    """
    hook = HardThreshold(sparsity, ramp)

    @functools.wraps(attack)
    def wrapped(model, inputs, labels, **kwargs):
        kwargs["project"] = chain(kwargs.get("project"), hook)
        return attack(model, inputs, labels, **kwargs)

    wrapped.__doc__ = f"{attack.__name__} with l0 hard thresholding to sparsity {sparsity} (ramp {ramp}).\n\n" \
                      + (attack.__doc__ or "")
    wrapped.sparsity, wrapped.ramp, wrapped.base = sparsity, ramp, attack
    return wrapped
