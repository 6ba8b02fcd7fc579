"""The naive sparse alternatives to MSAE, at the same sparsity and step budget, in the uniform call
`attack(model, inputs, targets, *, sparsity, ...) -> (adv_inputs, records)` so that experiment files can put
them in the same table as `msae` (docs/msae.md):

- `topk_dense`: the dense baseline (`msae` with every position free), then per modality and example only
  the floor(s n) positions of largest perturbation energy kept, the rest reset to the clean input;
- `l0_proximal`: the dense loop with the l0 proximal step of `attacks.sparse` (`HardThreshold`) after every
  update, so that at most a fraction s of each modality's entries is non-zero at the end.

These are comparisons of ours, not part of the MSAE paper's method, hence their own module. Extra keyword
arguments go to `msae` (steps, c, learning rates, ...), so the budget is the one `msae` uses by default.
"""
from __future__ import annotations

import torch

from .msae import _per_modality, _static_records, msae, topk_of
from .sparse import HardThreshold


def _modalities(inputs, sparsity) -> list[str]:
    if isinstance(sparsity, dict):
        return list(sparsity)
    return ["audio"] if torch.is_tensor(inputs) else [k for k in ("audio", "video") if k in inputs]


def topk_dense(model, inputs, targets, *, sparsity: float | dict = 0.3, targeted: bool = True,
               structure: dict | None = None, **kwargs):
    """Top-k of a dense perturbation: `msae` with sparsity 1 (same steps), then `topk_of` at `sparsity`
    (per sample/pixel, or per frame with `structure`). Returns (adv_inputs, records) as `msae` does; the
    records describe the thresholded input (success is re-checked on the model)."""
    keys = _modalities(inputs, sparsity)
    dense, _ = msae(model, inputs, targets, sparsity={k: 1.0 for k in keys}, targeted=targeted,
                    structure=structure, **kwargs)
    sp = _per_modality(sparsity, keys, "sparsity")
    adv = topk_of(inputs, dense, sp, structure=structure)
    return adv, _static_records(model, inputs, adv, targets, targeted, sp, structure)


def l0_proximal(model, inputs, targets, *, sparsity: float | dict = 0.3, targeted: bool = True, **kwargs):
    """The dense `msae` loop with `HardThreshold(1 - s)` applied to each modality's perturbation after every
    step (HardThreshold's sparsity is the fraction zeroed). It thresholds single entries: there is no
    per-frame form. Returns (adv_inputs, records); a record's `sparsity` is the fraction that may change."""
    if kwargs.get("structure"):
        raise ValueError("l0_proximal thresholds single samples and pixels; it takes no structure")
    keys = _modalities(inputs, sparsity)
    sp = _per_modality(sparsity, keys, "sparsity")
    hooks = {k: HardThreshold(1.0 - float(sp[k])) for k in keys}
    adv, records = msae(model, inputs, targets, sparsity={k: 1.0 for k in keys}, targeted=targeted,
                        project=hooks, **kwargs)
    for r in records:
        r["sparsity"] = {k: float(sp[k]) for k in keys}
    return adv, records


topk_dense.forwards_to = l0_proximal.forwards_to = msae     # experiment files may set msae's parameters
__all__ = ["topk_dense", "l0_proximal"]
