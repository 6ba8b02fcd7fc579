"""What each job kind computes, example by example, into the results store.

Examples are processed in a fixed partition into batches (the job's `commit_every`, in the order the examples were
selected), and each batch draws its randomness from `seed` and its own index. A batch is committed in one
transaction, so a run that is killed and started again recomputes only the batch in flight, with the same
numbers as an uninterrupted run.
"""
from __future__ import annotations

import inspect
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..io import save
from ..signal import db_x, l0, l2, linf, snr
from .spec import ASR_ATTACKS, Job, Model
from .store import Store, job_id

SAFE = re.compile(r"[^A-Za-z0-9_-]")


class Context:
    """What the jobs of one run share: its folder, store, loaded models and data, progress settings."""

    def __init__(self, run_dir, store: Store, *, quiet: bool = False, log=print, ray=None, device=None):
        self.root, self.store, self.quiet, self.log, self.ray = Path(run_dir), store, quiet, log, ray
        self.device = resolve_device(device)
        self._models, self._data = {}, {}

    def bar(self, total: int, done: int, desc: str):
        from tqdm import tqdm
        return tqdm(total=total, initial=done, desc=desc[:60], unit="ex", disable=self.quiet, dynamic_ncols=True,
                    smoothing=0.1)

    def dataset(self, spec: str, split: str, length: int | None = None, sr: int = 16000):
        from ..data import load_dataset
        key = (spec, split, length, sr)
        if key not in self._data:
            kw = {} if length is None else {"input_length": length, "sample_rate": sr}
            self._data[key] = load_dataset(spec, split, **kw)
        return self._data[key]


def resolve_device(device=None) -> torch.device:
    """"auto" or None: the first GPU when torch sees one, else the CPU; otherwise the named torch device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:                  # torch's error for an unknown device name
        raise ValueError(f"device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch sees no CUDA device on this machine")
    return dev


def _to(x, dev):
    """A tensor or a dict of tensors (audio-visual inputs) on device dev."""
    return {k: v.to(dev) if torch.is_tensor(v) else v for k, v in x.items()} if isinstance(x, dict) else x.to(dev)


def _seed_for(seed: int, batch: int) -> int:
    return (seed * 1_000_003 + batch) % (2 ** 31)


def _save_audio(ctx: Context, jid: str, eid: str, clean, adv, sr: int) -> dict:
    folder = ctx.root / "audio" / jid
    stem = SAFE.sub("_", eid)
    paths = {}
    for name, wav in (("clean", clean), ("adv", adv), ("delta", adv - clean)):
        path = folder / f"{stem}-{name}.wav"
        save(path, wav.detach().float().cpu(), sr, subtype="FLOAT", warn_clipping=False)
        paths[f"{name}_wav"] = str(path.relative_to(ctx.root))
    return paths


def _save_video(ctx: Context, jid: str, eid: str, clean, adv, fps: float) -> dict:
    """An audio-visual example's clean and adversarial frames, for the report's videos. Float32, since a
    perturbation below one grey level would vanish in 8 bits; written to a temporary name first, so a file that
    exists is complete."""
    import numpy as np
    path = ctx.root / "video" / jid / f"{SAFE.sub('_', eid)}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
    np.savez_compressed(tmp, clean=clean.detach().float().cpu().numpy(), adv=adv.detach().float().cpu().numpy(),
                        fps=np.float32(fps))
    os.replace(tmp, path)
    return {"video_npz": str(path.relative_to(ctx.root))}


def _inputs(ds, idx):
    """The model's inputs for rows idx: waveforms, or a dict of modalities for an audio-visual dataset."""
    return ds.inputs(idx) if hasattr(ds, "inputs") else ds.waves[idx]


@torch.no_grad()
def _predict(model, ds, batch_size: int = 64) -> torch.Tensor:
    """Predicted classes of a whole dataset, on the CPU."""
    model.eval()
    dev = next(model.parameters()).device
    return torch.cat([model(_to(_inputs(ds, torch.arange(i, min(i + batch_size, len(ds)))), dev)).argmax(1).cpu()
                      for i in range(0, len(ds), batch_size)]) if len(ds) else torch.zeros(0, dtype=torch.long)


def _flat(record: dict) -> dict:
    """An attack's per-example record as row fields: scalars as they are, a dict per modality as key_modality."""
    out = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update({f"{k}_{m}": x for m, x in v.items() if isinstance(x, (int, float, bool))})
        elif isinstance(v, (int, float, bool, str)) or v is None:
            out[k] = v
    return out


