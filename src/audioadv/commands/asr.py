"""`audioadv train-asr` and `audioadv eval-asr`: the character CTC speech recogniser.

    audioadv train-asr --data synth-phrases --out runs/asr
    audioadv train-asr --data librispeech:PATH --out runs/asr-libri
    audioadv eval-asr runs/asr --data synth-phrases --split test
    audioadv train-asr --av --data 'synth-av-phrases?n=600' --epochs 20 --out runs/av-asr
    audioadv eval-asr runs/av-asr --snr 0

Training stops by epochs or optimiser steps (`--steps`; the one-cycle schedule then runs over
them), never by the clock. A repeated --data spec is oversampled (the second stage of the
shipped recipe sees the grammar three times):

    audioadv train-asr --data 'synth-phrases?n=4000' --data 'synth-phrases?source=open&n=9000' --steps 14144 --epochs 100 --out runs/asr-v2
    audioadv train-asr --init runs/asr-v2 --data 'synth-phrases?n=4000' --data 'synth-phrases?n=4000' --data 'synth-phrases?n=4000' --data 'synth-phrases?source=open&n=9000' --steps 3552 --lr 7e-4 --epochs 100 --out runs/asr

Every option not given takes the default of `asr_train.train_recognizer` / `CTCRecognizer` /
`asr_train.evaluate`.
"""
from __future__ import annotations

import inspect
import json
import shlex
import sys
import time
from pathlib import Path

# train-asr options that are train_recognizer's keyword arguments, and those of CTCRecognizer
TRAIN_OPTIONS = ("epochs", "max_steps", "stop_epoch", "lr", "batch_seconds", "eval_every", "reverb", "val_limit",
                 "seed")
MODEL_OPTIONS = ("hidden", "layers", "channels", "n_mels", "feature_norm")


def resolve_device(name: str):
    """`auto` -> cuda when available, else cpu; a cuda device asked for but absent is an error (ValueError)."""
    from ..experiments.jobs import resolve_device as resolve
    return resolve(name)


def library_default(fn, name: str):
    return inspect.signature(fn).parameters[name].default


def register(sub) -> None:
    p = sub.add_parser("train-asr", help="train the character CTC speech recogniser",
                       description="Train audioadv.models.asr.CTCRecognizer on datasets with transcripts. "
                                   "Each --data spec contributes its train split; validation uses their val "
                                   "split (the test split for LibriSpeech folders). A repeated --data spec is "
                                   "oversampled. Every option not given is train_recognizer's / CTCRecognizer's "
                                   "default (AdamW, one-cycle learning rate over the epochs or --steps).")
    p.add_argument("--data", action="append", help="dataset spec; repeat to mix (default: synth-phrases "
                                                   "grammar and open-vocabulary sentences)")
    p.add_argument("--out", default="runs/asr")
    p.add_argument("--epochs", type=int, help="epochs (with --steps only a cap)")
    p.add_argument("--steps", dest="max_steps", type=int, metavar="N",
                   help="optimiser steps: the one-cycle schedule runs over them and training stops after them")
    p.add_argument("--stop-epoch", type=int, help="stop after this epoch, keeping the learning-rate schedule")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--batch-seconds", type=float,
                   help="seconds of audio per batch (small batches = many optimiser steps per CPU second)")
    p.add_argument("--eval-every", type=int, help="validate (and checkpoint the best) every N steps")
    p.add_argument("--feature-norm", choices=["utterance", "global"],
                   help="log-mel normalisation: per utterance and mel (gain/voice invariant) or fixed "
                        "training-set statistics only")
    p.add_argument("--reverb", type=float,
                   help="probability of an online synthetic room response per training utterance")
    p.add_argument("--device", help="torch device to train on: cpu, cuda, cuda:1, auto (default: cpu)")
    p.add_argument("--hidden", type=int, help="GRU width")
    p.add_argument("--layers", type=int, help="bidirectional GRU layers")
    p.add_argument("--channels", type=int, help="convolution channels")
    p.add_argument("--n-mels", type=int, help="log-mel bands")
    p.add_argument("--val-limit", type=int, help="validation utterances (an even share of every set)")
    p.add_argument("--init", help="start from this checkpoint folder (continue training; sizes from its config)")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--av", action="store_true",
                   help="train the audio-visual recogniser models.av.AVRecognizer (fit_av_recognizer, default data "
                        "synth-av-phrases); prints and saves its test CER, clean and at 0 dB SNR")
    p.add_argument("--modalities",
                   help="with --av: the branches the recogniser uses: audio, video or audio,video (default: both)")
    p.set_defaults(func=run_train)

    e = sub.add_parser("eval-asr", help="character / word error rate of a speech recogniser checkpoint")
    e.add_argument("checkpoint", help="recogniser folder (audioadv's or a Hugging Face Wav2Vec2ForCTC folder)")
    e.add_argument("--data", action="append", help="dataset spec(s) (default: synth-phrases and open-unseen)")
    e.add_argument("--split", default="test")
    e.add_argument("--limit", type=int, default=None, help="first N utterances of each set")
    e.add_argument("--beam", type=int, help="beam width (0 or 1: greedy; default: evaluate's)")
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, auto")
    e.add_argument("--json", help="write the results (with hypotheses) to this file")
    e.add_argument("--snr", type=float, action="append", metavar="DB",
                   help="audio-visual recognisers: also the CER with white noise at this SNR added to the audio "
                        "(repeatable)")
    e.set_defaults(func=run_eval)


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


