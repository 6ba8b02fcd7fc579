"""Reproduce O'Reilly's "Towards Certified Adversarial Robustness for Audio Classification" on the
10-speaker LibriSpeech set: randomized smoothing (Cohen et al. 2019) with the noise at the
waveform, the magnitude spectrogram and the mel filterbank energies.

Task: 10 speakers of ../shared/data/librispeech-10spk, per speaker the first 7 utterances train and
the last 3 test (the data README's 70/30 split), cut into non-overlapping 25,000-sample segments
(1.5625 s, the study's waveform dimension). Base model: resemblyzer's pretrained GE2E encoder
(`resemblyzer-speaker`) with a linear softmax head trained here, in place of the study's Deep
Speaker ResCNN; optionally (`--logmel`) the zoo's `logmel-cnn` trained from scratch.

Writes into --out (default runs/smoothing): segments' statistics per representation, natural
accuracy of base models with and without Gaussian augmentation at each sigma, certified accuracy
tables (sigma x radius) per representation, an empirical attack table (PGD-l2 with expectation
over noise vs the base model at equal waveform l2), results.json and report.md. Every
certification example is a JSON line under out/certify/, so a rerun resumes.

Modes: quick (CI smoke run, a few minutes on one core), session (the numbers in the README),
full (the study's n0 = 500, n = 10,000, every test segment; see the README for its run time).
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

from audioadv.certify import (NoisySoftmax, RADII, Smooth, certify_dataset, max_radius,  # noqa: E402
                              results_name, summarize)
from audioadv.data import load_dataset  # noqa: E402
from audioadv.models import save_checkpoint  # noqa: E402
from audioadv.models.speaker import ResemblyzerSpeaker, fit_head  # noqa: E402

SEGMENT = 25000
SIGMAS = (0.01, 0.05, 0.10, 0.25, 0.50)
TABLE_RADII = (0.01, 0.05, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
REPS = ("fbank", "spectrogram", "waveform")
MODES = {
    #          test points per speaker, n0, n, batch, augmentation draws, PGD points/eps/steps/EOT samples
    "quick":   dict(per_speaker=1, n0=10, n=50, batch=64, aug_draws=1, attack_points=4, attack_steps=5, eot=4,
                    predict_n=50, attack_eps=(0.5,), attack_configs=(("spectrogram", 0.10),), heads=("clean",),
                    logmel_epochs=0),
    "session": dict(per_speaker=1, n0=20, n=200, batch=128, aug_draws=2, attack_points=10, attack_steps=10, eot=8,
                    predict_n=100, attack_eps=(0.1, 0.5, 2.0), heads=("clean", "matched"), logmel_epochs=20,
                    attack_configs=(("spectrogram", 0.10), ("spectrogram", 0.25), ("waveform", 0.01))),
    "full":    dict(per_speaker=0, n0=500, n=10000, batch=1000, aug_draws=4, attack_points=50, attack_steps=40, eot=32,
                    predict_n=1000, attack_eps=(0.1, 0.5, 2.0), heads=("clean", "matched"), logmel_epochs=20,
                    attack_configs=(("spectrogram", 0.10), ("spectrogram", 0.25), ("waveform", 0.01),
                                    ("fbank", 0.50))),
}


def segments(spec: str, split: str, length: int = SEGMENT):
    """Non-overlapping `length`-sample segments of every utterance (a shorter utterance gives one
    zero-padded segment): (waves (N, length), labels (N,), classes, source paths)."""
    ds = load_dataset(spec, split, input_length=None, align="start")
    waves, labels, paths = [], [], []
    for i, item in enumerate(ds.items):
        wav = ds.waves[i, :item["num_samples"]]
        starts = range(0, max(1, len(wav) - length + 1), length)
        for s in starts:
            seg = wav[s:s + length]
            waves.append(torch.nn.functional.pad(seg, (0, length - len(seg))))
            labels.append(int(ds.labels[i]))
            paths.append(f"{item['path']}@{s}")
    return torch.stack(waves), torch.tensor(labels), list(ds.classes), paths


def stats_row(x: torch.Tensor) -> dict:
    a = x.detach().flatten().numpy().astype(np.float64)
    p1, p99 = np.percentile(a, [1, 99])
    return {"min": a.min(), "max": a.max(), "p1": p1, "p99": p99, "mean": a.mean(), "sd": a.std(), "dim": x[0].numel()}


def representation_stats(model, waves: torch.Tensor, batch: int = 64) -> dict:
    out = {}
    for at in model.representations():
        front, _ = model.split(at)
        with torch.no_grad():
            z = torch.cat([front(waves[i:i + batch]) for i in range(0, len(waves), batch)])
        out[at] = {k: float(v) for k, v in stats_row(z).items()}
    return out


def embed(model: ResemblyzerSpeaker, waves, at: str = "waveform", sigma: float = 0.0, seed: int = 0, batch: int = 64):
    """GE2E embeddings, with N(0, sigma^2) noise added at representation `at` when sigma > 0."""
    g = torch.Generator().manual_seed(seed)
    front, _ = model.split(at)
    outs = []
    with torch.no_grad():
        for i in range(0, len(waves), batch):
            z = front(waves[i:i + batch])
            if sigma > 0:
                z = z + sigma * torch.randn(z.shape, generator=g)
            outs.append(model.embed_from(at, z))
    return torch.cat(outs)


def accuracy(logits, labels) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def pick(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """per_class seeded test points of every class (0: all), in class order."""
    if per_class <= 0:
        return torch.arange(len(labels))
    g = torch.Generator().manual_seed(seed)
    idx = []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().flatten()
        idx.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    return torch.cat(idx)


def train_logmel(xtr, ytr, xte, yte, classes, epochs: int, out: Path, seed: int, cert: dict | None = None) -> dict:
    """The zoo's logmel-cnn trained from scratch on the segments, without and with Gaussian
    augmentation at each representation and sigma (audioadv.train.fit's noise_sigma / noise_at);
    natural (clean test) accuracy and accuracy under the training noise."""
    from audioadv import models
    from audioadv.data import AudioDataset
    from audioadv.train import TrainConfig, evaluate, fit, split_validation

    train = AudioDataset(xtr, ytr, classes, 16000, name="librispeech-10spk-segments-train")
    test = AudioDataset(xte, yte, classes, 16000, name="librispeech-10spk-segments-test")
    tr, val = split_validation(train, 0.1, seed)
    res = {"epochs": epochs}
    for at, sigma in [("none", 0.0)] + [(a, s) for a in REPS for s in SIGMAS]:
        key = "no_augmentation" if sigma == 0 else f"{at}@{sigma:g}"
        folder = out / "models" / f"logmel-cnn-{key.replace('@', '-')}"
        torch.manual_seed(seed)
        model = models.create("logmel-cnn", num_classes=len(classes), input_length=SEGMENT)
        cfg = TrainConfig(epochs=epochs, seed=seed, noise_sigma=sigma, noise_at=at if sigma else "waveform")
        t0 = time.time()
        fit(model, tr, val, cfg, out_dir=folder, progress=False, log=lambda *_: None)
        row = {"clean_test": evaluate(model, test)["accuracy"], "seconds": round(time.time() - t0, 1)}
        if sigma:
            g = torch.Generator().manual_seed(10_000 + seed)
            front, back = model.split(at)
            with torch.no_grad():
                z = front(xte)
                row["noisy_test"] = accuracy(back(z + sigma * torch.randn(z.shape, generator=g)), yte)
        if sigma and cert:   # certify the model trained at this noise, at this noise (Cohen et al.)
            pts = cert["points"]
            rows = certify_dataset(Smooth(model.eval(), len(classes), sigma, at=at), xte[pts], yte[pts],
                                   out / "certify" / "logmel-cnn-matched" / results_name(at, sigma, cert["n"]),
                                   n0=cert["n0"], n=cert["n"], alpha=0.001, batch_size=cert["batch"], seed=seed)
            row["certify"] = summarize(rows, (0.0,) + TABLE_RADII)
        res[key] = row
        print(f"  logmel-cnn {key}: {row}", flush=True)
    stats_model = models.create("logmel-cnn", num_classes=len(classes), input_length=SEGMENT).eval()
    res["stats"] = representation_stats(stats_model, xtr)
    return res


def fsdd_speakers(spec: str, epochs: int, out: Path, seed: int, sigma: float = 0.1) -> int:
    """logmel-cnn on FSDD's 6-speaker task (takes 0-4 test), without and with augmentation."""
    from audioadv import models
    from audioadv.train import TrainConfig, evaluate, fit, split_validation

    train = load_dataset(spec, "train", input_length=16000)
    test = load_dataset(spec, "test", input_length=16000)
    tr, val = split_validation(train, 0.1, seed)
    res = {"data": spec, "epochs": epochs, "sigma": sigma, "train": len(tr), "test": len(test)}
    for at, sg in [("waveform", 0.0)] + [(a, sigma) for a in REPS]:
        key = "no_augmentation" if sg == 0 else f"{at}@{sg:g}"
        torch.manual_seed(seed)
        model = models.create("logmel-cnn", num_classes=train.num_classes, input_length=16000)
        t0 = time.time()
        fit(model, tr, val, TrainConfig(epochs=epochs, seed=seed, noise_sigma=sg, noise_at=at),
            out_dir=out / "models" / f"fsdd-speaker-logmel-cnn-{key.replace('@', '-')}", progress=False,
            log=lambda *_: None)
        row = {"clean_test": evaluate(model, test)["accuracy"], "seconds": round(time.time() - t0, 1)}
        if sg:
            front, back = model.split(at)
            g = torch.Generator().manual_seed(10_000 + seed)
            with torch.no_grad():
                z = front(test.waves)
                row["noisy_test"] = accuracy(back(z + sg * torch.randn(z.shape, generator=g)), test.labels)
        res[key] = row
        print(f"  fsdd speakers, logmel-cnn {key}: {row}", flush=True)
    (out / "fsdd_speakers.json").write_text(json.dumps(res, indent=2) + "\n")
    return 0


def md_table(header: list[str], rows: list[list]) -> str:
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=sorted(MODES), default="quick")
    ap.add_argument("--data", default=f"librispeech:{ROOT.parent / 'shared' / 'data' / 'librispeech-10spk'}")
    ap.add_argument("--out", default=str(ROOT / "runs" / "smoothing"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-attack", action="store_true")
    ap.add_argument("--skip-logmel", action="store_true", help="reuse logmel.json of an earlier run, if any")
    ap.add_argument("--fsdd", metavar="SPEC", nargs="?", const=f"fsdd:{ROOT.parent / 'shared' / 'data' / 'fsdd'}?label=speaker",
                    help="instead of the LibriSpeech study: train logmel-cnn on FSDD's 6 speakers without and with "
                         "noise augmentation (sigma 0.1 at each representation) and report natural accuracy")
    ap.add_argument("--fsdd-epochs", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = MODES[args.mode]
    out = Path(args.out) / args.mode
    out.mkdir(parents=True, exist_ok=True)
    if args.fsdd:
        return fsdd_speakers(args.fsdd, args.fsdd_epochs, out, args.seed)
    t_start = time.time()
    results: dict = {"mode": args.mode, "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
                     "alpha": 0.001, "segment_samples": SEGMENT}

    # --- data and dataset statistics -------------------------------------------------------------
    xtr, ytr, classes, _ = segments(args.data, "train")
    xte, yte, _, test_paths = segments(args.data, "test")
    print(f"segments: train {len(xtr)}, test {len(xte)}, {len(classes)} speakers", flush=True)
    results["segments"] = {"train": len(xtr), "test": len(xte), "classes": classes}
    model = ResemblyzerSpeaker(len(classes), input_length=SEGMENT).eval().freeze_encoder()
    results["stats"] = representation_stats(model, xtr)

    # --- base model: clean head, and heads trained on noise at each representation and sigma ---------
    emb_cache = out / "embeddings-clean.pt"
    if emb_cache.exists():
        etr, ete = torch.load(emb_cache, weights_only=True)
    else:
        etr, ete = embed(model, xtr), embed(model, xte)
        torch.save((etr, ete), emb_cache)
    fit_head(model, etr, ytr, seed=args.seed)
    with torch.no_grad():
        clean_acc = accuracy(model.head(ete), yte)
    clean_head = {k: v.clone() for k, v in model.head.state_dict().items()}
    save_checkpoint(model, out / "models" / "resemblyzer-speaker", {"classes": classes, "data": args.data,
                                                                    "segment_samples": SEGMENT})
    heads_cache = out / "heads.pt"
    if heads_cache.exists():   # a rerun reuses the trained heads and their accuracies
        heads, results["natural"] = torch.load(heads_cache, weights_only=True)["heads"], \
            json.loads((out / "natural.json").read_text())
    else:
        results["natural"] = {"no_augmentation": clean_acc, "augmented": {}, "noisy_test_of_clean_model": {}}
        heads = {"clean": {}, "matched": {}}
        print(f"resemblyzer-speaker natural accuracy (clean head): {clean_acc:.3f}", flush=True)
        for at in REPS:
            for sigma in SIGMAS:
                key = f"{at}@{sigma:g}"
                noisy_tr = torch.cat([embed(model, xtr, at, sigma, seed=args.seed + d) for d in range(cfg["aug_draws"])])
                fit_head(model, noisy_tr, ytr.repeat(cfg["aug_draws"]), seed=args.seed)
                with torch.no_grad():
                    aug_clean = accuracy(model.head(ete), yte)
                    aug_noisy = accuracy(model.head(embed(model, xte, at, sigma, seed=10_000 + args.seed)), yte)
                    heads["matched"][key] = {k: v.clone() for k, v in model.head.state_dict().items()}
                    heads["clean"][key] = clean_head
                    model.head.load_state_dict(clean_head)
                    base_noisy = accuracy(model.head(embed(model, xte, at, sigma, seed=10_000 + args.seed)), yte)
                results["natural"]["augmented"][key] = {"clean_test": aug_clean, "noisy_test": aug_noisy}
                results["natural"]["noisy_test_of_clean_model"][key] = base_noisy
                print(f"  head trained with noise {key}: clean test {aug_clean:.3f}, noisy test {aug_noisy:.3f} "
                      f"(clean head on noisy test {base_noisy:.3f})", flush=True)
        model.head.load_state_dict(clean_head)
        torch.save({"heads": heads}, heads_cache)
        (out / "natural.json").write_text(json.dumps(results["natural"], indent=2) + "\n")

    # --- certification: the unaugmented head (as the study) and the head trained at the same noise --
    pts = pick(yte, cfg["per_speaker"], args.seed)
    results["certify"] = {"points": len(pts), "n0": cfg["n0"], "n": cfg["n"], "tables": {}, "seconds": {}}
    for variant in cfg["heads"]:
        for at in REPS:
            table = {}
            for sigma in SIGMAS:
                key = f"{at}@{sigma:g}"
                model.head.load_state_dict(heads[variant][key])
                t0 = time.time()
                rows = certify_dataset(Smooth(model, len(classes), sigma, at=at), xte[pts], yte[pts],
                                       out / "certify" / f"resemblyzer-{variant}-head" / results_name(at, sigma, cfg["n"]),
                                       n0=cfg["n0"], n=cfg["n"], alpha=0.001, batch_size=cfg["batch"], seed=args.seed,
                                       items=[{"path": test_paths[i]} for i in pts.tolist()])
                s_ = summarize(rows, (0.0,) + TABLE_RADII)
                table[f"{sigma:g}"] = s_
                results["certify"]["seconds"][f"{variant}:{key}"] = round(sum(r["time_s"] for r in rows), 2)
                print(f"  certify {variant} head, {key}: "
                      + " ".join(f"{v:.2f}" for v in s_["certified_accuracy"].values())
                      + f" [{time.time() - t0:.0f} s]", flush=True)
            results["certify"]["tables"][f"{variant}:{at}"] = table
    model.head.load_state_dict(clean_head)
    total_cert = sum(results["certify"]["seconds"].values())
    samples = len(pts) * (cfg["n0"] + cfg["n"]) * len(REPS) * len(SIGMAS) * len(cfg["heads"])
    results["certify"]["noisy_passes_per_s"] = samples / max(total_cert, 1e-9)

    # --- empirical robustness: PGD-l2 at the waveform, base vs smoothed (EOT) --------------------
    if not args.skip_attack:
        from audioadv.attacks import pgd
        apts = pick(yte, 1, args.seed + 1)[:cfg["attack_points"]]
        xa, ya = xte[apts], yte[apts]
        att = {}
        with torch.no_grad():
            base_ok = model(xa).argmax(1) == ya
        for eps in cfg["attack_eps"]:
            adv = pgd(model, xa, ya, eps=eps, norm="l2", steps=cfg["attack_steps"], seed=args.seed)
            with torch.no_grad():
                fooled = (model(adv).argmax(1) != ya) & base_ok
            att[f"base@eps{eps:g}"] = {"eps": eps, "clean_correct": int(base_ok.sum()), "success": int(fooled.sum()),
                                      "points": len(apts)}
            print(f"  PGD-l2 eps={eps:g} vs base: {int(fooled.sum())}/{int(base_ok.sum())} fooled", flush=True)
        variant = cfg["heads"][-1]
        results["attack_head"] = variant
        for at, sigma in cfg["attack_configs"]:
            model.head.load_state_dict(heads[variant][f"{at}@{sigma:g}"])
            smooth = Smooth(model, len(classes), sigma, at=at)
            clean_pred = [smooth.predict(x, cfg["predict_n"], 0.001, cfg["batch"], seed=args.seed) for x in xa]
            surrogate = NoisySoftmax(smooth, samples=cfg["eot"], seed=args.seed)
            for eps in cfg["attack_eps"]:
                adv = pgd(surrogate, xa, ya, eps=eps, norm="l2", steps=cfg["attack_steps"], seed=args.seed)
                adv_pred = [smooth.predict(x, cfg["predict_n"], 0.001, cfg["batch"], seed=args.seed + 1) for x in adv]
                ok = [c == int(y) for c, y in zip(clean_pred, ya)]
                wrong = sum(o and a != int(y) and a != Smooth.ABSTAIN for o, a, y in zip(ok, adv_pred, ya))
                abstain = sum(o and a == Smooth.ABSTAIN for o, a in zip(ok, adv_pred))
                front = smooth.front
                with torch.no_grad():   # how far the waveform attack moved the smoothed representation
                    rep_l2 = (front(adv) - front(xa)).flatten(1).norm(dim=1).mean().item()
                att[f"{at}@{sigma:g}@eps{eps:g}"] = {"at": at, "sigma": sigma, "eps": eps, "clean_correct": sum(ok),
                                                     "success": wrong, "abstain": abstain, "points": len(apts),
                                                     "representation_l2": rep_l2}
                print(f"  PGD-l2+EOT eps={eps:g} vs smoothed {at} sigma={sigma:g}: {wrong}/{sum(ok)} fooled, "
                      f"{abstain} abstain, l2 at the {at} {rep_l2:.3f}", flush=True)
        model.head.load_state_dict(clean_head)
        results["attack"] = att

    if cfg["logmel_epochs"] and not args.skip_logmel:
        results["logmel"] = train_logmel(xtr, ytr, xte, yte, classes, cfg["logmel_epochs"], out, args.seed,
                                         cert={"points": pts, "n0": cfg["n0"], "n": cfg["n"], "batch": cfg["batch"]})
        (out / "logmel.json").write_text(json.dumps(results["logmel"], indent=2) + "\n")
    elif (out / "logmel.json").exists():
        results["logmel"] = json.loads((out / "logmel.json").read_text())

    results["seconds"] = round(time.time() - t_start, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "report.md").write_text(report(results))
    print(report(results))
    return 0


def report(res: dict) -> str:
    st = res["settings"]
    parts = [f"# Randomized smoothing, 10-speaker LibriSpeech ({res['mode']} mode)", "",
             f"Segments: {res['segments']['train']} train / {res['segments']['test']} test of {res['segment_samples']} "
             f"samples. Base model: resemblyzer GE2E encoder + linear head. alpha = {res['alpha']}, "
             f"n0 = {st['n0']}, n = {st['n']}, {res['certify']['points']} test points. Wall time {res['seconds']:.0f} s.",
             "", "## Dataset statistics per representation (train segments)", "",
             md_table(["representation", "dim", "range", "1-99th pctl. range", "mean", "sd"],
                      [[k, int(v["dim"]), f"{v['min']:.4g}, {v['max']:.4g}", f"{v['p1']:.4g}, {v['p99']:.4g}",
                        f"{v['mean']:.4g}", f"{v['sd']:.4g}"] for k, v in res["stats"].items()]),
             "", "## Natural accuracy of base models (clean test segments)", "",
             f"No augmentation: {res['natural']['no_augmentation']:.3f}", ""]
    rows = []
    for at in REPS:
        aug = res["natural"]["augmented"]
        rows.append([at] + [f"{aug[f'{at}@{s:g}']['clean_test']:.2f} / {aug[f'{at}@{s:g}']['noisy_test']:.2f} / "
                            f"{res['natural']['noisy_test_of_clean_model'][f'{at}@{s:g}']:.2f}" for s in SIGMAS])
    parts += ["Head trained on noisy embeddings (noise at the representation): clean test / noisy test accuracy; "
              "third figure: the unaugmented head on the same noisy test.", "",
              md_table(["noise at"] + [f"sigma = {s:g}" for s in SIGMAS], rows), ""]
    mr = {s: max_radius(s, st["n"], res["alpha"]) for s in SIGMAS}
    titles = {"clean": "unaugmented head (as the study)", "matched": "head trained with the same noise (Cohen et al.)"}
    for variant in st["heads"]:
        for at in REPS:
            tab = res["certify"]["tables"][f"{variant}:{at}"]
            parts += [f"## Certified accuracy, noise at the {at}, {titles[variant]}", "",
                      md_table(["sigma (max radius)"] + [f"r = {r:g}" for r in TABLE_RADII],
                               [[f"{s:g} ({mr[s]:.3f})"] + [tab[f"{s:g}"]["certified_accuracy"][str(r)]
                                                            for r in TABLE_RADII] for s in SIGMAS]), ""]
    parts += [f"Certification throughput: {res['certify']['noisy_passes_per_s']:.0f} noisy forward passes/s "
              f"(single thread)."]
    if "attack" in res:
        parts += ["", "## Empirical robustness: PGD-l2 at the waveform (EOT against the smoothed classifier)", "",
                  md_table(["target", "waveform l2 eps", "clean correct", "fooled", "abstained", "l2 moved at the representation"],
                           [[k.split("@eps")[0], v["eps"], v["clean_correct"], v["success"], v.get("abstain", "-"),
                             f"{v['representation_l2']:.3f}" if "representation_l2" in v else "-"]
                            for k, v in res["attack"].items()]),
                  "", f"Smoothed classifiers use the {res.get('attack_head', 'clean')} head; success counts only "
                  "points the (smoothed) model classified correctly before the attack; PGD steps "
                  f"{st['attack_steps']}, EOT samples {st['eot']}, PREDICT with n = {st['predict_n']}."]
    if "logmel" in res:
        lm = res["logmel"]
        parts += ["", f"## logmel-cnn trained from scratch on the segments ({lm['epochs']} epochs)", "",
                  f"No augmentation: clean test accuracy {lm['no_augmentation']['clean_test']:.3f}", "",
                  "With augmentation (clean test / test under the training noise):", "",
                  md_table(["noise at"] + [f"sigma = {s:g}" for s in SIGMAS],
                           [[at] + [f"{lm[f'{at}@{s:g}']['clean_test']:.2f} / {lm[f'{at}@{s:g}']['noisy_test']:.2f}"
                                    for s in SIGMAS] for at in REPS]), "",
                  ]
        for at in REPS:
            parts += ["", f"logmel-cnn certified accuracy, noise at the {at}, model trained with the same noise:", "",
                      md_table(["sigma (max radius)"] + [f"r = {r:g}" for r in TABLE_RADII],
                               [[f"{s:g} ({mr[s]:.3f})"] + [lm[f"{at}@{s:g}"]["certify"]["certified_accuracy"][str(r)]
                                                            for r in TABLE_RADII] for s in SIGMAS if
                                "certify" in lm[f"{at}@{s:g}"]])]
        parts += ["",
                  "logmel-cnn representation statistics (its fbank is the log mel energies before normalisation):", "",
                  md_table(["representation", "dim", "range", "1-99th pctl. range", "mean", "sd"],
                           [[k, int(v["dim"]), f"{v['min']:.4g}, {v['max']:.4g}", f"{v['p1']:.4g}, {v['p99']:.4g}",
                             f"{v['mean']:.4g}", f"{v['sd']:.4g}"] for k, v in lm["stats"].items()])]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.exit(main())
