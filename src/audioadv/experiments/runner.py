"""Run an experiment file into a run folder: validate everything first, then train and run each job, resuming
whatever an earlier, interrupted run of the same file left in the store."""
from __future__ import annotations

import json
from pathlib import Path

from . import jobs as J
from . import spec as S
from . import tables as T
from .store import Store, job_id

EXPERIMENTS = "experiments"      # RUN_DIR/experiments/NAME.toml: each file run into the folder; index.json its source


def check_targets(exp: S.Experiment) -> None:
    """A target class the model does not have is a mistake in the file: report it before any work."""
    for job in exp.jobs:
        target = job.settings.get("target")
        if job.kind not in ("attack", "universal") or target in (False, None, "") or not job.model.checkpoint:
            continue
        cfg = json.loads((Path(job.model.checkpoint) / "config.json").read_text())
        classes = [str(c) for c in cfg.get("classes", range(int(cfg.get("num_classes", 0))))]
        ok = str(target) in classes or (isinstance(target, int) and not isinstance(target, bool)
                                        and 0 <= target < len(classes))
        if not ok:
            line = f":{job.line}" if job.line else ""
            raise S.SpecError(f"{exp.path}{line}: jobs[{job.index}]: target {target!r} is not a class of model "
                              f"{job.model.name} ({', '.join(classes)})")


def run(path, out=None, *, quiet: bool = False, log=print, ray: str | None = None, workers: int | None = None,
        only: str | None = None, device: str | None = None) -> Path:
    """Run every job of the experiment file `path` into `out` (default runs/NAME); returns the run folder.

    ray: None runs in this process; "local" starts a local Ray and shards examples over its actors; any other
    value is the address of a running Ray cluster. workers: Ray actors (default one per CPU, at most 8).
    only: run just the jobs whose name contains this text (and train just the models they use).
    device: "auto" (default: the first GPU when torch sees one, else the CPU), "cpu", "cuda" or "cuda:N"; with
    Ray, each actor's own GPU when the cluster has GPUs. Universal-perturbation jobs run on the CPU."""
    exp = S.load(path)
    check_targets(exp)
    try:
        J.resolve_device(device)
    except ValueError as exc:
        raise S.SpecError(f"--device {device}: {exc}") from None
    if only:
        exp.jobs = [j for j in exp.jobs if only in j.name]
        if not exp.jobs:
            raise S.SpecError(f"{exp.path}: no job's name contains {only!r}")
    out = Path(out) if out else Path("runs") / exp.name
    store = Store(out)
    _keep_copy(out, exp, path)
    executor = None
    if ray is not None:
        from .distributed import RayExecutor
        executor = RayExecutor(None if ray == "local" else ray, workers=workers, device=device)
    ctx = J.Context(out, store, quiet=quiet, log=log, ray=executor, device=device)
    ctx.experiment = Path(path)
    failed = []
    try:
        used = {m.name for j in exp.jobs for m in [j.model, *j.extra_models]}
        for models in exp.models.values():      # a file of models alone (the zoo) trains them all
            for m in models:
                if m.train is not None and (not exp.jobs or m.name in used):
                    J.load_model(ctx, m)
        for k, job in enumerate(exp.jobs, 1):
            jid = job_id(job.kind, job.settings)
            old = store.start_job(jid, job.kind, job.name, job.settings, labels=job.display)
            if old and old["status"] == "done":
                if not quiet:
                    log(f"[{k}/{len(exp.jobs)}] {job.name}: done earlier ({jid})")
                continue
            if quiet:
                log(f"[{k}/{len(exp.jobs)}] {job.name} ({jid}) ...")
            try:
                summary = J.execute(ctx, job, jid)
            except (ValueError, FileNotFoundError) as exc:
                store.finish_job(jid, {"error": str(exc)}, status="failed")
                log(f"[{k}/{len(exp.jobs)}] {job.name}: failed: {exc}")
                failed.append(job.name)
                continue
            record = store.job(jid)
            metrics = T.summarize(job.kind, store.examples(jid), record)
            store.finish_job(jid, {**(summary or {}), **metrics})
            shown = ", ".join(f"{m} {T.fmt(m, v)}" for m, v in metrics.items() if v is not None)
            log(f"[{k}/{len(exp.jobs)}] {job.name}: {shown}")
        _write_summary(out, store)
    finally:
        store.close()
    if failed:
        raise RuntimeError(f"{len(failed)} job(s) failed: {'; '.join(failed)} (see `audioadv table {out}`)")
    return out


