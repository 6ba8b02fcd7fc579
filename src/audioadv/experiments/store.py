"""The results store of a run: one SQLite file, `RUN_DIR/results.sqlite` (standard-library sqlite3, WAL mode).

Two tables. `jobs`: one row per job, keyed by `job_id` (a hash of the job's resolved settings), with its kind,
the settings as JSON, status, start and end times, the machine it ran on and a JSON summary. `examples`: one row
per job and example (`UNIQUE(job_id, example_id)`), with the example's fields (metadata, predictions or
transcripts, metrics, paths of saved audio) as one strict-JSON object. Strict JSON: non-finite floats are stored
as null, so every reader (jq, a browser, pandas) can parse them.

Examples are written in one transaction per batch, so a killed run loses at most the batch in flight.
"""
from __future__ import annotations

import hashlib
import json
import platform
import sqlite3
import time
from pathlib import Path

from ..results import dumps

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    settings TEXT NOT NULL,
    status TEXT NOT NULL,
    started REAL,
    finished REAL,
    machine TEXT,
    summary TEXT,
    labels TEXT
);
CREATE TABLE IF NOT EXISTS examples (
    job_id TEXT NOT NULL REFERENCES jobs(job_id),
    example_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    data TEXT NOT NULL,
    time REAL NOT NULL,
    UNIQUE(job_id, example_id)
);
"""


def job_id(kind: str, settings: dict) -> str:
    """A short stable hash of the resolved settings: changing any parameter gives a new job."""
    text = json.dumps({"kind": kind, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def machine() -> str:
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return f"{platform.node()} {platform.machine()} {dev} torch {torch.__version__} threads {torch.get_num_threads()}"


class Store:
    """`Store(run_dir)` opens (creating when needed) `run_dir/results.sqlite`."""

    FILE = "results.sqlite"

    def __init__(self, run_dir, *, create: bool = True):
        self.root = Path(run_dir)
        path = self.root / self.FILE
        if not create and not path.is_file():
            raise FileNotFoundError(f"{self.root}: no {self.FILE} (not a run folder of `audioadv run`)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # jobs
    def start_job(self, jid: str, kind: str, name: str, settings: dict, labels: dict | None = None) -> dict | None:
        """Record a job as running (a new one, or one resumed). Returns its previous row, if any.

        labels: how the experiment file named the job's model, data and parameters (for tables)."""
        old = self.job(jid)
        with self.db:
            if old is None:
                self.db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, 'running', ?, NULL, ?, NULL, ?)",
                                (jid, kind, name, dumps(settings), time.time(), machine(), dumps(labels or {})))
            elif old["status"] != "done":
                self.db.execute("UPDATE jobs SET status='running', machine=? WHERE job_id=?", (machine(), jid))
        return old

    def finish_job(self, jid: str, summary: dict, status: str = "done") -> None:
        with self.db:
            self.db.execute("UPDATE jobs SET status=?, finished=?, summary=? WHERE job_id=?",
                            (status, time.time(), dumps(summary), jid))

    def update_summary(self, jid: str, summary: dict) -> None:
        with self.db:
            self.db.execute("UPDATE jobs SET summary=? WHERE job_id=?", (dumps(summary), jid))

    def job(self, jid: str) -> dict | None:
        rows = self._jobs("WHERE job_id=?", (jid,))
        return rows[0] if rows else None

    def jobs(self, kind: str | None = None) -> list[dict]:
        return self._jobs("WHERE kind=?", (kind,)) if kind else self._jobs("", ())

    def _jobs(self, where: str, args: tuple) -> list[dict]:
        cur = self.db.execute(f"SELECT job_id, kind, name, settings, status, started, finished, machine, summary, "
                              f"labels FROM jobs {where} ORDER BY started, job_id", args)
        return [{"job_id": r[0], "kind": r[1], "name": r[2], "settings": json.loads(r[3]), "status": r[4],
                 "started": r[5], "finished": r[6], "machine": r[7], "summary": json.loads(r[8]) if r[8] else {},
                 "labels": json.loads(r[9]) if r[9] else {}} for r in cur.fetchall()]

    def record(self, kind: str, name: str, settings: dict, rows: list[dict], summary: dict | None = None,
               labels: dict | None = None) -> str:
        """Store a finished measurement made outside `audioadv run` (a benchmark): one job with its rows
        (dicts, each optionally with an "example_id"), replacing an earlier record of the same settings."""
        jid = job_id(kind, settings)
        self.delete_job(jid)
        self.start_job(jid, kind, name, settings, labels=labels)
        self.add_examples(jid, [(str(r.get("example_id", i)), i, {k: v for k, v in r.items() if k != "example_id"})
                                for i, r in enumerate(rows)])
        self.finish_job(jid, summary or {})
        return jid

    def delete_job(self, jid: str) -> None:
        """Remove a job and its examples."""
        with self.db:
            self.db.execute("DELETE FROM examples WHERE job_id=?", (jid,))
            self.db.execute("DELETE FROM jobs WHERE job_id=?", (jid,))

    # examples
    def add_examples(self, jid: str, rows: list[tuple[str, int, dict]]) -> None:
        """Insert (example_id, position, fields) rows of one job in one transaction."""
        now = time.time()
        with self.db:
            self.db.executemany("INSERT INTO examples VALUES (?, ?, ?, ?, ?)",
                                [(jid, eid, pos, dumps(fields), now) for eid, pos, fields in rows])

    def done_ids(self, jid: str) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT example_id FROM examples WHERE job_id=?", (jid,))}

    def examples(self, jid: str) -> list[dict]:
        cur = self.db.execute("SELECT example_id, data FROM examples WHERE job_id=? ORDER BY position", (jid,))
        return [{"example_id": eid, **json.loads(data)} for eid, data in cur.fetchall()]
