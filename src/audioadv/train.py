"""Training and evaluation of zoo classifiers on in-memory `AudioDataset`s.

`fit(model, train, val, ...)` trains with Adam and a cosine learning-rate schedule, validates
every epoch, keeps the best weights (by validation accuracy, then loss) and, given `out_dir`,
saves them as a checkpoint (safetensors + config.json) together with `history.jsonl` (one line
per epoch, written as it goes). Optional Gaussian noise augmentation is added at a chosen
representation (`noise_at`, via `model.split`), as randomized smoothing needs (Cohen et al. 2019).
`evaluate` gives accuracy and the confusion matrix.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data import AudioDataset


@dataclass
class TrainConfig:
    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    noise_sigma: float = 0.0          # std of Gaussian noise added during training
    noise_at: str = "waveform"        # representation the noise is added to
    gain_db: float = 6.0              # random gain in [-gain_db, +gain_db] dB (0 disables)
    shift_ms: float = 100.0           # random time shift in [-shift_ms, +shift_ms] (0 disables)
    extra: dict = field(default_factory=dict)


def split_validation(ds: AudioDataset, fraction: float = 0.1, seed: int = 0) -> tuple[AudioDataset, AudioDataset]:
    """Stratified random split of a training set into (train, validation) with a seed."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    val_idx = []
    for c in range(ds.num_classes):
        idx = (ds.labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        val_idx.append(idx[:max(1, int(round(fraction * len(idx))))] if len(idx) > 1 else idx[:0])
    val = torch.cat(val_idx)
    mask = torch.ones(len(ds), dtype=torch.bool)
    mask[val] = False
    return ds.subset(mask.nonzero().flatten()), ds.subset(val.sort().values)


def augment_waveform(x: torch.Tensor, gain_db: float, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random gain (uniform in dB) and circular-free time shift (zero fill), clamped to [-1, 1]."""
    b, t = x.shape
    if gain_db > 0:
        g = 10 ** ((torch.rand(b, 1, generator=generator) * 2 - 1) * gain_db / 20)
        x = x * g
    if shift > 0:
        s = torch.randint(-shift, shift + 1, (b,), generator=generator)
        padded = F.pad(x, (shift, shift))
        idx = (torch.arange(t)[None, :] + shift - s[:, None])
        x = padded.gather(1, idx)
    return x.clamp(-1.0, 1.0)


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """cm[i, j] = number of examples of true class i predicted as class j."""
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def format_confusion(cm: torch.Tensor, classes: list[str]) -> str:
    """Plain-text confusion matrix: rows are true classes, columns predictions."""
    names = [str(c)[:8] for c in classes]
    w = max(5, max(len(n) for n in names), len(str(int(cm.max()))) if cm.numel() else 1)
    head = " " * (w + 1) + " ".join(f"{n:>{w}}" for n in names)
    rows = [f"{n:>{w}} " + " ".join(f"{int(v):>{w}}" for v in row) for n, row in zip(names, cm)]
    return "true \\ predicted\n" + head + "\n" + "\n".join(rows)


@torch.no_grad()
def predict(model, waves: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Logits for many waveforms, in batches, in eval mode."""
    was = model.training
    model.eval()
    dev = _device(model)
    out = [model(waves[i:i + batch_size].to(dev)).cpu() for i in range(0, len(waves), batch_size)]
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, model.num_classes)


def evaluate(model, ds: AudioDataset, batch_size: int = 64) -> dict:
    """Accuracy, mean cross-entropy, confusion matrix and per-example predictions on a dataset."""
    if len(ds) == 0:
        raise ValueError(f"dataset {ds.name!r} is empty")
    logits = predict(model, ds.waves, batch_size)
    preds = logits.argmax(1)
    cm = confusion_matrix(preds, ds.labels, ds.num_classes)
    return {"accuracy": float((preds == ds.labels).float().mean()), "loss": float(F.cross_entropy(logits, ds.labels)),
            "n": len(ds), "confusion": cm.tolist(), "predictions": preds.tolist()}


def _device(model) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def _noisy_forward(model, x, sigma, at, generator):
    if sigma <= 0:
        return model(x)
    front, back = model.split(at)
    z = front(x)
    # drawn on the CPU generator whatever the device: the same noise, so the same model, on any device
    return back(z + sigma * torch.randn(z.shape, generator=generator).to(z.device))


def fit(model, train: AudioDataset, val: AudioDataset, cfg: TrainConfig | None = None, *, out_dir=None,
        config: dict | None = None, progress: bool = True, log=print, device=None) -> dict:
    """Train `model` on `train`, validating on `val` each epoch; returns a summary dict.

    With out_dir, the best epoch's weights are saved there with `save_checkpoint` (config.json
    gets `config`, the training arguments and metrics) and each epoch is appended to
    history.jsonl. The model is left holding the best weights. device: where the model trains (default: where
    its parameters are); augmentation and noise are drawn on the CPU, so a seed gives the same draws anywhere.
    """
    from .models import save_checkpoint

    cfg = cfg or TrainConfig()
    if cfg.noise_sigma > 0 and cfg.noise_at not in model.representations():
        raise ValueError(f"--noise-at {cfg.noise_at!r}: {model.arch} can be split at "
                         f"{', '.join(model.representations())}")
    if train.num_classes != model.num_classes:
        raise ValueError(f"dataset has {train.num_classes} classes but the model {model.num_classes} outputs")
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    dev = torch.device(device) if device is not None else _device(model)
    model.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = max(1, cfg.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, steps_per_epoch)) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    shift = int(cfg.shift_ms * 1e-3 * train.sample_rate)
    out = Path(out_dir) if out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "history.jsonl").write_text("")
    best = {"val_accuracy": -1.0, "val_loss": float("inf"), "epoch": 0}
    best_state = None
    history = []
    t0 = time.time()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(len(train), generator=g)
        tot_loss = tot_ok = seen = 0
        bar = tqdm(range(0, len(train), cfg.batch_size), desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
                   disable=not progress, unit="batch")
        for i in bar:
            idx = perm[i:i + cfg.batch_size]
            if len(idx) < 2:  # batch norm needs two examples
                continue
            x, y = train.waves[idx], train.labels[idx]
            x = augment_waveform(x, cfg.gain_db, shift, g).to(dev)
            y = y.to(dev)
            logits = _noisy_forward(model, x, cfg.noise_sigma, cfg.noise_at, g)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += float(loss.detach()) * len(idx)
            tot_ok += int((logits.argmax(1) == y).sum())
            seen += len(idx)
            bar.set_postfix(loss=f"{tot_loss / seen:.3f}", acc=f"{tot_ok / seen:.3f}")
        ev = _evaluate_noisy(model, val, cfg, g) if cfg.noise_sigma > 0 else evaluate(model, val)
        row = {"epoch": epoch, "train_loss": tot_loss / max(seen, 1), "train_accuracy": tot_ok / max(seen, 1),
               "val_loss": ev["loss"], "val_accuracy": ev["accuracy"], "seconds": round(time.time() - t0, 1)}
        history.append(row)
        improved = (row["val_accuracy"], -row["val_loss"]) > (best["val_accuracy"], -best["val_loss"])
        if improved:
            best = {"val_accuracy": row["val_accuracy"], "val_loss": row["val_loss"], "epoch": epoch}
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        log(f"epoch {epoch}/{cfg.epochs}: train loss {row['train_loss']:.3f} acc {row['train_accuracy']:.3f} | "
            f"val loss {row['val_loss']:.3f} acc {row['val_accuracy']:.3f}{' *' if improved else ''} "
            f"[{row['seconds']:.0f} s]")
        if out:
            with open(out / "history.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            if improved:
                _save(model, out, cfg, config, best, train, time.time() - t0, save_checkpoint)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    summary = {"best": best, "history": history, "train_seconds": round(time.time() - t0, 1)}
    if out:  # final config: same weights, total training time
        _save(model, out, cfg, config, best, train, time.time() - t0, save_checkpoint)
    return summary


def _evaluate_noisy(model, ds, cfg, g):
    """Validation under the same noise as training (what a smoothed classifier's base model sees)."""
    model.eval()
    with torch.no_grad():
        dev = _device(model)
        logits = torch.cat([_noisy_forward(model, ds.waves[i:i + 64].to(dev), cfg.noise_sigma, cfg.noise_at, g).cpu()
                            for i in range(0, len(ds), 64)])
    return {"accuracy": float((logits.argmax(1) == ds.labels).float().mean()),
            "loss": float(F.cross_entropy(logits, ds.labels))}


def _save(model, out, cfg, config, best, train, seconds, save_checkpoint):
    c = dict(config or {})
    c["classes"] = list(train.classes)
    c["training"] = {**asdict(cfg), "train_examples": len(train), "seconds": round(seconds, 1)}
    c.setdefault("metrics", {}).update({"val_accuracy": best["val_accuracy"], "val_loss": best["val_loss"],
                                         "best_epoch": best["epoch"]})
    save_checkpoint(model, out, c)
