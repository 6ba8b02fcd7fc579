"""Spread a run's examples over Ray actors (`audioadv run EXPERIMENT.toml --ray [ADDRESS]`; `distributed` extra).

Each actor holds one copy of the job's model and data and computes whole batches; the driver keeps the one
results store and commits each batch as it comes back, so resuming works as without Ray. A batch's numbers
depend only on the job and the batch's index (its seed), so they equal a single-process run's. Training and the
crafting of a universal perturbation run in the driver; evaluation and per-example attacks are sharded.

The actors read the trained models and artefacts from the run folder and write saved audio into it: on a cluster
the run folder must be on a file system that every node mounts (see docs/experiments.md).
"""
from __future__ import annotations

import os
from pathlib import Path


class RayExecutor:
    """Runs jobs' pending batches on `workers` Ray actors. On a cluster with GPUs (and device not "cpu"): by
    default one actor per GPU, each reserving its share (`num_gpus`) and running there; otherwise one actor per
    CPU Ray reports, at most 8."""

    def __init__(self, address: str | None = None, *, workers: int | None = None, cpus_per_worker: float = 1,
                 gpus_per_worker: float | None = None, device: str | None = None):
        try:
            import ray
        except ImportError:
            raise ValueError("--ray needs Ray: pip install 'audioadv[distributed]'") from None
        self.ray = ray
        if not ray.is_initialized():
            env = {k: os.environ[k] for k in ("AUDIOADV_CACHE", "OMP_NUM_THREADS") if k in os.environ}
            kw = {"address": address} if address else {"num_cpus": os.cpu_count(), "include_dashboard": False}
            ray.init(runtime_env={"env_vars": env} if env else None, log_to_driver=False,
                     configure_logging=False, **kw)
        resources = ray.cluster_resources()
        total = int(resources.get("CPU", 1) // max(cpus_per_worker, 1e-9))
        gpus = 0.0 if device == "cpu" else float(resources.get("GPU", 0))
        default = int(gpus) if gpus >= 1 else min(total, 8)
        self.workers = max(1, min(workers or default, total or 1))
        if gpus_per_worker is None:       # share the GPUs out; Ray pins each actor to its own (CUDA_VISIBLE_DEVICES)
            gpus_per_worker = min(1.0, gpus / self.workers) if gpus else 0.0
        self.cpus, self.gpus = cpus_per_worker, gpus_per_worker
        # an actor with a GPU runs on it; one without stays on the CPU even where its node has GPUs
        self.device = "cpu" if not self.gpus else (device or "auto")

    def run(self, ctx, job, jid: str, plan) -> None:
        from ray.util import ActorPool

        done = ctx.store.done_ids(jid)
        pending = plan.pending(done)
        if not pending:
            return
        Worker = self.ray.remote(num_cpus=self.cpus, num_gpus=self.gpus)(_Worker)
        source = ctx.experiment
        actors = [Worker.remote(str(source), source.read_text(), os.getcwd(), str(ctx.root.resolve()), jid,
                                max(1, int(self.cpus)), self.device)
                  for _ in range(min(self.workers, len(pending)))]
        pool = ActorPool(actors)
        bar = ctx.bar(len(plan.ids), len(done & set(plan.ids)), job.name)
        try:
            for rows in pool.map_unordered(lambda a, bp: a.compute.remote(*bp), pending):
                rows = [tuple(r) for r in rows if r[0] not in done]
                ctx.store.add_examples(jid, rows)
                bar.update(len(rows))
        finally:
            bar.close()
            for a in actors:
                self.ray.kill(a)


class _Worker:
    """One model copy: rebuilds the job's plan from the experiment file, then computes batches."""

    def __init__(self, path: str, text: str, cwd: str, run_dir: str, jid: str, threads: int, device: str):
        import torch

        from . import jobs as J
        from . import spec as S
        from .store import Store, job_id

        from ..allocator import keep_freed_memory

        keep_freed_memory()
        torch.set_num_threads(threads)
        if Path(cwd).is_dir():
            os.chdir(cwd)             # relative data and checkpoint paths, as the driver saw them
        exp = S.load(path) if Path(path).is_file() else None
        if exp is None or exp.text != text:
            raise RuntimeError(f"{path}: the experiment file differs on this node")
        job = next(j for j in exp.jobs if job_id(j.kind, j.settings) == jid)
        self.store = Store(run_dir)
        ctx = J.Context(run_dir, self.store, quiet=True, log=lambda m: None, device=device)
        self.plan = J.PLANS[job.kind](ctx, job, jid)

    def compute(self, batch: int, positions: list[int]) -> list:
        return self.plan.compute(batch, positions)
