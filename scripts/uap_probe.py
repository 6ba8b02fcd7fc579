"""One universal-perturbation probe on one zoo row, on the crafting and test sets of scripts/reproduce_uap.py (train
permutation seed 0, first n_craft clips; whole test split) plus held-out training clips (positions 1000-1299 of the
same permutation, never crafting clips; on a training split under 1300 clips, all the non-crafting ones), for
choosing levers without looking at the test split.

    python scripts/uap_probe.py DATA ARCH U|T TAG ['JSON'] [--out FILE]

DATA: fsdd (FSDD at ../shared/data/fsdd or $FSDD) or synth-commands; ARCH: a checkpoint runs/zoo/DATA-ARCH; U/T:
untargeted or targeted at the table's class (FSDD 3, synth-commands down). JSON: keyword arguments of penalty() over
the table's settings (c 3, escalation, restart from 0, lr 3e-4, <= 100 iterations, mini-batch 100), plus:

- method: "penalty" (default) or "iterative" (then JSON holds iterative()'s arguments: max_passes, batch_size, ...);
- n_craft: crafting clips (default 200, at most 1000);
- kappa_mult: kappa = this multiple of the median clean logit margin of the crafting clips;
- snr_ball: the l2 radius that gives this mean crafting SNR in dB (penalty: as min_snr; iterative: p = 2, that xi);
- opt: "nsgd" replaces Adam by l2-normalised gradient steps of length lr sqrt(T) (a probe, not in the library).

Prints one JSON row (crafting / held-out / test success and SNR, iterations, escalations; "at20": the same v scaled to
20.5 dB mean crafting SNR when it is louder) and appends it to --out (default runs/uap-probe/probes.jsonl).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from audioadv.attacks import universal as U
from audioadv.attacks.universal_eval import evaluate
from audioadv.data import load_dataset
from audioadv.models.checkpoint import load_checkpoint

TARGET = {"fsdd": "3", "synth-commands": "down"}


class NSGD(torch.optim.Optimizer):
    """Plain gradient steps normalised in l2, step length lr sqrt(T) (Adam moves every sample by about lr)."""

    def __init__(self, params, lr):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for q in group["params"]:
                if q.grad is not None and q.grad.norm() > 0:
                    q.add_(q.grad / q.grad.norm(), alpha=-group["lr"] * q.numel() ** 0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", choices=sorted(TARGET))
    p.add_argument("arch")
    p.add_argument("mode", choices=["U", "T"])
    p.add_argument("tag")
    p.add_argument("settings", nargs="?", default="{}")
    p.add_argument("--out", default="runs/uap-probe/probes.jsonl")
    p.add_argument("--zoo", default="runs/zoo")
    args = p.parse_args()
    torch.set_num_threads(1)
    kw = json.loads(args.settings)
    method = kw.pop("method", "penalty")
    n_craft, kmult, snr_ball, opt = kw.pop("n_craft", 200), kw.pop("kappa_mult", None), kw.pop("snr_ball", None), \
        kw.pop("opt", "adam")
    if method == "penalty":
        kw = {**dict(c=3.0, escalate=True, lr=3e-4, max_iter=100, batch_size=100, restart="zero"), **kw}
    if not 0 < n_craft <= 1000:
        raise SystemExit(f"n_craft must lie in 1..1000 (held-out clips start at 1000), got {n_craft}")
    spec = f"fsdd:{os.environ.get('FSDD', '../shared/data/fsdd')}" if args.data == "fsdd" else args.data
    model, cfg = load_checkpoint(Path(args.zoo) / f"{args.data}-{args.arch}", frozen=True)
    length, sr = int(cfg["input_length"]), int(cfg.get("sample_rate", 16000))
    tr = load_dataset(spec, "train", input_length=length, sample_rate=sr)
    te = load_dataset(spec, "test", input_length=length, sample_rate=sr)
    perm = torch.randperm(len(tr), generator=torch.Generator().manual_seed(0))
    rest = perm[1000:1300] if len(tr) >= 1300 else perm[n_craft:]     # small sets: every non-crafting clip
    if len(rest) == 0:
        raise SystemExit(f"{spec}: {len(tr)} training clips leave none held out after {n_craft} crafting clips")
    craft, held = tr.subset(perm[:n_craft].sort().values), tr.subset(rest.sort().values)
    classes = [str(c) for c in cfg.get("classes", range(cfg["num_classes"]))]
    t = None if args.mode == "U" else classes.index(TARGET[args.data])
    with torch.no_grad():
        logits = torch.cat([model(craft.waves[i:i + 100]) for i in range(0, len(craft), 100)])
    own = logits.gather(1, craft.labels.view(-1, 1)).squeeze(1)
    margin = float((own - logits.scatter(1, craft.labels.view(-1, 1), float("-inf")).amax(1)).median())
    if kmult is not None:
        kw["kappa"] = kmult * margin
    if snr_ball is not None:
        if method == "penalty":
            kw["min_snr"] = snr_ball
        else:
            kw.update(p=2, xi=U.snr_radius(craft.waves if t is None else craft.waves[craft.labels != t], snr_ball))
    if opt == "nsgd":
        U.torch.optim.Adam = NSGD       # penalty() builds its optimiser as torch.optim.Adam
    t0 = time.perf_counter()
    v, hist = U.craft(method, model, craft, targeted=t, delta=0.1, seed=0, progress=False, **kw)
    wall = time.perf_counter() - t0
    mc, mh, mt = (evaluate(model, v, d, targeted=t) for d in (craft, held, te))
    at20 = None
    if mc["mean_snr"] < 20.5:
        a = 10 ** ((mc["mean_snr"] - 20.5) / 20)
        sc = [evaluate(model, a * v, d, targeted=t) for d in (craft, held, te)]
        at20 = dict(alpha=a, craft=sc[0]["success_rate"], heldout=sc[1]["success_rate"], test=sc[2]["success_rate"],
                    snr=sc[2]["mean_snr"])
    row = dict(tag=args.tag, data=args.data, arch=args.arch, mode=args.mode, method=method, settings=kw, opt=opt,
               n_craft=n_craft, kappa_mult=kmult, snr_ball=snr_ball, margin=margin, iterations=len(hist),
               stop=next((r["iter"] for r in hist if r.get("stop")), None) if method == "penalty" else None,
               c_final=hist[-1].get("c"), escalations=[r["iter"] for r in hist if "escalated_to" in r],
               craft=mc["success_rate"], craft_snr=mc["mean_snr"], heldout=mh["success_rate"],
               heldout_snr=mh["mean_snr"], test=mt["success_rate"], snr=mt["mean_snr"], wall_s=wall, at20=at20,
               command="python scripts/uap_probe.py " + " ".join(f"'{a}'" if " " in a else a for a in sys.argv[1:]))
    print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
