"""`audioadv universal` (craft a universal perturbation against a checkpoint) and `audioadv transfer`
(success of universal perturbations across checkpoints, Abdoli et al. Table 4)."""
from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import time
from pathlib import Path


def _number_or_none(kind):
    """argparse type: a number, or "none" / "off" (no budget, no patience)."""
    def parse(text: str):
        if text.lower() in ("none", "off"):
            return "none"
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None
    parse.__name__ = kind.__name__
    return parse


def register(sub) -> None:
    # Every crafting default lives in audioadv.attacks.universal (penalty, penalty_search, iterative): options
    # left out are not passed, so the library's value applies; metrics.json records the values in force.
    p = sub.add_parser("universal", help="craft a universal adversarial perturbation (Abdoli et al.)",
                       description="Craft one perturbation v that fools a classifier on most inputs, with the "
                                   "penalty method (Alg. 1, with the search over c of penalty_search) or the iterative "
                                   "greedy method (Sec. 3.1). Writes v.npy, v.wav, metrics.json, history.jsonl and a few "
                                   "perturbed examples into --out; a killed run resumes from --out/state when rerun.")
    p.add_argument("checkpoint", help="checkpoint folder (model.safetensors + config.json)")
    p.add_argument("--data", required=True, help="dataset spec, e.g. fsdd:PATH or synth-commands")
    p.add_argument("--method", choices=["penalty", "iterative"], default="penalty")
    p.add_argument("--target", default=None, help="target class (name or index); untargeted when absent")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--craft-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument("--n-craft", type=int, default=None, help="crafting points drawn from the crafting split "
                                                            "(default: universal.crafting_set's, the paper's 1000)")
    p.add_argument("--per-class", type=int, default=0,
                   help="single-sample mode: craft from K examples of each class (paper Table 3: K=1)")
    p.add_argument("--delta", type=float, help="stop at crafting success >= 1 - delta")
    p.add_argument("--seed", type=int, help="crafting-set draw and mini-batch / visiting order")
    g = p.add_argument_group("penalty method (defaults: audioadv.attacks.universal.penalty and penalty_search)")
    g.add_argument("--c", default=None,
                   help="starting penalty coefficient, multiplied by --c-factor whenever v collapses; a number or "
                        "'paper' (the paper's value for the mode)")
    g.add_argument("--c-factor", type=float, help="factor applied to c at each collapse")
    g.add_argument("--no-escalate", dest="escalate", action="store_false", help="keep c fixed even when v collapses")
    g.add_argument("--kappa", type=float, help="hinge confidence on logits")
    g.add_argument("--lr", type=float, help="Adam step size")
    g.add_argument("--max-iter", type=int, help="Adam iterations in all")
    g.add_argument("--batch-size", type=int, help="mini-batch size")
    g.add_argument("--min-snr", type=_number_or_none(float),
                   help="loudness budget: keep v inside the l2 ball that gives this mean crafting-set SNR in dB "
                        "('none': no budget)")
    g.add_argument("--patience", type=_number_or_none(int),
                   help="also stop when the mini-batch success has not improved for this many iterations ('none': off)")
    g = p.add_argument_group("iterative method (defaults: audioadv.attacks.universal.iterative)")
    g.add_argument("--xi", type=float, help="l_p radius (default: the paper's for the mode)")
    g.add_argument("--p", default=None, help="norm of the projection: 2 or inf")
    g.add_argument("--inner", choices=["ddn", "deepfool", "cw"], help="inner minimal attack")
    g.add_argument("--max-passes", type=int, help="passes over the crafting points")
    g.add_argument("--inner-batch", type=int, help="points attacked together (1 = paper)")
    g.add_argument("--aggregate", choices=["mean", "sum", "sequential"],
                   help="how the extra perturbations of one inner batch are combined")
    p.add_argument("--examples", type=int, default=5, help="perturbed test examples saved as WAV")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--force", action="store_true", help="craft again from scratch even if --out holds a result or a state")
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


PENALTY_OPTIONS = ("c", "c_factor", "escalate", "kappa", "lr", "max_iter", "batch_size", "min_snr", "patience")
ITERATIVE_OPTIONS = ("xi", "p", "inner", "max_passes", "inner_batch", "aggregate")
NOT_SETTINGS = ("model", "data", "callback", "checkpoint", "progress", "key", "kwargs")


def _defaults(*fns) -> dict:
    """The keyword defaults of the library functions (the later function's win)."""
    out = {}
    for fn in fns:
        out.update({k: p.default for k, p in inspect.signature(fn).parameters.items()
                    if p.default is not inspect.Parameter.empty and k not in NOT_SETTINGS})
    return out


