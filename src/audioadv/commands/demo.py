"""`audioadv demo [--out DIR]`: the whole pipeline in one command, offline, in minutes on 2 CPU cores.

Synthesises a small synth-commands set (eSpeak NG, test voices unseen in training), trains a
classifier, reports its clean test accuracy, attacks 20 correctly classified test clips with
untargeted l_inf PGD and writes a run folder:

    DIR/model/            model.safetensors + config.json (load with audioadv.models.load_checkpoint)
    DIR/wav/NN_word_clean.wav, NN_word_adv.wav
    DIR/attack.jsonl      one line per attacked clip (prediction, SNR, dB_x, ...)
    DIR/summary.json      clean accuracy, success rate, mean SNR, mean dB_x, timings

A rerun with the same settings reuses the trained model in DIR/model.
"""
from __future__ import annotations

import json
import time
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("demo", help="synthesise data, train, attack with PGD, write a run folder (offline)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--model", default="logmel-cnn", help="zoo architecture to train (default logmel-cnn)")
    p.add_argument("--per-word", type=int, default=100, help="synth-commands utterances per word (all splits)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--n-attack", type=int, default=20, help="test clips to attack")
    p.add_argument("--eps", type=float, default=0.002, help="PGD l_inf budget (waveform in [-1, 1])")
    p.add_argument("--steps", type=int, default=50, help="PGD iterations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.set_defaults(func=run_demo)


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def run_demo(args) -> int:
    import torch

    from .. import models
    from ..attacks import pgd
    from ..data import load_dataset
    from ..io import save
    from ..signal import db_x, snr
    from ..train import TrainConfig, evaluate, fit

    t_start = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = f"synth-commands?per_word={args.per_word}&seed={args.seed}"
    timings = {}

    _say(f"1/4 synthesising {spec} with eSpeak NG (cached after the first run) ...")
    t = time.time()
    train = load_dataset(spec, "train")
    val = load_dataset(spec, "val")
    test = load_dataset(spec, "test")
    timings["data_s"] = round(time.time() - t, 1)
    _say(f"    train {len(train)}, val {len(val)}, test {len(test)} clips of {train.input_length} samples; "
         f"classes {', '.join(train.classes)}; test voices never heard in training")

    ck = out / "model"
    settings = {"data": spec, "model": args.model, "epochs": args.epochs, "seed": args.seed}
    model = None
    if (ck / "config.json").exists():
        try:
            model, cfg = models.load_checkpoint(ck)
            if cfg.get("demo") != settings:
                model = None
        except (ValueError, FileNotFoundError):
            model = None
    t = time.time()
    if model is not None:
        _say(f"2/4 reusing the model trained earlier in {ck}")
    else:
        _say(f"2/4 training {args.model} for {args.epochs} epochs ...")
        torch.manual_seed(args.seed)
        model = models.create(args.model, num_classes=train.num_classes, input_length=train.input_length,
                              sample_rate=train.sample_rate)
        fit(model, train, val, TrainConfig(epochs=args.epochs, seed=args.seed), out_dir=ck,
            config={"data": spec, "demo": settings}, log=lambda m: _say("    " + m))
    timings["train_s"] = round(time.time() - t, 1)
    model.eval()

    ev = evaluate(model, test)
    _say(f"3/4 clean test accuracy (unseen voices): {ev['accuracy']:.3f} ({round(ev['accuracy'] * ev['n'])}/{ev['n']})")

    preds = torch.tensor(ev["predictions"])
    correct = (preds == test.labels).nonzero().flatten()[: args.n_attack]
    if len(correct) == 0:
        raise ValueError("the model classifies no test clip correctly; nothing to attack")
    x, y = test.waves[correct], test.labels[correct]
    _say(f"4/4 attacking {len(x)} correctly classified test clips with untargeted PGD "
         f"(l_inf eps={args.eps}, {args.steps} steps) ...")
    t = time.time()
    adv = pgd(model, x, y, eps=args.eps, norm="linf", steps=args.steps, seed=args.seed)
    timings["attack_s"] = round(time.time() - t, 1)
    with torch.no_grad():
        adv_pred = model(adv).argmax(1)
    delta = adv - x
    snrs, dbxs = snr(x, delta), db_x(x, delta)
    fooled = adv_pred != y
    rows = []
    wav_dir = out / "wav"
    with open(out / "attack.jsonl", "w") as fh:
        for i in range(len(x)):
            word = test.classes[int(y[i])]
            stem = f"{i:02d}_{word}"
            save(wav_dir / f"{stem}_clean.wav", x[i], test.sample_rate)
            save(wav_dir / f"{stem}_adv.wav", adv[i], test.sample_rate, warn_clipping=False)
            row = {"index": i, "test_index": int(correct[i]), "label": word,
                   "adv_prediction": test.classes[int(adv_pred[i])], "success": bool(fooled[i]),
                   "snr_db": float(snrs[i]), "db_x": float(dbxs[i]), "linf": float(delta[i].abs().max()),
                   "voice": test.items[int(correct[i])].get("voice") if test.items else None,
                   "clean_wav": f"wav/{stem}_clean.wav", "adv_wav": f"wav/{stem}_adv.wav"}
            rows.append(row)
            fh.write(json.dumps(row) + "\n")
    summary = {
        "data": spec, "model": args.model, "checkpoint": str(ck), "train_clips": len(train), "test_clips": len(test),
        "clean_accuracy": ev["accuracy"], "attack": {"method": "pgd", "norm": "linf", "eps": args.eps,
                                                     "steps": args.steps, "targeted": False, "seed": args.seed},
        "attacked": len(x), "success_rate": float(fooled.float().mean()),
        "mean_snr_db": float(snrs.mean()), "mean_db_x": float(dbxs.mean()),
        "timings": {**timings, "total_s": round(time.time() - t_start, 1)},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _say(f"    success rate {summary['success_rate']:.2f}, mean SNR {summary['mean_snr_db']:.1f} dB, "
         f"mean dB_x {summary['mean_db_x']:.1f} dB")
    _say(f"done in {summary['timings']['total_s']:.0f} s; run folder {out} (summary.json, attack.jsonl, wav/, model/)")
    return 0
