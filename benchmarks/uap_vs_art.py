"""Universal perturbations and minimal-norm attacks: audioadv against ART 1.20.1 and foolbox 3.3.4.

One run, one trained checkpoint, the same FSDD clips for every method:

1. Universal perturbations at an equal l_inf bound xi, equal number of passes and the same stopping
   rule (1 - delta): ART's ``UniversalPerturbation`` (DeepFool and FGSM attackers) and
   ``TargetedUniversalPerturbation`` (FGSM) against audioadv's iterative method (DeepFool and DDN
   inner attacks) and penalty method (projected on the same l_inf ball). Reported: test success
   rate, mean SNR (Eq. 14), wall time, and ratios to the ART baseline.
2. Per-example minimal-norm attacks with identical settings: DDN, DeepFool-l2, CW-l2 against
   foolbox's ``DDNAttack``, ``L2DeepFoolAttack``, ``L2CarliniWagnerAttack``: success rate, success
   within l2 budgets, mean l2 of the successful perturbations, wall time.

Rows are appended to ``--out`` (JSONL) as they finish; a rerun skips rows already there (use
``--fresh`` to start over). Needs the ``bench`` extra (``pip install -e '.[bench]'``).

    .venv/bin/python benchmarks/uap_vs_art.py --checkpoint runs/zoo/fsdd-cnn1d-gamma \
        --data fsdd:../shared/data/fsdd
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="runs/zoo/fsdd-cnn1d-gamma")
    p.add_argument("--data", default="fsdd:../shared/data/fsdd")
    p.add_argument("--n-craft", type=int, default=60, help="crafting clips (train split)")
    p.add_argument("--n-test", type=int, default=150, help="test clips (test split)")
    p.add_argument("--xi", type=float, default=0.02, help="l_inf bound shared by every universal method")
    p.add_argument("--passes", type=int, default=2, help="passes (ART max_iter) for the iterative methods")
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--target", type=int, default=3)
    p.add_argument("--penalty-iter", type=int, default=60)
    p.add_argument("--penalty-lr", type=float, default=0.0005)
    p.add_argument("--penalty-c", type=float, default=3.0)
    p.add_argument("--n-clips", type=int, default=16, help="clips for the per-example attacks")
    p.add_argument("--budgets", default="0.1,0.4", help="l2 budgets for success at equal budget")
    p.add_argument("--cw-steps", type=int, default=100)
    p.add_argument("--cw-search", type=int, default=5)
    p.add_argument("--skip", default="", help="comma list of sections to skip: uap,targeted,per-example")
    p.add_argument("--out", default="results/uap_vs_art.jsonl")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> int:
    args = parse()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    try:
        import foolbox as fb
        from art.attacks.evasion import TargetedUniversalPerturbation, UniversalPerturbation
        from art.estimators.classification import PyTorchClassifier
    except ImportError as exc:
        print(f"needs the bench extra (adversarial-robustness-toolbox, foolbox): {exc}", file=sys.stderr)
        return 2
    from audioadv.attacks import cw_l2, ddn, deepfool
    from audioadv.attacks import universal as U
    from audioadv.attacks.universal_eval import evaluate
    from audioadv.data import load_dataset
    from audioadv.models.checkpoint import load_checkpoint

    model, cfg = load_checkpoint(args.checkpoint, frozen=True)
    T, C = int(cfg["input_length"]), int(cfg["num_classes"])
    g = torch.Generator().manual_seed(args.seed)
    tr = load_dataset(args.data, "train", input_length=T, sample_rate=int(cfg.get("sample_rate", 16000)))
    te = load_dataset(args.data, "test", input_length=T, sample_rate=int(cfg.get("sample_rate", 16000)))
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
            done[r["name"]] = r
    skip = set(filter(None, args.skip.split(",")))
    setting = {"checkpoint": str(args.checkpoint), "n_craft": len(craft), "n_test": len(test), "xi": args.xi,
               "passes": args.passes, "delta": args.delta}

    def record(name, fn):
        if name in done:
            print(f"[cached] {name}")
            return done[name]
        print(f"running {name} ...", flush=True)
        t0 = time.perf_counter()
        extra = fn()
        row = {"name": name, "wall_s": time.perf_counter() - t0, **setting, **extra}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done[name] = row
        return row

    art_clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(T,), nb_classes=C,
                                clip_values=(-1.0, 1.0), device_type="cpu")
    xc = craft.waves.numpy()

    def uap_metrics(v, target=None):
        m = evaluate(model, torch.as_tensor(v).flatten().float(), test, targeted=target)
        return {"test_success": m["success_rate"], "mean_snr": m["mean_snr"], "mean_db_x": m["mean_db_x"],
                "v_linf": m["v_linf"], "target": target}

    rows = []
    if "uap" not in skip:
        def art_up(attacker, params):
            def run():
                random.seed(args.seed)
                a = UniversalPerturbation(art_clf, attacker=attacker, attacker_params=params, delta=args.delta,
                                          max_iter=args.passes, eps=args.xi, norm=np.inf, batch_size=50, verbose=False)
                a.generate(xc)
                return uap_metrics(a.noise)
            return run
        rows.append(record("ART UniversalPerturbation (deepfool)", art_up("deepfool", {"verbose": False})))
        rows.append(record("ART UniversalPerturbation (fgsm)", art_up("fgsm", {"eps": args.xi})))

        def ours(method, **kw):
            def run():
                v, h = U.craft(method, model, craft, delta=args.delta, seed=args.seed, progress=False, **kw)
                return {**uap_metrics(v), "iterations": len(h)}
            return run
        rows.append(record("audioadv iterative (deepfool)", ours("iterative", attack="deepfool", xi=args.xi,
                                                                 max_passes=args.passes)))
        rows.append(record("audioadv iterative (ddn)", ours("iterative", attack="ddn", xi=args.xi,
                                                            max_passes=args.passes)))
        rows.append(record("audioadv iterative (ddn, inner batch 8)", ours("iterative", attack="ddn", xi=args.xi,
                                                                           max_passes=args.passes, batch_size=8)))
        rows.append(record("audioadv penalty (l_inf projection)", ours("penalty", xi=args.xi, p=math.inf, c=args.penalty_c,
                                                                       lr=args.penalty_lr, max_iter=args.penalty_iter)))
    if "targeted" not in skip:
        t = args.target
        keep = craft.labels != t
        xct = craft.waves[keep].numpy()

        def art_tup():
            random.seed(args.seed)
            y = np.eye(C, dtype=np.float32)[np.full(len(xct), t)]
            a = TargetedUniversalPerturbation(art_clf, attacker="fgsm", attacker_params={"eps": args.xi, "targeted": True},
                                              delta=args.delta, max_iter=args.passes, eps=args.xi, norm=np.inf)
            a.generate(xct, y=y)
            return uap_metrics(a.noise, t)
        rows.append(record(f"ART TargetedUniversalPerturbation (fgsm) -> {t}", art_tup))

        def ours_t(method, **kw):
            def run():
                v, h = U.craft(method, model, craft, targeted=t, delta=args.delta, seed=args.seed, progress=False, **kw)
                return {**uap_metrics(v, t), "iterations": len(h)}
            return run
        rows.append(record(f"audioadv iterative (ddn) -> {t}", ours_t("iterative", attack="ddn", xi=args.xi,
                                                                      max_passes=args.passes)))
        rows.append(record(f"audioadv iterative (ddn, inner batch 8) -> {t}",
                           ours_t("iterative", attack="ddn", xi=args.xi, max_passes=args.passes, batch_size=8)))
        rows.append(record(f"audioadv penalty (l_inf projection) -> {t}",
                           ours_t("penalty", xi=args.xi, p=math.inf, c=args.penalty_c, lr=args.penalty_lr,
                                  max_iter=args.penalty_iter)))

    per = []
    if "per-example" not in skip:
        pred = U.predict(model, test.waves)
        ok = (pred == test.labels).nonzero().flatten()[:args.n_clips]
        x, y = test.waves[ok], test.labels[ok]
        budgets = [float(b) for b in args.budgets.split(",")]
        fmodel = fb.PyTorchModel(model, bounds=(-1, 1), device="cpu")

        def per_metrics(adv):
            adv = torch.as_tensor(adv)
            with torch.no_grad():
                succ = model(adv).argmax(1) != y
            d = (adv - x).flatten(1).norm(dim=1)
            r = {"success": float(succ.float().mean()), "mean_l2": float(d[succ].mean()) if succ.any() else float("nan"),
                 "median_l2": float(d[succ].median()) if succ.any() else float("nan"), "n_clips": len(x)}
            for b in budgets:
                r[f"success@{b:g}"] = float((succ & (d <= b + 1e-6)).float().mean())
            return r

        def fb_run(attack):
            def run():
                _, clipped, _ = attack(fmodel, x, fb.criteria.Misclassification(y), epsilons=None)
                return per_metrics(clipped)
            return run

        def ours_run(fn, **kw):
            return lambda: per_metrics(fn(model, x, y, **kw))
        cs = dict(c=1e-3, steps=args.cw_steps, binary_search_steps=args.cw_search, lr=0.01)
        specs = [
            ("DDN", fb.attacks.DDNAttack(init_epsilon=0.2, steps=50, gamma=0.05), ddn, dict(steps=50, init_norm=0.2, gamma=0.05)),
            ("DeepFool-l2", fb.attacks.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02, loss="logits"), deepfool,
             dict(steps=50, overshoot=0.02, candidates=10)),
            ("CW-l2", fb.attacks.L2CarliniWagnerAttack(binary_search_steps=args.cw_search, steps=args.cw_steps, stepsize=0.01,
                                                       confidence=0, initial_const=1e-3, abort_early=True), cw_l2, cs),
        ]
        for name, fb_attack, fn, kw in specs:
            a = record(f"foolbox {name}", fb_run(fb_attack))
            b = record(f"audioadv {name}", ours_run(fn, **kw))
            per.append((name, a, b))

    # ---- report
    print(f"\nUniversal perturbations on {args.checkpoint}: {len(craft)} crafting clips, {len(test)} test clips, "
          f"l_inf bound {args.xi}, {args.passes} passes, delta {args.delta}")
    print("| method | target | test success | mean SNR (dB) | wall (s) | success / ART | ART time / time |")
    print("|---|---|---|---|---|---|---|")
    base = {None: done.get("ART UniversalPerturbation (deepfool)"),
            args.target: done.get(f"ART TargetedUniversalPerturbation (fgsm) -> {args.target}")}
    for r in rows:
        b = base.get(r.get("target"))
        ratio = f"{r['test_success'] / b['test_success']:.2f}" if b and b["test_success"] > 0 else "-"
        speed = f"{b['wall_s'] / r['wall_s']:.2f}" if b else "-"
        print(f"| {r['name']} | {'-' if r.get('target') is None else r['target']} | {r['test_success']:.3f} | "
              f"{r['mean_snr']:.2f} | {r['wall_s']:.1f} | {ratio} | {speed} |")
    if per:
        bl = ", ".join(f"success@l2<={b}" for b in args.budgets.split(","))
        print(f"\nPer-example attacks, {per[0][1]['n_clips']} correctly classified test clips (untargeted): "
              f"success, {bl}, mean l2 of successes, wall time")
        print("| attack | library | success | " + " | ".join(f"@{b}" for b in args.budgets.split(",")) +
              " | mean l2 | wall (s) | foolbox time / ours |")
        print("|---|---|---|" + "---|" * len(args.budgets.split(",")) + "---|---|---|")
        for name, a, b in per:
            for lib, r in (("foolbox 3.3.4", a), ("audioadv", b)):
                at = " | ".join(f"{r[f'success@{float(x):g}']:.3f}" for x in args.budgets.split(","))
                sp = f"{a['wall_s'] / b['wall_s']:.2f}" if lib == "audioadv" else "-"
                print(f"| {name} | {lib} | {r['success']:.3f} | {at} | {r['mean_l2']:.3f} | {r['wall_s']:.1f} | {sp} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
