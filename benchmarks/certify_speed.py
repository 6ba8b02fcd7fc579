"""Speed of randomized-smoothing certification: noisy forward passes per second of
`audioadv.certify.Smooth.certify` against (1) the bare base model's batched forward on the same
number of noisy inputs (overhead ratio = certify time / base time, goal <= 1.10) and
(2) ART's `PyTorchRandomizedSmoothing.certify` on the same model, same n0, n and batch size.

    .venv/bin/python benchmarks/certify_speed.py [--models logmel-cnn resemblyzer-speaker] [--n 2000]

Needs the `bench` extra (adversarial-robustness-toolbox 1.20.1, whose certify imports statsmodels).
Weights are untrained (speed does not depend on them); one CPU thread by default. `--models linear`
adds a single linear layer, for which the cost of drawing the noise dominates (an upper bound on
the overhead).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from audioadv import models  # noqa: E402
from audioadv.certify import Smooth  # noqa: E402
from bench_store import record  # noqa: E402

TABLE = {"title": "Certification speed: overhead over the bare model's batched forward, and speed-up over ART",
         "kind": "benchmark", "where": {"measure": "certify-speed"}, "rows": ["model"],
         "values": ["overhead_waveform", "overhead_spectrogram", "overhead_fbank", "speedup_vs_art"],
         "note": "overhead_AT: certification time with the noise at representation AT / the bare model's forward "
                 "on as many noisy inputs; speedup_vs_art: ART PyTorchRandomizedSmoothing.certify time / ours "
                 "(waveform noise), the same model, n0, n and batch. Best of the repeats, one thread."}


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench(name: str, n0: int, n: int, batch: int, sigma: float, repeats: int, length: int, art: bool) -> dict:
    torch.manual_seed(0)
    if name == "linear":   # a near-free model: shows the cost of sampling the noise itself
        model = torch.nn.Sequential(torch.nn.Linear(length, 10)).eval()
        model.representations = lambda: ["waveform"]
    else:
        model = models.create(name, num_classes=10, input_length=length).eval()
    x = 0.05 * torch.randn(length)
    total = n0 + n
    noisy = x + sigma * torch.randn(batch, length)     # generated once: the bare forward pays no sampling

    def base():
        with torch.no_grad():
            done = 0
            while done < total:
                b = min(batch, total - done)
                model(noisy[:b]).argmax(1)
                done += b

    row = {"model": name, "input_length": length, "n0": n0, "n": n, "batch": batch, "sigma": sigma}
    base()  # warm-up
    # Base and certify runs alternate, each keeping its best time, so that load from other
    # processes on a shared machine hits both alike.
    smooths = {at: Smooth(model, 10, sigma, at=at) for at in ("waveform", "spectrogram", "fbank")
               if at in model.representations()}
    best = {"base": float("inf"), **{at: float("inf") for at in smooths}}
    for _ in range(repeats):
        best["base"] = min(best["base"], best_of(base, 1))
        for at, smooth in smooths.items():
            best[at] = min(best[at], best_of(lambda: smooth.certify(x, n0, n, 0.001, batch, seed=0), 1))
    t_base = best["base"]
    row["base_forward_per_s"] = total / t_base
    for at in smooths:
        row[f"certify_{at}_per_s"] = total / best[at]
        row[f"overhead_{at}"] = best[at] / t_base
    if art:
        from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing
        clf = PyTorchRandomizedSmoothing(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(length,),
                                         nb_classes=10, device_type="cpu", sample_size=n0, scale=sigma, alpha=0.001)
        xa = x.numpy()[None].astype(np.float32)
        t_art = best_of(lambda: clf.certify(xa, n=n, batch_size=batch), repeats)
        row["art_certify_per_s"] = total / t_art
        row["speedup_vs_art"] = t_art / (total / row["certify_waveform_per_s"])
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["logmel-cnn", "resemblyzer-speaker"])
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--sigma", type=float, default=0.1)
    ap.add_argument("--length", type=int, default=25000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-art", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "certify_speed.json"))
    ap.add_argument("--store", default=str(ROOT / "runs" / "certify-speed"),
                    help="run folder whose results store receives the rows (`audioadv table` prints them)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        n = args.n if name != "resemblyzer-speaker" else max(args.n // 4, 100)
        row = bench(name, args.n0, n, args.batch, args.sigma, args.repeats, args.length, not args.no_art)
        rows.append(row)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    settings = {"n0": args.n0, "n": args.n, "batch": args.batch, "sigma": args.sigma, "length": args.length,
                "threads": args.threads, "repeats": args.repeats}
    print(record(args.store, "certify_speed", "certify-speed", settings, rows, ("model",), TABLE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
