"""Reproduce the sparse-attack study ("Sparse Audio Adversarial Examples via Proximal Gradient
Descent") on synth-phrases with the built-in CTC recogniser:

CW, IPC and Imperceptible, each dense and with the l0 proximal step at sparsity 0.3, 0.4 and 0.5,
on N test utterances (voices never heard in training) that the recogniser transcribes correctly,
each with a target transcript drawn (seeded) from another test phrase no longer than its own.

Protocol (identical for the dense and the sparse runs of an attack; see `attack_kwargs`): Adam
(lr 5e-3) for at most 500 steps from a loose start (CW tau 0.1, IPC ratio 1.0); CW / IPC without
the l2 term (CW's released code's default), so the loudness is set by the bound that shrinks on
every success (CW: tau <- 0.8 min(tau, ||delta||_inf), IPC: ratio x0.9);
an utterance stops once 40 steps have passed without a new success (its bound no longer shrinks),
which makes the result a converged bound rather than "the n-th success"; the latest success is
returned. Imperceptible adds 30 stage-2 steps. The sparse runs ramp their sparsity over the first
10% of the budget (`attacks.sparse`). Utterances run in batches of similar length.

Per utterance results go to OUT/results.jsonl as they come (a rerun with the same settings
resumes; other settings are refused unless --fresh); the table goes to OUT/summary.md (+ .json)
and, with --table, to e.g. results/sparse.md (+ .jsonl of the per-configuration means), headed
by the command that made it.

    python scripts/reproduce_sparse.py --model runs/asr --out runs/reproduce_sparse --fresh --table results/sparse.md
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from audioadv.asr_train import load_utterances, pad_batch
from audioadv.attacks import cw_ctc, imperceptible, ipc, sparse
from audioadv.attacks._ctc import asr_report
from audioadv.data.targets import select  # noqa: F401  (also imported from here by older callers)
from audioadv.models.asr import load_recognizer, transcribe

ATTACKS = {"cw": cw_ctc, "ipc": ipc, "imperceptible": imperceptible}


def attack_kwargs(name: str, args) -> dict:
    """The same budget and stop rule for every configuration, dense or sparse."""
    stop = dict(stop_after=args.stop_after or None, patience=args.patience or None)
    if name == "cw":
        return dict(tau=args.tau, lr=args.lr, max_iter=args.max_iter, c=args.c, l2_weight=args.l2_weight, **stop)
    if name == "ipc":
        return dict(ratio=args.ratio, lr=args.lr, max_iter=args.max_iter, c=args.c, l2_weight=args.l2_weight,
                    **stop)
    return dict(tau=args.tau, lr_stage1=args.lr, max_iter_stage1=args.max_iter, c=args.c,
                lr_stage2=args.lr_stage2, max_iter_stage2=args.max_iter_stage2, **stop)



def summarize(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["success"]]
    mean = lambda v: float(sum(v) / len(v)) if v else float("nan")  # noqa: E731
    return {"n": len(rows), "success_rate": len(ok) / len(rows) if rows else float("nan"),
            "snr_db": mean([r["snr_db"] for r in ok]), "db_x": mean([r["db_x"] for r in ok]),
            "l0": mean([r["l0"] for r in ok]), "iterations": mean([r["iterations"] for r in ok]),
            "steps": mean([r["steps"] for r in rows if "steps" in r]),
            "seconds_per_utt": mean([r["seconds"] for r in rows]),
            "wer_original": mean([r["wer_original"] for r in ok])}


STUDY_KEYS = ("model", "data", "split", "n", "any_utterance", "attacks", "ramp", "max_iter", "stop_after",
              "patience", "tau", "ratio", "lr", "c", "l2_weight", "lr_stage2", "max_iter_stage2", "seed")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/asr")
    p.add_argument("--data", default="synth-phrases")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--any-utterance", action="store_true",
                   help="attack utterances whether or not the model gets them right (default: correct ones "
                        "first, topped up with others when there are fewer than N)")
    p.add_argument("--attacks", default="cw,ipc,imperceptible")
    p.add_argument("--sparsity", default="0,0.4,0.3,0.5", help="0 = dense; run in this order")
    p.add_argument("--ramp", type=float, default=0.1, help="fraction of --max-iter over which the sparsity ramps up")
    p.add_argument("--batch-size", type=int, default=25, help="utterances per batch (sorted by length)")
    p.add_argument("--max-iter", type=int, default=500)
    p.add_argument("--stop-after", type=int, default=0,
                   help="an utterance stops after this many successes (0: off)")
    p.add_argument("--patience", type=int, default=40,
                   help="an utterance stops after this many steps without a new success, i.e. once its bound "
                        "no longer shrinks (0: off, run all --max-iter steps)")
    p.add_argument("--tau", type=float, default=0.1)
    p.add_argument("--ratio", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--c", type=float, default=1.0)
    p.add_argument("--l2-weight", type=float, default=0.0,
                   help="weight of ||delta||^2 in CW / IPC (0: Carlini & Wagner's released setting, l2 penalty "
                        "off; loudness is then set by the shrinking bound)")
    p.add_argument("--lr-stage2", type=float, default=2e-4)
    p.add_argument("--max-iter-stage2", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--summary-only", action="store_true", help="only tabulate the results already in OUT")
    p.add_argument("--fresh", action="store_true", help="delete OUT/results.jsonl first")
    p.add_argument("--table", default=None, help="also write the table here (e.g. results/sparse.md; plus a "
                                                  ".jsonl of the per-configuration means next to it)")
    p.add_argument("--out", default="runs/reproduce_sparse")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = "python scripts/reproduce_sparse.py " + " ".join(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    settings = {k: v for k, v in vars(args).items()}
    study = {k: settings[k] for k in STUDY_KEYS}
    if args.fresh and results_path.exists():
        results_path.unlink()
    old = out / "settings.json"
    if results_path.exists() and old.exists():
        prev = json.loads(old.read_text())
        diff = {k: (prev.get(k), v) for k, v in study.items() if prev.get(k) != v and k != "attacks"}
        if diff:  # rows from other settings would be mixed into the table
            raise SystemExit(f"{results_path} holds rows made with other settings {diff}; use --fresh or another --out")
    old.write_text(json.dumps(settings, indent=2))

    t_start = time.perf_counter()
    model = load_recognizer(args.model)
    data = load_utterances(args.data, args.split)
    chosen, originals, targets = select(model, data, args.n, args.seed, not args.any_utterance)
    if not chosen:
        raise SystemExit(f"the recogniser {args.model} transcribes none of the {args.split} utterances correctly")
    cw_, cl_ = pad_batch([data.waves[i] for i in chosen])
    clean_correct = sum(h == o for h, o in zip(transcribe(model, cw_, cl_), originals))

    done = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            r = json.loads(line)
            done[(r["config"], r["utt"])] = r
    sparsities = [float(s) for s in args.sparsity.split(",")]
    # run in the order given (sparsity-major: e.g. "0,0.4,0.3,0.5" runs the bar's configurations
    # first); tabulate attack by attack, sparsity ascending
    runs = [(a, s) for s in sparsities for a in args.attacks.split(",")]
    sparsities = sorted(sparsities)
    configs = [(a, s) for a in args.attacks.split(",") for s in sparsities]
    # progress: one bar over the utterances still to attack in every configuration (rows already in
    # OUT/results.jsonl are kept and skipped: an interrupted run resumes where it stopped), and a
    # line per finished configuration
    plan = []
    for name, s in runs:
        cfg = f"{name}" if s == 0 else f"{name}+sparse{s}"
        todo = [] if args.summary_only else [j for j in range(len(chosen)) if (cfg, chosen[j]) not in done]
        todo.sort(key=lambda j: len(data.waves[chosen[j]]))  # similar lengths per batch: less padding
        plan.append((name, s, cfg, todo))
    kept = sum(len(chosen) - len(todo) for *_, todo in plan)
    bar = tqdm(total=sum(len(todo) for *_, todo in plan), unit="utt", file=sys.stderr,
               desc=f"{len(plan)} configurations" + (f" ({kept} rows resumed)" if kept else ""))
    for name, s, cfg, todo in plan:
        attack = ATTACKS[name] if s == 0 else sparse(ATTACKS[name], s, ramp=args.ramp)
        if todo:
            bar.set_postfix_str(cfg)
        for b in range(0, len(todo), args.batch_size):
            js = todo[b:b + args.batch_size]
            wav, lengths = pad_batch([data.waves[chosen[j]] for j in js])
            tg, og = [targets[j] for j in js], [originals[j] for j in js]
            info: dict = {}
            t0 = time.perf_counter()
            adv = attack(model, wav, tg, lengths=lengths, info=info, **attack_kwargs(name, args))
            wall = time.perf_counter() - t0
            info["seconds"] = [wall / len(js)] * len(js)
            rows = asr_report(model, wav, adv, tg, og, lengths, info)
            with open(results_path, "a") as f:
                for j, r in zip(js, rows):
                    r.update(config=cfg, attack=name, sparsity=s, utt=chosen[j])
                    done[(cfg, chosen[j])] = r
                    f.write(json.dumps(r) + "\n")
            bar.update(len(js))
        if todo:
            m = summarize([done[(cfg, u)] for u in chosen if (cfg, u) in done])
            bar.write(f"{cfg}: success {m['success_rate']:.2f}, SNR {m['snr_db']:.1f} dB, l0 {m['l0']:.2f} "
                      f"({(time.perf_counter() - t_start) / 60:.1f} min so far)")
    bar.close()
    wall_total = time.perf_counter() - t_start

    summary = {}
    attack_minutes = sum(done[(f"{a}" if s == 0 else f"{a}+sparse{s}", u)]["seconds"] for a, s in configs
                         for u in chosen if (f"{a}" if s == 0 else f"{a}+sparse{s}", u) in done) / 60
    lines = [f"# Sparse attacks by proximal gradient descent (reproduction)", "",
             f"Command: `{command}`", "",
             f"Sparse attacks on the CTC recogniser `{args.model}`, {len(chosen)} `{args.data}` {args.split} "
             f"utterances (unseen voices; {clean_correct} transcribed correctly when clean), targets from other "
             f"phrases. Every configuration: Adam lr {args.lr}, at most {args.max_iter} steps"
             + (f" (Imperceptible: + {args.max_iter_stage2} stage-2 steps at lr {args.lr_stage2})"
                if "imperceptible" in args.attacks else "")
             + (f", an utterance stops after {args.patience} steps without a new success" if args.patience else "")
             + (f", or after {args.stop_after} successes" if args.stop_after else "")
             + f"; l2 weight {args.l2_weight}; CW tau0 {args.tau}, IPC ratio0 {args.ratio}; sparsity ramp "
             f"{args.ramp} of the steps. Means of SNR, dB_x, l0 and iterations (first success) over the "
             f"successful utterances; `steps` = mean steps run per utterance; `s / utt` = wall time per "
             f"utterance of its batch (1 thread, shared machine). The attacks of the table took {attack_minutes:.0f} min "
             f"in all (sum over its rows, whichever invocation ran them: results.jsonl keeps them and a rerun "
             f"resumes); this invocation took {wall_total / 60:.1f} min.", "",
             "| attack | sparsity | success | SNR (dB) | dB_x | l0 | iterations | steps | s / utt | WER to original |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in configs:
        cfg = f"{name}" if s == 0 else f"{name}+sparse{s}"
        rows = [done[(cfg, u)] for u in chosen if (cfg, u) in done]
        if not rows:
            lines.append(f"| {name} | {'dense' if s == 0 else s} | not run | | | | | | | |")
            continue
        m = summarize(rows)
        summary[cfg] = m
        partial = "" if m["n"] == len(chosen) else f" ({m['n']} of {len(chosen)} run)"
        lines.append(f"| {name} | {'dense' if s == 0 else s} | {m['success_rate']:.2f}{partial} | {m['snr_db']:.1f} | "
                     f"{m['db_x']:.1f} | {m['l0']:.2f} | {m['iterations']:.0f} | {m['steps']:.0f} | "
                     f"{m['seconds_per_utt']:.1f} | {m['wer_original']:.2f} |")
    checks = []
    for name in ("cw", "ipc"):
        key = f"{name}+sparse0.4"
        if key in summary:
            checks.append(f"{key}: success {summary[key]['success_rate']:.2f} (bar >= 0.95): "
                          f"{'PASS' if summary[key]['success_rate'] >= 0.95 else 'FAIL'}")
    for name in args.attacks.split(","):
        if name in summary:
            for s in sparsities:
                key = f"{name}+sparse{s}"
                if s and key in summary:
                    ok = summary[key]["snr_db"] >= summary[name]["snr_db"]
                    both = [(done[(key, u)]["snr_db"], done[(name, u)]["snr_db"]) for u in chosen
                            if (key, u) in done and (name, u) in done
                            and done[(key, u)]["success"] and done[(name, u)]["success"]]
                    paired = sum(a - b for a, b in both) / len(both) if both else float("nan")
                    wins = sum(a >= b for a, b in both)
                    checks.append(f"{key}: SNR {summary[key]['snr_db']:.2f} vs dense {summary[name]['snr_db']:.2f} "
                                  f"dB: {'PASS' if ok else 'FAIL'} (paired over the {len(both)} utterances both "
                                  f"attacks fooled: {paired:+.2f} dB, sparse >= dense on {wins})")
    lines += ["", "Bars (issue 4): success >= 0.95 at sparsity 0.4 for CW and IPC; sparse mean SNR >= dense.", "",
              *[f"- {c}" for c in checks]]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"configs": summary, "checks": checks, "clean_correct": clean_correct,
                                                  "utterances": chosen, "targets": targets, "command": command},
                                                 indent=1))
    if args.table:
        table = Path(args.table)
        table.parent.mkdir(parents=True, exist_ok=True)
        table.write_text(text)
        with open(table.with_suffix(".jsonl"), "w") as f:
            for cfg, m in summary.items():
                f.write(json.dumps({"config": cfg, **m, "command": command}) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
