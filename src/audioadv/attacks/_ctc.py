"""Shared machinery of the speech-to-text attacks (CW, Imperceptible, IPC): the optimisation loop
with continuous batching, success checks on the decoded text and per-utterance records.

Continuous batching (`optimize`): at most `batch_size` utterances are optimised together; when
one leaves (its stop rule fired or its step budget is spent) the next waiting utterance takes
its slot, so the batch stays full until the queue is empty. Nothing in an utterance's trajectory
depends on the others in its batch: its Adam moments and step counter are its own, every step
count and schedule is counted from when it joined, padding beyond its own length is masked, and
every sum (CTC loss, l2 term, masking loss) runs over its own samples. What is left is the
recogniser's floating-point kernels: torch's CPU matrix products round a row differently when
fewer than `MIN_ROWS` rows are multiplied, so a smaller batch is padded to `MIN_ROWS` rows with
copies whose outputs are discarded, and the loop runs torch's own convolutions rather than
oneDNN's (`native_convolutions`). With one CPU thread the result is then bit-identical for any
`batch_size`, one utterance alone included (tested on the test suite's recognisers, checked on a
trained one by benchmarks/asr_batching.py). A recogniser must keep its rows apart too: anything
it sums over time has to run over each utterance's own frames (see `CTCRecognizer`'s
per-utterance normalisation).

A projection hook is any callable `project(delta, *, step, total, lengths) -> delta` applied to
the perturbation after every optimisation step (after the attack's own box constraint), to the
rows of the current batch; `step` holds each row's own step (a (B,) tensor). It may have
`ready_step(total) -> int`: the first step whose projection enforces the final constraint;
successes before an utterance has passed that step are not recorded (see `attacks.sparse`).
"""
from __future__ import annotations

import time
from typing import Sequence

import torch
import torch.nn.functional as F

from ..models.asr import greedy_decode
from ._util import ADAM_BETAS, ADAM_EPS, HIGH, LOW, split_inputs
from .sparse import joint_score


PAD_MARGIN = 1600  # samples (0.1 s at 16 kHz), more than any front end's half window
# Fewest rows the recogniser is run on: below 4 rows torch's CPU GEMM (so GRU and Linear layers)
# takes another kernel and rounds each row differently (measured, torch 2.13, MKL, 1 thread).
# Both this and the convolution note in `optimize` are about the CPU; GPU kernels give no such
# guarantee.
MIN_ROWS = 4
# utterances optimised together by default: the smallest batch at which CPU time per
# utterance-step has levelled off (benchmarks/asr_batching.py, one thread, 96-unit recogniser,
# 1.2 s utterances: 0.027 s at 1, 0.0087 at 4, 0.0068-0.0083 from 8 to 20, within the noise)
BATCH_SIZE = 8


def prepare(model, inputs, labels: Sequence[str], lengths, name: str):
    """(x (B, T) detached, lengths (B,), valid-sample mask (B, T), rebuild) with checks."""
    audio, rebuild = split_inputs(inputs)
    if audio.dim() != 2:
        raise ValueError(f"{name}: waveforms must be (B, T), got shape {tuple(audio.shape)}")
    if isinstance(labels, str) or len(labels) != len(audio):
        raise ValueError(f"{name}: need one transcript per waveform ({len(audio)}), got {labels!r:.80}")
    if audio.numel() and (audio.min() < LOW - 1e-6 or audio.max() > HIGH + 1e-6):
        raise ValueError(f"{name}: waveforms must lie in [-1, 1]")
    x = audio.detach()
    if lengths is None:
        lengths = torch.full((len(x),), x.shape[1], dtype=torch.long, device=x.device)
    lengths = torch.as_tensor(lengths, dtype=torch.long, device=x.device)
    if (lengths < 1).any() or (lengths > x.shape[1]).any():
        raise ValueError(f"{name}: lengths must lie in [1, {x.shape[1]}]")
    mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).to(x.dtype)
    return x, lengths, mask, rebuild


def normalize_texts(model, texts: Sequence[str]) -> list[str]:
    """Transcripts as the recogniser would print them (its own normalisation if it has one)."""
    if hasattr(model, "normalize_text"):
        return [model.normalize_text(t) for t in texts]
    return [model.decode_labels(model.encode_text(t)) for t in texts]


