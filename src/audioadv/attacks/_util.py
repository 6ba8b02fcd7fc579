"""Small helpers shared by the classifier attacks (PGD, DDN, DeepFool, CW-l2) and universal perturbations.

Inputs may be a (B, T) waveform tensor or a dict holding it under ``"audio"`` (audio-visual models);
only the audio is perturbed. Waveforms live in [-1, 1].
"""
from __future__ import annotations

from typing import Callable

import torch

LOW, HIGH = -1.0, 1.0
# Adam's hyper-parameters (torch's defaults), named once: cw_l2 runs its own Adam on compacted rows and
# the sparse l0 step of the CTC attacks reads Adam's second-moment metric.
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


def split_inputs(inputs) -> tuple[torch.Tensor, Callable[..., object]]:
    """Return the audio tensor and ``rebuild(audio, rows=None)``, the model input around a new audio tensor.

    ``rows`` (an index tensor) selects the rows of the other batched dict entries that go with ``audio``
    when an attack works on part of the batch; the slices of the last ``rows`` object are reused, so an
    attack that keeps its index tensor while the batch does not change pays for them once.
    """
    if isinstance(inputs, dict):
        if "audio" not in inputs:
            raise ValueError(f"dict inputs must hold the waveform under 'audio'; got keys {sorted(inputs)}")
        rest = dict(inputs)
        cache: list = [None, rest]

        def rebuild(a, rows=None):
            if rows is None:
                return {**rest, "audio": a}
            if cache[0] is not rows:
                cache[:] = [rows, take(rest, rows)]
            return {**cache[1], "audio": a}
        return inputs["audio"], rebuild
    if not torch.is_tensor(inputs):
        raise TypeError(f"inputs must be a tensor or a dict with 'audio', not {type(inputs).__name__}")
    return inputs, lambda a, rows=None: a


def take(inputs, idx):
    """Rows ``idx`` (index, mask or slice) of a tensor or of every batched entry of a dict."""
    if not isinstance(inputs, dict):
        return inputs[idx]
    n = num_inputs(inputs)
    return {k: (x[idx] if torch.is_tensor(x) and x.dim() and len(x) == n else x) for k, x in inputs.items()}


def num_inputs(inputs) -> int:
    if isinstance(inputs, dict):
        sizes = {len(x) for x in inputs.values() if torch.is_tensor(x) and x.dim()}
        if len(sizes) != 1:
            raise ValueError(f"dict inputs must be batched along dim 0 with one size; got sizes {sorted(sizes)}")
        return sizes.pop()
    return len(inputs)


def check_audio(audio: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    if audio.dim() != 2:
        raise ValueError(f"{name}: waveforms must be (B, T), got shape {tuple(audio.shape)}")
    if len(labels) != len(audio):
        raise ValueError(f"{name}: {len(audio)} waveforms but {len(labels)} labels")
    if audio.numel() and (audio.min() < LOW - 1e-6 or audio.max() > HIGH + 1e-6):
        raise ValueError(f"{name}: waveforms must lie in [-1, 1] (got [{float(audio.min()):.3g}, {float(audio.max()):.3g}])")


def bview(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View a (B,) tensor so that it broadcasts against ``like`` (B, ...)."""
    return t.view(-1, *([1] * (like.dim() - 1)))


def other_max(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """max_{j != label} logits_j per example."""
    masked = logits.clone()
    masked.scatter_(1, labels.view(-1, 1), float("-inf"))
    return masked.amax(dim=1)


def hinge(logits: torch.Tensor, labels: torch.Tensor, *, targeted: bool, kappa: float) -> torch.Tensor:
    """Carlini-Wagner / Abdoli et al. hinge on logits, one value per example.

    targeted (labels = target t):  max(max_{j != t} f_j - f_t, -kappa)        (Abdoli et al. Eq. 10)
    untargeted (labels = true y):  max(f_y - max_{j != y} f_j, -kappa)        (Abdoli et al. Eq. 11)
    """
    own = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    other = other_max(logits, labels)
    diff = other - own if targeted else own - other
    return diff.clamp_min(-kappa)


def is_adversarial(pred: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    return pred == labels if targeted else pred != labels


def seeded_generators(seed: int | None, ids, device) -> list[torch.Generator]:
    """One generator per example index: random draws then do not depend on which examples share a batch."""
    base = 0 if seed is None else int(seed)
    return [torch.Generator(device=device).manual_seed(base * 1_000_003 + int(i)) for i in ids]


def batch_loop(n: int, batch_size: int | None, start: Callable[[torch.Tensor], dict],
               step: Callable[[dict], torch.Tensor], finish: Callable[[dict], None]) -> None:
    """Continuous batching over examples 0..n-1, at most ``batch_size`` at a time (None: all).

    ``start(ids)`` returns the state of new examples: a dict of tensors whose rows follow ``ids``
    (stored under "ids"). ``step(state)`` runs one iteration, updating the tensors of ``state`` in place
    or replacing them, and returns a (rows,) bool mask of the examples that are done. ``finish(rows)`` gets
    the state rows of those; they leave, and the next waiting examples take their places, so the
    batch stays full while examples remain. Each example's computation depends only on its own rows.
    """
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n == 0:
        return
    size = n if batch_size is None else int(batch_size)
    nxt = min(size, n)
    state = start(torch.arange(nxt))
    while len(state["ids"]):
        done = step(state)
        if not bool(done.any()):
            continue
        finish({k: v[done] for k, v in state.items()})
        keep = ~done
        state = {k: v[keep] for k, v in state.items()}
        free = min(size - len(state["ids"]), n - nxt)
        if free > 0:
            new = start(torch.arange(nxt, nxt + free))
            nxt += free
            state = {k: torch.cat([state[k], new[k].to(state[k].device)]) for k in state}
