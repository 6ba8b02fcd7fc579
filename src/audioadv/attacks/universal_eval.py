"""Evaluating universal perturbations as Abdoli et al. report them (Sec. 4, Tables 1-5).

- :func:`evaluate`: success rate (Eq. 3), accuracy with and without v, mean SNR (Eq. 14) and mean
  dB_x(v) (Eq. 15) over the perturbed inputs, using the actual perturbation clip(x + v) - x;
  :func:`per_example`: the same per clip.
- :func:`transfer_matrix`: v crafted on model i, success rate on model j (Table 4).
- :func:`two_proportion_ztest`: Appendix C's test between two success rates, with p-values.

Tables and figures of these results: :mod:`audioadv.reporting`.
"""
from __future__ import annotations

import math

import torch

from ..signal import db_x as _db_x, snr as _snr
from .universal import apply, as_tensors, predict


def _finite_mean(t: torch.Tensor) -> float:
    t = t[torch.isfinite(t)]
    return float(t.mean()) if len(t) else float("nan")


@torch.no_grad()
def evaluate(model, v: torch.Tensor, data, *, targeted: int | None = None, batch_size: int = 100,
             rows: bool = False):
    """Metrics of a universal perturbation v (T,) on a dataset (AudioDataset, (waves, labels) or loader).

    success_rate: untargeted, prediction on clip(x + v) differs from the prediction on x (Eq. 3);
    targeted, prediction equals the target, over the points whose true label is not the target.
    mean_snr (Eq. 14) and mean_db_x (Eq. 15) average the per-example values of the perturbed inputs
    (examples with an infinite value, e.g. a zero perturbation, are left out of the mean and counted).
    rows=True: returns (metrics, the :func:`per_example` rows) from the same forward passes.
    """
    waves, labels = as_tensors(data)
    v = torch.as_tensor(v, dtype=waves.dtype).flatten()
    if v.shape[0] != waves.shape[1]:
        raise ValueError(f"perturbation has {v.shape[0]} samples but the data has clips of {waves.shape[1]}")
    clean = predict(model, waves, batch_size)
    adv_in = apply(v, waves)
    pert = predict(model, adv_in, batch_size)
    delta = adv_in - waves
    snr = _snr(waves, delta)
    dbx = _db_x(waves, delta)
    out = {"n": len(waves), "accuracy_clean": float((clean == labels).float().mean()),
           "accuracy_perturbed": float((pert == labels).float().mean())}
    if targeted is None:
        succ = pert != clean
        mask = torch.ones_like(succ)
    else:
        mask = labels != int(targeted)
        succ = (pert == int(targeted)) & mask
        out["target"] = int(targeted)
    n_eval = int(mask.sum())
    out.update({"n_eval": n_eval, "successes": int(succ.sum()),
                "success_rate": float(succ.sum()) / max(n_eval, 1),
                "mean_snr": _finite_mean(snr[mask]), "mean_db_x": _finite_mean(dbx[mask]),
                "n_infinite_snr": int((~torch.isfinite(snr[mask])).sum()),
                "v_linf": float(v.abs().max()), "v_l2": float(v.norm())})
    if not rows:
        return out
    items = getattr(data, "items", None) or [{}] * len(labels)
    finite = lambda x: float(x) if math.isfinite(float(x)) else None      # noqa: E731
    per = []
    for i in range(len(labels)):
        row = {"index": i, "label": int(labels[i]), "clean": int(clean[i]), "perturbed": int(pert[i]),
               "success": bool(succ[i]) if mask[i] else None, "snr": finite(snr[i]), "db_x": finite(dbx[i])}
        # the clip's metadata; a key that would shadow one of the row's own is kept as item_<key>
        per.append({**{(f"item_{k}" if k in row else k): x for k, x in items[i].items()}, **row})
    return out, per


def per_example(model, v: torch.Tensor, data, *, targeted: int | None = None, batch_size: int = 100) -> list[dict]:
    """One record per clip of ``data`` under v, the rows behind :func:`evaluate`: index, true label, clean and
    perturbed prediction, success (Eq. 3; None for a targeted run's clips of the target class, which do not count),
    SNR and dB_x (None where not finite: an unchanged clip), plus the clip's metadata (source file, speaker, ...)
    when ``data`` is an AudioDataset that has it (a metadata key that the row already uses becomes item_<key>)."""
    return evaluate(model, v, data, targeted=targeted, batch_size=batch_size, rows=True)[1]


def transfer_matrix(perturbations: dict, models: dict, data, *, targeted: int | None = None,
                    batch_size: int = 100) -> dict:
    """Table 4: {source: {model: success rate of v_source on model}}; ``data`` is one dataset or {model: dataset}."""
    out = {}
    for src, v in perturbations.items():
        out[src] = {}
        for name, model in models.items():
            d = data[name] if isinstance(data, dict) else data
            out[src][name] = evaluate(model, v, d, targeted=targeted, batch_size=batch_size)["success_rate"]
    return out


def _phi(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def two_proportion_ztest(successes_a: int, n_a: int, successes_b: int, n_b: int | None = None) -> dict:
    """Two-proportion z-test (Abdoli et al. Appendix C, after Walpole et al.).

    Z = (p_a - p_b) / sqrt(p (1 - p) (1/n_a + 1/n_b)), p = (X_a + X_b) / (n_a + n_b); with
    n_a = n_b = m this is the paper's Z = (p_l - p_h) / sqrt(2 p (1 - p) / m). Returns Z, the
    one-sided p-value for H_a: p_a < p_b (reject H_0 when Z < -z_alpha) and the two-sided p-value.
    """
    n_b = n_a if n_b is None else n_b
    if n_a <= 0 or n_b <= 0:
        raise ValueError("two_proportion_ztest: sample sizes must be positive")
    for s, n in ((successes_a, n_a), (successes_b, n_b)):
        if not 0 <= s <= n:
            raise ValueError(f"two_proportion_ztest: {s} successes out of {n} is impossible")
    pa, pb = successes_a / n_a, successes_b / n_b
    p = (successes_a + successes_b) / (n_a + n_b)
    se = math.sqrt(p * (1 - p) * (1 / n_a + 1 / n_b))
    if se == 0:
        z = 0.0 if pa == pb else math.copysign(math.inf, pa - pb)
    else:
        z = (pa - pb) / se
    return {"z": z, "p_a": pa, "p_b": pb, "p_value_less": _phi(z), "p_value_two_sided": 2 * _phi(-abs(z))}
