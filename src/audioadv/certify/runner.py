"""Certify a dataset with a `Smooth` classifier, one JSON line per example, resuming where a
previous run stopped; and the certified-accuracy summary of such a file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .smoothing import Smooth, certified_accuracy

RADII = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def results_name(at: str, sigma: float, n: int) -> str:
    return f"certify-{at}-sigma{sigma:g}-n{n}.jsonl"


def read_results(path: str | Path) -> list[dict]:
    """The per-example records of a results file; a cut-off last line (interrupted write) is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    rows, lines = [], path.read_text().splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if lineno == len(lines):
                break           # the run was killed mid-write; this example is redone
            raise ValueError(f"{path}: line {lineno} is not valid JSON") from None
    return rows


def certify_dataset(smooth: Smooth, waves: torch.Tensor, labels: torch.Tensor, out: str | Path, *,
                    n0: int = 100, n: int = 10000, alpha: float = 0.001, batch_size: int = 1000,
                    seed: int = 0, items: Sequence[dict] | None = None, progress: bool = True) -> list[dict]:
    """CERTIFY every example of (waves, labels), appending one JSON line per example to `out`.

    Examples already in `out` (same index) are skipped, so an interrupted run resumes. Example
    i uses seed `seed + i`, so a resumed run gives the same numbers as an uninterrupted one. The noisy
    copies of several examples share the model's batches (`Smooth.certify_many`); lines are written as
    examples finish, and time_s is each example's share of the batch time.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = read_results(out)
    settings = {"at": smooth.at, "sigma": smooth.sigma, "n0": n0, "n": n, "alpha": alpha}
    for row in done:
        if any(row.get(k) != v for k, v in settings.items()):
            raise ValueError(f"{out}: holds results for other settings "
                             f"({ {k: row.get(k) for k in settings} } vs {settings}); use another --out")
    todo = sorted(set(range(len(waves))) - {row["index"] for row in done})
    if done:  # rewrite without a cut-off last line
        out.write_text("".join(json.dumps(r) + "\n" for r in done))
    with out.open("a") as f:
        results = smooth.certify_many([waves[i] for i in todo], n0, n, alpha, batch_size,
                                      seeds=[seed + i for i in todo], progress=False)
        for j, pred, rad, secs in tqdm(results, total=len(todo), desc=f"certify {smooth.at} sigma={smooth.sigma:g}",
                                       disable=not progress):
            i = todo[j]
            row = {"index": i, "label": int(labels[i]), "predict": pred, "radius": rad,
                   "correct": pred == int(labels[i]), "time_s": round(secs, 4), **settings}
            if items is not None and i < len(items) and "path" in items[i]:
                row["path"] = str(items[i]["path"])
            f.write(json.dumps(row) + "\n")
            f.flush()
            done.append(row)
    return sorted(done, key=lambda r: r["index"])


def summarize(rows: Sequence[dict], radii: Sequence[float] = RADII) -> dict:
    """Certified accuracy at each radius, abstention rate and mean time per example."""
    if not rows:
        raise ValueError("summarize: no results")
    acc = certified_accuracy([r["label"] for r in rows], [r["predict"] for r in rows],
                             [r["radius"] for r in rows], list(radii))
    return {"count": len(rows), "certified_accuracy": dict(zip([str(r) for r in radii], acc)),
            "abstain": sum(r["predict"] == Smooth.ABSTAIN for r in rows) / len(rows),
            "mean_time_s": sum(r["time_s"] for r in rows) / len(rows)}
