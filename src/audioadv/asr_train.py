"""Training and evaluation of the character CTC recogniser (`audioadv.models.asr.CTCRecognizer`).

Data are lists of variable-length utterances (`Utterances`: 1-D float waveforms at 16 kHz and
transcripts). Batches group utterances of similar length (sorted, chunked, chunk order
shuffled with the seed; 16 s of audio per batch by default), AdamW with a one-cycle learning rate
over the training's steps, gradient clipping at 5; light
augmentation: additive white noise at a random SNR in [15, 40] dB on half of the utterances, a
random gain and, optionally, a synthetic room response (`reverb`). Runs on any torch device
(`device="cuda"`: larger `batch_seconds` then, since the GPU is idle on 16 s batches). Validation character error rate every few hundred steps; the best weights are
saved (`model.safetensors` + `config.json`) with a `train_log.jsonl`.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data.utterances import Utterances, length_batches, pad_batch
from .metrics.text import cer, wer
from .models.asr import CTCRecognizer, encode_targets, save_recognizer, transcribe


def evaluate(model, data: Utterances, *, batch_size: int = 32, beam_width: int = 0) -> dict:
    """Greedy (or beam) transcripts of `data` and their CER / WER against the references."""
    model.eval()
    device = next(model.parameters()).device
    hyps: list[str] = []
    for idx in length_batches([len(w) for w in data.waves], batch_size * 16000 * 4, 0):
        wav, lengths, _ = data.batch(idx)
        wav, lengths = wav.to(device), lengths.to(device)
        for i, h in zip(idx, transcribe(model, wav, lengths, beam_width=beam_width)):
            hyps.append((i, h))
    hyps = [h for _, h in sorted(hyps)]
    refs = [model.normalize_text(t) if hasattr(model, "normalize_text") else t for t in data.texts]
    return {"cer": cer(refs, hyps), "wer": wer(refs, hyps), "n": len(refs), "hypotheses": hyps}


def room_responses(rt60: torch.Tensor, sample_rate: int, g: torch.Generator) -> torch.Tensor:
    """Synthetic room impulse responses (B, L), one per RT60 in seconds: a unit direct path plus
    exponentially decaying Gaussian noise of equal energy, -60 dB at RT60 (the same model as the
    data synthesiser's `audioadv.data.synth.room_impulse_response`, here batched on any device)."""
    n = max(2, int(float(rt60.max()) * sample_rate))
    t = torch.arange(n, device=rt60.device) / sample_rate
    tail = torch.randn(len(rt60), n, generator=g, device=rt60.device) * torch.exp(-6.908 * t[None] / rt60[:, None])
    tail = tail * (t[None] < rt60[:, None])
    tail[:, 0] = 0.0
    tail = tail / tail.pow(2).sum(1, keepdim=True).clamp_min(1e-12).sqrt()
    tail[:, 0] = 1.0
    return tail


def _augment(wav: torch.Tensor, lengths: torch.Tensor, g: torch.Generator, *, reverb: float = 0.0,
             rt60=(0.1, 0.6), sample_rate: int = 16000) -> torch.Tensor:
    b, dev = wav.shape[0], wav.device
    mask = (torch.arange(wav.shape[1], device=dev)[None, :] < lengths[:, None]).float()
    if reverb > 0:
        # with probability `reverb` a room response, convolved by FFT and cut to the utterance's
        # length; the level is restored so that the gain below stays the only level change
        use = torch.rand(b, generator=g, device=dev) < reverb
        if bool(use.any()):
            idx = use.nonzero().squeeze(1)
            rt = torch.empty(len(idx), device=dev).uniform_(*rt60, generator=g)
            h = room_responses(rt, sample_rate, g)
            n = wav.shape[1] + h.shape[1]
            y = torch.fft.irfft(torch.fft.rfft(wav[idx], n) * torch.fft.rfft(h, n), n)[:, :wav.shape[1]]
            y = y * mask[idx]
            ratio = wav[idx].pow(2).sum(1).div(y.pow(2).sum(1).clamp_min(1e-12)).sqrt()
            wav = wav.index_copy(0, idx, y * ratio[:, None])
    gain = 10 ** (torch.empty(b, device=dev).uniform_(-6, 6, generator=g) / 20)
    wav = wav * gain[:, None]
    power = (wav ** 2).sum(1) / lengths.float()
    snr = torch.empty(b, device=dev).uniform_(15, 40, generator=g)
    use = torch.rand(b, generator=g, device=dev) < 0.5
    sigma = torch.sqrt(power / 10 ** (snr / 10)) * use
    wav = wav + sigma[:, None] * torch.randn(wav.shape, generator=g, device=dev) * mask
    return wav.clamp(-1, 1)


def one_cycle(frac: float, lr: float, pct_start: float = 0.15, final: float = 1e-3) -> float:
    """One-cycle learning rate at `frac` (0..1) of training: linear warm-up from lr/25 to lr over
    `pct_start`, then cosine decay to lr * `final`."""
    frac = min(max(frac, 0.0), 1.0)
    if frac < pct_start:
        return lr * (0.04 + 0.96 * frac / pct_start)
    f = (frac - pct_start) / max(1e-9, 1 - pct_start)
    return lr * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * f)))


