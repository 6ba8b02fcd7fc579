"""The naive sparse alternatives to MSAE, at the same sparsity and step budget, in the uniform call
`attack(model, inputs, targets, *, sparsity, ...) -> (adv_inputs, records)` so that experiment files can put
them in the same table as `msae` (docs/msae.md):

- `topk_dense`: the dense baseline (`msae` with every position free), then per modality and example only
  the floor(s n) positions of largest perturbation energy kept, the rest reset to the clean input;
- `l0_proximal`: the dense loop with the l0 proximal step of `attacks.sparse` (`HardThreshold`) after every
  update, so that at most a fraction s of each modality's entries is non-zero at the end.

These are comparisons of ours, not part of the MSAE paper's method, hence their own module. Extra keyword
arguments go to `msae` (steps, c, learning rates, ...), so the budget is the one `msae` uses by default.
`evaluate` runs MSAE and all three comparisons on one batch and `summarise`s them as table rows.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ._util import is_adversarial
from .msae import (PER_ENTRY, RANGES, UNITS, _Mod, _make_mod, _per_modality, _positions, _records,
                   attacked_modalities, msae)
from .sparse import HardThreshold, hard_threshold


def topk_dense(model, inputs, targets, *, sparsity: float | dict = 0.3, targeted: bool = True,
               structure: dict | None = None, **kwargs):
    """Top-k of a dense perturbation: `msae` with sparsity 1 (same steps), then `topk_of` at `sparsity`
    (per sample/pixel, or per frame with `structure`). Returns (adv_inputs, records) as `msae` does; the
    records describe the thresholded input (success is re-checked on the model)."""
    keys = attacked_modalities(inputs, sparsity)
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
    keys = attacked_modalities(inputs, sparsity)
    sp = _per_modality(sparsity, keys, "sparsity")
    hooks = {k: HardThreshold(1.0 - float(sp[k])) for k in keys}
    adv, records = msae(model, inputs, targets, sparsity={k: 1.0 for k in keys}, targeted=targeted,
                        project=hooks, **kwargs)
    for r in records:
        r["sparsity"] = {k: float(sp[k]) for k in keys}
    return adv, records


def topk_of(inputs, adv, sparsity: float | dict, *, structure: dict | None = None, audio_frame: int = 160):
    """Keep, per modality and example, the floor(s n) positions of largest perturbation energy of
    a dense adversarial example and reset the rest to the clean input (the 'top-k of a dense
    perturbation' baseline). Returns inputs of the type of `inputs`."""
    tensor_in = torch.is_tensor(inputs)
    clean = {"audio": inputs} if tensor_in else dict(inputs)
    a = {"audio": adv} if tensor_in else dict(adv)
    keys = attacked_modalities(clean, sparsity)
    spars = _per_modality(sparsity, keys, "sparsity")
    units = _per_modality(structure, keys, "structure")
    out = dict(a)
    for k in keys:
        m = _make_mod(k, clean[k], units[k] or UNITS.get(k, "element"), audio_frame, None, RANGES.get(k, (0, 1)))
        d = a[k] - clean[k]
        energy = _energy(m, d)
        kk = torch.floor(float(spars[k]) * m.valid.sum(1).double() + 1e-9).long()
        keep = hard_threshold(torch.ones_like(energy), kk, score=energy)
        out[k] = clean[k] + m.expand(keep) * d
    return out["audio"] if tensor_in else out


def _energy(m: _Mod, d: torch.Tensor) -> torch.Tensor:
    b = d.shape[0]
    e = d.pow(2)
    if m.unit in PER_ENTRY:
        return e.reshape(b, -1)
    if m.x.dim() == 2:
        pad = m.n * m.frame - d.shape[1]
        return torch.nn.functional.pad(e, (0, pad)).reshape(b, m.n, m.frame).sum(2)
    return e.flatten(2).sum(2)


def evaluate(model, inputs, targets, *, sparsities: Sequence[float] = (0.1, 0.3, 0.5), base=None,
             structure: dict | None = None, targeted: bool = True, **kwargs) -> list[dict]:
    """Dense baseline vs MSAE vs top-k of the dense perturbation vs l0 proximal thresholding
    (`attacks.sparse.HardThreshold` in the same loop) at each sparsity (the same on every attacked
    modality) on a classifier. Every run gets the same number of steps (warmup + rounds + finetune;
    `kwargs` go to `msae`). Returns one row per (method, sparsity): success rate, mean realised
    sparsity per modality, and over the successful examples the mean audio SNR (dB), video PSNR
    (dB), fraction of video frames touched and l2 per modality."""
    keys = attacked_modalities(inputs, None)
    common = dict(base=base, targeted=targeted, **kwargs)
    rows = []
    dense, rec = msae(model, inputs, targets, sparsity={k: 1.0 for k in keys}, structure=structure, **common)
    rows.append(summarise("dense", 1.0, rec))
    for s in sparsities:
        sp = {k: float(s) for k in keys}
        _, rec = msae(model, inputs, targets, sparsity=sp, structure=structure, **common)
        rows.append(summarise("msae", s, rec))
        top = topk_of(inputs, dense, sp, structure=structure)      # topk_dense, without running dense again
        rows.append(summarise("topk-dense", s, _static_records(model, inputs, top, targets, targeted, sp, structure)))
        if structure is None:  # the l0 step thresholds entries, not frames
            rows.append(summarise("l0-prox", s, l0_proximal(model, inputs, targets, sparsity=sp, **common)[1]))
    return rows


@torch.no_grad()
def _static_records(model, inputs, adv, targets, targeted, sp, structure):
    """Records (as `msae` gives them) of a fixed adversarial input."""
    clean = {"audio": inputs} if torch.is_tensor(inputs) else inputs
    a = {"audio": adv} if torch.is_tensor(adv) else adv
    pred = model(adv).argmax(1)
    ok = is_adversarial(pred, targets, targeted)
    mods, final = [], {}
    for k in sp:
        m = _make_mod(k, clean[k], (structure or {}).get(k) or UNITS.get(k, "element"), 160, None, RANGES[k])
        m.state = {"m": (_positions(m, a[k] != clean[k])).to(clean[k].dtype)}
        mods.append(m)
        final[k] = a[k] - clean[k]
    recs = _records(mods, final, ok.cpu(), [None] * len(ok), 0, torch.zeros(len(ok)), 0.0)
    return recs


def summarise(method: str, sparsity: float, records: list[dict]) -> dict:
    """One table row (the columns `evaluate` documents) from per-example records."""
    ok = [r for r in records if r["success"]]
    mean = lambda xs: float(sum(xs) / len(xs)) if xs else math.nan  # noqa: E731
    row = {"method": method, "sparsity": sparsity, "n": len(records),
           "success": sum(r["success"] for r in records) / max(len(records), 1)}
    for k in records[0]["sparsity"]:
        row[f"realised_{k}"] = mean([r["sparsity"][k] for r in records])
        row[f"changed_{k}"] = mean([r["changed"][k] for r in records])
        row[f"l2_{k}"] = mean([r["l2"][k] for r in ok])
    if "snr_db" in records[0]:
        row["snr_db"] = mean([r["snr_db"] for r in ok])
    if "psnr_db" in records[0]:
        row["psnr_db"] = mean([r["psnr_db"] for r in ok])
        row["frames_touched"] = mean([r["frames_touched"] for r in ok])
    return row


topk_dense.forwards_to = l0_proximal.forwards_to = msae     # experiment files may set msae's parameters
__all__ = ["topk_dense", "l0_proximal", "topk_of", "evaluate", "summarise"]
