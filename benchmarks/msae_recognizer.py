"""MSAE on the audio-visual speech recogniser: each audio baseline with CW-l2 on the video, dense and masked.

The paper's setting: a targeted sentence attack on a fused audio-visual CTC recogniser, the audio attacked with
CW, IPC or Imperceptible (`msae`'s `base`), the video with CW-l2, each pair dense (`sparsity` 1, the baseline
run with the same step budget) and with MSAE's masks at each `--sparsities` fraction of positions per modality.
Model: the fused recogniser `benchmarks/av_recognizer.py` saves (`--model`). Clips: the first `--n` test clips
(unseen voices) it transcribes correctly, each targeted at another phrase of the test set drawn with `--seed`
(no longer than its own transcript). `msae`'s defaults otherwise. Rows (success rate, CER of the decoded text to
the target, realised sparsity, audio SNR, video PSNR, frames touched, l2 per modality, seconds per clip) go to
the results store in `--out`; `make results` puts the table in docs/msae.md.

    python benchmarks/msae_recognizer.py [--model runs/av-asr/audio+video] [--n 8] [--out runs/msae-asr]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from audioadv.allocator import keep_freed_memory  # noqa: E402
from audioadv.attacks import msae  # noqa: E402
from audioadv.attacks.msae_baselines import summarise  # noqa: E402
from audioadv.data import load_dataset  # noqa: E402
from audioadv.metrics.text import cer  # noqa: E402
from audioadv.models import load  # noqa: E402
from audioadv.models.asr import transcribe  # noqa: E402
from bench_store import record  # noqa: E402

BASES = ("cw", "ipc", "imperceptible")
TABLE = {"title": "MSAE on the audio-visual recogniser: targeted phrases, each audio baseline with CW-l2 on the video",
         "kind": "benchmark", "where": {"measure": "msae-recognizer"}, "rows": ["base", "sparsity"],
         "values": ["clips", "success", "cer_target", "snr_db", "psnr_db", "frames_touched", "l2_audio", "l2_video",
                    "realised_audio", "realised_video", "seconds"],
         "note": "sparsity 1: the dense baseline (the same step budget); others: MSAE's masks, that fraction of "
                 "positions per modality. cer_target: CER of the decoded text to the target (all clips); SNR, PSNR, "
                 "frames touched and l2: means over the successful clips; seconds: wall time per clip, one thread."}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "runs" / "av-asr" / "audio+video"))
    ap.add_argument("--data", default="synth-av-phrases?n=600")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bases", nargs="+", default=list(BASES), choices=BASES)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[1.0, 0.1, 0.3, 0.5])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "runs" / "msae-asr"))
    args = ap.parse_args(argv)
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    model, cfg = load(args.model, frozen=True)
    if cfg["kind"] != "av-recognizer":
        raise SystemExit(f"{args.model}: a {cfg['kind']} checkpoint, not an audio-visual recogniser")
    test = load_dataset(args.data, "test")
    lens = torch.tensor([int(it.get("num_samples", test.input_length)) for it in test.items])
    refs = [model.normalize_text(it["text"]) for it in test.items]
    everything = {"audio": test.waves, "video": test.video}
    right = [i for i, h in enumerate(transcribe(model, everything, lens)) if h == refs[i]][:args.n]
    rng = random.Random(args.seed)
    targets = [rng.choice([t for t in sorted(set(refs)) if t != refs[i] and len(t) <= len(refs[i])]) for i in right]
    idx = torch.tensor(right)
    lengths = lens[idx]
    x = {"audio": test.waves[idx, :int(lengths.max())], "video": test.video[idx]}
    print(f"{len(right)} correctly transcribed test clips of {len(test)}", flush=True)
    done = Path(args.out) / "rows.jsonl"               # rows of an interrupted run with the same settings are kept
    setting = {"model": str(args.model), "data": args.data, "clips": len(right), "seed": args.seed}
    rows = [json.loads(line) for line in done.read_text().splitlines()] if done.is_file() else []
    rows = [r for r in rows if all(r.get(k) == v for k, v in setting.items())]
    for base in args.bases:
        for sp in args.sparsities:
            if any(r["base"] == base and r["sparsity"] == sp for r in rows):
                continue                         # measured by an earlier, interrupted run
            t0 = time.perf_counter()
            adv, recs = msae(model, x, targets, base={"audio": base, "video": "cw"}, lengths=lengths,
                             sparsity={"audio": sp, "video": sp})
            secs = (time.perf_counter() - t0) / len(right)
            hyps = transcribe(model, adv, lengths)
            row = {**summarise("msae", sp, recs), **setting, "base": base, "seconds": secs,
                   "cer_target": sum(cer([t], [h]) for t, h in zip(targets, hyps)) / len(hyps)}
            rows.append(row)
            done.parent.mkdir(parents=True, exist_ok=True)
            with done.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    print(record(args.out, "msae-recognizer", "msae-recognizer", {"model": args.model, "n": len(right)}, rows,
                 ("base", "sparsity"), TABLE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
