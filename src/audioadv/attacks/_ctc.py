"""Shared machinery of the speech-to-text attacks (CW, Imperceptible, IPC): batching utterances
of different lengths with masks, the optimisation loop with a per-iteration projection hook,
success checks on the decoded text, and per-utterance reports.

A projection hook is any callable `project(delta, *, step, total, lengths) -> delta` applied to
the perturbation after every optimisation step (after the attack's own box constraint), to the
rows of the utterances still being optimised (with their lengths), cut to the longest of them. It may
have `ready_step(total) -> int`: the first step whose projection enforces the final constraint;
successes before the iterate has passed that step are not recorded (see `attacks.sparse`).
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..metrics.text import cer, wer
from ..models.asr import encode_targets, greedy_decode
from ..signal import db_x, l0, linf, snr
from ._util import ADAM_BETAS, ADAM_EPS, HIGH, LOW, split_inputs
from .sparse import joint_score


PAD_MARGIN = 1600  # samples (0.1 s at 16 kHz), more than any front end's half window


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


def ready(project, step: int, total: int) -> bool:
    """Whether an iterate evaluated at `step` already satisfies the projection's final constraint."""
    if project is None or not hasattr(project, "ready_step"):
        return True
    return step > project.ready_step(total)


def apply_project(project, delta: torch.Tensor, step: int, total: int, lengths: torch.Tensor,
                  **kw) -> torch.Tensor:
    return delta if project is None else project(delta, step=step, total=total, lengths=lengths, **kw)


def ctc_objective(model, adv: torch.Tensor, lengths: torch.Tensor, targets, target_lengths):
    """Per-utterance CTC loss and the greedy transcripts of the same forward pass."""
    logits, frames = model.frame_logits(adv, lengths)
    logp = logits.log_softmax(-1)
    loss = F.ctc_loss(logp.transpose(0, 1), targets, frames, target_lengths, blank=model.blank,
                      reduction="none", zero_infinity=True)
    hyps = [model.decode_labels(s) for s in greedy_decode(logits.detach(), frames, model.blank)]
    return loss, hyps


class Tracker:
    """Keeps, per utterance, the latest successful perturbation, the step of the first success and
    the number of successes (the attacks only ever tighten their constraints, so the latest success
    is the least perceptible one)."""

    def __init__(self, x: torch.Tensor, max_iter: int):
        self.best = torch.zeros_like(x)
        self.success = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        self.first = torch.full((len(x),), max_iter, dtype=torch.long)
        self.count = torch.zeros(len(x), dtype=torch.long)
        self.last = torch.full((len(x),), -1, dtype=torch.long)
        self.steps = torch.zeros(len(x), dtype=torch.long)  # optimisation steps each one took part in

    def update(self, ok: torch.Tensor, delta: torch.Tensor, step: int) -> None:
        if not ok.any():
            return
        self.best[ok] = delta.detach()[ok]
        okc = ok.cpu()
        self.first[okc & ~self.success.cpu()] = step
        self.last[okc] = step
        self.count[okc] += 1
        self.success |= ok


def success_mask(hyps: Sequence[str], refs: Sequence[str], targeted: bool, device) -> torch.Tensor:
    return torch.tensor([(h == r) if targeted else (h != r) for h, r in zip(hyps, refs)],
                        dtype=torch.bool, device=device)


def fill_info(info: dict | None, tracker: Tracker, seconds: float, **extra) -> None:
    if info is None:
        return
    info.update(success=tracker.success.cpu().tolist(), iterations=tracker.first.tolist(),
                successes=tracker.count.tolist(), last_success=tracker.last.tolist(), steps=tracker.steps.tolist(),
                seconds=seconds,
                **extra)