def _accepts(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


# models -----------------------------------------------------------------------------------------------------
def load_model(ctx: Context, model: Model, device=None):
    """(module, config) of a declared model (any checkpoint kind models.load reads) on `device` (default the
    run's), training it first (as a `train` job) when it has a train block."""
    dev = torch.device(device or ctx.device)
    key = (model.name, str(dev))
    if key not in ctx._models:
        if model.train is not None:
            net, cfg = run_train(ctx, model)
        else:
            from ..models import load
            net, cfg = load(model.checkpoint, frozen=True)
        ctx._models[key] = (net.to(dev), cfg)
    return ctx._models[key]


def run_train(ctx: Context, model: Model):
    """Train a zoo classifier (train.fit) and store its per-example test predictions."""
    from .. import models as zoo
    from ..models import load
    from ..train import TrainConfig, fit, split_validation

    s = dict(model.train)
    settings = {k: v for k, v in s.items() if k != "data_name"}
    jid = job_id("train", settings)
    folder = ctx.root / "models" / SAFE.sub("_", model.name)      # e.g. RUN_DIR/models/classifier
    old = ctx.store.job(jid)
    if old and old["status"] == "done":          # trained earlier, maybe declared under another name
        for where in (folder, ctx.root / old["summary"].get("checkpoint", folder)):
            if (where / "model.safetensors").is_file():
                m, cfg = load(where, frozen=True)
                if cfg.get("train_job") == jid:
                    return m, cfg
    ctx.store.start_job(jid, "train", f"train {model.name}", settings,
                        labels={"model": model.name, "arch": s["arch"], "data": s["data_name"], "epochs": s["epochs"]})
    ctx.log(f"training {model.name} ({s['arch']} on {s['data_name']}, {s['epochs']} epochs)")
    train = ctx.dataset(s["data"], "train")
    try:
        val = ctx.dataset(s["data"], s["val_split"]) if s["val_split"] else None
    except (ValueError, FileNotFoundError):
        val = None
    if val is None or len(val) == 0:
        train, val = split_validation(train, 0.1, s["seed"])
    torch.manual_seed(s["seed"])
    net = zoo.create(s["arch"], num_classes=train.num_classes, input_length=train.input_length,
                     sample_rate=train.sample_rate, **s["hparams"])
    cfg = TrainConfig(**{k: s[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "seed", "noise_sigma",
                                           "noise_at", "gain_db", "shift_ms")})
    t0 = time.time()
    log = (lambda m: None) if ctx.quiet else (lambda m: ctx.log("    " + m))
    config = {"data": s["data"], "train_job": jid}
    if hasattr(train, "video"):           # audio-visual: the AV models' own adapter around train.fit
        from ..models.av import fit_av
        summary = fit_av(net, train, val, cfg, out_dir=folder, config=config, seed=s["seed"], log=log,
                         device=ctx.device)
    else:
        summary = fit(net, train, val, cfg, out_dir=folder, config=config, progress=not ctx.quiet, log=log,
                      device=ctx.device)
    net, config = load(folder, frozen=True)
    test = ctx.dataset(s["data"], "test", int(config["input_length"]), int(config.get("sample_rate", 16000)))
    preds = _predict(net.to(ctx.device), test)
    rows = []
    for i in range(len(test)):
        item = test.items[i] if test.items else {}
        rows.append((f"test-{i:05d}", i, {**_meta(item), "label": test.classes[int(test.labels[i])],
                                          "prediction": test.classes[int(preds[i])],
                                          "correct": bool(preds[i] == test.labels[i])}))
    ctx.store.db.execute("DELETE FROM examples WHERE job_id=?", (jid,))
    ctx.store.add_examples(jid, rows)
    acc = float((preds == test.labels).float().mean()) if len(test) else None
    ctx.store.finish_job(jid, {"accuracy": acc, "n": len(test), "train_clips": len(train),
                               "best_epoch": (summary.get("best") or {}).get("epoch"),
                               "val_accuracy": (summary.get("best") or {}).get("val_accuracy"), "seconds": round(time.time() - t0, 1),
                               "checkpoint": str(folder.relative_to(ctx.root))})
    return net, config


def _meta(item: dict) -> dict:
    """The example's metadata (short scalars: file, speaker, voice, ...) as item_<key>, apart from result fields."""
    return {f"item_{k}": v for k, v in item.items()
            if isinstance(v, (str, int, float, bool)) and not (isinstance(v, str) and len(v) > 300)}


def _class_index(target, classes: list[str], where: str) -> int | None:
    if target is False or target is None or target == "":
        return None
    if str(target) in classes:
        return classes.index(str(target))
    if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(classes):
        return target
    raise ValueError(f"{where}: target {target!r} is not a class of the model ({', '.join(classes)})")


def _select(ds, s: dict, preds: torch.Tensor | None = None) -> list[int]:
    idx = list(range(len(ds)))
    if s.get("per_class"):
        g = torch.Generator().manual_seed(s["seed"])
        idx = sorted(int(i) for c in range(ds.num_classes)
                     for i in (ds.labels == c).nonzero().flatten()[
                         torch.randperm(int((ds.labels == c).sum()), generator=g)[:s["per_class"]]])
    if preds is not None:
        idx = [i for i in idx if preds[i] == ds.labels[i]]
    if s.get("examples"):
        idx = idx[:s["examples"]]
    return idx


@dataclass
class Plan:
    """A job's examples (ids in a fixed order), its batch size, and compute(batch_index, positions) -> rows
    [(example_id, position, fields)], which depends on nothing but the job and the batch."""
    ids: list
    batch_size: int
    compute: Callable
    summary: dict

    def pending(self, done: set) -> list[tuple[int, list[int]]]:
        out = []
        for b, start in enumerate(range(0, len(self.ids), self.batch_size)):
            pos = list(range(start, min(start + self.batch_size, len(self.ids))))
            if not all(self.ids[p] in done for p in pos):
                out.append((b, pos))
        return out


def _loop(ctx: Context, job: Job, jid: str, plan: Plan) -> None:
    done = ctx.store.done_ids(jid)
    bar = ctx.bar(len(plan.ids), len(done & set(plan.ids)), job.name)
    try:
        for b, pos in plan.pending(done):
            rows = [r for r in plan.compute(b, pos) if r[0] not in done]
            ctx.store.add_examples(jid, rows)
            bar.update(len(rows))
    finally:
        bar.close()


# classifier attacks -------------------------------------------------------------------------------------------
def plan_attack(ctx: Context, job: Job, jid: str) -> Plan:
    from .. import peers

    s = job.settings
    model, cfg = load_model(ctx, job.model)
    ds = ctx.dataset(job.data, s["split"], int(cfg["input_length"]), int(cfg.get("sample_rate", 16000)))
    classes = [str(c) for c in cfg.get("classes", ds.classes)]
    target = _class_index(s["target"], classes, job.name)
    clean = _predict(model, ds)
    idx = _select(ds, s, clean if s["only_correct"] else None)
    if target is not None:
        idx = [i for i in idx if int(ds.labels[i]) != target]
    fn = peers.get(s["library"], s["attack"])
    ids = [f"{s['split']}-{i:05d}" for i in idx]

    def compute(b, pos):
        rows_idx = torch.tensor([idx[p] for p in pos])
        dev = ctx.device
        inputs, y = _to(_inputs(ds, rows_idx), dev), ds.labels[rows_idx].to(dev)
        x = ds.waves[rows_idx].to(dev)
        kw = dict(job.fn_params)
        if _accepts(fn, "seed"):
            kw["seed"] = _seed_for(s["seed"], b)
        torch.manual_seed(_seed_for(s["seed"], b))
        labels = torch.full_like(y, target) if target is not None else y
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(model, inputs, labels, targeted=target is not None, **kw)
        secs, cpu = (time.perf_counter() - t0) / len(pos), (time.process_time() - c0) / len(pos)
        adv_inputs, records = out if isinstance(out, tuple) else (out, None)
        with torch.no_grad():
            pa = model(adv_inputs).argmax(1)
        adv = adv_inputs["audio"] if isinstance(adv_inputs, dict) else adv_inputs
        d = adv - x
        m = {"snr_db": snr(x, d), "db_x": db_x(x, d), "l2": l2(d), "linf": linf(d), "l0": l0(d)}
        out = []
        for j, p in enumerate(pos):
            i = idx[p]
            ok = bool(pa[j] == target) if target is not None else bool(pa[j] != y[j])
            row = {**_meta(ds.items[i] if ds.items else {}), "index": i, "label": classes[int(y[j])],
                   "clean": classes[int(clean[i])], "adversarial": classes[int(pa[j])], "success": ok,
                   **(_flat(records[j]) if records else {}),
                   **{k: float(v[j]) for k, v in m.items()}, "seconds": secs, "cpu_seconds": cpu}
            if p < s["audio"]:
                row.update(_save_audio(ctx, jid, ids[p], x[j], adv[j], ds.sample_rate))
                if isinstance(adv_inputs, dict) and "video" in adv_inputs:     # the report shows it as a video
                    row.update(_save_video(ctx, jid, ids[p], inputs["video"][j], adv_inputs["video"][j],
                                           getattr(ds, "fps", 25.0)))
            out.append((ids[p], p, row))
        return out

    return Plan(ids, s["commit_every"], compute, {"clean_accuracy": float((clean == ds.labels).float().mean())})


# universal perturbations --------------------------------------------------------------------------------------
def plan_universal(ctx: Context, job: Job, jid: str) -> Plan:
    import numpy as np

    from .. import peers
    from ..attacks import universal as U
    from ..attacks.universal_eval import evaluate

    s = job.settings
    # crafting takes a dataset (the peers' too) and the evaluation applies v on the CPU: the job runs there
    model, cfg = load_model(ctx, job.model, "cpu")
    length, sr = int(cfg["input_length"]), int(cfg.get("sample_rate", 16000))
    classes = [str(c) for c in cfg.get("classes", range(cfg["num_classes"]))]
    target = _class_index(s["target"], classes, job.name)
    art = ctx.root / "artifacts" / jid
    art.mkdir(parents=True, exist_ok=True)
    summary = dict(ctx.store.job(jid)["summary"] or {})
    if not (art / "v.npy").is_file():
        craft = ctx.dataset(job.data, s["craft_split"], length, sr)
        craft = U.crafting_set(craft, s["n_craft"], s["per_class"], s["seed"])
        fn = peers.get(s["library"], s["method"])
        kw = dict(job.fn_params)
        if _accepts(fn, "checkpoint"):
            kw["checkpoint"] = str(art / "state")
        if _accepts(fn, "progress"):
            kw["progress"] = not ctx.quiet
        ctx.log(f"crafting {job.name} on {len(craft)} clips")
        t0, c0 = time.perf_counter(), time.process_time()
        v, history = fn(model, craft, targeted=target, seed=s["seed"], **kw)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        m_craft = evaluate(model, v, craft, targeted=target)
        summary = {"iterations": len(history), "craft_seconds": round(wall, 2), "craft_cpu_seconds": round(cpu, 2),
                   "n_craft": len(craft),
                   "craft_success_rate": m_craft["success_rate"], "craft_mean_snr": m_craft["mean_snr"],
                   "v_l2": m_craft["v_l2"], "v_linf": m_craft["v_linf"], "v_wav": str((art / "v.wav").relative_to(ctx.root))}
        if history and "c" in history[-1]:
            summary["c_final"] = history[-1]["c"]
        save(art / "v.wav", v, sr, subtype="FLOAT", warn_clipping=False)
        np.save(art / "v.npy", v.numpy())        # last: its presence means crafting is complete
        ctx.store.update_summary(jid, summary)
    v = torch.from_numpy(np.load(art / "v.npy", allow_pickle=False))
    test = ctx.dataset(job.data, s["split"], length, sr)
    idx = _select(test, {**s, "per_class": 0})      # per_class picks the crafting clips; v is tested on the split
    targets = [(job.model, model, test, "")]
    for other in job.extra_models:
        om, ocfg = load_model(ctx, other, "cpu")
        if int(ocfg["input_length"]) != length:
            raise ValueError(f"{job.name}: transfer model {other.name} takes {ocfg['input_length']} samples, v has {length}")
        targets.append((other, om, ctx.dataset(job.data, s["split"], length, int(ocfg.get("sample_rate", sr))),
                        f"{other.name}/"))
    ids = [f"{prefix}{s['split']}-{i:05d}" for _, _, _, prefix in targets for i in idx]
    n = len(idx)

    def compute(b, pos):
        out = []
        by_target = {}
        for p in pos:
            by_target.setdefault(p // n, []).append(p)
        for t, ps in by_target.items():
            mdl_decl, mdl, ds, prefix = targets[t]
            sel = [idx[p % n] for p in ps]
            _, rows = evaluate(mdl, v, ds.subset(sel), targeted=target, rows=True)
            for p, i, r in zip(ps, sel, rows):
                row = {**_meta(ds.items[i] if ds.items else {}), "index": i, "on_model": mdl_decl.name,
                       "label": classes[r["label"]], "clean": classes[r["clean"]],
                       "adversarial": classes[r["perturbed"]], "success": r["success"], "snr_db": r["snr"],
                       "db_x": r["db_x"]}
                if t == 0 and p < s["audio"]:
                    x = ds.waves[i]
                    row.update(_save_audio(ctx, jid, ids[p], x, U.apply(v, x[None])[0], sr))
                out.append((ids[p], p, row))
        return out

    return Plan(ids, s["commit_every"], compute, summary)


# certification -------------------------------------------------------------------------------------------------
def plan_certify(ctx: Context, job: Job, jid: str) -> Plan:
    from ..certify.smoothing import Smooth

    s, p = job.settings, job.fn_params
    model, cfg = load_model(ctx, job.model)
    ds = ctx.dataset(job.data, s["split"], int(cfg["input_length"]), int(cfg.get("sample_rate", 16000)))
    classes = [str(c) for c in cfg.get("classes", ds.classes)]
    idx = _select(ds, s)
    init = {k: p[k] for k in inspect.signature(Smooth.__init__).parameters if k in p}
    smooth = Smooth(model, len(classes), **init)
    cert = {k: p[k] for k in inspect.signature(Smooth.certify).parameters if k in p}
    ids = [f"{s['split']}-{i:05d}" for i in idx]

    def compute(b, pos):
        out = []
        for q in pos:
            i = idx[q]
            t0, c0 = time.perf_counter(), time.process_time()
            pred, rad = smooth.certify(ds.waves[i].to(ctx.device), seed=s["seed"] + i, **cert)
            label = int(ds.labels[i])
            abstain = pred == Smooth.ABSTAIN
            out.append((ids[q], q, {**_meta(ds.items[i] if ds.items else {}), "index": i, "label": classes[label],
                                    "prediction": None if abstain else classes[pred], "radius": float(rad),
                                    "correct": (not abstain) and pred == label, "abstain": bool(abstain),
                                    "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}))
        return out

    return Plan(ids, 1, compute, {"num_classes": len(classes)})


# speech recognition --------------------------------------------------------------------------------------------
def plan_asr_attack(ctx: Context, job: Job, jid: str) -> Plan:
    from .. import attacks
    from ..asr_report import asr_report
    from ..asr_targets import select
    from ..data.targets import open_targets
    from ..data.utterances import load_utterances, pad_batch

    s = job.settings
    model, _ = load_model(ctx, job.model)
    data = load_utterances(job.data, s["split"])
    n = s["examples"] or 20
    picked, originals, targets = select(model, data, n, s["seed"])
    if s["target"]:
        targets = [s["target"]] * len(picked)
    elif s["target_set"] == "open":
        targets = open_targets(originals, s["seed"])
    elif s["target_set"] != "phrases":
        raise ValueError(f"{job.name}: target_set must be 'phrases' or 'open', not {s['target_set']!r}")
    for t in targets:
        if not model.encode_text(t):
            raise ValueError(f"{job.name}: target {t!r} has no character the recogniser knows")
    order = sorted(range(len(picked)), key=lambda k: len(data.waves[picked[k]]))   # similar lengths batch well
    ids = [f"{s['split']}-{picked[k]:05d}" for k in order]
    base = getattr(attacks, ASR_ATTACKS[s["attack"]])
    fn = attacks.sparse(base, s["sparsity"]) if s["sparsity"] else base
    sr = int(getattr(model, "sample_rate", 16000))

    def compute(b, pos):
        ks = [order[p] for p in pos]
        wav, lengths = pad_batch([data.waves[picked[k]] for k in ks])
        wav, lengths = wav.to(ctx.device), lengths.to(ctx.device)
        tg, og = [targets[k] for k in ks], [originals[k] for k in ks]
        torch.manual_seed(_seed_for(s["seed"], b))
        t0, c0 = time.perf_counter(), time.process_time()
        adv, records = fn(model, wav, tg, lengths=lengths, **job.fn_params)
        secs, cpu = (time.perf_counter() - t0) / len(ks), (time.process_time() - c0) / len(ks)
        rows = asr_report(model, wav, adv, tg, og, lengths, records)
        out = []
        for j, (p, k, row) in enumerate(zip(pos, ks, rows)):
            n_s = int(lengths[j])
            row = {**_meta(data.items[picked[k]] if data.items else {}), **row, "index": picked[k], "seconds": secs,
                   "cpu_seconds": cpu}
            if p < s["audio"]:
                row.update(_save_audio(ctx, jid, ids[p], wav[j, :n_s], adv[j, :n_s], sr))
            out.append((ids[p], p, row))
        return out

    return Plan(ids, s["commit_every"], compute, {})


PLANS = {"attack": plan_attack, "universal": plan_universal, "certify": plan_certify, "asr-attack": plan_asr_attack}


def execute(ctx: Context, job: Job, jid: str) -> dict:
    """Run a job's batches that are not in the store yet (locally, or on Ray workers); returns its summary."""
    plan = PLANS[job.kind](ctx, job, jid)
    if ctx.ray is not None:
        ctx.ray.run(ctx, job, jid, plan)
    else:
        _loop(ctx, job, jid, plan)
    return plan.summary
