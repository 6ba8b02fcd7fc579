"""`audioadv universal` (craft a universal perturbation against a checkpoint) and `audioadv transfer`
(success of universal perturbations across checkpoints, Abdoli et al. Table 4)."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("universal", help="craft a universal adversarial perturbation (Abdoli et al.)",
                       description="Craft one perturbation v that fools a classifier on most inputs, with the "
                                   "penalty method (Alg. 1) or the iterative greedy method (Sec. 3.1). Writes v.npy, "
                                   "v.wav, metrics.json, history.jsonl and a few perturbed examples into --out.")
    p.add_argument("checkpoint", help="checkpoint folder (model.safetensors + config.json)")
    p.add_argument("--data", required=True, help="dataset spec, e.g. fsdd:PATH or synth-commands")
    p.add_argument("--method", choices=["penalty", "iterative"], default="penalty")
    p.add_argument("--target", default=None, help="target class (name or index); untargeted when absent")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--craft-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument("--n-craft", type=int, default=1000, help="crafting points drawn from the crafting split (paper: 1000)")
    p.add_argument("--per-class", type=int, default=0,
                   help="single-sample mode: craft from K examples of each class (paper Table 3: K=1)")
    p.add_argument("--c", default="3",
                   help="penalty coefficient: a number (default 3, multiplied by 3 whenever v collapses towards 0 "
                        "unless --no-escalate; see audioadv.attacks.universal.penalty), auto (the same escalation "
                        "from the paper's value) or paper (0.2 untargeted / 0.15 targeted, fixed)")
    p.add_argument("--no-escalate", dest="escalate", action="store_false",
                   help="penalty: keep a numeric --c fixed even when v collapses")
    p.add_argument("--kappa", type=float, default=None, help="hinge confidence on logits (default 40 / 10)")
    p.add_argument("--lr", type=float, default=0.002, help="Adam step size (penalty)")
    p.add_argument("--max-iter", type=int, default=100, help="penalty: Adam iterations")
    p.add_argument("--batch-size", type=int, default=100, help="penalty: mini-batch size")
    p.add_argument("--shrink", action="store_true",
                   help="penalty: scale v down to the quietest multiple that still meets 1 - delta on the crafting set")
    p.add_argument("--restart", choices=["peak", "zero"], default="peak",
                   help="penalty: after an escalation of c, resume from the loudest v' seen (default) or restart from 0")
    p.add_argument("--refine", type=int, default=0,
                   help="penalty: extra iterations after the stopping rule holds, returning the quietest v that still meets "
                        "it on the crafting set (our extension beyond Algorithm 1; 0 = off; opt-in, see notes/uap-bar.md)")
    p.add_argument("--refine-kappa", type=float, default=None, help="penalty: hinge floor during --refine (default: --kappa)")
    p.add_argument("--min-snr", type=float, default=None,
                   help="penalty: keep v inside the l2 ball that gives this mean crafting-set SNR in dB (excludes --xi)")
    p.add_argument("--box", choices=["tanh", "clip"], default="tanh", help="penalty: box constraint by tanh (Eqs. 7-9) or clipping")
    p.add_argument("--delta", type=float, default=0.1, help="stop at crafting success >= 1 - delta")
    p.add_argument("--xi", type=float, default=None, help="l_p radius (iterative: default 0.2 / 0.12 l_inf; penalty: optional l2)")
    p.add_argument("--p", default=None, help="norm of the projection: 2 or inf (iterative default inf, penalty 2)")
    p.add_argument("--inner", choices=["ddn", "deepfool", "cw"], default="ddn", help="iterative: inner minimal attack")
    p.add_argument("--max-passes", type=int, default=100, help="iterative: passes over the crafting points")
    p.add_argument("--inner-batch", type=int, default=1, help="iterative: points attacked together (1 = paper)")
    p.add_argument("--aggregate", choices=["mean", "sum", "sequential"], default="mean",
                   help="iterative: how the extra perturbations of one inner batch are combined")
    p.add_argument("--examples", type=int, default=5, help="perturbed test examples saved as WAV")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--force", action="store_true", help="craft again even if --out already holds a result")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_universal)

    t = sub.add_parser("transfer", help="success rate of universal perturbations on other checkpoints (Table 4)",
                       description="Arguments are perturbations (a v.npy file or an `audioadv universal` output folder) "
                                   "and checkpoints (folders with config.json); prints the matrix perturbation x model.")
    t.add_argument("items", nargs="+", help="PERTURBATION [PERTURBATION ...] CKPT [CKPT ...]")
    t.add_argument("--data", required=True, help="dataset spec")
    t.add_argument("--split", default="test")
    t.add_argument("--target", default=None, help="target class for targeted perturbations "
                                                  "(default: read from the run folder's metrics.json)")
    t.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    t.add_argument("--threads", type=int, default=0)
    t.set_defaults(func=run_transfer)


def _target_index(target, classes) -> int | None:
    if target is None:
        return None
    if str(target) in classes:
        return classes.index(str(target))
    try:
        idx = int(target)
    except ValueError:
        raise ValueError(f"target {target!r} is neither a class name ({', '.join(classes)}) nor an index") from None
    if not 0 <= idx < len(classes):
        raise ValueError(f"target index {idx} out of range 0..{len(classes) - 1}")
    return idx


def _crafting_set(ds, n: int, per_class: int, seed: int):
    import torch

    if per_class:
        return ds.per_class(per_class, seed)
    if n and n < len(ds):
        g = torch.Generator().manual_seed(seed)
        return ds.subset(torch.randperm(len(ds), generator=g)[:n].sort().values)
    return ds


def run_universal(args) -> int:
    import numpy as np
    import torch

    from ..attacks import universal as U
    from ..attacks.universal_eval import evaluate
    from ..data import load_dataset
    from ..io import save
    from ..models.checkpoint import load_checkpoint
    from ..results import dumps

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.method != "penalty" and args.min_snr is not None:
        raise ValueError("--min-snr is a penalty-method option (the iterative method takes --xi and --p)")
    if args.min_snr is not None and (args.xi is not None or args.p not in (None, "2", "2.0")):
        raise ValueError("--min-snr sets the radius of an l2 ball: give it without --xi and --p")
    out = Path(args.out)
    if (out / "metrics.json").exists() and not args.force:
        print((out / "metrics.json").read_text())
        print(f"{out}: result exists (use --force to craft again)", file=sys.stderr)
        return 0
    model, cfg = load_checkpoint(args.checkpoint, frozen=True)
    classes = [str(c) for c in cfg.get("classes", range(cfg["num_classes"]))]
    target = _target_index(args.target, classes)
    length, sr = int(cfg["input_length"]), int(cfg.get("sample_rate", 16000))
    craft_ds = load_dataset(args.data, args.craft_split, input_length=length, sample_rate=sr)
    test_ds = load_dataset(args.data, args.test_split, input_length=length, sample_rate=sr)
    craft_ds = _crafting_set(craft_ds, args.n_craft, args.per_class, args.seed)
    out.mkdir(parents=True, exist_ok=True)
    hist_f = open(out / "history.jsonl", "w")

    def log(v, rec):
        hist_f.write(dumps(rec) + "\n")
        hist_f.flush()

    p = None if args.p is None else (math.inf if str(args.p).lower() in ("inf", "linf") else float(args.p))
    if args.method == "penalty":
        c = "auto" if args.c == "auto" else None if args.c == "paper" else float(args.c)
        kw = dict(c=c, kappa=args.kappa, lr=args.lr, max_iter=args.max_iter, batch_size=args.batch_size,
                  box=args.box, xi=args.xi, p=2 if p is None else p, shrink=args.shrink,
                  escalate=args.escalate if isinstance(c, float) else None, restart=args.restart,
                  refine=args.refine, refine_kappa=args.refine_kappa, min_snr=args.min_snr)
    else:
        kw = dict(xi=args.xi, p=math.inf if p is None else p, attack=args.inner, max_passes=args.max_passes,
                  batch_size=args.inner_batch, aggregate=args.aggregate)
    t0 = time.perf_counter()
    v, history = U.craft(args.method, model, craft_ds, targeted=target, delta=args.delta, seed=args.seed,
                         progress=not args.quiet, callback=log, **kw)
    wall = time.perf_counter() - t0
    hist_f.close()
    m_craft = evaluate(model, v, craft_ds, targeted=target)
    m_test, rows = evaluate(model, v, test_ds, targeted=target, rows=True)
    with open(out / "per_example_test.jsonl", "w") as fh:       # the rows behind m_test, one per test clip
        for row in rows:
            fh.write(dumps({**row, "label_name": classes[row["label"]], "clean_name": classes[row["clean"]],
                                 "perturbed_name": classes[row["perturbed"]]}) + "\n")
    np.save(out / "v.npy", v.numpy())
    save(out / "v.wav", v, sr, subtype="FLOAT")
    ex = out / "examples"
    idx = [i for i in range(len(test_ds)) if target is None or int(test_ds.labels[i]) != target][:args.examples]
    with torch.no_grad():
        for i in idx:
            x = test_ds.waves[i]
            xa = U.apply(v, x[None])[0]
            pc, pa = int(model(x[None]).argmax()), int(model(xa[None]).argmax())
            save(ex / f"{i:04d}_clean_{classes[pc]}.wav", x, sr)
            save(ex / f"{i:04d}_perturbed_{classes[pa]}.wav", xa, sr)
    metrics = {"checkpoint": str(args.checkpoint), "arch": cfg.get("arch"), "data": args.data,
               "method": args.method, "target": target, "target_name": None if target is None else classes[target],
               "n_craft": len(craft_ds), "per_class": args.per_class, "seed": args.seed,
               "settings": {k: (str(x) if isinstance(x, float) and math.isinf(x) else x) for k, x in kw.items()},
               "iterations": len(history), "wall_time_s": wall, "craft": m_craft, "test": m_test}
    if args.method == "penalty":        # the c finally used (c = auto: after any escalation)
        metrics.update(c_final=history[-1]["c"], c_start=history[0]["c"],
                       c_escalations=[r["iter"] for r in history if "escalated_to" in r],
                       shrink_scale=history[-1].get("shrink_scale"),
                       stop_iter=next((r["iter"] for r in history if r.get("stop")), None),
                       returned_iter=history[-1].get("returned_iter"))
    (out / "metrics.json").write_text(dumps(metrics, indent=2) + "\n")
    print(f"{args.method} {'untargeted' if target is None else 'target ' + classes[target]}: "
          f"craft success {m_craft['success_rate']:.3f}, test success {m_test['success_rate']:.3f}, "
          f"mean SNR {m_test['mean_snr']:.2f} dB, mean dB_x {m_test['mean_db_x']:.2f}, "
          f"accuracy {m_test['accuracy_clean']:.3f} -> {m_test['accuracy_perturbed']:.3f}, "
          f"{len(history)} iterations, {wall:.1f} s"
          + (f", final c {metrics['c_final']:.3g}" if "c_final" in metrics else "") + f"; written to {out}")
    return 0


def _load_perturbation(path: Path):
    import numpy as np
    import torch

    meta = {}
    if path.is_dir():
        if (path / "metrics.json").exists():
            meta = json.loads((path / "metrics.json").read_text())
        path = path / "v.npy"
    if not path.exists():
        raise FileNotFoundError(f"perturbation not found: {path}")
    try:
        v = torch.from_numpy(np.load(path, allow_pickle=False)).float().flatten()
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a readable .npy perturbation ({exc})") from None
    return v, meta


def run_transfer(args) -> int:
    import torch

    from ..attacks.universal_eval import format_matrix, transfer_matrix
    from ..data import load_dataset
    from ..models.checkpoint import load_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    perts, ckpts = {}, {}
    targets = set()
    for item in args.items:
        p = Path(item)
        if p.is_dir() and (p / "config.json").exists() and not (p / "v.npy").exists():
            ckpts[p.name] = p
        elif p.suffix == ".npy" or (p.is_dir() and (p / "v.npy").exists()):
            v, meta = _load_perturbation(p)
            name = Path(meta["checkpoint"]).name if meta.get("checkpoint") else p.stem
            name = name if name not in perts else f"{name} ({p.name})"
            perts[name] = v
            targets.add(meta.get("target"))
        else:
            raise FileNotFoundError(f"{item}: neither a perturbation (.npy or universal run folder) nor a checkpoint folder")
    if not perts or not ckpts:
        raise ValueError("transfer needs at least one perturbation and one checkpoint")
    models, data, classes = {}, {}, None
    for name, path in ckpts.items():
        model, cfg = load_checkpoint(path)
        models[name] = model.eval()
        length, sr = int(cfg["input_length"]), int(cfg.get("sample_rate", 16000))
        for pn, v in perts.items():
            if len(v) != length:
                raise ValueError(f"perturbation {pn} has {len(v)} samples but {path} takes {length}")
        data[name] = load_dataset(args.data, args.split, input_length=length, sample_rate=sr)
        classes = classes or [str(c) for c in cfg.get("classes", range(cfg["num_classes"]))]
    if args.target is not None:
        target = _target_index(args.target, classes)
    else:
        targets.discard(None)
        if len(targets) > 1:
            raise ValueError(f"perturbations have different targets {sorted(targets)}: pass --target")
        target = targets.pop() if targets else None
    matrix = transfer_matrix(perts, models, data, targeted=target)
    if args.json:
        print(json.dumps({"target": target, "matrix": matrix}, indent=2))
    else:
        print(f"success rate ({'untargeted' if target is None else 'target ' + classes[target]}), "
              f"rows: perturbation crafted on, columns: model attacked")
        print(format_matrix(matrix, diagonal=""))
    return 0
