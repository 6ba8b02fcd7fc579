"""`audioadv train-asr` and `audioadv eval-asr`: the character CTC speech recogniser.

    audioadv train-asr --data synth-phrases --out runs/asr
    audioadv train-asr --data librispeech:PATH --out runs/asr-libri
    audioadv eval-asr runs/asr --data synth-phrases --split test

The shipped `runs/asr` (59 min on one CPU core; notes/asr-train.md, results/asr_train.md):

    audioadv train-asr --data 'synth-phrases?n=4000' --data 'synth-phrases?source=open&n=9000' --minutes 47 --epochs 100 --out runs/asr-v2
    audioadv train-asr --init runs/asr-v2 --data 'synth-phrases?n=4000' --data 'synth-phrases?n=4000' --data 'synth-phrases?n=4000' --data 'synth-phrases?source=open&n=9000' --minutes 12 --lr 7e-4 --epochs 100 --out runs/asr

(repeating a --data spec oversamples it: the second stage sees the grammar three times).

The recogniser that meets issue 4's error-rate bars (`runs/asr-gpu`, test CER 0.0145 grammar / 0.083
open-unseen; 3.4 + 3.2 min on one H200; notes/asr-gpu.md) is the Makefile rule
`runs/asr-gpu/model.safetensors`: the same two stages on a GPU (`--device cuda`), with a 3-layer
BiGRU of 256 (`--hidden 256 --layers 3`), 192 s batches, 40,000 open sentences and `--reverb 0.3`.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("train-asr", help="train the character CTC speech recogniser",
                       description="Train audioadv.models.asr.CTCRecognizer on datasets with transcripts. "
                                   "Each --data spec contributes its train split; validation uses their val "
                                   "split (the test split for LibriSpeech folders). A repeated --data spec is "
                                   "oversampled. Defaults: 16 s batches, AdamW one-cycle at 2e-3, per-utterance "
                                   "log-mel normalisation; --minutes sets a wall-time schedule.")
    p.add_argument("--data", action="append", help="dataset spec; repeat to mix (default: synth-phrases "
                                                   "grammar and open-vocabulary sentences)")
    p.add_argument("--out", default="runs/asr")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-time budget: the one-cycle schedule follows the clock and training stops "
                        "when it runs out (--epochs is then only a cap)")
    p.add_argument("--stop-epoch", type=int, default=None,
                   help="stop after this epoch, keeping the learning-rate schedule of --epochs")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-seconds", type=float, default=16.0,
                   help="seconds of audio per batch (small batches = many optimiser steps; 16 s learns "
                        "several times faster per CPU second than 160 s)")
    p.add_argument("--eval-every", type=int, default=500, help="validate (and checkpoint the best) every N steps")
    p.add_argument("--feature-norm", choices=["utterance", "global"], default="utterance",
                   help="log-mel normalisation: per utterance and mel (default; gain/voice invariant) or "
                        "fixed training-set statistics only (the session-1 model)")
    p.add_argument("--reverb", type=float, default=0.0,
                   help="probability of an online synthetic room response per training utterance (RT60 0.1-0.6 s)")
    p.add_argument("--device", default="cpu", help="torch device to train on: cpu (default), cuda, cuda:1, auto")
    p.add_argument("--hidden", type=int, default=160)
    p.add_argument("--layers", type=int, default=2, help="bidirectional GRU layers")
    p.add_argument("--channels", type=int, default=192)
    p.add_argument("--n-mels", type=int, default=40)
    p.add_argument("--val-limit", type=int, default=300, help="validation utterances (an even share of every set)")
    p.add_argument("--init", help="start from this checkpoint folder (continue training; sizes from its config)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.set_defaults(func=run_train)

    e = sub.add_parser("eval-asr", help="character / word error rate of a speech recogniser checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("--data", action="append", help="dataset spec(s) (default: synth-phrases and open-unseen)")
    e.add_argument("--split", default="test")
    e.add_argument("--limit", type=int, default=None, help="first N utterances of each set")
    e.add_argument("--beam", type=int, default=0, help="beam width (0: greedy)")
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, auto")
    e.add_argument("--json", help="write the results (with hypotheses) to this file")
    e.set_defaults(func=run_eval)


def resolve_device(name: str):
    """`auto` -> cuda when available, else cpu; a cuda device asked for but absent is an error."""
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise SystemExit(f"--device: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: torch sees no CUDA device here (use cpu or auto)")
    return dev


def subset_error_rates(items: list[dict], refs: list[str], hyps: list[str]) -> dict:
    """CER / WER on the reverberant and the dry utterances, where the items record a room
    response (`rt60`, synthesised sets): where a recogniser's errors come from."""
    from ..metrics.text import cer, wer
    if not items or "rt60" not in items[0]:
        return {}
    out = {}
    for name, keep in (("reverberant", lambda it: bool(it.get("rt60"))), ("dry", lambda it: not it.get("rt60"))):
        idx = [i for i, it in enumerate(items) if keep(it)]
        if idx:
            r, h = [refs[i] for i in idx], [hyps[i] for i in idx]
            out[name] = {"n": len(idx), "cer": cer(r, h), "wer": wer(r, h)}
    return out


