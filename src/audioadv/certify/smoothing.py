"""Randomized smoothing for audio classifiers (Cohen, Rosenfeld & Kolter 2019), with the noise
added at a chosen representation of the input: the waveform, the magnitude spectrogram or the
(normalised) mel filterbank energies, as in O'Reilly, "Towards Certified Adversarial Robustness
for Audio Classification".

The smoothed classifier is g(x) = argmax_c P(f(z + e) = c), z = front(x), e ~ N(0, sigma^2 I),
where the base model is split as `model(x) == back(front(x))` (see `split_model`). A certificate
returned by `Smooth.certify` holds for l2 perturbations *of the representation z*, radius
sigma * Phi^-1(pA_lower) (Cohen et al., Theorem 1 with pB = 1 - pA).
"""
from __future__ import annotations

import math

from typing import Iterable, Sequence

import numpy as np
import torch
from scipy.stats import beta, binomtest, norm
from torch import nn
from tqdm.auto import tqdm

REPRESENTATIONS = ("waveform", "spectrogram", "fbank")


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion from k of n.

    Equals statsmodels' proportion_confint(k, n, alpha=2 * alpha, method="beta")[0], as in
    Cohen et al.'s code: the alpha quantile of Beta(k, n - k + 1), and 0 for k = 0.
    """
    if not 0 <= k <= n or n <= 0:
        raise ValueError(f"lower_confidence_bound: need 0 <= k <= n and n > 0, got k={k}, n={n}")
    return 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))


def radius(sigma: float, pa_lower: float) -> float:
    """Certified l2 radius sigma * Phi^-1(pA_lower) (Cohen et al. Theorem 1); 0 when pA_lower <= 1/2."""
    return sigma * float(norm.ppf(pa_lower)) if pa_lower > 0.5 else 0.0


def max_radius(sigma: float, n: int, alpha: float = 0.001) -> float:
    """Largest radius CERTIFY can return with n samples: all n agree, pA_lower = alpha^(1/n)."""
    return radius(sigma, lower_confidence_bound(n, n, alpha))


def split_model(model: nn.Module, at: str) -> tuple[nn.Module, nn.Module]:
    """(front, back) with back(front(x)) == model(x); noise goes between them.

    Models built on front ends provide `split(at)`; any model can be smoothed at the waveform.
    """
    if at not in REPRESENTATIONS:
        raise ValueError(f"unknown representation {at!r}; use one of {', '.join(REPRESENTATIONS)}")
    if hasattr(model, "split"):
        names = list(model.representations()) if hasattr(model, "representations") else [at]
        if at not in names:
            raise ValueError(f"{type(model).__name__} cannot be split at {at!r}; it offers {names}")
        return model.split(at)
    if at != "waveform":
        raise ValueError(f"{type(model).__name__} has no split(); it can only be smoothed at the waveform")
    return nn.Identity(), model


class Smooth:
    """A smoothed classifier g built on a base classifier f (Cohen et al. 2019, Sec. 3.2).

    `predict` is Algorithm PREDICT (binomial test, abstains unless the top class wins
    significantly), `certify` is Algorithm CERTIFY (select the class with n0 samples, estimate
    pA_lower with n fresh samples, radius sigma * Phi^-1(pA_lower) or abstain).
    """

    ABSTAIN = -1

    def __init__(self, base: nn.Module, num_classes: int, sigma: float, at: str = "waveform"):
        if sigma <= 0:
            raise ValueError(f"Smooth: sigma must be > 0, got {sigma}")
        self.base, self.num_classes, self.sigma, self.at = base, num_classes, float(sigma), at
        self.front, self.back = split_model(base, at)
        base.eval()

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        """z = front(x) for one example x (no batch dimension); noise is added to z."""
        with torch.no_grad():
            return self.front(x.unsqueeze(0))[0]

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int, *, seed: int | None = 0,
                progress: bool = False) -> int:
        """Algorithm PREDICT: the top class of n noisy samples, or ABSTAIN when a two-sided
        binomial test of its count against the runner-up's has p-value > alpha."""
        counts = self.sample_counts(x, n, batch_size, generator=_generator(seed, x), progress=progress)
        top2 = counts.argsort()[::-1][:2]
        n_a, n_b = int(counts[top2[0]]), int(counts[top2[1]])
        if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
            return Smooth.ABSTAIN
        return int(top2[0])

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int, *,
                seed: int | None = 0, progress: bool = False) -> tuple[int, float]:
        """Algorithm CERTIFY: (class, l2 radius at the chosen representation), or (ABSTAIN, 0.0)."""
        g = _generator(seed, x)
        c_a = int(self.sample_counts(x, n0, batch_size, generator=g, progress=progress).argmax())
        counts = self.sample_counts(x, n, batch_size, generator=g, progress=progress)
        pa_lower = lower_confidence_bound(int(counts[c_a]), n, alpha)
        if pa_lower < 0.5:
            return Smooth.ABSTAIN, 0.0
        return c_a, radius(self.sigma, pa_lower)

    def sample_counts(self, x: torch.Tensor, num: int, batch_size: int, *,
                      generator: torch.Generator | None = None, progress: bool = False) -> np.ndarray:
        """How often the base classifier picks each class over `num` draws of back(z + noise)."""
        z = self.representation(x)
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=z.device)
        bar = tqdm(total=num, desc=f"noise @ {self.at}", leave=False, disable=not progress)
        remaining = num
        with torch.no_grad():
            while remaining > 0:
                b = min(batch_size, remaining)
                batch = torch.randn((b, *z.shape), generator=generator, device=z.device, dtype=z.dtype)
                batch.mul_(self.sigma).add_(z)
                counts += torch.bincount(self.back(batch).argmax(1), minlength=self.num_classes)
                remaining -= b
                bar.update(b)
        bar.close()
        return counts.cpu().numpy()