def optimize(model, x, lengths, mask, texts, *, targeted: bool, box: Callable[[torch.Tensor], torch.Tensor],
             on_success: Callable[[torch.Tensor, torch.Tensor], None] | None, lr: float, max_iter: int,
             c: float, l2_weight: float, project, delta_init: torch.Tensor | None = None,
             extra_loss: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor] | None = None,
             after_check: Callable[[torch.Tensor, int], None] | None = None,
             stop_after: int | None = None, patience: int | None = None,
             leave: Callable[[], torch.Tensor] | None = None, tracker: Tracker | None = None) -> Tracker:
    """Adam on delta for `max_iter` steps of  l2_weight * ||delta||^2 + c * CTC(x + delta, texts)
    (+ extra_loss(delta_active, step, active_index)), CTC negated when untargeted. After every
    step: delta <- project(box(delta)).

    `box(delta)` is the attack's own constraint (CW: |delta| <= tau, IPC: |delta| <= r |x|);
    `on_success(ok, delta)` may tighten it when the target is reached. `stop_after`: an utterance
    that has succeeded that many times is frozen and leaves the batch (saves time; the loop ends
    when none is left). `patience`: an utterance that has succeeded leaves the batch once it has
    gone that many steps without a new success, i.e. once its bound has stopped shrinking (the
    convergence test of a bound-shrinking attack; it keeps the budget of an utterance
    independent of how soon it first succeeds). `leave()`, called after every step, returns the
    utterances (a (B,) bool mask) that leave the batch by the attack's own convergence test.
    """
    refs = normalize_texts(model, texts)
    seqs = [model.encode_text(r) for r in refs]
    for t, q in zip(texts, seqs):
        if not q:
            raise ValueError(f"transcript {t!r} has no character the recogniser knows")
    with frozen_weights(model):
        return _optimize(model, x, lengths, mask, texts, seqs, refs, targeted=targeted, box=box,
                         on_success=on_success, lr=lr, max_iter=max_iter, c=c, l2_weight=l2_weight,
                         project=project, delta_init=delta_init, extra_loss=extra_loss,
                         after_check=after_check, stop_after=stop_after, patience=patience,
                         leave=leave, tracker=tracker)


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


def _optimize(model, x, lengths, mask, texts, seqs, refs, *, targeted, box, on_success, lr, max_iter, c,
              l2_weight, project, delta_init, extra_loss, after_check, stop_after, patience, leave,
              tracker) -> Tracker:
    delta = (torch.zeros_like(x) if delta_init is None else delta_init.detach().clone()) * mask
    delta.requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    tracker = tracker or Tracker(x, max_iter)
    active = torch.ones(len(x), dtype=torch.bool, device=x.device)
    n = x.shape[1]
    for step in range(max_iter):
        idx = active.nonzero().flatten()
        if len(idx) == 0:
            break
        sub = idx.tolist()
        tracker.steps[sub] += 1
        targets = torch.tensor([i for j in sub for i in seqs[j]], dtype=torch.long, device=x.device)
        tlen = torch.tensor([len(seqs[j]) for j in sub], dtype=torch.long, device=x.device)
        # only the active utterances, cut to the longest of them: once long ones have finished,
        # the rest no longer pay for their padding. The cut keeps PAD_MARGIN samples of zero
        # padding (as the full batch has): a centred STFT's last frames read past the end.
        la = lengths[idx]
        ta = min(n, int(la.max()) + PAD_MARGIN)
        xa = x[idx, :ta]
        adv = (xa + delta[idx, :ta] * mask[idx, :ta]).clamp(LOW, HIGH)
        d = adv - xa
        loss_ctc, hyps = ctc_objective(model, adv, la, targets, tlen)
        ok = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        ok[idx] = success_mask(hyps, [refs[j] for j in sub], targeted, x.device)
        if ready(project, step, max_iter):
            full = torch.zeros_like(x)
            full[idx, :ta] = d.detach()
            tracker.update(ok, full, step)
            if on_success is not None and ok.any():
                on_success(ok, full)
        if after_check is not None:
            after_check(ok, step)
        obj = (c * loss_ctc if targeted else -c * loss_ctc) + l2_weight * (d * d).sum(1)
        if extra_loss is not None:
            obj = obj + extra_loss(F.pad(d, (0, n - ta)), step, idx)
        frozen = ~active
        keep = delta.detach()[frozen].clone() if frozen.any() else None
        opt.zero_grad()
        obj.sum().backward()
        opt.step()
        with torch.no_grad():
            if keep is not None:
                delta[frozen] = keep
            raw = delta * mask
            new = box(raw)
            if project is not None:  # the frozen utterances keep their last projected iterate
                kw = {}
                if getattr(project, "joint_box", False):  # l0 step and box as one projection,
                    # in the metric of Adam's step (variable-metric proximal gradient)
                    st = opt.state[delta]
                    bias = 1.0 - ADAM_BETAS[1] ** float(st["step"])
                    metric = (st["exp_avg_sq"][idx, :ta] / bias).sqrt() + ADAM_EPS
                    limits = getattr(box, "limits", None)  # per-sample bounds of a non-uniform box
                    extra = {} if limits is None else {"bound": limits()[idx, :ta]}
                    kw["score"] = joint_score(raw[idx, :ta], new[idx, :ta], metric, **extra)
                new[idx, :ta] = apply_project(project, new[idx, :ta], step, max_iter, la, **kw)
            delta.copy_(new * mask)
        if stop_after is not None:
            active = active & (tracker.count.to(x.device) < stop_after)
        if patience is not None:
            stale = tracker.success.cpu() & (step - tracker.last >= patience)
            active = active & ~stale.to(x.device)
        if leave is not None:
            active = active & ~leave().to(x.device)
    return tracker