def train_recognizer(train: Utterances, val: Utterances, out: str | Path, *, epochs: int = 8,
                     max_steps: int | None = None, lr: float = 2e-3, batch_seconds: float = 16.0,
                     seed: int = 0, model: CTCRecognizer | None = None, model_kwargs: dict | None = None,
                     val_limit: int = 300, stop_epoch: int | None = None, eval_every: int = 500,
                     pct_start: float = 0.15, reverb: float = 0.0, device: str | torch.device = "cpu",
                     log=print) -> tuple[CTCRecognizer, dict]:
    """Train a `CTCRecognizer` on `train`, keep the weights with the lowest CER on `val`.

    `batch_seconds` of audio per batch (small batches, many steps: 16 s learns several times
    faster per CPU second than 160 s). The learning rate follows `one_cycle` over the
    training: over `epochs` epochs, or, when `max_steps` is given, over that many optimiser steps
    (training stops after them, even mid-epoch; `epochs` is then only a cap). `stop_epoch` ends
    training after that epoch while keeping the schedule. Validation (and a checkpoint when it improves) every `eval_every` steps and at
    the end of each epoch. `reverb`: probability of an online room response per utterance
    (RT60 uniform in 0.1-0.6 s). `device`: where the model trains (the data stay on the CPU and
    go over batch by batch). Returns the best model (on the CPU) and a summary (best CER, epochs,
    steps, training seconds).
    """
    torch.manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model or CTCRecognizer(**(model_kwargs or {}))
    if not model.feat_mean.abs().sum():
        probe = train.subset(list(range(0, len(train), max(1, len(train) // 200))))
        model.set_feature_stats(*pad_batch(probe.waves))
    device = torch.device(device)
    model = model.to(device)
    max_samples = int(batch_seconds * train.sample_rate)
    lengths = [len(w) for w in train.waves]
    steps_per_epoch = len(length_batches(lengths, max_samples, seed))
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"train_recognizer: max_steps must be at least 1, got {max_steps}")
    total_steps = steps_per_epoch * epochs if max_steps is None else max_steps
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    g = torch.Generator(device=device).manual_seed(seed)
    val_sub = val.subset(list(range(min(len(val), val_limit))))
    best, best_cer, step, t0 = None, math.inf, 0, time.time()
    log_path = out / "train_log.jsonl"
    log_path.write_text("")

    def progress() -> float:
        return step / total_steps

    def validate(epoch: int, run_loss: float, cur_lr: float) -> None:
        nonlocal best, best_cer
        res = evaluate(model, val_sub)
        model.train()
        rec = {"epoch": epoch, "step": step, "loss": round(run_loss, 4), "val_cer": res["cer"],
               "val_wer": res["wer"], "seconds": round(time.time() - t0, 1), "lr": cur_lr}
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        log(json.dumps(rec))
        if res["cer"] < best_cer:
            best_cer, best = res["cer"], {k: v.clone() for k, v in model.state_dict().items()}
            save_recognizer(model, out, {"val_cer": best_cer, "epoch": epoch, "step": step})

    done, run_loss, cur_lr = False, 0.0, lr
    for epoch in range(epochs):
        model.train()
        batches = length_batches(lengths, max_samples, seed + epoch)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", leave=False)
        for idx in bar:
            cur_lr = one_cycle(progress(), lr, pct_start)
            for group in opt.param_groups:
                group["lr"] = cur_lr
            wav, wl, texts = train.batch(idx)
            wav, wl = wav.to(device, non_blocking=True), wl.to(device)
            wav = _augment(wav, wl, g, reverb=reverb, sample_rate=train.sample_rate)
            logp, frames = model(wav, wl)
            targets, tl = encode_targets(model, texts)
            targets, tl = targets.to(device), tl.to(device)
            loss = F.ctc_loss(logp.transpose(0, 1), targets, frames, tl, blank=model.blank,
                              reduction="mean", zero_infinity=True)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            step += 1
            lv = float(loss.detach())
            run_loss = 0.98 * run_loss + 0.02 * lv if step > 1 else lv
            bar.set_postfix(loss=f"{run_loss:.3f}")
            if step >= total_steps:
                if max_steps is not None:
                    log(f"{max_steps} steps reached in epoch {epoch + 1}")
                done = True
                break
            if eval_every and step % eval_every == 0:
                validate(epoch + 1, run_loss, cur_lr)
        validate(epoch + 1, run_loss, cur_lr)
        if done:
            break
        if stop_epoch is not None and epoch + 1 >= stop_epoch:
            log(f"stopping after epoch {epoch + 1} (--stop-epoch)")
            break
    model.load_state_dict(best)
    model = model.cpu().eval()
    return model, {"best_val_cer": best_cer, "epochs": epoch + 1, "steps": step,
                   "train_seconds": round(time.time() - t0, 1), "device": str(device)}
