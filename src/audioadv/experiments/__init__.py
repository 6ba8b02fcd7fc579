"""Experiments as files: `audioadv run EXPERIMENT.toml` validates a file of models, data and jobs, runs it into a
run folder with one SQLite results store (resumable), and `audioadv table` / `audioadv report` show the results.

>>> from audioadv.experiments import run, tables_text
>>> run_dir = run("experiments/smoke.toml", "runs/smoke")
>>> print(tables_text(run_dir, "csv"))
"""
from .runner import run, tables_text
from .spec import SpecError, load
from .store import Store

__all__ = ["run", "tables_text", "load", "SpecError", "Store"]