def _crafting_kwargs(args) -> dict:
    """The crafting options given on the command line, as keyword arguments of the method's function."""
    given = lambda names: [n for n in names if getattr(args, n) is not None and getattr(args, n) is not True]  # noqa: E731
    other = given(ITERATIVE_OPTIONS if args.method == "penalty" else PENALTY_OPTIONS)
    if other:
        flag = "--" + other[0].replace("_", "-").replace("escalate", "no-escalate")
        raise ValueError(f"{flag} is a{'n iterative' if args.method == 'penalty' else ' penalty'}-method option "
                         f"(this run uses --method {args.method})")
    kw = {k: getattr(args, k) for k in ("delta", "seed") if getattr(args, k) is not None}
    if args.method == "penalty":
        names = {"c_factor": "c_factor", "kappa": "kappa", "lr": "lr", "max_iter": "max_iter", "batch_size": "batch_size",
                 "min_snr": "min_snr", "patience": "patience"}
        kw.update({name: (None if getattr(args, opt) == "none" else getattr(args, opt))
                   for opt, name in names.items() if getattr(args, opt) is not None})
        if args.c is not None:
            try:
                kw["c"] = None if args.c == "paper" else float(args.c)
            except ValueError:
                raise ValueError(f"--c must be a number or 'paper', not {args.c!r}") from None
        if not args.escalate:
            kw["max_escalations"] = 0
    else:
        names = {"xi": "xi", "inner": "attack", "max_passes": "max_passes", "inner_batch": "batch_size",
                 "aggregate": "aggregate"}
        kw.update({name: getattr(args, opt) for opt, name in names.items() if getattr(args, opt) is not None})
        if args.p is not None:
            kw["p"] = math.inf if str(args.p).lower() in ("inf", "linf") else float(args.p)
    return kw


def run_universal(args) -> int:
    import numpy as np
    import torch

    from ..attacks import universal as U
    from ..attacks.universal_eval import evaluate
    from ..data import load_dataset
    from ..io import save
    from ..models import load
    from ..results import dumps

    if args.threads:
        torch.set_num_threads(args.threads)
    kw = _crafting_kwargs(args)
    fns = (U.penalty, U.penalty_search) if args.method == "penalty" else (U.iterative,)
    settings = {**_defaults(*fns), **kw}
    out = Path(args.out)
    state = out / "state"
    if args.force:
        for f in (out / "metrics.json", state, Path(f"{state}.run")):
            f.unlink(missing_ok=True)
    if (out / "metrics.json").exists():
        print((out / "metrics.json").read_text())
        print(f"{out}: result exists (use --force to craft again)", file=sys.stderr)
        return 0
    model, cfg = load(args.checkpoint, frozen=True)
    classes = [str(c) for c in cfg.get("classes", range(cfg["num_classes"]))]
    target = _target_index(args.target, classes)
    length, sr = int(cfg["input_length"]), int(cfg.get("sample_rate", 16000))
    craft_ds = load_dataset(args.data, args.craft_split, input_length=length, sample_rate=sr)
    test_ds = load_dataset(args.data, args.test_split, input_length=length, sample_rate=sr)
    craft_ds = U.crafting_set(craft_ds, **({"n": args.n_craft} if args.n_craft is not None else {}),
                              per_class=args.per_class, seed=settings["seed"])
    out.mkdir(parents=True, exist_ok=True)
    resumed = state.exists() or Path(f"{state}.run").exists()
    if args.method == "penalty":
        from tqdm import tqdm

        bar = tqdm(total=settings["max_iter"], desc="penalty", leave=False, disable=args.quiet)

        def progress(v, rec):
            bar.update(rec["iter"] - bar.n)
            bar.set_postfix(c=f"{rec['c']:.3g}", batch_success=f"{rec['batch_success']:.2f}")
        kw["callback"] = progress
    else:
        kw["progress"] = not args.quiet
    t0 = time.perf_counter()
    v, history = U.craft(args.method, model, craft_ds, targeted=target, checkpoint=state, **kw)
    wall = time.perf_counter() - t0
    if args.method == "penalty":
        bar.close()
    with open(out / "history.jsonl", "w") as fh:            # the whole history, resumed runs included
        fh.writelines(dumps(rec) + "\n" for rec in history)
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
               "n_craft": len(craft_ds), "per_class": args.per_class, "seed": settings["seed"],
               "settings": {k: (str(x) if isinstance(x, float) and math.isinf(x) else x) for k, x in settings.items()},
               "iterations": len(history), "wall_time_s": wall, "resumed": resumed, "craft": m_craft, "test": m_test}
    if args.method == "penalty":        # the c finally used (after any escalation) and why the run stopped
        metrics.update(c_final=history[-1]["c"], c_start=history[0]["c"],
                       c_escalations=[r["iter"] for r in history if "escalated_to" in r],
                       stop=history[-1].get("stop"), xi=history[0].get("xi"))
    (out / "metrics.json").write_text(dumps(metrics, indent=2) + "\n")
    for f in (state, Path(f"{state}.run")):        # the result is written: the crafting state is no longer needed
        f.unlink(missing_ok=True)
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

    from ..attacks.universal_eval import transfer_matrix
    from ..reporting import format_matrix
    from ..data import load_dataset
    from ..models import load

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
        model, cfg = load(path)
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
