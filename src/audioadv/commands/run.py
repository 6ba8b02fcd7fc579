"""`audioadv run` (an experiment file into a run folder), `audioadv table` and `audioadv report` (its results)."""
from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("run", help="run an experiment file (models, data, a grid of jobs) into a run folder",
                       description="Validate EXPERIMENT.toml, then train its models and run its jobs, storing one row "
                                   "per example in RUN_DIR/results.sqlite as it goes. Rerunning the same command "
                                   "resumes; a changed parameter makes a new job. See docs/experiments.md.")
    p.add_argument("experiment", help="experiment file (TOML)")
    p.add_argument("--out", help="run folder (default runs/NAME, NAME from the file)")
    p.add_argument("--quiet", action="store_true", help="log lines instead of progress bars")
    p.add_argument("--report", action="store_true", help="write RUN_DIR/report.html at the end")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="shard examples over Ray actors: a local Ray without ADDRESS, else the cluster at ADDRESS "
                        "(needs the distributed extra)")
    p.add_argument("--workers", type=int, help="Ray actors (default: one per CPU, at most 8)")
    p.add_argument("--device", default="auto", help="auto (a GPU when torch sees one, else the CPU), cpu, cuda or "
                                                     "cuda:N; with --ray, each actor's GPU when the cluster has GPUs")
    p.add_argument("--only", metavar="TEXT", help="run only the jobs whose name contains TEXT (and the models they use)")
    p.set_defaults(func=run_experiment)

    t = sub.add_parser("table", help="tables of a run folder's results (Markdown, CSV or LaTeX)",
                       description="Print the tables the run's experiment file declares ([[tables]]), or one table "
                                   "per job kind, computed from RUN_DIR/results.sqlite.")
    t.add_argument("run_dir", help="run folder written by `audioadv run`")
    t.add_argument("--format", choices=["markdown", "csv", "latex"], default="markdown")
    t.add_argument("--by", help="comma-separated keys to group rows by (model, data, a parameter, ...), instead of "
                                "the declared tables")
    t.add_argument("--name", help="only the declared table whose title contains this text")
    t.add_argument("--into", metavar="FILE", help="write the tables into FILE between the lines "
                                                  "'<!-- results:MARKER -->' and '<!-- /results -->' instead of printing")
    t.add_argument("--marker", default="table", help="the MARKER of --into")
    t.set_defaults(func=run_table)

    r = sub.add_parser("report", help="write a static HTML report with players and plots of a run folder",
                       description="Write RUN_DIR/report.html (opens from disk, no network): per job a summary, "
                                   "players for clean, adversarial and perturbation audio, waveform and spectrogram "
                                   "images, universal perturbations and certified-accuracy curves.")
    r.add_argument("run_dir", help="run folder written by `audioadv run`")
    r.add_argument("--examples", type=int, default=None, help="examples with players per job (default: the "
                                                               "experiment file's [report] examples_per_job)")
    r.set_defaults(func=run_report)


def run_experiment(args) -> int:
    import torch

    from ..experiments import SpecError, run

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        out = run(args.experiment, args.out, quiet=args.quiet, ray=args.ray, workers=args.workers, only=args.only,
                  device=args.device)
    except SpecError as exc:
        print(f"audioadv run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("audioadv run: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"audioadv run: {exc}", file=sys.stderr)
        return 1
    if args.report:
        print(f"report: {_report(out)}")
    print(f"results: {out / 'results.sqlite'}; tables: audioadv table {out}")
    return 0


def run_table(args) -> int:
    import re

    from ..experiments import tables_text
    by = [k.strip() for k in args.by.split(",") if k.strip()] if args.by else None
    text = tables_text(Path(args.run_dir), args.format, by, args.name)
    if not args.into:
        sys.stdout.write(text)
        return 0
    path = Path(args.into)
    page = path.read_text()
    start, end = f"<!-- results:{args.marker} -->", "<!-- /results -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(page):
        raise ValueError(f"{path}: no '{start}' ... '{end}' block to fill")
    path.write_text(pattern.sub(lambda m: f"{start}\n{text.strip()}\n{end}", page, count=1))
    print(f"{path}: tables written between {start} and {end}")
    return 0


def _report(run_dir: Path, **kw) -> Path:
    """write_report, its warnings (such as no video encoder) printed as one line each rather than with source."""
    import warnings

    from ..experiments.report import write_report
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        page = write_report(run_dir, **kw)
    for w in caught:
        print(f"audioadv report: warning: {w.message}", file=sys.stderr)
    return page


def run_report(args) -> int:
    print(_report(Path(args.run_dir), examples=args.examples))
    return 0
