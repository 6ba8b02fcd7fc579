"""Tables from a results store: metrics over the per-example rows, grouped and pivoted, as Markdown, CSV or LaTeX.

A table names the jobs it shows (`kind`, `where`), its row keys, an optional column key and its values. Keys are
looked up in the job's labels (the model, data and parameters as the experiment file wrote them), then in its
resolved settings, then in the per-example rows (e.g. `on_model` for a transfer matrix). Values are metrics:

- `n`: examples; `success_rate`: mean of `success` (examples that do not count, e.g. a targeted run's clips of
  the target class, are left out); `accuracy`: mean of `correct`; `abstain`: certification's abstention rate;
- `certified@R`: certified accuracy at l2 radius R (correct and radius >= R);
- `job.KEY`: a job-level figure (e.g. `job.iterations`, `job.craft_seconds`);
- any other name: the mean of that per-example field over the examples that count, non-finite values left out
  (`snr_db`, `db_x`, `l2`, `l0`, `cer_target`, `seconds`, ...).
"""
from __future__ import annotations

import csv
import io
import math

DEFAULT_VALUES = {
    "train": ["n", "accuracy"],
    "attack": ["n", "success_rate", "snr_db", "db_x", "l2", "seconds"],
    "universal": ["n", "success_rate", "snr_db", "db_x", "job.iterations", "job.craft_seconds"],
    "certify": ["n", "accuracy", "certified@0.05", "certified@0.25", "certified@0.5", "abstain", "seconds"],
    "asr-attack": ["n", "success_rate", "snr_db", "cer_target", "l0", "seconds"],
    "benchmark": ["n"],
}
RATE = ("success_rate", "accuracy", "abstain")


def _counted(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("success", True) is not None]


def metric(name: str, rows: list[dict], job: dict | None = None):
    if name == "n":
        return len(_counted(rows))
    if name.startswith("job."):
        return (job or {}).get("summary", {}).get(name[4:])
    if name == "success_rate":
        vals = [bool(r["success"]) for r in rows if r.get("success") is not None]
        return sum(vals) / len(vals) if vals else None
    if name == "accuracy":
        vals = [bool(r["correct"]) for r in rows if "correct" in r]
        return sum(vals) / len(vals) if vals else None
    if name == "abstain":
        vals = [bool(r.get("abstain")) for r in rows]
        return sum(vals) / len(vals) if vals else None
    if name.startswith("certified@"):
        radius = float(name.split("@", 1)[1])
        vals = [bool(r.get("correct")) and (r.get("radius") or 0.0) >= radius for r in rows if "radius" in r]
        return sum(vals) / len(vals) if vals else None
    vals = []
    for r in _counted(rows):
        v = r.get(name)
        if isinstance(v, bool):
            v = float(v)
        if isinstance(v, (int, float)) and math.isfinite(v):
            vals.append(float(v))
    return sum(vals) / len(vals) if vals else None