def ctc_objective(model, adv: torch.Tensor, lengths: torch.Tensor, targets, target_lengths):
    """Per-utterance CTC loss and the greedy transcripts of the same forward pass."""
    logits, frames = model.frame_logits(adv, lengths)
    logp = logits.log_softmax(-1)
    loss = F.ctc_loss(logp.transpose(0, 1), targets, frames, target_lengths, blank=model.blank,
                      reduction="none", zero_infinity=True)
    hyps = [model.decode_labels(s) for s in greedy_decode(logits.detach(), frames, model.blank)]
    return loss, hyps


def row_sums(v: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """sum(v[b, :lengths[b]]) per row, each over exactly its own samples (so the rounding does not
    depend on how far the batch is padded)."""
    return torch.stack([v[b, :n].sum() for b, n in enumerate(lengths.tolist())])


class Hooks:
    """What one attack adds to the loop, per utterance. `rows` lists the utterance index of every
    row of the current batch; `steps` (B,) the step each row is at (counted from its start)."""

    def enter(self, i: int, x: torch.Tensor) -> None:
        """Utterance i (its clean samples x) joins the batch: per-utterance constants go here."""

    def box(self, d: torch.Tensor, rows: list[int], x: torch.Tensor) -> torch.Tensor:
        """The attack's own constraint on the perturbation rows d (x: the clean rows)."""
        return d

    def limits(self, rows: list[int], x: torch.Tensor) -> torch.Tensor | None:
        """Per-sample bounds of a non-uniform box (for the sparse l0 step's ranking), else None."""
        return None

    def on_success(self, ok: torch.Tensor, d: torch.Tensor, rows: list[int]) -> None:
        """Rows `ok` reach the target with perturbation d (e.g. shrink their bound)."""

    def extra_loss(self, d: torch.Tensor, rows: list[int], lengths: torch.Tensor, steps: torch.Tensor):
        """An extra per-row objective term (B,), or None."""
        return None

    def after_check(self, ok: torch.Tensor, rows: list[int], steps: torch.Tensor) -> None:
        """Called once per step after the success check, whether or not a row succeeded."""

    def leave(self, ok: torch.Tensor, rows: list[int], steps: torch.Tensor) -> torch.Tensor | None:
        """(B,) bool: rows that leave by the attack's own convergence test, or None."""
        return None

    def record(self, i: int) -> dict:
        """Extra per-utterance entries of the attack's record (e.g. its final bound)."""
        return {}


class _Utterance:
    """Per-utterance progress: success bookkeeping and the latest successful perturbation (the
    attacks only ever tighten their constraints, so the latest success is the least perceptible)."""

    __slots__ = ("steps", "first", "last", "count", "best", "loss", "seconds")

    def __init__(self, n: int, like: torch.Tensor):
        self.steps, self.first, self.last, self.count = 0, None, None, 0
        self.best = torch.zeros(n, dtype=like.dtype, device=like.device)
        self.loss, self.seconds = float("nan"), 0.0


def optimize(model, x, lengths, texts, *, targeted: bool, hooks: Hooks, lr: float, max_iter: int, c: float,
             l2_weight: float, project=None, batch_size: int | None = None,
             delta_init: torch.Tensor | None = None, stop_after: int | None = None,
             patience: int | None = None) -> tuple[list[torch.Tensor], list[dict]]:
    """Adam on delta for at most `max_iter` steps per utterance of
    l2_weight * ||delta||^2 + c * CTC(x + delta, texts) (+ hooks.extra_loss), CTC negated when
    untargeted, with continuous batching (module docstring). After every step:
    delta <- project(hooks.box(delta)).

    `stop_after`: an utterance that has succeeded that many times leaves. `patience`: an utterance
    that has succeeded leaves once it has gone that many steps without a new success (its bound
    has stopped shrinking). `hooks.leave`: the attack's own convergence test.

    Returns the latest successful perturbation of every utterance (zeros where none, each of its
    own length) and one record per utterance: success, first_success (step of the first success,
    None if none), last_success, successes, iterations (steps run), loss (objective at the last
    step), seconds (its share of the wall time of the steps it took part in).
    """
    if batch_size is None:
        batch_size = BATCH_SIZE
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    refs = normalize_texts(model, texts)
    seqs = [model.encode_text(r) for r in refs]
    for t, q in zip(texts, seqs):
        if not q:
            raise ValueError(f"transcript {t!r} has no character the recogniser knows")
    with frozen_weights(model), native_convolutions():
        state = _Loop(model, x, lengths, refs, seqs, targeted=targeted, hooks=hooks, lr=lr, max_iter=max_iter,
                      c=c, l2_weight=l2_weight, project=project, delta_init=delta_init, stop_after=stop_after,
                      patience=patience)
        state.run(int(batch_size))
    records = [{"success": u.count > 0, "first_success": u.first, "last_success": u.last, "successes": u.count,
                "iterations": u.steps, "loss": u.loss, "seconds": u.seconds, **hooks.record(i)}
               for i, u in enumerate(state.utts)]
    return [u.best for u in state.utts], records


class frozen_weights:
    """Context: the recogniser's parameters need no gradient while the input is attacked (the
    backward pass then skips every weight gradient: 20-30% of an iteration on the CPU); restored on exit."""

    def __init__(self, model):
        params = list(model.parameters()) if hasattr(model, "parameters") else []
        self.params = [p for p in params if p.requires_grad]

    def __enter__(self):
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p in self.params:
            p.requires_grad_(True)


class native_convolutions:
    """Context: torch's own CPU convolutions instead of oneDNN's. oneDNN picks its algorithm by
    shape, so an utterance's input gradient changed (1e-7) with how far its batch was padded;
    torch's own kernels were as fast on the CTC recogniser (one thread) and removed that case."""

    def __enter__(self):
        self.prev = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False

    def __exit__(self, *exc):
        torch.backends.mkldnn.enabled = self.prev


def _ready(project, steps: torch.Tensor, total: int) -> torch.Tensor:
    """Rows whose iterate already satisfies the projection's final constraint."""
    if project is None or not hasattr(project, "ready_step"):
        return torch.ones_like(steps, dtype=torch.bool)
    return steps > project.ready_step(total)


class _Loop:
    def __init__(self, model, x, lengths, refs, seqs, *, targeted, hooks, lr, max_iter, c, l2_weight, project,
                 delta_init, stop_after, patience):
        self.model, self.x, self.lengths, self.refs, self.seqs = model, x, lengths, refs, seqs
        self.targeted, self.hooks, self.lr, self.max_iter = targeted, hooks, lr, max_iter
        self.c, self.l2_weight, self.project, self.delta_init = c, l2_weight, project, delta_init
        self.stop_after, self.patience = stop_after, patience
        self.utts = [_Utterance(int(n), x) for n in lengths.tolist()]

    # -- the batch: rows of utterance indices, with delta and Adam's moments, cut to the longest row
    def _layout(self, rows: list[int], old_rows: list[int], old: tuple | None) -> tuple:
        x, dev = self.x, self.x.device
        lens = self.lengths[rows]
        # PAD_MARGIN samples of zero padding past the longest row, even past the end of x: a
        # centred STFT's last frames read past the end of the utterance, and must read zeros
        # whatever else is in the batch (the padding never changes a valid frame). A model that
        # zero-pads every utterance past its own length itself needs none (10% of the model's work
        # on 1 s utterances).
        width = int(lens.max()) + (0 if getattr(self.model, "pads_utterances", False) else PAD_MARGIN)
        xa = torch.zeros(len(rows), width, dtype=x.dtype, device=dev)
        xa[:, :min(width, x.shape[1])] = x[rows, :width]
        mask = (torch.arange(width, device=dev)[None, :] < lens[:, None]).to(x.dtype)
        d, m, v = (torch.zeros(len(rows), width, dtype=x.dtype, device=dev) for _ in range(3))
        where = {i: k for k, i in enumerate(old_rows)}
        for k, i in enumerate(rows):
            n = int(self.lengths[i])
            if i in where:
                for new, prev in zip((d, m, v), old):
                    new[k, :n] = prev[where[i], :n]
            elif self.delta_init is not None:
                d[k, :n] = self.delta_init[i, :n]
        return xa, lens, mask, d, m, v

    def run(self, batch_size: int) -> None:
        queue = list(range(len(self.x)))[::-1]
        rows: list[int] = []
        old_rows: list[int] = []
        tensors = None
        if self.max_iter == 0:
            return
        while queue or rows:
            if len(rows) < batch_size and queue:
                while len(rows) < batch_size and queue:
                    i = queue.pop()
                    self.hooks.enter(i, self.x[i, :int(self.lengths[i])])
                    rows.append(i)
            if rows != old_rows:
                xa, lens, mask, d, m, v = self._layout(rows, old_rows, tensors and tensors[3:])
                tensors = (xa, lens, mask, d, m, v)
                old_rows = list(rows)
            xa, lens, mask, d, m, v = tensors
            leaving = self._step(rows, xa, lens, mask, d, m, v)
            if leaving.any():
                rows = [i for i, gone in zip(rows, leaving.tolist()) if not gone]

    def _step(self, rows, xa, lens, mask, delta, m, v) -> torch.Tensor:
        t0 = time.perf_counter()
        hooks, dev = self.hooks, xa.device
        steps = torch.tensor([self.utts[i].steps for i in rows], dtype=torch.long)
        targets = torch.tensor([k for i in rows for k in self.seqs[i]], dtype=torch.long, device=dev)
        tlen = torch.tensor([len(self.seqs[i]) for i in rows], dtype=torch.long, device=dev)
        delta.requires_grad_(True)
        adv = (xa + delta * mask).clamp(LOW, HIGH)
        d = adv - xa
        b = len(rows)
        if b < MIN_ROWS:  # copies of the first row fill the batch; their outputs are dropped
            fill = adv[:1].detach().expand(MIN_ROWS - b, -1)
            loss_ctc, hyps = ctc_objective(self.model, torch.cat([adv, fill]),
                                           torch.cat([lens, lens[:1].expand(MIN_ROWS - b)]),
                                           torch.cat([targets, targets[:int(tlen[0])].repeat(MIN_ROWS - b)]),
                                           torch.cat([tlen, tlen[:1].expand(MIN_ROWS - b)]))
            loss_ctc, hyps = loss_ctc[:b], hyps[:b]
        else:
            loss_ctc, hyps = ctc_objective(self.model, adv, lens, targets, tlen)
        ok = torch.tensor([(h == self.refs[i]) if self.targeted else (h != self.refs[i]) for h, i in zip(hyps, rows)],
                          dtype=torch.bool, device=dev)
        hit = ok & _ready(self.project, steps, self.max_iter).to(dev)  # successes that count
        if hit.any():
            dd = d.detach()
            for k in hit.nonzero().flatten().tolist():
                u = self.utts[rows[k]]
                u.best = dd[k, :int(lens[k])].clone()
                if u.first is None:
                    u.first = u.steps
                u.last, u.count = u.steps, u.count + 1
            hooks.on_success(hit, dd, rows)
        hooks.after_check(ok, rows, steps)
        obj = (self.c * loss_ctc if self.targeted else -self.c * loss_ctc)
        if self.l2_weight:
            obj = obj + self.l2_weight * row_sums(d * d, lens)
        extra = hooks.extra_loss(d, rows, lens, steps)
        if extra is not None:
            obj = obj + extra
        grad, = torch.autograd.grad(obj.sum(), delta)
        delta.requires_grad_(False)
        with torch.no_grad():
            # Adam (torch's update, with every row's own step count for the bias corrections)
            beta1, beta2 = ADAM_BETAS
            t = (steps + 1).to(torch.float64)
            step_size = (self.lr / (1.0 - beta1 ** t)).to(xa.dtype).to(dev)[:, None]
            bc2_sqrt = (1.0 - beta2 ** t).sqrt().to(xa.dtype).to(dev)[:, None]
            m.lerp_(grad, 1.0 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
            denom = (v.sqrt() / bc2_sqrt).add_(ADAM_EPS)
            raw = (delta - step_size * m / denom) * mask
            new = hooks.box(raw, rows, xa)
            if self.project is not None:
                kw = {}
                if getattr(self.project, "joint_box", False):  # l0 step and box as one projection,
                    # in the metric of Adam's step (variable-metric proximal gradient)
                    limits = hooks.limits(rows, xa)
                    extra_kw = {} if limits is None else {"bound": limits}
                    kw["score"] = joint_score(raw, new, denom, **extra_kw)
                new = self.project(new, step=steps, total=self.max_iter, lengths=lens, **kw)
            delta.copy_(new * mask)
        objective = obj.detach().tolist()
        for k, i in enumerate(rows):
            self.utts[i].steps += 1
            self.utts[i].loss = objective[k]
        leave = torch.tensor([self.utts[i].steps >= self.max_iter for i in rows], dtype=torch.bool)
        if self.stop_after is not None:
            leave |= torch.tensor([self.utts[i].count >= self.stop_after for i in rows])
        if self.patience is not None:
            leave |= torch.tensor([u.count > 0 and s - u.last >= self.patience
                                   for u, s in ((self.utts[i], int(st)) for i, st in zip(rows, steps))])
        own = hooks.leave(ok, rows, steps)
        if own is not None:
            leave |= own.cpu()
        share = (time.perf_counter() - t0) / len(rows)
        for i in rows:
            self.utts[i].seconds += share
        return leave


def assemble(x: torch.Tensor, deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    """x + delta per utterance (each delta of the utterance's own length), clipped to [-1, 1]."""
    d = torch.zeros_like(x)
    for k, dk in enumerate(deltas):
        d[k, :len(dk)] = dk
    return (x + d).clamp(LOW, HIGH)
