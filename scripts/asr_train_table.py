"""Write results/asr_train.md: the CTC recogniser's test error rates (from `audioadv eval-asr --json`
files) and its training summary (`train_summary.json`, `train_log.jsonl` of `audioadv train-asr`).

    python scripts/asr_train_table.py --model runs/asr --eval runs/asr/eval_test.json \
        --eval runs/asr/eval_test_beam8.json --out results/asr_train.md

Bars (issue 4, voices never heard in training): CER <= 0.03 on the command grammar
(`synth-phrases` test) and <= 0.12 on open-vocabulary sentences with unseen words.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

BARS = {"synth-phrases": ("command grammar", 0.03),
        "synth-phrases?source=open-unseen&n=2000": ("open vocabulary, unseen words", 0.12)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/asr", help="checkpoint folder with train_summary.json")
    ap.add_argument("--eval", action="append", required=True, help="eval-asr --json output (repeatable)")
    ap.add_argument("--train-command", action="append", default=[],
                    help="training command(s) as run, when train_summary.json does not record it")
    ap.add_argument("--note", action="append", default=[], help="a line of text under the title")
    ap.add_argument("--out", default="results/asr_train.md")
    a = ap.parse_args(argv)
    summ_path = Path(a.model, "train_summary.json")
    summary = json.loads(summ_path.read_text()) if summ_path.is_file() else {}
    rows, commands = [], []
    for path in a.eval:
        res = json.loads(Path(path).read_text())
        for spec, r in res.items():
            name, bar = BARS.get(spec, (spec, None))
            ok = "" if bar is None else ("met" if r["cer"] <= bar else "**missed**")
            rows.append(f"| `{r.get('checkpoint', '?')}` | {name} (`{spec}`, {r.get('split', 'test')}) "
                        f"| {r.get('decoding', '?')} | {r['n']} "
                        f"| {r['cer']:.4f} | {r['wer']:.4f} | {'' if bar is None else f'<= {bar}'} | {ok} | `{path}` |")
            for sub, v in r.get("subsets", {}).items():
                rows.append(f"| `{r.get('checkpoint', '?')}` | {name}: {sub} utterances only | {r.get('decoding', '?')} "
                            f"| {v['n']} | {v['cer']:.4f} | {v['wer']:.4f} | | | `{path}` |")
            if r.get("command") and r["command"] not in commands:
                commands.append(r["command"])
    train_cmds = a.train_command + ([summary["command"]] if summary.get("command") else [])
    lines = ["# CTC speech recogniser: test error rates", "",
             f"Final checkpoint `{a.model}`; test utterances are spoken by voices never heard in training.",
             *([""] + a.note if a.note else []), "",
             "| checkpoint (as evaluated) | test set | decoding | utterances | CER | WER | bar (CER) | | source |",
             "|---|---|---|---|---|---|---|---|---|", *rows, ""]
    if summary:
        keys = ("train_seconds", "steps", "epochs", "best_val_cer", "train_utterances", "batch_seconds", "lr",
                "minutes", "reverb", "device", "gpu", "feature_norm", "threads", "init", "data")
        lines += ["Training summary (`train_summary.json`):", "",
                  *[f"- {k}: {summary[k]}" for k in keys if k in summary], ""]
    lines += ["Commands:", "", "```", *train_cmds, *commands, f"python scripts/asr_train_table.py "
              + " ".join(f"--eval {p}" for p in a.eval) + f" --model {a.model} --out {a.out}", "```", ""]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
