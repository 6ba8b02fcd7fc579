"""Overhead of every attack family and of certification over the bare model, measured in one run.

For each attack: the wall time of N iterations on one batch divided by N times the forward+backward
(gradient with respect to the input, weights frozen) of the bare model on the same batch. For
certification (`certify.smoothing.Smooth.certify` at the waveform): its wall time divided by the bare
model's forward passes over the same number of noisy copies in the same batch sizes (the noisy inputs
made beforehand, so the reference pays no sampling). Ratios near 1 mean the attack costs what its model
costs; the goals are <= 1.15 for attacks, <= 1.10 for certification.

    OMP_NUM_THREADS=1 python benchmarks/overhead.py [--quick] [--sweep] [--out FILE.json]

Honest iteration counts. Models are built here with untrained weights (timing does not depend on them),
labels are the clean predictions. Nothing that would stop early is on: pgd runs without `early_stop`,
ddn always runs its steps, cw_l2 runs one search step with `abort_early=False`, the universal methods
use `delta=-1` (the goal 1 - delta = 2 is unreachable; the iterative method makes one pass, whose
inner DDN runs on every point since v = 0 fools none). DeepFool, which stops an example once it is
adversarial, runs against `Unfoolable(model)`: a large constant added to the logit of the label
(class 0 for every example) keeps every example on the clean side, and the logit differences whose
gradients DeepFool takes are the model's own (a constant has no gradient). A constant that large would
zero the cross-entropy gradients of pgd and ddn (a saturated softmax), so they see the bare model. The CTC attacks target a
transcript an untrained recogniser never outputs and use no `stop_after` / `patience`, so they run
`max_iter` steps (imperceptible: both stages). msae runs against the audio-visual classifier
(`av-commands`, its `example_inputs`, untrained), targeted at another class, its three phases
(warm-up, ADMM rounds, fine-tuning: N/4, N/2 and the rest of N steps) against N forward+backward
passes of the model on the same dict batch (gradient with respect to audio and video): every step,
an ADMM round's included, costs one forward and one backward pass of the model (the mask's gradient
is taken from the same pass). Units per iteration: one forward+backward, except
DeepFool (one forward and `candidates - 1` backward passes: the Jacobian rows of its linearisation,
Alg. 2), the universal penalty method (its N forward+backward passes plus the two forward passes over the
crafting set that it needs whatever N is: the clean predictions that untargeted success, Eq. 3, compares with,
and the success rate of the final v), the universal iterative method (its inner DDN steps, 50 as in the paper: the method's own
forward passes per pass are spread over them) and certification (one forward).

Timing: one CPU thread; the reference and each method run back to back in `--repeats` rounds; the
overhead is the median over rounds of the ratio within a round (load from other processes that changes
between rounds hits both sides of a ratio alike), the times per iteration are the fastest rounds'. `--clock cpu` times this process's CPU time
instead of the wall clock: on a machine shared with other jobs, waiting for a core then does not count. The table ends with
`max overhead: attacks A, certification C`. The process keeps freed memory (`audioadv.allocator.keep_freed_memory`,
as the `audioadv` command does): otherwise glibc's thresholds, which move with everything the process allocated
before, decide whether a large tensor comes as fresh zero-filled pages, and the ratios change with the order of the
rows; `--malloc default` measures with glibc's defaults. `--sweep` adds throughput (examples/s for N iterations)
of pgd and cw_ctc against batch size and utterance length.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from audioadv import attacks, models  # noqa: E402
from audioadv.allocator import keep_freed_memory  # noqa: E402
from bench_store import record  # noqa: E402
from audioadv.attacks import universal  # noqa: E402
from audioadv.certify import Smooth  # noqa: E402
from audioadv.models.asr import CTCRecognizer  # noqa: E402

TARGET = "zebra quiz"   # a transcript an untrained recogniser does not produce


class Unfoolable(nn.Module):
    """The model with a constant added to the logit of class 0: predicts 0, same input gradients."""

    def __init__(self, model: nn.Module, offset: float = 1e3):
        super().__init__()
        self.model, self.offset = model, offset

    def forward(self, x):
        out = self.model(x)
        return torch.cat([out[:, :1] + self.offset, out[:, 1:]], 1)


def frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCK["wall"]


def fastest(fns: dict, repeats: int) -> dict:
    """Best time of each closure over `repeats` rounds in which the closures run back to back (after
    one warm-up call each); "rounds" holds every round's times."""
    for fn in fns.values():
        fn()
    rounds = []
    for _ in range(repeats):
        times = {}
        for k, fn in fns.items():
            t0 = clock()
            fn()
            times[k] = clock() - t0
        rounds.append(times)
    best = {k: min(r[k] for r in rounds) for k in fns}
    best["rounds"] = rounds
    return best


