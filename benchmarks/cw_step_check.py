"""Held-out check of `cw_ctc`'s default Adam step: which step reaches the target within the default
1000 iterations, how soon, and how loud the result is, on utterances the ART benchmark never uses.

The benchmark (`benchmarks/asr_vs_art.py`) attacks the first `--skip` utterances of the seeded test
order (`audioadv.asr_targets.select`); this check takes the next `--n` of them, with grammar
and open-vocabulary targets built the same way, and runs `cw_ctc` once per step size with the
benchmark's stop rule (`patience`, 10% of max_iter), every other argument at its default. Per step
size: success within the budget, first-success iteration (median / max), mean SNR and dB_x of the
successes, CPU seconds for the batch. Writes OUT.md and OUT.jsonl.

    python benchmarks/cw_step_check.py --model runs/asr --out runs/bench/cw_step_check
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from audioadv.data.utterances import load_utterances, pad_batch
from audioadv.attacks import cw_ctc
from audioadv.asr_report import asr_report
from audioadv.asr_targets import open_targets, select
from audioadv.models import load

INT16 = 1.0 / 32768  # the papers' steps are on the int16 scale


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/asr")
    p.add_argument("--data", default="synth-phrases")
    p.add_argument("--skip", type=int, default=20, help="utterances the benchmark uses (left out)")
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--steps", default=f"0.001,{100 * INT16}", help="comma list of Adam steps to compare")
    p.add_argument("--targets", default="grammar,open")
    p.add_argument("--patience", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench/cw_step_check")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, _ = load(args.model)
    data = load_utterances(args.data, "test")
    ids, originals, gtargets = select(model, data, args.skip + args.n, args.seed)
    skip = len(select(model, data, args.skip, args.seed)[0])
    ids, originals, gtargets = ids[skip:], originals[skip:], gtargets[skip:]
    target_sets = {"grammar": gtargets, "open": open_targets(originals, args.seed)}
    wav, lengths = pad_batch([data.waves[i] for i in ids])
    rows = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{out}.jsonl", "w") as f:
        for tname in args.targets.split(","):
            for lr in (float(s) for s in args.steps.split(",")):
                c0 = time.process_time()
                adv, records = cw_ctc(model, wav, target_sets[tname], lengths=lengths, lr=lr, patience=args.patience)
                cpu = time.process_time() - c0
                rep = asr_report(model, wav, adv, target_sets[tname], originals, lengths, records)
                ok = [r for r in rep if r["success"]]
                first = [r["first_success"] for r in ok]
                row = {"targets": tname, "lr": lr, "n": len(rep), "successes": len(ok),
                       "first_median": float(np.median(first)) if first else None,
                       "first_max": max(first) if first else None,
                       "snr_db": float(np.mean([r["snr_db"] for r in ok])) if ok else None,
                       "db_x": float(np.mean([r["db_x"] for r in ok])) if ok else None,
                       "steps": int(sum(r["iterations"] for r in records)), "cpu_s": cpu,
                       "missed": [ids[i] for i, r in enumerate(rep) if not r["success"]]}
                rows.append(row)
                print(json.dumps(row), flush=True)
                f.write(json.dumps(row) + "\n")
                f.flush()
    lines = [f"# cw_ctc step size on held-out utterances\n",
             f"Command: `python benchmarks/cw_step_check.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
             f"(model `{args.model}`, test utterances {args.skip + 1}-{args.skip + len(ids)} of the seeded order, "
             f"which the ART benchmark does not attack; `cw_ctc` defaults except `lr`, with `patience={args.patience}`; "
             f"{args.threads} thread). Success = within the default 1000 iterations; SNR / dB_x over the successes; "
             "steps = utterance-steps run.\n",
             "| targets | Adam step | success | first success median / max | SNR dB | dB_x | utterance-steps | CPU s |",
             "|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        lines.append(f"| {r['targets']} | {r['lr']:.3g} | {r['successes']}/{r['n']} | "
                     f"{fmt(r['first_median'], '.0f')} / {fmt(r['first_max'], 'd')} | {fmt(r['snr_db'], '.1f')} | "
                     f"{fmt(r['db_x'], '.1f')} | {r['steps']} | {r['cpu_s']:.0f} |")
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
