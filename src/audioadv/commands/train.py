"""`audioadv train` (train a zoo model on a dataset spec) and `audioadv eval` (accuracy + confusion matrix)."""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("train", help="train a zoo classifier on a dataset",
                       description="Train a model from audioadv.models on a dataset spec; the best epoch "
                                   "(validation accuracy) is saved as model.safetensors + config.json in --out.")
    p.add_argument("--model", required=True, help="architecture name (see `audioadv models`: "
                                                  "cnn1d-rand, cnn1d-gamma, sincnet, sincnet-vgg, envnet-v2, spchcmd, logmel-cnn)")
    p.add_argument("--data", required=True, help="dataset spec, e.g. synth-commands or fsdd:PATH")
    p.add_argument("--out", required=True, help="run folder for the checkpoint and history.jsonl")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-length", type=int, help="samples per clip (crop/pad rule of audioadv.data; default: "
                                                    "the loader's)")
    p.add_argument("--sample-rate", type=int, help="default: the loader's")
    p.add_argument("--val-fraction", type=float,
                   help="fraction of train carved out (stratified, seeded) when the dataset has no validation split")
    p.add_argument("--noise-sigma", type=float, help="Gaussian noise std for noise augmentation")
    p.add_argument("--noise-at", choices=["waveform", "spectrogram", "fbank"],
                   help="representation the noise is added to (the model must support model.split(at))")
    p.add_argument("--gain-db", type=float, help="random gain augmentation range in dB (0: off)")
    p.add_argument("--shift-ms", type=float, help="random time-shift augmentation in ms (0: off)")
    p.epilog = "Options not given take audioadv.train.TrainConfig's defaults."
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--no-test", action="store_true", help="skip the final evaluation on the test split")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train)

    z = sub.add_parser("models", help="list the model zoo architectures")
    z.set_defaults(func=run_models)

    e = sub.add_parser("eval", help="accuracy and confusion matrix of a checkpoint on a dataset")
    e.add_argument("checkpoint", help="checkpoint folder (model.safetensors + config.json)")
    e.add_argument("--data", required=True, help="dataset spec, e.g. synth-commands or fsdd:PATH")
    e.add_argument("--split", default="test")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    e.set_defaults(func=run_eval)


def load_splits(spec: str, input_length: int, sample_rate: int, val_fraction: float, seed: int):
    """(train, validation) for a dataset spec: the dataset's own validation split when it has one,
    otherwise a stratified seeded fraction of train."""
    from ..data import load_dataset
    from ..train import split_validation

    kw = {k: v for k, v in (("input_length", input_length), ("sample_rate", sample_rate)) if v is not None}
    train = load_dataset(spec, "train", **kw)
    try:
        val = load_dataset(spec, "validation", **kw)
        if len(val) == 0:
            raise ValueError("empty")
    except (ValueError, FileNotFoundError, KeyError):
        train, val = split_validation(train, **({} if val_fraction is None else {"fraction": val_fraction}),
                                      seed=seed)
    return train, val


def run_train(args) -> int:
    import torch

    from .. import models
    from ..data import load_dataset
    from ..train import TrainConfig, evaluate, fit
    from ..models.checkpoint import read_config

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model not in models.names():
        raise ValueError(f"unknown model {args.model!r}; known: {', '.join(models.names())}")
    print(f"loading {args.data} ...", flush=True)
    train, val = load_splits(args.data, args.input_length, args.sample_rate, args.val_fraction, args.seed)
    print(f"train {len(train)} clips, validation {len(val)}, {train.num_classes} classes", flush=True)
    torch.manual_seed(args.seed)
    model = models.create(args.model, num_classes=train.num_classes, input_length=train.input_length,
                          sample_rate=train.sample_rate)
    given = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "weight_decay", "noise_sigma", "noise_at",
                                           "gain_db", "shift_ms") if getattr(args, k) is not None}
    cfg = TrainConfig(seed=args.seed, **given)
    summary = fit(model, train, val, cfg, out_dir=args.out, config={"data": args.data}, progress=not args.quiet)
    print(f"best epoch {summary['best']['epoch']}: validation accuracy {summary['best']['val_accuracy']:.4f} "
          f"({summary['train_seconds']:.0f} s); checkpoint in {args.out}")
    if not args.no_test:
        try:
            test = load_dataset(args.data, "test", input_length=train.input_length, sample_rate=train.sample_rate)
        except (ValueError, FileNotFoundError) as exc:
            print(f"no test split evaluated ({exc})")
            return 0
        ev = evaluate(model, test)
        print(f"test accuracy {ev['accuracy']:.4f} on {ev['n']} clips")
        from ..models import save_checkpoint
        cfg_json = read_config(args.out)
        cfg_json.setdefault("metrics", {}).update(test_accuracy=ev["accuracy"], test_examples=ev["n"])
        save_checkpoint(model, args.out, cfg_json)
    return 0


def run_models(args) -> int:
    from .. import models

    for name in models.names():
        m = models.create(name, num_classes=10, input_length=16000)
        n = sum(p.numel() for p in m.parameters())
        doc = (type(m).__doc__ or "").strip().splitlines()[0]
        print(f"{name:20s} {n:>9,} params  split at: {', '.join(m.representations()):30s} {doc}")
    return 0


def run_eval(args) -> int:
    from ..data import load_dataset
    from ..models import load
    from ..train import evaluate, format_confusion

    model, cfg = load(args.checkpoint)
    ds = load_dataset(args.data, args.split, input_length=model.input_length, sample_rate=model.sample_rate)
    classes = cfg.get("classes")
    if classes and list(ds.classes) != list(classes):
        raise ValueError(f"{args.checkpoint}: checkpoint classes {classes} differ from the dataset's {ds.classes}")
    ev = evaluate(model, ds, args.batch_size)
    if args.json:
        json.dump({"checkpoint": str(args.checkpoint), "data": args.data, "split": args.split, "arch": cfg["arch"],
                   "accuracy": ev["accuracy"], "loss": ev["loss"], "n": ev["n"], "classes": list(ds.classes),
                   "confusion": ev["confusion"]}, sys.stdout)
        print()
    else:
        import torch
        print(f"{cfg['arch']} on {args.data} [{args.split}]: accuracy {ev['accuracy']:.4f} "
              f"({round(ev['accuracy'] * ev['n'])}/{ev['n']})")
        print(format_confusion(torch.tensor(ev["confusion"]), list(ds.classes)))
    return 0