def paired_ratio(best: dict, key: str, ref: str = "ref") -> float:
    """Median over rounds of time(key) / time(ref) in the same round: load that changes between rounds
    hits both sides of each ratio alike."""
    return statistics.median(r[key] / r[ref] for r in best["rounds"])


def unwrap(out):
    return out[0] if isinstance(out, tuple) else out


# ------------------------------------------------------------------------------------- references
def ref_grad(fwd, x, iters: int, backwards: int = 1):
    """`iters` times: forward, then `backwards` input-gradient passes (retaining the graph between them).
    x: a tensor, or a dict of tensors (the gradient with respect to every entry)."""
    def run():
        for _ in range(iters):
            xi = ({k: v.detach().requires_grad_(True) for k, v in x.items()} if isinstance(x, dict)
                  else x.detach().requires_grad_(True))
            out = fwd(xi)
            for b in range(backwards):
                torch.autograd.grad(out.sum(), list(xi.values()) if isinstance(xi, dict) else xi,
                                    retain_graph=b < backwards - 1)
    return run


def ref_both(*refs):
    def run():
        for r in refs:
            r()
    return run


def ref_forward(fwd, batches: list):
    def run():
        with torch.no_grad():
            for b in batches:
                fwd(b).argmax(-1)
    return run


# ------------------------------------------------------------------------------------- families
def classifier_rows(args, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    model = frozen(models.create(args.classifier, num_classes=10, input_length=args.length))
    x = (0.1 * torch.randn(args.batch, args.length)).clamp(-1, 1)
    with torch.no_grad():
        y = model(x).argmax(1)
    blind = Unfoolable(model).eval()
    zero = torch.zeros_like(y)
    n = args.steps
    k = min(args.candidates, 10)
    cases = {
        "pgd": (lambda: attacks.pgd(model, x, y, steps=n), n, 1),
        "ddn": (lambda: attacks.ddn(model, x, y, steps=n), n, 1),
        "deepfool": (lambda: attacks.deepfool(blind, x, zero, steps=n, candidates=k), n, k - 1),
        "cw_l2": (lambda: attacks.cw_l2(model, x, y, steps=n, binary_search_steps=1, abort_early=False), n, 1),
        "universal penalty": (lambda: universal.penalty(model, (x, y), delta=-1, max_iter=n, batch_size=len(x),
                                                        patience=None), n, 1),
        # one pass with the paper's 50 inner DDN steps (Abdoli et al. Sec. 4)
        "universal iterative": (lambda: universal.iterative(model, (x, y), delta=-1, max_passes=1,
                                                            batch_size=len(x), attack="ddn",
                                                            attack_kwargs={"steps": 50}, progress=False), 50, 1),
    }
    rows = []
    for name, (fn, iters, backwards) in cases.items():
        if args.profile == name:
            profile(fn, name)
        if args.only and name not in args.only:
            continue
        ref = ref_grad(blind if name == "deepfool" else model, x, iters, backwards)
        if name == "universal penalty":     # and its two passes over the crafting set (clean predictions, final check)
            ref = ref_both(ref, ref_forward(model, [x, x]))
        best = fastest({"ref": ref, "attack": fn}, repeats)
        more = " (+2 forward passes of the set)" if name == "universal penalty" else ""
        rows.append(_row(name, "attack", f"{args.classifier} B={args.batch} T={args.length}{more}", iters,
                         best, "attack", ("fwd+%d bwd" % backwards if backwards > 1 else "fwd+bwd") + more))
    return rows


def av_rows(args, repeats: int) -> list[dict]:
    name = "msae"
    if args.only and name not in args.only and args.profile != name:
        return []
    torch.manual_seed(0)
    model = frozen(models.create("av-commands", num_classes=10, input_length=args.length))
    x = model.example_inputs(args.batch, seed=0)        # {"audio": (B, T), "video": (B, F, H, W)}
    with torch.no_grad():
        target = (model(x).argmax(1) + 1) % 10
    n = args.steps
    warmup, rounds = n // 4, n // 2                     # the three phases, n steps in all
    fn = lambda: attacks.msae(model, x, target, warmup=warmup, rounds=rounds, finetune=n - warmup - rounds)
    if args.profile == name:
        profile(fn, name)
    if args.only and name not in args.only:
        return []
    best = fastest({"ref": ref_grad(model, x, n), "attack": fn}, repeats)
    return [_row(name, "attack", f"av-commands B={args.batch} T={args.length} {warmup}+{rounds}+{n - warmup - rounds} "
                 "steps", n, best, "attack", "fwd+bwd")]


def recognizer(args) -> CTCRecognizer:
    torch.manual_seed(0)
    return frozen(CTCRecognizer(channels=args.asr_channels, hidden=args.asr_hidden))


def asr_rows(args, repeats: int) -> list[dict]:
    model = recognizer(args)
    x = (0.1 * torch.randn(args.asr_batch, args.asr_length)).clamp(-1, 1)
    lengths = torch.full((len(x),), args.asr_length, dtype=torch.long)
    texts = [TARGET] * len(x)
    n = args.asr_steps
    h = n // 2
    cases = {
        "cw_ctc": (lambda: attacks.cw_ctc(model, x, texts, lengths=lengths, max_iter=n), n),
        "imperceptible": (lambda: attacks.imperceptible(model, x, texts, lengths=lengths, max_iter_stage1=h,
                                                        max_iter_stage2=n - h), n),
        "ipc": (lambda: attacks.ipc(model, x, texts, lengths=lengths, max_iter=n), n),
        "sparse(cw_ctc)": (lambda: attacks.sparse(attacks.cw_ctc)(model, x, texts, lengths=lengths, max_iter=n), n),
    }
    rows = []
    fwd = lambda w: model.frame_logits(w, lengths)[0]
    for name, (fn, iters) in cases.items():
        if args.profile == name:
            profile(fn, name)
        if args.only and name not in args.only:
            continue
        best = fastest({"ref": ref_grad(fwd, x, iters), "attack": lambda: unwrap(fn())}, repeats)
        rows.append(_row(name, "attack", f"ctc c{args.asr_channels}h{args.asr_hidden} B={len(x)} "
                         f"T={args.asr_length}", iters, best, "attack", "fwd+bwd"))
    return rows


def certify_rows(args, repeats: int) -> list[dict]:
    if args.only and not any(m.startswith("certify") for m in args.only):
        return []
    torch.manual_seed(0)
    model = frozen(models.create(args.classifier, num_classes=10, input_length=args.length))
    smooth = Smooth(model, 10, args.sigma, at="waveform")
    x = (0.1 * torch.randn(args.length)).clamp(-1, 1)
    noisy = x + args.sigma * torch.randn(args.cert_batch, args.length)
    k = args.cert_examples
    xs = (0.1 * torch.randn(k, args.length)).clamp(-1, 1)
    one = lambda: smooth.certify(x, args.n0, args.n, 0.001, args.cert_batch, seed=0)
    if hasattr(smooth, "certify_many"):     # a small dataset, the copies of its examples sharing batches
        many = lambda: list(smooth.certify_many(xs, args.n0, args.n, 0.001, args.cert_batch, seeds=range(k)))
    else:                                   # a version without it: one example at a time
        many = lambda: [smooth.certify(xi, args.n0, args.n, 0.001, args.cert_batch, seed=i) for i, xi in enumerate(xs)]
    rows = []
    for name, fn, setup in (("certify (Smooth.certify)", one, f"n0={args.n0}"),
                            ("certify_many (dataset)", many, f"{k} examples n0={args.n0}")):
        sizes = batch_sizes(smooth.back, fn)  # the reference runs the same batches (the cost per copy varies)
        best = fastest({"ref": ref_forward(smooth.back, [noisy[:b] for b in sizes]), "certify": fn}, repeats)
        rows.append(_row(name, "certification", f"{args.classifier} {setup} n={args.n} batch={args.cert_batch} "
                         f"T={args.length}", len(sizes), best, "certify", "fwd"))
    return rows


def batch_sizes(model: nn.Module, fn) -> list[int]:
    """The batch sizes of the model's forward passes during one call of fn."""
    sizes = []
    hook = model.register_forward_hook(lambda m, inp, out: sizes.append(len(inp[0])))
    try:
        fn()
    finally:
        hook.remove()
    return sizes


def profile(fn, name: str, top: int = 25) -> None:
    """cProfile of one run of `fn`, the `top` functions by own time."""
    import cProfile
    import pstats

    fn()
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    print(f"\n## cProfile: {name}")
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(top)


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - i) for i in range(0, total, size)]


