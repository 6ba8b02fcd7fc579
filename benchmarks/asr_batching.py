"""CPU time of continuous batching in the speech-to-text attacks, one thread.

1. Per-step cost: `cw_ctc` for a fixed number of steps (no stop rule) at several batch sizes;
   CPU seconds per utterance-step (`time.process_time`).
2. Fixed batches vs continuous batching on the same utterances and settings (a stop rule, so
   utterances finish at different steps): fixed = the utterances in chunks of `--batch-size`, each
   chunk one call (a finished utterance leaves and its chunk shrinks); continuous = one call with
   `batch_size=--batch-size` (a finished utterance's slot goes to the next). Both must give the
   same adversarial examples and records (checked here, bit for bit).

    python benchmarks/asr_batching.py MODEL --data 'synth-phrases?n=600' --n 20 --out runs/bench/asr_batching
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from audioadv.asr_targets import select  # noqa: E402
from audioadv.attacks import cw_ctc, imperceptible, ipc  # noqa: E402
from audioadv.data.utterances import load_utterances, pad_batch  # noqa: E402
from audioadv.models import load  # noqa: E402

ATTACKS = {"cw": cw_ctc, "ipc": ipc, "imperceptible": imperceptible}


def cpu(fn):
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def same(a, b) -> bool:
    drop = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    return [drop(r) for r in a] == [drop(r) for r in b]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--data", default="synth-phrases")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attack", choices=sorted(ATTACKS), default="cw")
    p.add_argument("--batch-size", type=int, default=8, help="fixed vs continuous: utterances per batch")
    p.add_argument("--sweep", default="1,2,4,8,16,20", help="batch sizes of the per-step cost")
    p.add_argument("--sweep-steps", type=int, default=10)
    p.add_argument("--max-iter", type=int, default=300)
    p.add_argument("--patience", type=int, default=30)
    p.add_argument("--out", help="write OUT.json and OUT.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    model, cfg = load(args.model, frozen=True)
    data = load_utterances(args.data, args.split)
    ids, originals, targets = select(model, data, args.n, args.seed)
    wav, lengths = pad_batch([data.waves[i] for i in ids])
    print(f"{len(ids)} utterances, {float(lengths.float().mean()) / 16000:.2f} s mean", flush=True)

    sweep = []
    for b in [int(v) for v in args.sweep.split(",")]:
        m = min(b, len(ids))
        _, sec = cpu(lambda: cw_ctc(model, wav[:m], targets[:m], lengths=lengths[:m], max_iter=args.sweep_steps,
                                    batch_size=m))
        sweep.append({"batch_size": m, "cpu_s_per_utterance_step": sec / (m * args.sweep_steps)})
        print(sweep[-1], flush=True)

    attack = ATTACKS[args.attack]
    kw = dict(max_iter=args.max_iter, patience=args.patience) if args.attack != "imperceptible" else \
        dict(max_iter_stage1=args.max_iter, patience=args.patience, max_iter_stage2=args.max_iter,
             patience_stage2=args.patience)
    k = args.batch_size

    def fixed():
        advs, recs = [], []
        for s in range(0, len(ids), k):
            a, r = attack(model, wav[s:s + k], targets[s:s + k], lengths=lengths[s:s + k], batch_size=k, **kw)
            advs.append(torch.nn.functional.pad(a, (0, wav.shape[1] - a.shape[1])))
            recs += r
        return torch.cat(advs), recs

    (adv_f, rec_f), sec_f = cpu(fixed)
    (adv_c, rec_c), sec_c = cpu(lambda: attack(model, wav, targets, lengths=lengths, batch_size=k, **kw))
    identical = torch.equal(adv_f, adv_c) and same(rec_f, rec_c)
    steps = sum(r["iterations"] for r in rec_c)
    res = {"model": args.model, "data": args.data, "split": args.split, "n": len(ids), "attack": args.attack,
           "settings": kw, "batch_size": k, "fixed_cpu_s": sec_f, "continuous_cpu_s": sec_c,
           "ratio_fixed_over_continuous": sec_f / sec_c, "identical": identical, "utterance_steps": steps,
           "successes": sum(r["success"] for r in rec_c), "sweep": sweep, "torch": torch.__version__}
    print(json.dumps(res, indent=1))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
        lines = [f"# Continuous batching, {args.attack}, {len(ids)} utterances, one CPU thread", "",
                 f"Model {args.model}; {args.data} ({args.split}); settings {kw}.", "",
                 "| batch size | CPU s per utterance-step |", "| --- | --- |"]
        lines += [f"| {r['batch_size']} | {r['cpu_s_per_utterance_step']:.4f} |" for r in sweep]
        lines += ["", f"Fixed batches of {k}: {sec_f:.1f} CPU s; continuous batch of {k}: {sec_c:.1f} CPU s "
                      f"(ratio {sec_f / sec_c:.2f}); identical results: {identical}; "
                      f"{res['successes']}/{len(ids)} successes, {steps} utterance-steps.", ""]
        out.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