def fmt(name: str, value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if name == "n" or (isinstance(value, int) and not name.startswith("certified")):
        return str(value)
    if name in RATE or name.startswith("certified@"):
        return f"{value:.3f}"
    if "snr" in name or "db" in name:
        return f"{value:.1f}"
    return f"{value:.3g}"


def summarize(kind: str, rows: list[dict], job: dict | None = None) -> dict:
    """The default metrics of a job kind over its own rows (a universal job's transfer rows left out)."""
    own = [r for r in rows if "/" not in r.get("example_id", "")]
    return {m: metric(m, own, job) for m in DEFAULT_VALUES.get(kind, ["n"]) if not m.startswith("job.")}


def _key(job: dict, key: str, row: dict | None = None):
    if key == "job":
        return job["name"]
    if key == "kind":
        return job["kind"]
    for src in (job.get("labels", {}), job["settings"]):
        if key in src:
            v = src[key]
            if isinstance(v, dict):
                return ", ".join(f"{k}={x}" for k, x in v.items())
            return str(v) if not isinstance(v, (str, int, float, bool, type(None))) else v
    return None if row is None else row.get(key)


def _job_matches(job: dict, spec: dict) -> bool:
    if spec.get("kind") and job["kind"] != spec["kind"]:
        return False
    keys = [*(spec.get("where") or {}), *(spec.get("rows") or []), *([spec["columns"]] if isinstance(
        spec.get("columns"), str) else spec.get("columns") or [])]
    if job["kind"] == "train" and not spec.get("kind") and "kind" not in keys:
        return False            # a table of attacks or certificates is not about the training jobs
    for k, v in (spec.get("where") or {}).items():
        have = _key(job, k)
        if (have not in v) if isinstance(v, list) else (have != v):
            return False
    return True


def build(store, spec: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of one table spec: title, kind, where, rows, columns, values."""
    row_keys = list(spec.get("rows") or ["job"])
    col_key = spec.get("columns")
    col_key = col_key[0] if isinstance(col_key, list) and col_key else (col_key or None)
    values = list(spec.get("values") or DEFAULT_VALUES.get(spec.get("kind"), ["n"]))
    groups: dict = {}
    for job in store.jobs(spec.get("kind")):
        if job["status"] != "done" or not _job_matches(job, spec):
            continue
        rows = store.examples(job["job_id"])
        example_keys = [k for k in row_keys + ([col_key] if col_key else []) if _key(job, k) is None]
        if not example_keys:
            rows = [r for r in rows if "/" not in r["example_id"]]      # a universal job's transfer rows aside
        for r in rows:
            ex = {k: r.get(k) for k in example_keys}
            rk = tuple(ex[k] if k in ex else _key(job, k) for k in row_keys)
            ck = (ex[col_key] if col_key in ex else _key(job, col_key)) if col_key else None
            groups.setdefault((rk, ck), ([], job))[0].append(r)
    order_rows = list(dict.fromkeys(rk for rk, _ in groups))
    order_cols = list(dict.fromkeys(ck for _, ck in groups))
    cells = {key: [fmt(v, metric(v, rows, job)) for v in values] for key, (rows, job) in groups.items()}
    if col_key:
        header = [*row_keys, *(f"{col_key}={c}" for c in order_cols)]
        body = [[_s(x) for x in rk] + [" / ".join(c or "-" for c in cells.get((rk, ck), [])) for ck in order_cols]
                for rk in order_rows]
    else:
        header = [*row_keys, *values]
        body = [[_s(x) for x in rk] + cells[(rk, None)] for rk in order_rows]
    return header, body


def _s(x) -> str:
    return "" if x is None else str(x)


def default_specs(store, by: list[str] | None = None) -> list[dict]:
    """One table per job kind in the store: a row per job (or per --by group)."""
    kinds = []
    for job in store.jobs():
        if job["kind"] not in kinds:
            kinds.append(job["kind"])
    return [{"title": f"{k} jobs", "kind": k, "rows": by or ["job"], "values": DEFAULT_VALUES.get(k, ["n"])}
            for k in kinds]


def render(header: list[str], rows: list[list[str]], fmt_name: str = "markdown", title: str = "") -> str:
    if fmt_name == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        return buf.getvalue()
    if fmt_name == "latex":
        esc = lambda s: (str(s).replace("\\", "\\textbackslash{}").replace("&", "\\&").replace("%", "\\%")  # noqa: E731
                         .replace("_", "\\_").replace("#", "\\#").replace("$", "\\$"))
        lines = ["\\begin{tabular}{" + "l" * len(header) + "}", "\\hline",
                 " & ".join(esc(h) for h in header) + " \\\\", "\\hline"]
        lines += [" & ".join(esc(c) for c in r) + " \\\\" for r in rows]
        lines += ["\\hline", "\\end{tabular}"]
        if title:
            lines.insert(0, f"% {title}")
        return "\n".join(lines) + "\n"
    if fmt_name != "markdown":
        raise ValueError(f"unknown table format {fmt_name!r} (markdown, csv or latex)")
    pipe = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(pipe(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(pipe(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