def _row(name, kind, setup, iters, best, key, unit) -> dict:
    return {"method": name, "kind": kind, "setup": setup, "iterations": iters, "unit": unit,
            "ref_s_per_iter": best["ref"] / iters, "method_s_per_iter": best[key] / iters,
            "overhead": paired_ratio(best, key), "overhead_of_best": best[key] / best["ref"]}


# ------------------------------------------------------------------------------------- sweep
def sweep_rows(args, repeats: int) -> list[dict]:
    rows = []
    n = args.sweep_steps
    torch.manual_seed(0)
    for length in args.sweep_lengths:
        model = frozen(models.create(args.classifier, num_classes=10, input_length=length))
        for b in args.sweep_batches:
            x = (0.1 * torch.randn(b, length)).clamp(-1, 1)
            with torch.no_grad():
                y = model(x).argmax(1)
            t = fastest({"pgd": lambda: attacks.pgd(model, x, y, steps=n)}, repeats)["pgd"]
            rows.append({"method": "pgd", "model": args.classifier, "batch": b, "length": length, "steps": n,
                         "examples_per_s": b / t})
    asr = recognizer(args)
    for length in args.sweep_lengths:
        for b in args.sweep_batches:
            x = (0.1 * torch.randn(b, length)).clamp(-1, 1)
            lengths = torch.full((b,), length, dtype=torch.long)
            t = fastest({"cw": lambda: unwrap(attacks.cw_ctc(asr, x, [TARGET] * b, lengths=lengths,
                                                             max_iter=n))}, repeats)["cw"]
            rows.append({"method": "cw_ctc", "model": "ctc", "batch": b, "length": length, "steps": n,
                         "examples_per_s": b / t})
    return rows


