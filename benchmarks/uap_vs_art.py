"""Universal perturbations and minimal-norm attacks: audioadv against ART 1.20.1 and foolbox 3.3.4.

One run, one trained checkpoint, the same FSDD clips for every method; writes ``--md`` (Markdown,
with the command in its header) and ``--out`` (JSONL, one row per method and seed).

1. Universal perturbations, untargeted and targeted, in one loudness budget: the l2 ball whose radius gives
   ``--min-snr`` dB mean SNR (Eq. 14) over the crafting clips (``audioadv.attacks.universal.snr_radius``), with
   an equal number of passes (ART ``max_iter``) and the same stopping rule (crafting success >= 1 - delta):
   ART's ``UniversalPerturbation`` (DeepFool, FGSM attackers, their default parameters, ``norm=2``) and
   ``TargetedUniversalPerturbation`` (FGSM) against audioadv's iterative method (DeepFool, DDN inner
   attacks, projected on the same ball) and penalty method (``penalty_search`` with its defaults and
   ``min_snr``, with and without the patience stop). The order in which the greedy methods
   visit the crafting points changes their result a lot with few points, so every universal method runs
   with ``--seeds`` orders / seeds (ART draws its order from Python's ``random``, seeded here); the table
   gives mean +- standard deviation over seeds of the test success rate (Eq. 3, on ``--n-test`` test clips),
   mean SNR (Eq. 14), the l2 norm of v and the wall time, with ratios to the ART baseline.
   ART's DeepFool scales every step by (clip_max - clip_min), i.e. by 2 for audio in [-1, 1]: in effect
   a 100 % overshoot whatever its ``epsilon``; the row "deepfool, overshoot 1" gives ours the same.
2. Per-example minimal-norm attacks with identical settings on ``--n-clips`` correctly classified test
   clips: DDN, DeepFool-l2, CW-l2 against foolbox's ``DDNAttack``, ``L2DeepFoolAttack``,
   ``L2CarliniWagnerAttack``: success rate, success within l2 budgets, mean l2 of the successes, model
   rows evaluated (forward passes x batch rows: a load-independent cost) and wall time (best of
   ``--repeats``; the machine is shared).

Needs the ``bench`` extra (``pip install -e '.[bench]'``; foolbox only for section 2). Rows are appended to
``--out`` as they finish; a rerun skips rows already there (``--fresh`` starts over); ``--only`` runs the rows
whose name contains one of its comma-separated words.

    .venv/bin/python benchmarks/uap_vs_art.py --checkpoint runs/zoo/fsdd-cnn1d-rand --data fsdd:../shared/data/fsdd
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="runs/zoo/fsdd-logmel-cnn")
    p.add_argument("--data", default="fsdd:../shared/data/fsdd")
    p.add_argument("--n-craft", type=int, default=200, help="crafting clips (train split)")
    p.add_argument("--n-test", type=int, default=300, help="test clips (test split; FSDD has 300)")
    p.add_argument("--min-snr", type=float, default=20.5,
                   help="loudness budget shared by every universal method: the l2 ball of this mean crafting SNR (dB)")
    p.add_argument("--passes", type=int, default=2, help="passes (ART max_iter) for the iterative methods")
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--target", type=int, default=3)
    p.add_argument("--seeds", default="0,1,2", help="orders / seeds for every universal method")
    p.add_argument("--patience", default=None,
                   help="comma list of penalty patience values, one row each ('off' = None; default: off and the "
                        "library's default)")
    p.add_argument("--only", default="", help="comma list of words: run only the universal rows whose name has one")
    p.add_argument("--n-clips", type=int, default=24, help="clips for the per-example attacks")
    p.add_argument("--budgets", default="0.1,0.4", help="l2 budgets for success at equal budget")
    p.add_argument("--cw-steps", type=int, default=100)
    p.add_argument("--cw-search", type=int, default=5)
    p.add_argument("--cw-lrs", default="0.01,0.001", help="CW-l2 Adam step sizes to compare (0.01 = both defaults)")
    p.add_argument("--repeats", type=int, default=2, help="per-example runs per attack (wall time = best)")
    p.add_argument("--skip", default="", help="comma list of sections to skip: uap,targeted,per-example")
    p.add_argument("--out", default="runs/bench/uap_vs_art.jsonl")
    p.add_argument("--md", default="runs/bench/uap_vs_art.md")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up call of every library path")
    return p.parse_args(argv)


class Counted(torch.nn.Module):
    """Counts the batch rows a model evaluates, forward (``rows``) and backward (``back_rows``: every
    backward pass through the output, e.g. one per DeepFool candidate), for a load-free cost."""

    def __init__(self, net):
        super().__init__()
        self.net, self.rows, self.back_rows = net, 0, 0

    def forward(self, x):
        self.rows += len(x)
        out = self.net(x)
        if out.requires_grad:
            out.register_hook(self._count_back)
        return out

    def _count_back(self, grad):
        self.back_rows += len(grad)


def mean_sd(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(1)
    try:
        from art.attacks.evasion import TargetedUniversalPerturbation, UniversalPerturbation
        from art.estimators.classification import PyTorchClassifier
        if "per-example" not in args.skip.split(","):
            import foolbox as fb
    except ImportError as exc:
        print(f"needs the bench extra (adversarial-robustness-toolbox, foolbox): {exc}", file=sys.stderr)
        return 2
    from audioadv.attacks import cw_l2, ddn, deepfool
    from audioadv.attacks import universal as U
    from audioadv.attacks.universal_eval import evaluate
    from audioadv.data import load_dataset
    from audioadv.models.checkpoint import load_checkpoint

    command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable), sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    load_start = os.getloadavg()
    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    model, cfg = load_checkpoint(args.checkpoint, frozen=True)
    T, C = int(cfg["input_length"]), int(cfg["num_classes"])
    sr = int(cfg.get("sample_rate", 16000))
    g = torch.Generator().manual_seed(0)
    tr = load_dataset(args.data, "train", input_length=T, sample_rate=sr)
    te = load_dataset(args.data, "test", input_length=T, sample_rate=sr)
    craft = tr.subset(torch.randperm(len(tr), generator=g)[:args.n_craft])
    test = te.subset(torch.randperm(len(te), generator=g)[:args.n_test])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.fresh and out.exists():
        out.unlink()
    done = {}
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done[(r["name"], r.get("seed"))] = r
    skip = set(filter(None, args.skip.split(",")))
    radius = U.snr_radius(craft.waves, args.min_snr)
    setting = {"checkpoint": str(args.checkpoint), "n_craft": len(craft), "n_test": len(test), "min_snr": args.min_snr,
               "l2_radius": radius, "passes": args.passes, "delta": args.delta}

    def record(name, fn, seed=None, section="uap"):
        if (name, seed) in done:
            print(f"[cached] {name} seed {seed}")
            return done[(name, seed)]
        print(f"running {name} (seed {seed}) ...", flush=True)
        t0 = time.perf_counter()
        extra = fn()
        row = {"name": name, "seed": seed, "section": section, "wall_s": time.perf_counter() - t0, **setting, **extra}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done[(name, seed)] = row
        return row

    art_clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(T,), nb_classes=C,
                                clip_values=(-1.0, 1.0), device_type="cpu")
    xc = craft.waves.numpy()

    def uap_metrics(v, target=None):
        m = evaluate(model, torch.as_tensor(v).flatten().float(), test, targeted=target)
        return {"test_success": m["success_rate"], "mean_snr": m["mean_snr"], "mean_db_x": m["mean_db_x"],
                "v_linf": m["v_linf"], "v_l2": m["v_l2"], "target": target}

    groups = {"uap": [], "targeted": []}    # section -> [(name, base name or None, make(seed) -> run)]
    art_df = "ART UniversalPerturbation (deepfool)"
    t = args.target
    art_t = f"ART TargetedUniversalPerturbation (fgsm) -> {t}"

    def art_up(attacker, params):
        def make(seed):
            def run():
                random.seed(seed)      # ART draws its visiting order from Python's random
                a = UniversalPerturbation(art_clf, attacker=attacker, attacker_params=params, delta=args.delta,
                                          max_iter=args.passes, eps=radius, norm=2, batch_size=50,
                                          verbose=False)
                a.generate(xc)
                return {**uap_metrics(a.noise), "craft_success": float(a.fooling_rate)}
            return run
        return make

    def ours(method, target=None, **kw):
        def make(seed):
            def run():
                if method == "iterative":
                    kw.setdefault("progress", False)
                v, h = U.craft(method, model, craft, targeted=target, delta=args.delta, seed=seed, **kw)
                return {**uap_metrics(v, target), "iterations": len(h), "craft_success": h[-1].get("success_rate"),
                        "stop": h[-1].get("stop"), "c_final": h[-1].get("c")}
            return run
        return make

    it = dict(p=2, xi=radius, max_passes=args.passes)
    pen = dict(min_snr=args.min_snr)               # every other setting: penalty_search's and penalty's defaults
    patiences = [None, inspect.signature(U.penalty).parameters["patience"].default] if args.patience is None else \
        [None if q == "off" else int(q) for q in args.patience.split(",")]
    if "uap" not in skip:
        groups["uap"] = [
            (art_df, None, art_up("deepfool", {"verbose": False})),
            ("ART UniversalPerturbation (fgsm)", art_df, art_up("fgsm", {"eps": radius, "norm": 2})),
            ("audioadv iterative (deepfool, overshoot 0.02)", art_df, ours("iterative", attack="deepfool", **it)),
            ("audioadv iterative (deepfool, overshoot 1 = ART's step)", art_df,
             ours("iterative", attack="deepfool", attack_kwargs={"overshoot": 1.0}, **it)),
            ("audioadv iterative (ddn)", art_df, ours("iterative", attack="ddn", **it)),
            ("audioadv iterative (ddn, inner batch 8, sequential)", art_df,
             ours("iterative", attack="ddn", batch_size=8, aggregate="sequential", **it)),
        ] + [(f"audioadv penalty (patience {q or 'off'})", art_df, ours("penalty", patience=q, **pen)) for q in patiences]
    if "targeted" not in skip:
        keep = craft.labels != t
        xct = craft.waves[keep].numpy()

        def art_tup(seed):
            def run():
                random.seed(seed)
                y = np.eye(C, dtype=np.float32)[np.full(len(xct), t)]
                a = TargetedUniversalPerturbation(art_clf, attacker="fgsm",
                                                  attacker_params={"eps": radius, "norm": 2, "targeted": True},
                                                  delta=args.delta, max_iter=args.passes, eps=radius, norm=2)
                a.generate(xct, y=y)
                return {**uap_metrics(a.noise, t), "craft_success": float(a.fooling_rate)}
            return run

        groups["targeted"] = [
            (art_t, None, art_tup),
            (f"audioadv iterative (ddn) -> {t}", art_t, ours("iterative", target=t, attack="ddn", **it)),
        ] + [(f"audioadv penalty (patience {q or 'off'}) -> {t}", art_t, ours("penalty", target=t, patience=q, **pen))
             for q in patiences]
    only = [w for w in args.only.split(",") if w]
    if only:
        groups = {k: [g for g in rows if any(w in g[0] for w in only)] for k, rows in groups.items()}
    # warm-up, untimed: one tiny call of every library path (first autograd call, lazy imports such as
    # torch.optim's on its first step, kernels for each batch size), so that no timed row pays a one-off cost
    if not args.no_warmup:
        t0 = time.perf_counter()
        for b in sorted({1, 8, len(craft), min(100, len(test))}):
            model(test.waves[:b].clone().requires_grad_(True)).sum().backward()
        tiny = craft.subset(torch.arange(min(4, len(craft))))
        for method, kw in (("iterative", dict(attack="ddn", attack_kwargs={"steps": 2})),
                           ("iterative", dict(attack="deepfool", attack_kwargs={"steps": 2})),
                           ("penalty", dict(max_iter=2, min_snr=args.min_snr))):
            U.craft(method, model, tiny, max_passes=1, progress=False, **kw) if method == "iterative" else \
                U.craft(method, model, tiny, **kw)
        for attacker, params in (("deepfool", {"verbose": False, "max_iter": 2}), ("fgsm", {"eps": radius, "norm": 2})):
            UniversalPerturbation(art_clf, attacker=attacker, attacker_params=params, max_iter=1, eps=radius,
                                  norm=2, verbose=False).generate(tiny.waves.numpy())
        print(f"warm-up {time.perf_counter() - t0:.1f} s", flush=True)
    # seeds outermost: a change of the machine's load hits every method alike
    results = {}
    for seed in seeds:
        for section in ("uap", "targeted"):
            for name, _, make in groups[section]:
                results[(name, seed)] = record(name, make(seed), seed=seed, section=section)
    for section in groups:
        groups[section] = [(name, base, [results[(name, s)] for s in seeds]) for name, base, _ in groups[section]]

    per = []
    budgets = [float(b) for b in args.budgets.split(",")]
    if "per-example" not in skip:
        pred = U.predict(model, test.waves)
        ok = (pred == test.labels).nonzero().flatten()[:args.n_clips]
        x, y = test.waves[ok], test.labels[ok]
        cm = Counted(model).eval()
        fmodel = fb.PyTorchModel(cm, bounds=(-1, 1), device="cpu")

        def per_metrics(adv, rows, back_rows, walls):
            adv = torch.as_tensor(adv)
            with torch.no_grad():
                succ = model(adv).argmax(1) != y
            d = (adv - x).flatten(1).norm(dim=1)
            r = {"success": float(succ.float().mean()),
                 "mean_l2": float(d[succ].mean()) if succ.any() else float("nan"),
                 "median_l2": float(d[succ].median()) if succ.any() else float("nan"), "n_clips": len(x),
                 "model_rows": rows, "backward_rows": back_rows, "walls": walls}
            for b in budgets:
                r[f"success@{b:g}"] = float((succ & (d <= b + 1e-6)).float().mean())
            return r

        def timed(call, repeats=None):
            def run():
                walls = []
                for _ in range(max(args.repeats if repeats is None else repeats, 1)):
                    cm.rows = cm.back_rows = 0
                    t0 = time.perf_counter()
                    adv = call()
                    walls.append(time.perf_counter() - t0)
                res = per_metrics(adv, cm.rows, cm.back_rows, walls)
                res["best_wall_s"] = min(walls)
                return res
            return run

        def paired(call_a, call_b):
            walls, res = ([], []), [None, None]
            for _ in range(max(args.repeats, 1)):
                for i, call in enumerate((call_a, call_b)):
                    cm.rows = cm.back_rows = 0
                    t0 = time.perf_counter()
                    adv = call()
                    walls[i].append(time.perf_counter() - t0)
                    res[i] = per_metrics(adv, cm.rows, cm.back_rows, walls[i])
            for i in (0, 1):
                res[i]["best_wall_s"] = min(walls[i])
            return res

        def fb_call(attack):
            return lambda: attack(fmodel, x, fb.criteria.Misclassification(y), epsilons=None)[1]

        def ours_call(fn, **kw):
            return lambda: fn(cm, x, y, **kw)

        specs = [
            ("DDN (50 steps, init norm 0.2, gamma 0.05)", fb.attacks.DDNAttack(init_epsilon=0.2, steps=50, gamma=0.05),
             ddn, dict(steps=50, init_norm=0.2, gamma=0.05), {}),
            ("DeepFool-l2 (50 steps, overshoot 0.02, 10 candidates)",
             fb.attacks.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02, loss="logits"), deepfool,
             dict(steps=50, overshoot=0.02, candidates=10), {}),
        ]
        for lr in [float(v) for v in args.cw_lrs.split(",") if v]:
            cs = dict(c=1e-3, kappa=0.0, steps=args.cw_steps, binary_search_steps=args.cw_search, lr=lr, abort_early=True)
            label = f"CW-l2 ({args.cw_steps} steps, {args.cw_search} search steps, c0 1e-3, lr {lr:g}, abort early)"
            specs.append((label, fb.attacks.L2CarliniWagnerAttack(binary_search_steps=args.cw_search, steps=args.cw_steps,
                                                                  stepsize=lr, confidence=0, initial_const=1e-3,
                                                                  abort_early=True), cw_l2, cs,
                          {"abort_warmup": 1}))
        for name, fb_attack, fn, kw, variant in specs:
            na, nb = f"foolbox {name}", f"audioadv {name}"
            if (na, None) in done and (nb, None) in done:
                a, b = done[(na, None)], done[(nb, None)]
            else:
                # the two libraries alternate, run by run, so that a change of the machine's load hits both alike
                ra, rb = paired(fb_call(fb_attack), ours_call(fn, **kw))
                a = record(na, lambda: ra, section="per-example")
                b = record(nb, lambda: rb, section="per-example")
            c = None
            if variant:
                vname = ", ".join(f"{k} {v}" for k, v in variant.items())
                c = record(f"audioadv {name} + {vname}", timed(ours_call(fn, **kw, **variant), repeats=1),
                           section="per-example")
            per.append((name, a, b, c, variant))

    # ---- report (stdout and --md)
    lines = [f"# audioadv vs ART 1.20.1 / foolbox 3.3.4 (universal and per-example attacks)", "",
             f"Command: `{command}`", "",
             f"Written by benchmarks/uap_vs_art.py. Model {args.checkpoint}; 1 torch thread; this machine has "
             f"{os.cpu_count()} cores shared with other jobs (load average {load_start[0]:.1f} at the start, "
             f"{os.getloadavg()[0]:.1f} at the end), so wall times are noisy: ratios compare rows of the same run (seeds outermost, so load changes hit "
             f"every method alike; {'no warm-up' if args.no_warmup else 'after an untimed warm-up call of every library path, so that no row pays one-off costs'}), "
             f"and the per-example table also gives model rows evaluated (forward and backward passes x batch size), which "
             f"does not depend on the load. Rows: {args.out}.", ""]
    for section, title in (("uap", "Universal perturbations, untargeted"), ("targeted", f"Universal perturbations, targeted (class {t})")):
        if not groups[section]:
            continue
        lines += [f"## {title}", "",
                  f"{len(craft)} crafting clips (train), {len(test)} test clips, l2 ball of radius {radius:.4g} (mean "
                  f"crafting SNR {args.min_snr:g} dB), {args.passes} "
                  f"passes / ART max_iter, delta {args.delta}; mean +- sd over seeds {args.seeds} "
                  f"(visiting order / mini-batch order). Penalty: penalty_search's defaults with min_snr {args.min_snr:g}. "
                  f"Ratios: mean success / ART baseline's, ART baseline's mean time / mean time.", "",
                  "| method | test success | mean SNR (dB) | l2 of v | wall (s) | success / ART | ART time / time |",
                  "|---|---|---|---|---|---|---|"]
        base_rows = {n: rows for n, _, rows in groups[section]}
        for name, base, rows in groups[section]:
            s, ssd = mean_sd([r["test_success"] for r in rows])
            q, qsd = mean_sd([r["mean_snr"] for r in rows])
            li, _ = mean_sd([r["v_l2"] for r in rows])
            w, wsd = mean_sd([r["wall_s"] for r in rows])
            br = base_rows.get(base) if base else None
            if br:
                bs, _ = mean_sd([r["test_success"] for r in br])
                bw, _ = mean_sd([r["wall_s"] for r in br])
                ratio = f"{s / bs:.2f}" if bs > 0 else "- (ART 0)"
                speed = f"{bw / w:.2f}"
            else:
                ratio, speed = "1.00 (baseline)", "1.00"
            lines.append(f"| {name} | {s:.3f} +- {ssd:.3f} | {q:.2f} +- {qsd:.2f} | {li:.4f} | {w:.1f} +- {wsd:.1f} | "
                         f"{ratio} | {speed} |")
        lines.append("")
    if per:
        bl = ", ".join(f"@{b:g} = success with l2 <= {b:g}" for b in budgets)
        lines += ["## Per-example minimal-norm attacks (untargeted)", "",
                  f"{per[0][1]['n_clips']} correctly classified test clips, identical settings for both libraries "
                  f"(named in each row); {bl}; mean l2 over the successes; wall = best of {args.repeats} runs, the two libraries alternating run by run; rows = "
                  f"model rows evaluated per run, forward / backward (batch rows summed over passes). CW-l2 early abort: both check the loss every ceil(steps/10) "
                  f"iterations from the first one (Carlini's code); ours judges each example alone and drops it from "
                  f"the batch when it stalls. The extra audioadv CW row (one run) starts the checks after the first Adam "
                  f"step (abort_warmup=1) instead of at the unperturbed start, a setting foolbox does not have. foolbox's "
                  f"CW returns an all-zero signal for a clip it never fooled, which the model usually misclassifies: "
                  f"its 'success' column counts those (l2 = the clip's norm); the budget columns do not.", "",
                  "| attack | library | success | " + " | ".join(f"@{b:g}" for b in budgets) +
                  " | mean l2 | rows fwd / bwd | wall (s) | foolbox rows / ours (fwd+bwd) | foolbox time / ours |",
                  "|---|---|---|" + "---|" * len(budgets) + "---|---|---|---|---|"]
        for name, a, b, c, variant in per:
            for lib, r in (("foolbox 3.3.4", a), ("audioadv", b), ("audioadv + " + ", ".join(f"{k}={v}" for k, v in variant.items()), c)):
                if r is None:
                    continue
                at = " | ".join(f"{r[f'success@{x:g}']:.3f}" for x in budgets)
                tot = lambda q: q["model_rows"] + q["backward_rows"]
                fr = f"{tot(a) / tot(r):.2f}" if r is not a else "-"
                ft = f"{a['best_wall_s'] / r['best_wall_s']:.2f}" if r is not a else "-"
                lines.append(f"| {name} | {lib} | {r['success']:.3f} | {at} | {r['mean_l2']:.3f} | {r['model_rows']} / {r['backward_rows']} | "
                             f"{r['best_wall_s']:.2f} | {fr} | {ft} |")
        lines.append("")
    text = "\n".join(lines)
    print("\n" + text)
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