def finish(tracker: Tracker, x: torch.Tensor, rebuild, final_delta: torch.Tensor | None = None):
    """Adversarial inputs: the latest successful perturbation per utterance, else the last iterate."""
    d = tracker.best.clone()
    if final_delta is not None:
        fail = ~tracker.success
        d[fail] = final_delta[fail]
    return rebuild((x + d).clamp(LOW, HIGH))


@torch.no_grad()
def asr_report(model, clean, adv, targets: Sequence[str], originals: Sequence[str], lengths=None,
               info: dict | None = None, *, tol: float = 0.0) -> list[dict]:
    """Per-utterance results: transcripts, success (decoded == target), WER / CER to the target and
    to the original transcript, SNR, dB_x, l0 (fraction of samples changed), linf, plus the
    iterations / seconds the attack recorded in `info`."""
    x, _ = split_inputs(clean)
    a, _ = split_inputs(adv)
    if lengths is None:
        lengths = torch.full((len(x),), x.shape[1], dtype=torch.long)
    lengths = torch.as_tensor(lengths, dtype=torch.long, device=x.device)
    from ..models.asr import transcribe
    hyps = transcribe(model, a, lengths)
    tg, og = normalize_texts(model, targets), normalize_texts(model, originals)
    out = []
    for i in range(len(x)):
        n = int(lengths[i])
        xi, di = x[i:i + 1, :n], (a[i:i + 1, :n] - x[i:i + 1, :n])
        row = {
            "decoded": hyps[i], "target": tg[i], "original": og[i], "success": hyps[i] == tg[i],
            "wer_target": wer(tg[i], hyps[i]), "cer_target": cer(tg[i], hyps[i]),
            "wer_original": wer(og[i], hyps[i]), "cer_original": cer(og[i], hyps[i]),
            "snr_db": float(snr(xi, di)[0]), "db_x": float(db_x(xi, di)[0]),
            "l0": float(l0(di, tol=tol)[0]), "linf": float(linf(di)[0]), "num_samples": n,
        }
        if info:
            for key in ("iterations", "steps", "seconds", "successes"):
                if key in info:
                    v = info[key]
                    row[key] = v[i] if isinstance(v, (list, tuple)) else v
        out.append(row)
    return out


def now() -> float:
    return time.perf_counter()
