"""Benchmarks write their measurements to a run folder's results store and print them through audioadv's tables,
like experiment files do: `audioadv table RUN_DIR` shows them again, `make results` puts them in docs/results.md."""
from __future__ import annotations

import sys

from audioadv.experiments import Store, tables_text
from audioadv.experiments.runner import declare_tables


def record(run_dir: str, name: str, measure: str, settings: dict, rows: list[dict], keys: tuple, table: dict) -> str:
    """Store one job per measured row (identified by settings plus the row's `keys`; a new measurement replaces
    the earlier rows of the same measure) and declare `table` under `name`, with the command line as its source.
    Returns the table as Markdown."""
    store = Store(run_dir)
    for old in store.jobs("benchmark"):     # a new measurement replaces the last one of the same measure
        if old["labels"].get("measure") == measure:
            store.delete_job(old["job_id"])
    for r in rows:
        ident = {k: r[k] for k in keys if k in r}
        store.record("benchmark", f"{measure} {' '.join(str(v) for v in ident.values())}",
                     {**settings, "measure": measure, **ident}, [r], labels={"measure": measure, **ident})
    store.close()
    declare_tables(run_dir, name, " ".join(["python", *sys.argv]), [table])
    return tables_text(run_dir, name=table["title"])
