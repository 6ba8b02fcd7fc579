"""Audibility and size metrics, one value per example of a (B, T) batch.

Definitions follow the papers the toolkit implements:
- SPL(v) = 20 log10 rms(v)                      (Abdoli et al., Eqs. 5-6)
- dB(x) = 20 log10 max_i |x_i|                   (Carlini & Wagner 2018)
- dB_x(delta) = dB(delta) - dB(x)                (Carlini & Wagner 2018; Abdoli et al. Eq. 15)
- SNR(x, delta) = 10 log10(P(x) / P(delta)), P = mean power  (Abdoli et al. Eq. 14),
  i.e. 20 log10(rms(x) / rms(delta)).

Logs are guarded: a zero perturbation has SNR = +inf and dB = -inf, never NaN.
All functions are differentiable torch ops (away from zero).
"""
from __future__ import annotations

import torch

EPS = 1e-12


def _batch(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 1:
        return x.unsqueeze(0)
    return x.flatten(1)


def _log_amplitude(a: torch.Tensor) -> torch.Tensor:
    """20 log10 a, with -inf (not NaN) for a == 0 and a gradient that stays finite near zero."""
    out = 20.0 * torch.log10(a.clamp_min(EPS))
    return torch.where(a > 0, out, torch.full_like(out, float("-inf")))


def rms(x: torch.Tensor) -> torch.Tensor:
    """Root mean square per example."""
    x = _batch(x)
    return x.pow(2).mean(dim=1).sqrt()


def spl(x: torch.Tensor) -> torch.Tensor:
    """Sound pressure level in dB relative to full scale: 20 log10 rms(x) (Abdoli et al. Eq. 6)."""
    x = _batch(x)
    # sqrt has an infinite gradient at 0: take the log of the mean power instead.
    p = x.pow(2).mean(dim=1)
    out = 10.0 * torch.log10(p.clamp_min(EPS ** 2))
    return torch.where(p > 0, out, torch.full_like(out, float("-inf")))


def db(x: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner loudness dB(x) = 20 log10 max|x|."""
    return _log_amplitude(_batch(x).abs().amax(dim=1))


def db_x(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Relative loudness of the perturbation: dB(delta) - dB(x). Lower is quieter."""
    return db(delta) - db(x)


def snr(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio in dB, 10 log10(P(x)/P(delta)). +inf for a zero perturbation."""
    px = _batch(x).pow(2).mean(dim=1)
    pd = _batch(delta).pow(2).mean(dim=1)
    out = 10.0 * (torch.log10(px.clamp_min(EPS ** 2)) - torch.log10(pd.clamp_min(EPS ** 2)))
    out = torch.where(px > 0, out, torch.full_like(out, float("-inf")))
    return torch.where(pd > 0, out, torch.full_like(out, float("inf")))


def l0(delta: torch.Tensor, *, tol: float = 0.0, fraction: bool = True) -> torch.Tensor:
    """Number of changed samples (|delta_i| > tol), as a fraction of T (default) or as a count."""
    d = _batch(delta)
    count = (d.abs() > tol).sum(dim=1)
    return count.to(d.dtype) / d.shape[1] if fraction else count


def l2(delta: torch.Tensor) -> torch.Tensor:
    """Euclidean norm per example."""
    return _batch(delta).norm(p=2, dim=1)


def linf(delta: torch.Tensor) -> torch.Tensor:
    """Maximum absolute value per example."""
    return _batch(delta).abs().amax(dim=1)
