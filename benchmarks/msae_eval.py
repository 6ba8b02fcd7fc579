"""MSAE on the audio-visual command classifier: models, then dense vs sparse attacks.

1. `--train` (or when `--out` holds no checkpoints): trains three `av-commands` models on
   `synth-av-commands` (clean train voices; the training adapter adds random gain and, to half the
   clips, white noise at -5..30 dB SNR): audio-only, video-only and fused, the same recipe
   (`--epochs`, seed 0), saved under `--out/{audio,video,audio+video}`. Prints test accuracy on
   unseen voices, clean and with white noise at 0 dB SNR added to the audio.
2. Attacks the fused model on the first `--n` correctly classified test clips, targeted, each
   target drawn uniformly among the other classes with `--seed`: `attacks.msae_baselines.evaluate` rows
   (dense baseline; MSAE, top-k of the dense perturbation and l0 proximal thresholding at each
   `--sparsities` fraction of positions per modality; every run the same number of steps).
   `--structure frame` uses per-frame masks (audio frames of 10 ms, whole video frames).

Usage: PYTHONPATH=src python benchmarks/msae_eval.py --out runs/msae-eval --epochs 10 --n 20
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from audioadv import models
from audioadv.attacks.msae_baselines import evaluate
from audioadv.data import load_dataset
from audioadv.models.av import accuracy, fit_av
from audioadv.train import TrainConfig

# trained in this order, each initialised from the global generator as the previous fit left it
VARIANTS = {"audio": "audio", "audio+video": "audio,video", "video": "video"}


def train(out: Path, spec: str, epochs: int) -> None:
    tr, va, te = (load_dataset(spec, s) for s in ("train", "val", "test"))
    print("| model | epochs | test acc clean | test acc 0 dB SNR | train s |\n|---|---|---|---|---|")
    for name, mods in VARIANTS.items():
        t0 = time.time()
        net = models.create("av-commands", num_classes=tr.num_classes, modalities=mods)
        fit_av(net, tr, va, TrainConfig(epochs=epochs, lr=3e-3), out_dir=out / name, seed=0, log=lambda s: None,
               config={"dataset": spec})
        print(f"| {name} | {epochs} | {accuracy(net, te):.3f} | {accuracy(net, te, snr_db=0.0):.3f} | "
              f"{time.time() - t0:.0f} |", flush=True)


def fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) and not math.isnan(v) and abs(v) < 1e4 else str(v)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/msae-eval")
    p.add_argument("--data", default="synth-av-commands")
    p.add_argument("--train", action="store_true")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sparsities", default="0.1,0.3,0.5")
    p.add_argument("--structure", choices=["entry", "frame"], default="entry")
    p.add_argument("--warmup", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--finetune", type=int)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.out)
    if a.train or not (out / "audio+video" / "model.safetensors").exists():
        train(out, a.data, a.epochs)
    net, _ = models.load_checkpoint(out / "audio+video", frozen=True)
    te = load_dataset(a.data, "test")
    with torch.no_grad():
        pred = torch.cat([net(te.inputs(torch.arange(i, min(i + 64, len(te))))).argmax(1) for i in range(0, len(te), 64)])
    idx = (pred == te.labels).nonzero().flatten()[:a.n]
    x = te.inputs(idx)
    g = torch.Generator().manual_seed(a.seed)
    c = te.num_classes
    target = (te.labels[idx] + 1 + torch.randint(0, c - 1, (len(idx),), generator=g)) % c
    kw = {k: getattr(a, k) for k in ("warmup", "rounds", "finetune") if getattr(a, k) is not None}
    structure = {"audio": "frame", "video": "frame"} if a.structure == "frame" else None
    t0 = time.time()
    rows = evaluate(net, x, target, sparsities=[float(s) for s in a.sparsities.split(",")], structure=structure, **kw)
    cols = ["method", "sparsity", "success", "realised_audio", "realised_video", "changed_audio", "changed_video",
            "snr_db", "psnr_db",
            "frames_touched", "l2_audio", "l2_video"]
    print(f"\nfused model, {len(idx)} test clips, targeted, structure {a.structure}, {time.time() - t0:.0f} s")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(fmt(r.get(k)) for k in cols) + " |")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"eval-{a.structure}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
