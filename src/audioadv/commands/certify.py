"""`audioadv certify`: randomized-smoothing certificates of a checkpoint on a dataset (one JSON line
per example, resumable), and `--max-radius-table` (largest certifiable radius vs sigma and n)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

SIGMAS = (0.01, 0.05, 0.10, 0.25, 0.50, 1.00, 2.00, 3.00)
NS = (1000, 10000, 100000)
OPTIONS = ("sigma", "at", "n0", "n", "alpha", "batch_size", "seed")   # taken from the library when unset
# O'Reilly's "Maximum Certifiable Radius" table, rows SIGMAS, columns NS, for alpha = STUDY_ALPHA.
STUDY_ALPHA = 0.001
STUDY_MAX_RADIUS = {
    0.01: (0.025, 0.032, 0.038), 0.05: (0.123, 0.160, 0.191), 0.10: (0.246, 0.320, 0.381),
    0.25: (0.616, 0.800, 0.953), 0.50: (1.232, 1.160, 1.906), 1.00: (2.463, 3.320, 3.811),
    2.00: (4.923, 6.400, 7.623), 3.00: (7.390, 9.600, 11.434),
}


def register(sub) -> None:
    p = sub.add_parser("certify", help="randomized-smoothing certificates (Cohen et al. 2019) of a checkpoint",
                       description="Certify each example of a dataset with the smoothed classifier of CKPT "
                                   "(noise N(0, sigma^2 I) at --at); results go to one JSON line per example in "
                                   "--out, so an interrupted run resumes. --max-radius-table prints the largest "
                                   "radius CERTIFY can give for each sigma and n.")
    p.add_argument("checkpoint", nargs="?", help="checkpoint folder (model.safetensors + config.json)")
    p.add_argument("--data", help="dataset spec, e.g. fsdd:PATH?label=speaker or librispeech:PATH")
    p.add_argument("--split", default="test")
    # unset options take the defaults of Smooth and certify_dataset (`library_defaults`); reading them
    # here would import torch whenever any command's parser is built
    p.add_argument("--sigma", type=float, help="noise standard deviation (default: Smooth's)")
    p.add_argument("--at", choices=["waveform", "spectrogram", "fbank"],
                   help="representation the noise is added to (default: Smooth's, the waveform)")
    p.add_argument("--n0", type=int, help="samples to select the class (default: certify_dataset's)")
    p.add_argument("--n", type=int, help="samples to estimate pA_lower (default: certify_dataset's)")
    p.add_argument("--alpha", type=float, help="failure probability (default: certify_dataset's)")
    p.add_argument("--batch-size", type=int,
                   help="noisy copies per forward pass, shared by several examples (default: certify_dataset's)")
    p.add_argument("--per-class", type=int, default=0, help="certify K seeded examples per class (0: all)")
    p.add_argument("--max-examples", type=int, default=0, help="certify only the first N examples (0: all)")
    p.add_argument("--seed", type=int, help="example i uses seed + i (default: certify_dataset's)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--out", default="runs/certify", help="folder for the per-example JSONL and summary")
    p.add_argument("--show-defaults", action="store_true", help="print the library defaults of the options above")
    p.add_argument("--max-radius-table", action="store_true",
                   help="print the maximum certifiable radius table (sigma x n) and compare with the study")
    p.set_defaults(func=run)


def library_defaults() -> dict:
    """The defaults of `Smooth` (sigma, at) and `certify_dataset` (n0, n, alpha, batch_size, seed)."""
    import inspect

    from ..certify import Smooth, certify_dataset

    params = {**inspect.signature(Smooth.__init__).parameters, **inspect.signature(certify_dataset).parameters}
    return {k: params[k].default for k in OPTIONS}


def _settings(args) -> dict:
    """The options given on the command line, unset ones replaced by the library defaults."""
    d = library_defaults()
    return {k: (d[k] if getattr(args, k) is None else getattr(args, k)) for k in OPTIONS}


def max_radius_table(alpha: float | None = None) -> str:
    """Markdown table of max_radius(sigma, n, alpha), each cell compared with the study's value."""
    from ..certify import max_radius

    alpha = library_defaults()["alpha"] if alpha is None else alpha
    lines = [f"Maximum certifiable l2 radius sigma * Phi^-1(alpha^(1/n)), alpha = {alpha:g} "
             "(ours; the study's value in brackets where it differs)", "",
             "| sigma | " + " | ".join(f"n = {n}" for n in NS) + " | study |", "|---" * (len(NS) + 2) + "|"]
    for s in SIGMAS:
        cells, verdicts = [], []
        for j, n in enumerate(NS):
            ours = max_radius(s, n, alpha)
            study = STUDY_MAX_RADIUS[s][j] if alpha == STUDY_ALPHA else None
            if study is None or abs(round(ours, 3) - study) <= 0.001:
                cells.append(f"{ours:.3f}")
            else:
                cells.append(f"{ours:.3f} [{study:.3f}]")
                verdicts.append(f"n={n}: {'WRONG' if abs(ours - study) > 0.01 else 'small error'}")
        lines.append(f"| {s:.2f} | " + " | ".join(cells) + " | " + ("; ".join(verdicts) or "ok") + " |")
    lines += ["", "WRONG: off by more than 0.01. small error: within 0.01 (for n = 10000 the study seems to have "
              "used Phi^-1(0.001^(1/10000)) = 3.2 instead of 3.1985)."]
    return "\n".join(lines)


def run(args) -> int:
    if args.show_defaults:
        print(json.dumps(library_defaults()))
        return 0
    if args.max_radius_table:
        print(max_radius_table(args.alpha))
        return 0
    if not args.checkpoint or not args.data:
        raise ValueError("certify needs CKPT and --data (or --max-radius-table)")
    import torch

    from ..certify import Smooth, certify_dataset, results_name, summarize
    from ..data import load_dataset
    from ..models import load

    if args.threads:
        torch.set_num_threads(args.threads)
    model, cfg = load(args.checkpoint)
    data = load_dataset(args.data, args.split, input_length=int(cfg["input_length"]),
                        sample_rate=int(cfg.get("sample_rate", 16000)))
    if data.num_classes != model.num_classes:
        raise ValueError(f"{args.data}: {data.num_classes} classes but checkpoint {args.checkpoint} has "
                         f"{model.num_classes} outputs")
    if args.per_class:
        data = data.per_class(args.per_class, seed=_settings(args)["seed"])
    if args.max_examples:
        data = data.subset(range(min(args.max_examples, len(data))))
    c = _settings(args)
    smooth = Smooth(model, model.num_classes, c["sigma"], at=c["at"])
    out = Path(args.out) / results_name(c["at"], c["sigma"], c["n"])
    rows = certify_dataset(smooth, data.waves, data.labels, out, n0=c["n0"], n=c["n"], alpha=c["alpha"],
                           batch_size=c["batch_size"], seed=c["seed"], items=data.items)
    summary = {"checkpoint": str(args.checkpoint), "data": args.data, "split": args.split, "at": c["at"],
               "sigma": c["sigma"], "n0": c["n0"], "n": c["n"], "alpha": c["alpha"], **summarize(rows)}
    out.with_name(out.stem + ".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{len(rows)} examples -> {out}")
    print("radius   " + "".join(f"{r:>6}" for r in summary["certified_accuracy"]))
    print("cert.acc " + "".join(f"{v:6.2f}" for v in summary["certified_accuracy"].values()))
    print(f"abstained {summary['abstain']:.2f}, {summary['mean_time_s']:.2f} s per example", file=sys.stderr)
    return 0