DEFAULT_TRAIN = ["synth-phrases?n=4000", "synth-phrases?source=open&n=9000"]
DEFAULT_EVAL = ["synth-phrases", "synth-phrases?source=open-unseen&n=2000"]


def run_train(args) -> int:
    import torch
    from ..asr_train import load_utterances, train_recognizer

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    specs = args.data or DEFAULT_TRAIN
    t0 = time.time()
    train = val = None
    for spec in specs:
        tr, va = load_utterances(spec, "train"), load_utterances(spec, "val")
        train = tr if train is None else train + tr
        val = va if val is None else val + va
        print(f"{spec}: {len(tr)} train, {len(va)} val utterances", flush=True)
    # validation: an even share of every set
    step = max(1, len(val) // args.val_limit)
    val = val.subset(list(range(0, len(val), step)))
    print(f"data ready in {time.time() - t0:.0f} s", flush=True)
    init = None
    if args.init:
        from ..models.asr import load_recognizer
        init = load_recognizer(args.init)
        print(f"starting from {args.init}", flush=True)
    model, summary = train_recognizer(
        train, val, args.out, epochs=args.epochs, minutes=args.minutes, lr=args.lr, model=init,
        batch_seconds=args.batch_seconds, seed=args.seed, val_limit=args.val_limit, stop_epoch=args.stop_epoch,
        eval_every=args.eval_every, reverb=args.reverb, device=device,
        model_kwargs=dict(hidden=args.hidden, channels=args.channels, n_mels=args.n_mels, layers=args.layers,
                          feature_norm=args.feature_norm))
    summary.update(command=shlex.join(["audioadv"] + sys.argv[1:]), data=specs, train_utterances=len(train),
                   threads=args.threads, init=args.init,
                   batch_seconds=args.batch_seconds, lr=args.lr, minutes=args.minutes, reverb=args.reverb,
                   gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                   feature_norm=model.config.get("feature_norm", "global"))
    Path(args.out, "train_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


def run_eval(args) -> int:
    import torch
    from ..asr_train import evaluate, load_utterances
    from ..models.asr import load_recognizer

    torch.set_num_threads(args.threads)
    model = load_recognizer(args.checkpoint).to(resolve_device(args.device))
    results = {}
    for spec in args.data or DEFAULT_EVAL:
        data = load_utterances(spec, args.split, limit=args.limit)
        t0 = time.time()
        res = evaluate(model, data, beam_width=args.beam)
        res["seconds"] = round(time.time() - t0, 1)
        res["references"] = [model.normalize_text(t) for t in data.texts]
        res["subsets"] = subset_error_rates(data.items, res["references"], res["hypotheses"])
        res.update(checkpoint=str(args.checkpoint), split=args.split,
                   decoding=f"beam {args.beam}" if args.beam > 1 else "greedy",
                   command=shlex.join(["audioadv"] + sys.argv[1:]))
        results[spec] = res
        print(f"{spec} [{args.split}, {res['n']} utterances, {'beam ' + str(args.beam) if args.beam > 1 else 'greedy'}]: "
              f"CER {res['cer']:.4f}  WER {res['wer']:.4f}", flush=True)
        for name, sub in res["subsets"].items():
            print(f"    {name}: {sub['n']} utterances, CER {sub['cer']:.4f}  WER {sub['wer']:.4f}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0
