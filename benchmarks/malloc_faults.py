"""CPU time with glibc's default malloc against `audioadv.allocator.keep_freed_memory`, in one run.

Each workload runs `--repeats` times in each of two fresh Python processes, one with glibc's defaults and
one after `keep_freed_memory()` (which the `audioadv` command calls); each process reports the user and
system CPU seconds and minor page faults of its timed calls (after one warm-up call). Workloads, untrained
weights (timing does not depend on them), one thread by default:

- certify: `Smooth.certify` of `resemblyzer-speaker` with the noise at the fbank representation (the LSTM
  back half), n0 = 100, n = 1000, batch 500: the smoothing tables' inner loop.
- av-train: forward + backward (weights included) of the fused `AVRecognizer` on 16 three-second clips,
  as one step of `fit_av_recognizer`.
- pgd: `attacks.pgd` on `logmel-cnn`, 32 one-second clips, 10 steps.

    python benchmarks/malloc_faults.py [--threads 1] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

WORKLOADS = ("certify", "av-train", "pgd")


def workload(name: str):
    import torch

    from audioadv import attacks, models
    torch.manual_seed(0)
    if name == "certify":
        from audioadv.certify import Smooth
        net = models.create("resemblyzer-speaker", num_classes=10, pretrained=False).eval()
        smooth = Smooth(net, 10, 0.1, at="fbank")
        x = 0.1 * torch.randn(net.input_length)
        return lambda: smooth.certify(x, 100, 1000, 0.001, 500, seed=0)
    if name == "av-train":
        from audioadv.models.av import AVRecognizer
        net = AVRecognizer(channels=128, hidden=128).train()
        inputs = net.example_inputs(16, seconds=3.0)

        def step():
            logp, _ = net.frame_logits(inputs)
            logp.sum().backward()
        return step
    if name == "pgd":
        net = models.create("logmel-cnn", num_classes=10, input_length=16000).eval()
        x = (0.1 * torch.randn(32, 16000)).clamp(-1, 1)
        y = torch.zeros(32, dtype=torch.long)
        return lambda: attacks.pgd(net, x, y, steps=10)
    raise ValueError(f"unknown workload {name!r}; use one of {', '.join(WORKLOADS)}")


def child(name: str, keep: bool, threads: int, repeats: int) -> None:
    """Runs in a fresh process: prints one JSON line with its timed calls' CPU time and page faults."""
    import torch
    if keep:
        from audioadv.allocator import keep_freed_memory
        if not keep_freed_memory():
            print(json.dumps({"error": "not glibc: keep_freed_memory changes nothing here"}))
            return
    torch.set_num_threads(threads)
    fn = workload(name)
    fn()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(repeats):
        fn()
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    print(json.dumps({"user_s": (r1.ru_utime - r0.ru_utime) / repeats, "sys_s": (r1.ru_stime - r0.ru_stime) / repeats,
                      "minor_faults": (r1.ru_minflt - r0.ru_minflt) / repeats, "wall_s": (t1 - t0) / repeats}))


def measure(name: str, keep: bool, threads: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--threads", str(threads), "--repeats", str(repeats)]
    out = subprocess.run(cmd + (["--keep"] if keep else []), capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


TABLE = {"title": "CPU time per call with glibc's default malloc and with keep_freed_memory", "kind": "benchmark",
         "where": {"measure": "malloc"}, "rows": ["workload"],
         "values": ["default_cpu_s", "default_sys_s", "kept_cpu_s", "kept_sys_s", "cpu_ratio"],
         "note": "cpu = user + system CPU seconds per call in one process; sys: its system (kernel) part, mostly "
                 "zero-filling fresh pages; cpu_ratio: default / kept, measured in the same run."}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="+", choices=WORKLOADS)
    ap.add_argument("--store", default=str(ROOT / "runs" / "bench-malloc"),
                    help="run folder whose results store receives the rows (`audioadv table` prints them)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.keep, args.threads, args.repeats)
        return 0
    from bench_store import record
    rows = []
    for name in args.only or WORKLOADS:
        default, kept = (measure(name, keep, args.threads, args.repeats) for keep in (False, True))
        if "error" in kept:
            print(kept["error"], file=sys.stderr)
            return 1
        cpu_d, cpu_k = default["user_s"] + default["sys_s"], kept["user_s"] + kept["sys_s"]
        rows.append({"workload": name, "default_cpu_s": cpu_d, "default_sys_s": default["sys_s"],
                     "kept_cpu_s": cpu_k, "kept_sys_s": kept["sys_s"], "cpu_ratio": cpu_d / cpu_k,
                     "default_faults": default["minor_faults"], "kept_faults": kept["minor_faults"]})
        print(f"{name}: {cpu_d:.3f} -> {cpu_k:.3f} CPU s per call ({cpu_d / cpu_k:.2f}x)", flush=True)
    print(record(args.store, "malloc", "malloc", {"threads": args.threads, "repeats": args.repeats}, rows,
                 ("workload",), TABLE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
