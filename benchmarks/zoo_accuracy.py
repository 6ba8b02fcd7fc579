"""Train zoo architectures and measure test accuracy (the issue's quality bars).

    python benchmarks/zoo_accuracy.py --data fsdd:../shared/data/fsdd --models logmel-cnn spchcmd
    python benchmarks/zoo_accuracy.py --data synth-commands --models logmel-cnn sincnet cnn1d-rand

Each model is trained with `audioadv.train.fit` (1 CPU thread by default), its best
checkpoint saved under runs/zoo/<data>-<model>/ (safetensors + config.json, reusable by other
benchmarks), evaluated on the dataset's test split, and one JSON line appended to
results/zoo.jsonl. A rerun skips (data, model, epochs, seed) combinations already recorded
there, so it resumes; results/zoo.md is rewritten from all recorded lines each time.
Bars: FSDD test accuracy >= 0.95 for at least four architectures; synth-commands (unseen
voices) >= 0.95 for logmel-cnn and at least two raw-waveform models.
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

from audioadv import models  # noqa: E402
from audioadv.commands.train import load_splits  # noqa: E402
from audioadv.data import load_dataset, parse_spec  # noqa: E402
from audioadv.train import TrainConfig, evaluate, fit  # noqa: E402

BAR = 0.95


def _rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_table(rows: list[dict], path: Path) -> None:
    latest = {}
    for r in rows:  # the last line for a (data, model) pair wins
        latest[(r["data"], r["model"])] = r
    lines = ["# Model zoo test accuracy", "",
             "Produced by `make reproduce-zoo` (benchmarks/zoo_accuracy.py): one training run per row, "
             "1 CPU thread, best validation epoch evaluated on the test split. `train s` is wall-clock time "
             "on the machine that produced the row (the recorded rows: a 2-core machine shared with several "
             "other jobs, so an idle machine is faster).", "",
             "| data | model | test accuracy | >= 0.95 | val accuracy | best epoch / epochs | train s | params | seed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (data, model), r in sorted(latest.items()):
        lines.append(f"| {data} | {model} | {r['test_accuracy']:.4f} | {'yes' if r['test_accuracy'] >= BAR else 'no'} | "
                     f"{r['val_accuracy']:.4f} | {r['best_epoch']} / {r['epochs']} | {r['train_seconds']:.0f} | "
                     f"{r['params']:,} | {r['seed']} |")
    lines += ["", "Test sets: FSDD takes 0-4 of every digit and speaker (300 clips); synth-commands test split "
              "uses eSpeak voices never heard in training.", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--models", nargs="+", default=models.names())
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "zoo"))
    ap.add_argument("--results", default=str(ROOT / "results" / "zoo.jsonl"))
    ap.add_argument("--table", default=str(ROOT / "results" / "zoo.md"))
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    name = parse_spec(args.data)[0]
    results, table = Path(args.results), Path(args.table)
    done = {(r["data"], r["model"], r["epochs"], r["seed"]) for r in read_rows(results)}
    todo = [m for m in args.models if (name, m, args.epochs, args.seed) not in done]
    if not todo:
        print("all requested runs already recorded in", results)
    else:
        train, val = load_splits(args.data, 16000, 16000, 0.1, args.seed)
        test = load_dataset(args.data, "test", input_length=16000, sample_rate=16000)
        print(f"{args.data}: train {len(train)}, val {len(val)}, test {len(test)}", flush=True)
        for m in todo:
            torch.manual_seed(args.seed)
            model = models.create(m, num_classes=train.num_classes, input_length=train.input_length)
            out = Path(args.runs) / f"{name}-{m}"
            print(f"== {m} -> {out}", flush=True)
            t0 = time.time()
            summary = fit(model, train, val, TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed),
                          out_dir=out, config={"data": args.data}, progress=not args.quiet)
            seconds = time.time() - t0
            ev = evaluate(model, test)
            from audioadv.models import save_checkpoint
            from audioadv.models.checkpoint import read_config
            cfg = read_config(out)
            cfg["metrics"].update(test_accuracy=ev["accuracy"], test_examples=ev["n"])
            save_checkpoint(model, out, cfg)
            row = {"data": name, "model": m, "epochs": args.epochs, "seed": args.seed, "test_accuracy": ev["accuracy"],
                   "test_examples": ev["n"], "val_accuracy": summary["best"]["val_accuracy"],
                   "best_epoch": summary["best"]["epoch"], "train_seconds": round(seconds, 1),
                   "params": sum(p.numel() for p in model.parameters()), "checkpoint": _rel(out),
                   "torch_threads": args.threads}
            print(f"   {m}: test accuracy {ev['accuracy']:.4f} ({seconds:.0f} s)", flush=True)
            results.parent.mkdir(parents=True, exist_ok=True)
            with open(results, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            write_table(read_rows(results), table)
    write_table(read_rows(results), table)
    print(table.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