def load_recognizer_checkpoint(path):
    """A speech recogniser from any checkpoint folder `models.load` reads, with a clear error otherwise."""
    from ..models import load
    model, cfg = load(path)
    if not hasattr(model, "frame_logits"):
        raise ValueError(f"{path}: a {cfg['kind']} checkpoint, not a speech recogniser")
    return model, cfg


def run_train(args) -> int:
    import torch
    from ..asr_train import train_recognizer
    from ..data.utterances import load_utterances

    torch.set_num_threads(args.threads)
    if args.av:
        return run_train_av(args)
    if args.modalities is not None:
        raise ValueError("train-asr --modalities: only with --av (the audio-visual recogniser)")
    train_kw = {k: getattr(args, k) for k in TRAIN_OPTIONS if getattr(args, k) is not None}
    model_kw = {k: getattr(args, k) for k in MODEL_OPTIONS if getattr(args, k) is not None}
    if args.device is not None:
        train_kw["device"] = resolve_device(args.device)
    device = torch.device(train_kw.get("device", library_default(train_recognizer, "device")))
    specs = args.data or DEFAULT_TRAIN
    t0 = time.time()
    train = val = None
    for spec in specs:
        tr, va = load_utterances(spec, "train"), load_utterances(spec, "val")
        train = tr if train is None else train + tr
        val = va if val is None else val + va
        print(f"{spec}: {len(tr)} train, {len(va)} val utterances", flush=True)
    # validation: an even share of every set
    step = max(1, len(val) // train_kw.get("val_limit", library_default(train_recognizer, "val_limit")))
    val = val.subset(list(range(0, len(val), step)))
    print(f"data ready in {time.time() - t0:.0f} s", flush=True)
    init = None
    if args.init:
        if model_kw:
            raise ValueError(f"--init takes the recogniser's sizes from {args.init}; drop "
                             + ", ".join("--" + k.replace("_", "-") for k in model_kw))
        init, _ = load_recognizer_checkpoint(args.init)
        print(f"starting from {args.init}", flush=True)
    model, summary = train_recognizer(train, val, args.out, model=init, model_kwargs=model_kw, **train_kw)
    summary.update(command=shlex.join(["audioadv"] + sys.argv[1:]), data=specs, train_utterances=len(train),
                   threads=args.threads, init=args.init, settings={k: str(v) for k, v in train_kw.items()},
                   gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                   feature_norm=model.config.get("feature_norm"))
    Path(args.out, "train_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0


# train-asr options that fit_av_recognizer has no counterpart for
NOT_AV = ("max_steps", "stop_epoch", "batch_seconds", "eval_every", "reverb", "val_limit", "init")
AV_DATA = "synth-av-phrases"


def run_train_av(args) -> int:
    import torch
    from ..data import load_dataset
    from ..models.av import AVRecognizer, cer_av, fit_av_recognizer, save_av_recognizer

    given = [k for k in NOT_AV if getattr(args, k) is not None]
    if given:
        flags = ", ".join("--" + {"max_steps": "steps"}.get(k, k).replace("_", "-") for k in given)
        raise ValueError(f"train-asr --av: {flags} not available for the audio-visual recogniser "
                         "(it trains for --epochs, validating after each)")
    specs = args.data or [AV_DATA]
    if len(specs) != 1:
        raise ValueError(f"train-asr --av takes one --data spec, got {len(specs)}")
    spec = specs[0]
    train, val, test = (load_dataset(spec, split) for split in ("train", "val", "test"))
    if not hasattr(train, "video"):
        raise ValueError(f"train-asr --av: {spec} has no video; use an audio-visual set such as {AV_DATA}")
    print(f"{spec}: {len(train)} train, {len(val)} val, {len(test)} test clips", flush=True)
    fit_kw = {k: getattr(args, k) for k in ("epochs", "lr", "seed") if getattr(args, k) is not None}
    if args.device is not None:
        fit_kw["device"] = resolve_device(args.device)
    model_kw = {k: getattr(args, k) for k in MODEL_OPTIONS if getattr(args, k) is not None}
    torch.manual_seed(fit_kw.get("seed", library_default(fit_av_recognizer, "seed")))
    if args.modalities is not None:
        model_kw["modalities"] = args.modalities
    model = AVRecognizer(**model_kw)
    t0 = time.time()
    fit = fit_av_recognizer(model, train, val, **fit_kw)
    summary = {"val_cer": fit["best_val_cer"], "test_cer": cer_av(model, test), "test_cer_0db": cer_av(model, test, snr_db=0.0),
               "seconds": round(time.time() - t0, 1), "data": spec, "modalities": ",".join(model.modalities),
               "command": shlex.join(["audioadv"] + sys.argv[1:]), "history": fit["history"]}
    save_av_recognizer(model, args.out, {k: summary[k] for k in ("val_cer", "test_cer", "test_cer_0db", "data")})
    Path(args.out, "train_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"test CER {summary['test_cer']:.4f} clean, {summary['test_cer_0db']:.4f} at 0 dB SNR; saved to {args.out}")
    return 0


def run_eval_av(args, model) -> int:
    import torch
    from ..data import load_dataset
    from ..models.av import cer_av

    results = {}
    for spec in args.data or [AV_DATA]:
        data = load_dataset(spec, args.split)
        if args.limit is not None:
            data = data.subset(torch.arange(min(args.limit, len(data))))
        res = {"n": len(data), "cer": cer_av(model, data)}
        res.update({f"cer_{snr:g}db": cer_av(model, data, snr_db=snr) for snr in args.snr or []})
        results[spec] = res
        print(f"{spec} [{args.split}, {res['n']} clips, greedy]: "
              + ", ".join(f"{k.replace('_', ' ').replace('db', ' dB SNR')} {v:.4f}" for k, v in res.items() if k != "n"),
              flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def run_eval(args) -> int:
    import torch
    from ..asr_train import evaluate
    from ..data.utterances import load_utterances

    torch.set_num_threads(args.threads)
    model, cfg = load_recognizer_checkpoint(args.checkpoint)
    model = model.to(resolve_device(args.device))
    if cfg["kind"] == "av-recognizer":
        if args.beam is not None:
            raise ValueError("eval-asr --beam: audio-visual recognisers decode greedily")
        return run_eval_av(args, model)
    if args.snr:
        raise ValueError("eval-asr --snr: only for audio-visual recognisers")
    eval_kw = {} if args.beam is None else {"beam_width": args.beam}
    beam = eval_kw.get("beam_width", library_default(evaluate, "beam_width"))
    results = {}
    for spec in args.data or DEFAULT_EVAL:
        data = load_utterances(spec, args.split, limit=args.limit)
        t0 = time.time()
        res = evaluate(model, data, **eval_kw)
        res["seconds"] = round(time.time() - t0, 1)
        res["references"] = [model.normalize_text(t) for t in data.texts]
        res["subsets"] = subset_error_rates(data.items, res["references"], res["hypotheses"])
        res.update(checkpoint=str(args.checkpoint), split=args.split,
                   decoding=f"beam {beam}" if beam > 1 else "greedy",
                   command=shlex.join(["audioadv"] + sys.argv[1:]))
        results[spec] = res
        print(f"{spec} [{args.split}, {res['n']} utterances, {'beam ' + str(beam) if beam > 1 else 'greedy'}]: "
              f"CER {res['cer']:.4f}  WER {res['wer']:.4f}", flush=True)
        for name, sub in res["subsets"].items():
            print(f"    {name}: {sub['n']} utterances, CER {sub['cer']:.4f}  WER {sub['wer']:.4f}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0