class NoisySoftmax(nn.Module):
    """Differentiable surrogate of the smoothed classifier for attacks: log of the mean softmax of
    the base model over `samples` noise draws at the representation (expectation over noise, as in
    Salman et al. 2019's SmoothAdv). Feed it to any audioadv attack as the model."""

    def __init__(self, smooth: Smooth, samples: int = 16, seed: int = 0):
        super().__init__()
        self.front, self.back, self.sigma, self.samples = smooth.front, smooth.back, smooth.sigma, samples
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.front(x)
        noise = torch.randn((self.samples, *z.shape), generator=self.generator, dtype=z.dtype).to(z.device)
        noisy = (z.unsqueeze(0) + self.sigma * noise).flatten(0, 1)
        # log mean_s softmax = logsumexp_s log_softmax - log S: stays differentiable for very
        # confident models, where clamping the mean probability before the log zeroes the gradient.
        logp = self.back(noisy).log_softmax(-1).view(self.samples, z.shape[0], -1)
        return torch.logsumexp(logp, 0) - math.log(self.samples)


def certified_accuracy(labels: Sequence[int], predictions: Sequence[int], radii: Sequence[float],
                       r: float | Iterable[float]) -> float | list[float]:
    """Fraction of points certified correct with radius >= r (abstentions count as wrong)."""
    lab, pred, rad = (np.asarray(a) for a in (labels, predictions, radii))
    if len(lab) == 0:
        raise ValueError("certified_accuracy: no results")
    ok = (pred == lab)
    if np.ndim(r) == 0:
        return float(np.mean(ok & (rad >= r)))
    return [float(np.mean(ok & (rad >= ri))) for ri in r]


def _generator(seed: int | None, x: torch.Tensor) -> torch.Generator | None:
    if seed is None:
        return None
    return torch.Generator(device=x.device).manual_seed(int(seed))


__all__ = ["Smooth", "NoisySoftmax", "split_model", "lower_confidence_bound", "radius", "max_radius",
           "certified_accuracy", "REPRESENTATIONS"]