TABLE = {"title": "Overhead over the bare model's own cost (method time per iteration / model time per iteration)",
         "kind": "benchmark", "where": {"measure": "overhead"}, "rows": ["family", "method", "setup"],
         "values": ["overhead"],
         "note": "Attacks: against the model's forward + backward per iteration (DeepFool: its backward pass per "
                 "candidate class; universal penalty: also the two forward passes over the crafting set it needs, "
                 "the clean predictions and the final success rate); certification: against its forward per noisy "
                 "copy. Goal: at most 1.15 for attacks, 1.10 for certification."}
SWEEP_TABLE = {"title": "Throughput (examples per second) by batch size", "kind": "benchmark",
               "where": {"measure": "throughput"}, "rows": ["method", "length", "steps"], "columns": ["batch"],
               "values": ["examples_per_s"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small batches and few iterations (a few minutes)")
    ap.add_argument("--sweep", action="store_true", help="also throughput vs batch size and length (pgd, cw_ctc)")
    ap.add_argument("--only", nargs="+", help="methods to run (names as in the table)")
    ap.add_argument("--classifier", default="logmel-cnn")
    ap.add_argument("--profile", metavar="METHOD", help="print a cProfile of one run of METHOD (a table name)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, help="timed runs of each method and of its reference (default: 3 with --quick, else 5)")
    ap.add_argument("--clock", choices=sorted(CLOCK), default="wall",
                    help="wall time, or this process's CPU time (steadier on a machine shared with other jobs)")
    ap.add_argument("--malloc", choices=["keep", "default"], default="keep",
                    help="keep freed memory in the process, as the audioadv command does, or glibc's defaults")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "overhead.json"))
    ap.add_argument("--store", default=str(ROOT / "runs" / "overhead"),
                    help="run folder whose results store receives the rows (`audioadv table` prints them)")
    args = ap.parse_args(argv)
    q = args.quick
    args.length = 16000
    args.batch, args.steps, args.candidates = (8, 10, 4) if q else (32, 40, 10)
    args.asr_channels, args.asr_hidden = (64, 64) if q else (192, 160)
    args.asr_batch, args.asr_length, args.asr_steps = (4, 16000, 10) if q else (8, 32000, 30)
    args.sigma, args.n0, args.n, args.cert_batch = 0.1, 100, (1000 if q else 2000), (400 if q else 1000)
    args.cert_examples = 4
    args.sweep_steps = 5 if q else 20
    args.sweep_batches = (1, 4, 16) if q else (1, 4, 16, 64)
    args.sweep_lengths = (8000, 32000) if q else (8000, 32000, 96000)
    repeats = args.repeats or (3 if q else 5)
    if args.malloc == "keep":
        keep_freed_memory()
    global clock
    clock = CLOCK[args.clock]
    torch.set_num_threads(args.threads)

    rows = (classifier_rows(args, repeats) + av_rows(args, repeats) + asr_rows(args, repeats)
            + certify_rows(args, repeats))
    settings = {"quick": q, "clock": args.clock, "threads": args.threads, "repeats": repeats, "malloc": args.malloc,
                "classifier": args.classifier}
    for r in rows:
        r["family"] = r["kind"]
    print(record(args.store, "overhead", "overhead", settings, rows, ("family", "method", "setup"), TABLE))
    worst = {kind: max((r["overhead"] for r in rows if r["kind"] == kind), default=float("nan"))
             for kind in ("attack", "certification")}
    result = {"threads": args.threads, "quick": q, "clock": args.clock, "rows": rows}
    if args.sweep:
        sw = sweep_rows(args, repeats)
        result["sweep"] = sw
        print(record(args.store, "throughput", "throughput", settings, sw, ("method", "batch", "length", "steps"),
                     SWEEP_TABLE))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"max overhead: attacks {worst['attack']:.3f}, certification {worst['certification']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
