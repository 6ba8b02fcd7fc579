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
import time
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

    def __init__(self, base: nn.Module, num_classes: int, sigma: float = 0.25, at: str = "waveform"):
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
        for _, c_a, rad, _secs in self.certify_many(x.unsqueeze(0), n0, n, alpha, batch_size, seeds=[seed],
                                                progress=progress):
            return c_a, rad
        raise AssertionError("certify_many yielded nothing")

    def certify_many(self, xs: torch.Tensor | Sequence[torch.Tensor], n0: int, n: int, alpha: float,
                     batch_size: int, *, seeds: Sequence[int | None], progress: bool = False):
        """CERTIFY every example of `xs` with seed `seeds[i]`; yields (i, class, radius, seconds) as
        examples finish (not necessarily in order).

        The noisy copies of several examples share the base model's batches: an example's draws come
        from its own generator in the same chunks as `certify` alone (n0 then n, in pieces of at most
        batch_size), and the chunks of the open examples are packed first-fit into batches of
        batch_size: the n0 stages of several examples fill a batch together, and batches are full whenever
        the chunk sizes fit (n0 dividing batch_size, batch_size dividing n). Chunks are not split over
        two batches: that would cost a copy of the noise, more than a part-empty batch costs on a CPU.
        Results do not depend on the packing. seconds:
        the example's share (by rows) of the time of the batches it took part in.
        """
        for name, v in (("n0", n0), ("n", n), ("batch_size", batch_size)):
            if v < 1:
                raise ValueError(f"certify: {name} must be >= 1, got {v}")
        if len(seeds) != len(xs):
            raise ValueError(f"certify_many: {len(xs)} examples but {len(seeds)} seeds")
        for i, counts0, counts, secs in self._count_stream(xs, (n0, n), batch_size, seeds, progress):
            c_a = int(np.argmax(counts0))
            pa_lower = lower_confidence_bound(int(counts[c_a]), n, alpha)
            if pa_lower < 0.5:
                yield i, Smooth.ABSTAIN, 0.0, secs
            else:
                yield i, c_a, radius(self.sigma, pa_lower), secs

    def sample_counts(self, x: torch.Tensor, num: int, batch_size: int, *,
                      generator: torch.Generator | None = None, progress: bool = False) -> np.ndarray:
        """How often the base classifier picks each class over `num` draws of back(z + noise)."""
        z = self.representation(x)
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=z.device)
        buf = torch.empty((min(batch_size, num), *z.shape), device=z.device, dtype=z.dtype)
        bar = tqdm(total=num, desc=f"noise @ {self.at}", leave=False, disable=not progress)
        remaining = num
        with torch.no_grad():
            while remaining > 0:
                b = min(batch_size, remaining)
                # in place into one buffer: the same numbers as randn(b, ...) * sigma + z, without a new
                # allocation and a separate scaling pass per batch
                batch = buf[:b].normal_(0.0, self.sigma, generator=generator).add_(z)
                counts += torch.bincount(self.back(batch).argmax(1), minlength=self.num_classes)
                remaining -= b
                bar.update(b)
        bar.close()
        return counts.cpu().numpy()

    def _count_stream(self, xs, stages: tuple[int, ...], batch_size: int, seeds, progress: bool):
        """Class counts of each stage's noisy copies for every example, the chunks of several examples
        packed into shared batches; yields (i, counts of the first stage, of the last stage, seconds)."""
        n_ex, k = len(xs), self.num_classes
        open_: list[dict] = []
        nxt = 0
        smallest = min(min(stages), batch_size)
        max_open = max(2, min(1024, -(-batch_size // smallest) + 1))
        buf = seg_ids = None
        total = n_ex * sum(stages)
        bar = tqdm(total=total, desc=f"certify @ {self.at}", leave=False, disable=not progress)

        def opened(i):
            z = self.representation(xs[i])
            chunks = [(s, min(batch_size, m - j)) for s, m in enumerate(stages) for j in range(0, m, batch_size)]
            return {"i": i, "z": z, "g": _generator(seeds[i], z), "chunks": chunks, "pos": 0, "left": sum(stages),
                    "counts": torch.zeros(len(stages), k, dtype=torch.long, device=z.device), "secs": 0.0}

        with torch.no_grad():
            while open_ or nxt < n_ex:
                t0 = time.perf_counter()
                fill, segs = 0, []
                while fill < batch_size:
                    # first fit: the oldest open example whose next chunk fits; else open a new example
                    st = next((e for e in open_ if e["pos"] < len(e["chunks"])
                               and e["chunks"][e["pos"]][1] <= batch_size - fill), None)
                    if st is None:
                        if nxt >= n_ex or len(open_) >= max_open:
                            break
                        open_.append(opened(nxt))
                        nxt += 1
                        continue
                    if buf is None:
                        z = st["z"]
                        buf = torch.empty((batch_size, *z.shape), device=z.device, dtype=z.dtype)
                        seg_ids = torch.empty(batch_size, dtype=torch.long, device=z.device)
                    stage, b = st["chunks"][st["pos"]]
                    st["pos"] += 1
                    # each chunk drawn whole, in place, as `certify` alone draws it: the same numbers in any
                    # packing, without a copy (splitting chunks over batches would need one)
                    buf[fill:fill + b].normal_(0.0, self.sigma, generator=st["g"]).add_(st["z"])
                    seg_ids[fill:fill + b] = len(segs)
                    segs.append((st, stage, b))
                    fill += b
                if not segs:
                    break
                pred = self.back(buf[:fill]).argmax(1)
                per = torch.bincount(seg_ids[:fill] * k + pred, minlength=len(segs) * k).view(len(segs), k)
                secs = (time.perf_counter() - t0) / fill
                for j, (st, stage, b) in enumerate(segs):
                    st["counts"][stage] += per[j]
                    st["left"] -= b
                    st["secs"] += secs * b
                bar.update(fill)
                for st in [e for e in open_ if e["left"] == 0]:
                    open_.remove(st)
                    c = st["counts"].cpu().numpy()
                    yield st["i"], c[0], c[-1], st["secs"]
        bar.close()


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
