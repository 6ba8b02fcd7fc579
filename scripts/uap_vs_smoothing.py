"""Universal perturbation vs randomized smoothing at equal l2 (issue 5, "empirical robustness beyond
the certificate").

Crafts an untargeted universal perturbation v (Abdoli et al. penalty method,
`audioadv.attacks.universal.penalty`) on --n-craft training clips against the base classifier and,
unless --no-smooth-uap, a second one against the smoothed classifier's differentiable surrogate
(`audioadv.certify.smoothing.NoisySoftmax`, expectation over --eot noise draws at the waveform).
Each v is rescaled to the l2 norms --norms (waveform domain, applied as clip(x + v, -1, 1)) and
evaluated on --n-test test clips (balanced over digits, chosen among those the base model
classifies correctly, seeded) against
  - the base model: fooling rate = prediction differs from the clean prediction (= true label here);
  - Smooth(model, 10, sigma, at="waveform").predict(n=--n, alpha=--alpha) for each --sigmas:
    fooled vs true label / vs the clean smoothed prediction (abstention counts as NOT fooled and is
    reported separately), plus the smoothed classifier's clean accuracy and abstention.
A Gaussian random direction rescaled to the same l2 is evaluated too, as a control.

Outputs: --out-md (Markdown table, exact command at top) and --out-json (all figures + per-example
predictions). Perturbations are cached under --cache (a rerun reuses them).

    python scripts/uap_vs_smoothing.py
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from audioadv.attacks import universal
from audioadv.certify.smoothing import NoisySoftmax, Smooth
from audioadv.data import load_dataset
from audioadv.models.checkpoint import load_checkpoint


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default="runs/zoo/fsdd-logmel-cnn")
    p.add_argument("--fsdd", default="../shared/data/fsdd")
    p.add_argument("--n-craft", type=int, default=200)
    p.add_argument("--n-test", type=int, default=50)
    p.add_argument("--norms", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    p.add_argument("--n", type=int, default=200, help="noise draws per Smooth.predict")
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch", type=int, default=200, help="noise batch size")
    # penalty method
    p.add_argument("--c", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--delta", type=float, default=0.05)
    # UAP against the smoothed surrogate
    p.add_argument("--no-smooth-uap", action="store_true")
    p.add_argument("--smooth-uap-sigma", type=float, default=0.02)
    p.add_argument("--smooth-c", type=float, default=30.0,
                   help="penalty c for the smoothed target (its log-probability margins are ~10x smaller than logits)")
    p.add_argument("--eot", type=int, default=4, help="noise draws per example in NoisySoftmax")
    p.add_argument("--smooth-max-iter", type=int, default=100)
    p.add_argument("--smooth-batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default="runs/uap_smoothing")
    p.add_argument("--out-md", default="results/uap_smoothing.md")
    p.add_argument("--out-json", default="results/uap_smoothing.json")
    return p.parse_args(argv)


def pick_test(model, data, n, seed):
    """n test indices balanced over classes, among clips the base model classifies correctly."""
    pred = universal.predict(model, data.waves)
    ok = (pred == data.labels).numpy()
    rng = np.random.default_rng(seed)
    classes = sorted(set(data.labels.tolist()))
    per = int(np.ceil(n / len(classes)))
    chosen = []
    for c in classes:
        idx = np.flatnonzero((data.labels.numpy() == c) & ok)
        chosen.extend(rng.permutation(idx)[:per].tolist())
    chosen = sorted(rng.permutation(chosen)[:n].tolist())
    return chosen, float(ok.mean())


def craft(name, model, waves, labels, args, cache: Path, **kw):
    path = cache / f"{name}.pt"
    if path.exists():
        blob = torch.load(path, weights_only=True)
        print(f"[cache] {path}")
        return blob["v"], json.loads(blob["history"])
    t0 = time.perf_counter()
    kw.setdefault("c", args.c)
    v, hist = universal.penalty(model, (waves, labels), targeted=None, lr=args.lr,
                                delta=args.delta, seed=args.seed, **kw)
    hist.append({"wall_s": time.perf_counter() - t0})
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"v": v, "history": json.dumps(hist)}, path)
    return v, hist


def scaled(v, norm):
    return v * (norm / v.norm())


def smooth_preds(smooth, waves, args, desc):
    out = []
    for i in tqdm(range(len(waves)), desc=desc, leave=False):
        out.append(smooth.predict(waves[i], args.n, args.alpha, args.batch, seed=args.seed + i))
    return np.array(out)


def main(argv=None):
    args = parse(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    command = "python scripts/uap_vs_smoothing.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    t_start = time.perf_counter()
    model, cfg = load_checkpoint(args.ckpt, frozen=True)
    K = int(cfg["num_classes"])
    spec = f"fsdd:{args.fsdd}"
    train, test = load_dataset(spec, "train"), load_dataset(spec, "test")
    g = torch.Generator().manual_seed(args.seed)
    tr_idx = torch.randperm(len(train), generator=g)[:args.n_craft]
    craft_w, craft_y = train.waves[tr_idx], train.labels[tr_idx]
    te_idx, base_test_acc = pick_test(model, test, args.n_test, args.seed)
    X, Y = test.waves[te_idx], test.labels[te_idx].numpy()
    clean_base = universal.predict(model, X).numpy()
    speech_l2 = float(X.norm(dim=1).mean())
    cache = Path(args.cache) / f"seed{args.seed}_n{args.n_craft}_c{args.c}_lr{args.lr}"

    perts = {}
    v, hist = craft("base", model, craft_w, craft_y, args, cache, max_iter=args.max_iter, check_every=10)
    perts["UAP vs base"] = (v, hist)
    if not args.no_smooth_uap:
        surrogate = NoisySoftmax(Smooth(model, K, args.smooth_uap_sigma, at="waveform"), samples=args.eot,
                           seed=args.seed)
        vs, hs = craft(f"smooth_lse_sigma{args.smooth_uap_sigma}_eot{args.eot}_c{args.smooth_c}", surrogate, craft_w, craft_y,
                       args, cache, c=args.smooth_c,
                       max_iter=args.smooth_max_iter, batch_size=args.smooth_batch, check_every=25)
        perts[f"UAP vs smoothed (sigma {args.smooth_uap_sigma})"] = (vs, hs)
    rnd = torch.randn(X.shape[1], generator=torch.Generator().manual_seed(args.seed + 1))
    perts["Gaussian direction (control)"] = (rnd, [])

    smooths = {s: Smooth(model, K, s, at="waveform") for s in args.sigmas}
    results = {"command": command, "settings": vars(args), "checkpoint": cfg.get("arch"),
               "base_test_accuracy_all": base_test_acc, "test_indices": te_idx,
               "test_files": [test.items[i].get("path", "") if test.items else "" for i in te_idx],
               "mean_speech_l2": speech_l2, "clean": {}, "rows": [], "crafting": {}}
    for name, (v, hist) in perts.items():
        last = [h for h in hist if "success_rate" in h]
        results["crafting"][name] = {"native_l2": float(v.norm()), "native_linf": float(v.abs().max()),
                                     "craft_success": last[-1]["success_rate"] if last else None,
                                     "iters": sum("iter" in h for h in hist),
                                     "wall_s": hist[-1].get("wall_s") if hist else None}
    # clean smoothed predictions
    clean_smooth = {}
    for s, sm in smooths.items():
        pr = smooth_preds(sm, X, args, f"clean sigma {s}")
        clean_smooth[s] = pr
        results["clean"][str(s)] = {"accuracy": float((pr == Y).mean()), "abstain": float((pr == Smooth.ABSTAIN).mean()),
                                    "preds": pr.tolist()}
    results["clean"]["base"] = {"accuracy": float((clean_base == Y).mean())}
    for name, (v, _) in perts.items():
        for r in args.norms:
            vr = scaled(v, r)
            Xa = universal.apply(vr, X)
            snr = float((20 * torch.log10(X.norm(dim=1) / (Xa - X).norm(dim=1))).mean())
            pb = universal.predict(model, Xa).numpy()
            row = {"perturbation": name, "l2": r, "snr_db": snr,
                   "base_fool_vs_clean": float((pb != clean_base).mean()), "base_fool_vs_true": float((pb != Y).mean()),
                   "base_preds": pb.tolist(), "smoothed": {}}
            for s, sm in smooths.items():
                pa = smooth_preds(sm, Xa, args, f"{name[:12]} l2 {r} sigma {s}")
                c0 = clean_smooth[s]
                ab = pa == Smooth.ABSTAIN
                row["smoothed"][str(s)] = {
                    "fool_vs_true": float(((~ab) & (pa != Y)).mean()),
                    "fool_vs_clean": float(((~ab) & (c0 != Smooth.ABSTAIN) & (pa != c0)).mean()),
                    "abstain": float(ab.mean()), "accuracy": float((pa == Y).mean()), "preds": pa.tolist()}
            results["rows"].append(row)
            print(f"{name} l2={r}: base fool {row['base_fool_vs_clean']:.2f} | " + " | ".join(
                f"s{s}: fool {d['fool_vs_true']:.2f} abst {d['abstain']:.2f}" for s, d in row["smoothed"].items()))
    results["wall_s"] = time.perf_counter() - t_start
    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out_json).write_text(json.dumps(results, indent=1) + "\n")
    Path(args.out_md).write_text(report(results, args))
    print(f"wrote {args.out_md} and {args.out_json} in {results['wall_s']:.0f} s")
    return 0


def report(res, args) -> str:
    S = [str(s) for s in args.sigmas]
    L = [f"# Universal perturbation vs randomized smoothing (FSDD digits, {res['checkpoint']})", "",
         f"Command: `{res['command']}`", "",
         f"Base model `{args.ckpt}`; {args.n_test} test clips (balanced over digits, among those the base model "
         f"gets right; base accuracy on the whole test split {res['base_test_accuracy_all']:.3f}); mean clip l2 "
         f"{res['mean_speech_l2']:.2f}. Smoothed classifier: `Smooth(model, 10, sigma, at=\"waveform\").predict"
         f"(n={args.n}, alpha={args.alpha})`, seed {args.seed}+i per clip (same noise for every perturbation). "
         "Perturbation applied as clip(x + v, -1, 1) with v rescaled to the l2 norm in the column.", "",
         "Clean accuracy / abstention of the smoothed classifier: " + "; ".join(
             f"sigma {s}: {res['clean'][s]['accuracy']:.2f} / {res['clean'][s]['abstain']:.2f}" for s in S)
         + f" (base: {res['clean']['base']['accuracy']:.2f}).", "", "Crafting (penalty method, untargeted, "
         f"{args.n_craft} train clips, c {args.c} vs base / {args.smooth_c} vs smoothed surrogate, lr {args.lr}; the "
         f"smoothed target is log mean softmax over {args.eot} noise draws per clip, computed stably):"]
    for name, c in res["crafting"].items():
        if c["craft_success"] is not None:
            L.append(f"- {name}: native l2 {c['native_l2']:.2f}, linf {c['native_linf']:.3f}, success on crafting set "
                     f"{c['craft_success']:.2f}, {c['wall_s']:.0f} s")
    L += ["", "Fooling rate = fraction of the test clips whose prediction is a wrong (non-abstain) class; for the base "
          "model this equals 'changed from the clean prediction'. Smoothed: fooled vs true label / fooled vs its own "
          "clean prediction / abstained. Abstention counts as not fooled.", ""]
    head = "| perturbation | l2 | SNR dB | base fooled | " + " | ".join(f"smoothed sigma {s}: fooled true / clean / abstain" for s in S) + " |"
    L += [head, "|" + "---|" * (4 + len(S))]
    for r in res["rows"]:
        cells = [f"{r['smoothed'][s]['fool_vs_true']:.2f} / {r['smoothed'][s]['fool_vs_clean']:.2f} / "
                 f"{r['smoothed'][s]['abstain']:.2f}" for s in S]
        L.append(f"| {r['perturbation']} | {r['l2']:g} | {r['snr_db']:.1f} | {r['base_fool_vs_clean']:.2f} | "
                 + " | ".join(cells) + " |")
    L += ["", f"Run time {res['wall_s']:.0f} s on the shared 2-core CPU, {args.threads} torch thread(s).", ""]
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