def _write_summary(out: Path, store: Store) -> None:
    """RUN_DIR/summary.json: every job's name, kind, status and metrics, for scripts that want no SQL."""
    from ..results import dumps
    jobs = [{"job_id": j["job_id"], "name": j["name"], "kind": j["kind"], "status": j["status"],
             "labels": j["labels"], "summary": j["summary"]} for j in store.jobs()]
    (out / "summary.json").write_text(dumps({"run_dir": str(out), "jobs": jobs}, indent=1) + "\n")


def _keep_copy(out: Path, exp: S.Experiment, path) -> None:
    folder = out / EXPERIMENTS
    folder.mkdir(parents=True, exist_ok=True)
    index = experiments_run(out)
    index[exp.name] = str(path)
    (folder / f"{exp.name}.toml").write_text(exp.text)
    (folder / "index.json").write_text(json.dumps(index, indent=1) + "\n")


def experiments_run(run_dir) -> dict:
    """{experiment name: the path it was run from} of every file run into run_dir, in the order first run."""
    index = Path(run_dir) / EXPERIMENTS / "index.json"
    return json.loads(index.read_text()) if index.is_file() else {}


def declared(run_dir) -> list[tuple[str, dict]]:
    """(experiment name, parsed file) of every experiment file run into run_dir (or benchmark that declared
    its tables there)."""
    out = []
    for name in experiments_run(run_dir):
        toml, js = Path(run_dir) / EXPERIMENTS / f"{name}.toml", Path(run_dir) / EXPERIMENTS / f"{name}.json"
        out.append((name, S.tomllib.loads(toml.read_text()) if toml.is_file() else json.loads(js.read_text())))
    return out


def declare_tables(run_dir, name: str, source: str, tables: list[dict]) -> None:
    """For measurements written to a store outside `audioadv run` (benchmarks): the tables that show them,
    so that `audioadv table RUN_DIR` prints them like an experiment file's."""
    folder = Path(run_dir) / EXPERIMENTS
    folder.mkdir(parents=True, exist_ok=True)
    index = experiments_run(run_dir)
    index[name] = source
    (folder / f"{name}.json").write_text(json.dumps({"tables": tables}, indent=1) + "\n")
    (folder / "index.json").write_text(json.dumps(index, indent=1) + "\n")


def table_specs(run_dir: Path, store: Store, by: list[str] | None = None, name: str | None = None) -> list[dict]:
    """The tables the run's experiment files declare (all, or those titled like `name`), else one per job kind."""
    specs = [] if by else [{**t, "_source": src} for exp, raw in declared(run_dir)
                           for t in raw.get("tables", []) for src in [experiments_run(run_dir)[exp]]]
    specs = specs or T.default_specs(store, by)
    if name:
        specs = [t for t in specs if name.lower() in t["title"].lower()]
        if not specs:
            raise ValueError(f"{run_dir}: no table titled like {name!r}")
    return specs


def tables_text(run_dir, fmt: str = "markdown", by: list[str] | None = None, name: str | None = None) -> str:
    store = Store(run_dir, create=False)
    try:
        parts = []
        for spec in table_specs(Path(run_dir), store, by, name):
            header, rows = T.build(store, spec)
            if not rows:               # no finished job of this table yet
                continue
            if fmt == "markdown":
                src = spec.get("_source")
                source = ("" if not src else f"\nFrom `{src}`.\n" if not src.endswith(".toml")
                          else f"\nFrom `{src}`: `audioadv run {src} --out {run_dir}`.\n")
                parts.append(f"**{spec['title']}**\n\n" + T.render(header, rows, fmt)
                             + (f"\n{spec['note']}\n" if spec.get("note") else "") + source)
            elif fmt == "latex":
                parts.append(T.render(header, rows, fmt, spec["title"]))
            else:
                parts.append(T.render(header, rows, fmt))
        return "\n".join(parts)
    finally:
        store.close()
