"""Does the video matter? Audio-only, video-only and fused `AVRecognizer`s, the same recipe, test CER by SNR.

Trains the three recognisers on `--data` (`fit_av_recognizer`, `--epochs`, seed 0; clean training voices, white
noise at -5..30 dB SNR on half the clips), saves each under `--out/MODALITIES` (a rerun reuses a saved one, so
an interrupted run resumes), and measures the character error rate on the test split (unseen voices), clean
and with white noise at each `--snr` added to the audio (seeded). Rows go to the results store in `--out`;
`audioadv table --out` prints them again and `make results` puts them in docs/msae.md.

    python benchmarks/av_recognizer.py [--epochs 25] [--data 'synth-av-phrases?n=600'] [--out runs/av-asr]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from audioadv.allocator import keep_freed_memory  # noqa: E402
from audioadv.data import load_dataset  # noqa: E402
from audioadv.models.av import (AVRecognizer, cer_av, fit_av_recognizer, load_av_recognizer,  # noqa: E402
                                save_av_recognizer)
from bench_store import record  # noqa: E402

MODALITIES = ("audio", "video", "audio,video")
TABLE = {"title": "Audio-visual recogniser: test CER by audio SNR (white noise), one recipe for every branch",
         "kind": "benchmark", "where": {"measure": "av-recognizer"}, "rows": ["modalities"],
         "values": ["cer_clean", "cer_at_10", "cer_at_0", "cer_at_-5", "epochs", "train_s"],
         "note": "Character error rate on the test split (unseen voices), greedy decoding; cer_at_S: with white noise "
                 "at S dB SNR added to the audio only. The video-only model reads the rendered mouth alone."}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="synth-av-phrases?n=600")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--snr", type=float, nargs="+", default=[10.0, 0.0, -5.0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "runs" / "av-asr"))
    args = ap.parse_args(argv)
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    train, val, test = (load_dataset(args.data, s) for s in ("train", "val", "test"))
    rows = []
    for mods in MODALITIES:
        folder = Path(args.out) / mods.replace(",", "+")
        cfg_file = folder / "config.json"
        settings = {"data": args.data, "epochs": args.epochs, "channels": args.channels, "hidden": args.hidden}
        if cfg_file.is_file() and json.loads(cfg_file.read_text()).get("recipe") == settings:
            net, train_s = load_av_recognizer(folder), json.loads(cfg_file.read_text())["train_s"]
            print(f"{mods}: trained earlier ({folder})", flush=True)
        else:
            torch.manual_seed(0)
            net = AVRecognizer(modalities=mods, channels=args.channels, hidden=args.hidden)
            t0 = time.time()
            fit_av_recognizer(net, train, val, epochs=args.epochs, seed=0,
                              log=lambda m, mods=mods: print(f"{mods}: {m}", flush=True))
            train_s = round(time.time() - t0, 1)
            save_av_recognizer(net, folder, {"recipe": settings, "train_s": train_s})
        row = {"modalities": mods, "epochs": args.epochs, "train_s": train_s, "cer_clean": cer_av(net, test),
               **{f"cer_at_{snr:g}": cer_av(net, test, snr_db=snr) for snr in args.snr}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(record(args.out, "av-recognizer", "av-recognizer", {"data": args.data, "threads": args.threads}, rows,
                 ("modalities",), TABLE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
