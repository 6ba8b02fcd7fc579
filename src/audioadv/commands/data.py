"""Data sub-commands.

    audioadv data list                              loaders and their specs
    audioadv data info synth-commands --split test  size, classes, counts per class, voices
    audioadv data prepare synth-commands            generate a built-in set into the cache now
    audioadv say "turn on the lights" --voice en-gb-x-rp --variant f2 --out lights.wav
"""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="list, inspect and prepare datasets")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    ls = sub.add_parser("list", help="dataset loaders and the cache folder")
    ls.set_defaults(func=run_list)
    for name, helptext in (("info", "size, classes and counts of one split"),
                           ("prepare", "generate/load every split (fills the cache for built-in sets)")):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("spec", help="dataset spec, e.g. synth-commands, 'synth-phrases?n=500', fsdd:PATH")
        q.add_argument("--split", default="train" if name == "info" else None,
                       help="split (info: default train; prepare: default train, val and test)")
        q.add_argument("--input-length", type=int, default=None, help="samples per clip (loader default if omitted)")
        q.add_argument("--sample-rate", type=int, default=16000)
        q.set_defaults(func=run_info if name == "info" else run_prepare)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    s = subparsers.add_parser("say", help="synthesise text with eSpeak NG to a WAV file")
    s.add_argument("text")
    s.add_argument("--out", required=True, help="output WAV path")
    s.add_argument("--voice", help="eSpeak language voice (en-us, en, en-gb-x-rp, en-029, ...)")
    s.add_argument("--variant", default=None, help="variant file from voices/!v (m1-m8, f1-f5, croak, whisper, ...)")
    s.add_argument("--rate", type=int, help="words per minute")
    s.add_argument("--pitch", type=int, help="0-100")
    s.add_argument("--snr-db", type=float, default=None, help="add noise at this SNR")
    s.add_argument("--rt60", type=float, default=None, help="add a synthetic room response with this RT60 (s)")
    s.add_argument("--seed", type=int)
    s.add_argument("--sample-rate", type=int)
    s.epilog = "Options not given take audioadv.data.synth.synthesize's defaults."
    s.set_defaults(func=run_say)


def _kwargs(args) -> dict:
    kw = {"sample_rate": args.sample_rate}
    if args.input_length is not None:
        kw["input_length"] = args.input_length
    return kw


def run_list(args) -> int:
    from ..data import loader_names
    from ..data.cache import cache_dir
    from ..data.phrases import text_sources

    print("datasets:", ", ".join(loader_names()))
    print("synth-phrases text sources:", ", ".join(text_sources()), "(+ open, open-unseen with the asr extra)")
    print("cache:", cache_dir())
    return 0


def run_info(args) -> int:
    import collections

    import torch

    from ..data import load_dataset

    ds = load_dataset(args.spec, args.split, **_kwargs(args))
    counts = torch.bincount(ds.labels, minlength=ds.num_classes).tolist()
    print(f"{ds.name}: {len(ds)} clips x {ds.input_length} samples at {ds.sample_rate} Hz, {ds.num_classes} classes")
    for c, n in zip(ds.classes, counts):
        print(f"  {c:>16s} {n}")
    if ds.items and "voice" in ds.items[0]:
        voices = collections.Counter((it["voice"], it["variant"]) for it in ds.items)
        print(f"  voices: {len(voices)} (language voice, variant) combinations")
    if ds.items and "text" in ds.items[0]:
        print("  e.g.:", " | ".join(it["text"] for it in ds.items[:3]))
    return 0


def run_prepare(args) -> int:
    from ..data import load_dataset

    splits = [args.split] if args.split else ["train", "val", "test"]
    for split in splits:
        ds = load_dataset(args.spec, split, **_kwargs(args))
        print(f"{ds.name}: {len(ds)} clips x {ds.input_length} samples")
    return 0


def run_say(args) -> int:
    from ..data.synth import synthesize
    from ..io import save

    given = {k: getattr(args, k) for k in ("voice", "variant", "rate", "pitch", "snr_db", "rt60", "seed", "sample_rate")
             if getattr(args, k) is not None}
    u = synthesize(args.text, **given)
    save(args.out, u.wav, u.sample_rate)
    print(f"{args.out}: {u.duration:.2f} s, {len(u.phonemes)} phonemes, words: "
          + " ".join(f"{w}@{s:.2f}" for w, s, _ in u.words))
    return 0
