"""Experiment files: parse a TOML file, validate it against the library's own signatures, expand grids.

An experiment file names datasets (`[data.NAME] spec = "..."`), models (`[models.NAME]` with `checkpoint =
"folder"` or a `train = {arch = ..., data = ..., epochs = ...}` block) and jobs (`[[jobs]]` with a `kind`).
Any job parameter, and any value of a `train` block, may be a list: the job (or model) is expanded into the
cartesian product, one job per point. Parameters not given take the library function's default; the resolved
settings, defaults included, are what identifies and stores a job. See docs/experiments.md.

Every mistake is reported before any work starts, as `FILE:LINE: message` (:class:`SpecError`).
"""
from __future__ import annotations

import difflib
import inspect
import itertools
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class SpecError(ValueError):
    """A mistake in an experiment file, located at its line where possible."""


# keys the runner reads itself, per job kind: name -> (type, default)
COMMON = {"kind": (str, None), "model": ((str, list), None), "data": ((str, list), None), "split": (str, "test"),
          "examples": (int, 0), "per_class": (int, 0), "seed": (int, None), "commit_every": (int, 32),
          "audio": (int, 4), "name": (str, "")}
RUNNER_KEYS = {
    "attack": {"attack": (str, None), "library": (str, "audioadv"), "target": ((int, str, bool), False),
               "only_correct": (bool, True)},
    "universal": {"method": (str, "penalty"), "library": (str, "audioadv"), "target": ((int, str, bool), False), "n_craft": (int, None),
                  "craft_split": (str, "train"), "transfer": (list, [])},
    "certify": {},
    "asr-attack": {"attack": (str, "cw"), "sparsity": ((int, float), 0.0), "target_set": (str, "phrases"),
                   "target": (str, "")},
}
KINDS = sorted(RUNNER_KEYS)
LIST_KEYS = {"transfer"}             # list-valued by nature: never a grid
NONE = "none"                        # TOML has no null: a parameter written as "none" is passed as None
HIDDEN = {"model", "inputs", "labels", "targets", "data", "targeted", "lengths", "info", "project", "callback", "progress",
          "key", "checkpoint", "seed", "self", "base", "num_classes", "x"}
def _train_keys() -> dict:
    """A train block's keys: audioadv.train.TrainConfig's fields with their defaults, plus the model and data."""
    from dataclasses import fields

    from ..train import TrainConfig
    out = {"arch": (str, None), "data": (str, None), "val_split": (str, "val"), "hparams": (dict, {})}
    for f in fields(TrainConfig):
        if f.name != "extra":
            out[f.name] = ((int, float) if f.type in ("float", float) else {"int": int, "str": str}.get(f.type, f.type),
                           None if f.name == "seed" else f.default)
    return out


TRAIN_KEYS = _train_keys()
CLASSIFIER_ATTACKS = ("fgsm", "pgd", "pgd_linf", "pgd_l2", "ddn", "deepfool", "cw_l2", "msae", "topk_dense", "l0_proximal")
from ..peers import LIBRARIES  # noqa: E402
ASR_ATTACKS = {"cw": "cw_ctc", "cw_ctc": "cw_ctc", "ipc": "ipc", "imperceptible": "imperceptible"}


@dataclass
class Model:
    name: str                        # as the jobs refer to it, e.g. "zoo[arch=sincnet,data=fsdd]"
    group: str                       # the [models.GROUP] it comes from
    checkpoint: str | None = None    # folder
    train: dict | None = None        # resolved train settings
    identity: str = ""               # what the job hash sees: weights hash or train settings hash


@dataclass
class Job:
    kind: str
    name: str
    model: Model
    data: str                        # dataset spec
    settings: dict                   # resolved, defaults included; hashed into job_id
    fn_params: dict                  # what goes to the library function
    line: int | None = None
    extra_models: list = field(default_factory=list)


@dataclass
class Experiment:
    path: Path
    name: str
    seed: int
    data: dict
    models: dict                     # group -> [Model]
    jobs: list
    tables: list
    report: dict
    text: str


def _lines(text: str) -> dict:
    """(section, index or name, key) -> line number, for error messages."""
    where, out, count = (None, None), {}, {}
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        m = re.match(r"^\[\[\s*([\w.-]+)\s*\]\]$", line)
        if m:
            sec = m.group(1)
            count[sec] = count.get(sec, -1) + 1
            where = (sec, count[sec])
            out[(sec, count[sec], None)] = no
            continue
        m = re.match(r"^\[\s*([\w-]+)\.([\w\"'.-]+)\s*\]$", line)
        if m:
            where = (m.group(1), m.group(2).strip("\"'"))
            out[(*where, None)] = no
            continue
        m = re.match(r"^\[\s*([\w-]+)\s*\]$", line)
        if m:
            where = (m.group(1), None)
            out[(*where, None)] = no
            continue
        m = re.match(r"^([\w-]+)\s*=", line)
        if m:
            out.setdefault((*where, m.group(1)), no)
    return out


class _Ctx:
    def __init__(self, path: Path, text: str):
        self.path, self.lines = path, _lines(text)

    def error(self, msg: str, sec=None, idx=None, key=None) -> SpecError:
        no = self.lines.get((sec, idx, key)) or self.lines.get((sec, idx, None))
        return SpecError(f"{self.path}:{no}: {msg}" if no else f"{self.path}: {msg}")


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(sorted(options))}"


def _type_ok(value, typ) -> bool:
    types = typ if isinstance(typ, tuple) else (typ,)
    if isinstance(value, bool) and bool not in types:
        return False
    if float in types and isinstance(value, int):
        return True
    return isinstance(value, types)


def _type_name(typ) -> str:
    types = set(typ if isinstance(typ, tuple) else (typ,))
    if float in types:
        types = (types - {int, float}) | {"num"}
    names = {str: "a string", int: "an integer", "num": "a number", bool: "true or false", list: "a list"}
    return " or ".join(sorted(names.get(t, getattr(t, "__name__", str(t))) for t in types))


def function_params(fn) -> dict:
    """name -> default (inspect.Parameter.empty when required) of the user-settable keyword parameters."""
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name in HIDDEN or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[name] = p.default
    return out


def takes_table(fn) -> set:
    """Parameters of fn whose annotation admits a dict (e.g. a sparsity per modality): TOML tables are fine there."""
    return {name for name, p in inspect.signature(fn).parameters.items() if "dict" in str(p.annotation)}


def _param_type(default):
    if default is inspect.Parameter.empty or default is None:
        return None
    if isinstance(default, bool):
        return bool
    if isinstance(default, float):
        return (int, float)
    if isinstance(default, int):
        return int
    if isinstance(default, str):
        return str
    return None


def library_functions(kind: str, job: dict) -> dict:
    """The library functions whose keyword parameters a job of this kind accepts (name -> function)."""
    from .. import attacks, peers
    if kind in ("attack", "universal"):
        fn = peers.get(job["library"], job["attack" if kind == "attack" else "method"])
        inner = getattr(fn, "forwards_to", None)     # a wrapper passing its other keyword arguments on
        return {"inner": inner, "fn": fn} if inner else {"fn": fn}
    if kind == "asr-attack":
        return {"attack": getattr(attacks, ASR_ATTACKS[job["attack"]])}
    if kind == "certify":
        from ..certify.smoothing import Smooth
        return {"smooth": Smooth.__init__, "certify": Smooth.certify}
    raise KeyError(kind)


def _method_choices() -> list[str]:
    from ..attacks import universal
    from ..peers import UNIVERSAL_METHODS
    return [m for m in UNIVERSAL_METHODS if callable(getattr(universal, m, None))]


def load(path) -> Experiment:
    """Parse and validate an experiment file; raises SpecError (with FILE:LINE) on the first mistake."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: experiment file not found")
    text = path.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    ctx = _Ctx(path, text)
    known = {"name", "seed", "description", "data", "models", "jobs", "tables", "report"}
    for key in raw:
        if key not in known:
            raise ctx.error(f"unknown top-level key '{key}'" + _suggest(key, known), None, None, key)
    seed = raw.get("seed", 0)
    if not _type_ok(seed, int):
        raise ctx.error("seed must be an integer", None, None, "seed")
    data = _load_data(raw.get("data", {}), ctx, path.parent)
    models = _load_models(raw.get("models", {}), data, ctx, seed, path.parent)
    jobs = []
    for i, job in enumerate(raw.get("jobs", [])):
        jobs += _expand_job(job, i, data, models, ctx, seed)
    seen = {}
    for j in jobs:
        if j.settings_key in seen:
            raise ctx.error(f"jobs[{j.index}] repeats a job of jobs[{seen[j.settings_key]}] with the same settings",
                            "jobs", j.index)
        seen[j.settings_key] = j.index
    tables = raw.get("tables", [])
    for i, t in enumerate(tables):
        _check_table(t, i, ctx)
    report = raw.get("report", {})
    for key in report:
        if key not in ("examples_per_job",):
            raise ctx.error(f"unknown report setting '{key}'" + _suggest(key, ["examples_per_job"]), "report", None, key)
    return Experiment(path, str(raw.get("name", path.stem)), seed, data, models, jobs, tables, report, text)


def _load_data(section: dict, ctx: _Ctx, base: Path) -> dict:
    from ..data import loader_names, parse_spec
    out = {}
    for name, entry in section.items():
        if not isinstance(entry, dict) or "spec" not in entry:
            raise ctx.error(f"data.{name} needs spec = \"...\" (e.g. \"synth-commands\" or \"fsdd:PATH\")", "data", name)
        for key in entry:
            if key != "spec":
                raise ctx.error(f"data.{name}: unknown key '{key}' (only spec)", "data", name, key)
        spec = str(entry["spec"])
        try:
            loader, p, _ = parse_spec(spec)
        except ValueError as exc:
            raise ctx.error(f"data.{name}: {exc}", "data", name, "spec") from None
        if loader not in loader_names():
            raise ctx.error(f"data.{name}: unknown dataset loader '{loader}'" + _suggest(loader, loader_names()),
                            "data", name, "spec")
        if p is not None:
            resolved = Path(p).expanduser()
            if not resolved.is_absolute():
                resolved = (base / resolved) if (base / resolved).exists() else resolved
            if not resolved.exists():
                raise ctx.error(f"data.{name}: {p} does not exist", "data", name, "spec")
            spec = spec.replace(p, str(resolved), 1)
        out[name] = spec
    return out


def _weights_identity(folder: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    files = sorted(f for f in folder.iterdir() if f.suffix in (".safetensors", ".json", ".bin"))
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _grid(entry: dict, keep_lists=()) -> list[dict]:
    keys = [k for k, v in entry.items() if isinstance(v, list) and k not in keep_lists]
    if not keys:
        return [dict(entry)]
    out = []
    for combo in itertools.product(*(entry[k] for k in keys)):
        point = dict(entry)
        point.update(zip(keys, combo))
        out.append(point)
    return out


def _load_models(section: dict, data: dict, ctx: _Ctx, seed: int, base: Path) -> dict:
    from .. import models as zoo
    from .store import job_id
    out = {}
    for group, entry in section.items():
        if not isinstance(entry, dict) or (("checkpoint" in entry) == ("train" in entry)):
            raise ctx.error(f"models.{group} needs exactly one of checkpoint = \"FOLDER\" or train = {{arch = ..., "
                            f"data = ..., epochs = ...}}", "models", group)
        for key in entry:
            if key not in ("checkpoint", "train"):
                raise ctx.error(f"models.{group}: unknown key '{key}'" + _suggest(key, ["checkpoint", "train"]),
                                "models", group, key)
        if "checkpoint" in entry:
            folder = Path(str(entry["checkpoint"])).expanduser()
            if not folder.is_absolute() and (base / folder).exists():
                folder = base / folder
            if not (folder / "config.json").is_file():
                raise ctx.error(f"models.{group}: checkpoint folder {entry['checkpoint']} not found (no config.json)",
                                "models", group, "checkpoint")
            out[group] = [Model(group, group, checkpoint=str(folder), identity=_weights_identity(folder))]
            continue
        train = entry["train"]
        if not isinstance(train, dict):
            raise ctx.error(f"models.{group}.train must be a table {{arch = ..., data = ..., epochs = ...}}",
                            "models", group, "train")
        for key, value in train.items():
            if key not in TRAIN_KEYS:
                raise ctx.error(f"models.{group}.train: unknown setting '{key}'" + _suggest(key, TRAIN_KEYS),
                                "models", group, "train")
            for v in (value if isinstance(value, list) else [value]):
                if not _type_ok(v, TRAIN_KEYS[key][0]):
                    raise ctx.error(f"models.{group}.train.{key} must be {_type_name(TRAIN_KEYS[key][0])}, "
                                    f"got {v!r}", "models", group, "train")
        for key in ("arch", "data"):
            if key not in train:
                raise ctx.error(f"models.{group}.train needs {key} = ...", "models", group, "train")
        models = []
        points = _grid(train)
        varying = [k for k, v in train.items() if isinstance(v, list)]
        for point in points:
            if point["arch"] not in zoo.names():
                raise ctx.error(f"models.{group}.train: unknown architecture '{point['arch']}'"
                                + _suggest(point["arch"], zoo.names()), "models", group, "train")
            if point["data"] not in data:
                raise ctx.error(f"models.{group}.train: unknown data '{point['data']}'" + _suggest(point["data"], data),
                                "models", group, "train")
            resolved = {k: point.get(k, d) for k, (_, d) in TRAIN_KEYS.items()}
            resolved["seed"] = seed if resolved["seed"] is None else resolved["seed"]
            resolved["data"] = data[point["data"]]
            resolved["data_name"] = point["data"]
            name = group if not varying else f"{group}[{','.join(f'{k}={point[k]}' for k in varying)}]"
            ident = job_id("train", {k: v for k, v in resolved.items() if k != "data_name"})
            models.append(Model(name, group, train=resolved, identity=ident))
        out[group] = models
    return out


def _expand_job(job: dict, index: int, data: dict, models: dict, ctx: _Ctx, seed: int) -> list[Job]:
    err = lambda msg, key=None: ctx.error(f"jobs[{index}]: {msg}", "jobs", index, key)  # noqa: E731
    kind = job.get("kind")
    if kind is None:
        raise err(f"needs kind = one of {', '.join(KINDS)}")
    if kind not in RUNNER_KEYS:
        raise err(f"unknown job kind '{kind}'" + _suggest(str(kind), KINDS), "kind")
    runner = {**COMMON, **RUNNER_KEYS[kind]}
    if kind == "attack" and "attack" not in job:
        raise err(f"needs attack = one of {', '.join(CLASSIFIER_ATTACKS)}")
    if "model" not in job:
        raise err("needs model = NAME (a [models.NAME] entry) or a list of them")
    out = []
    for point in _grid(job, keep_lists=LIST_KEYS):
        # choices first: they decide which library function (and so which parameters) apply
        if kind == "attack" and point["attack"] not in CLASSIFIER_ATTACKS:
            raise err(f"unknown attack '{point['attack']}'" + _suggest(point["attack"], CLASSIFIER_ATTACKS), "attack")
        if kind == "asr-attack" and point.get("attack", "cw") not in ASR_ATTACKS:
            raise err(f"unknown speech attack '{point['attack']}'" + _suggest(point["attack"], ASR_ATTACKS), "attack")
        if kind == "universal" and point.get("method", "penalty") not in _method_choices():
            raise err(f"unknown method '{point['method']}'" + _suggest(point["method"], _method_choices()), "method")
        if kind in ("attack", "universal") and point.get("library", "audioadv") not in LIBRARIES:
            raise err(f"unknown library '{point['library']}'" + _suggest(point["library"], LIBRARIES), "library")
        merged = {k: point.get(k, d) for k, (_, d) in runner.items()}
        try:
            fns = library_functions(kind, merged)
        except ValueError as exc:
            raise err(str(exc), "library") from None
        params, tables = {}, set()
        for fn in fns.values():
            params.update(function_params(fn))
            tables |= takes_table(fn)
        for key, value in point.items():
            if key in runner:
                typ = runner[key][0]
                if value is not None and not _type_ok(value, typ):
                    raise err(f"{key} must be {_type_name(typ)}, got {value!r}", key)
            elif key in params:
                typ = _param_type(params[key])
                if value == NONE or (isinstance(value, dict) and key in tables):
                    continue
                if typ is not None and not _type_ok(value, typ):
                    raise err(f"{key} must be {_type_name(typ)} (the default is {params[key]!r}), got {value!r}", key)
            else:
                what = {"attack": f"attack {point.get('attack')}", "universal": f"method {point.get('method', 'penalty')}",
                        "asr-attack": f"speech attack {point.get('attack', 'cw')}", "certify": "certify"}[kind]
                raise err(f"unknown parameter '{key}' for {what}" + _suggest(key, [*runner, *params]), key)
        missing = [k for k, d in params.items() if d is inspect.Parameter.empty and k not in point]
        if missing:
            raise err(f"missing required parameter(s) {', '.join(missing)} for {kind}", None)
        fn_params = {k: None if point.get(k, d) == NONE else point.get(k, d) for k, d in params.items()}
        merged["seed"] = seed if merged["seed"] is None else merged["seed"]
        if kind == "universal" and merged["n_craft"] is None:      # the library's default crafting-set size
            from ..attacks.universal import crafting_set
            merged["n_craft"] = inspect.signature(crafting_set).parameters["n"].default
        for group in (merged["model"] if isinstance(merged["model"], list) else [merged["model"]]):
            if group not in models:
                raise err(f"unknown model '{group}'" + _suggest(group, models), "model")
            for model in models[group]:
                dname = merged["data"] if merged["data"] is not None else (model.train or {}).get("data_name")
                if dname is None:
                    raise err(f"needs data = NAME (model {group} is a checkpoint, so it has no training data)", "data")
                if dname not in data:
                    raise err(f"unknown data '{dname}'" + _suggest(dname, data), "data")
                extra = []
                for other in merged.get("transfer", []) or []:
                    if other not in models:
                        raise err(f"transfer: unknown model '{other}'" + _suggest(other, models), "transfer")
                    extra += models[other]
                settings = {**{k: v for k, v in merged.items() if k not in ("model", "data", "name", "transfer")},
                            "model": model.identity, "data": data[dname], **_json_params(fn_params),
                            "transfer": [m.identity for m in extra]}
                label = merged["name"] or _label(kind, merged, model.name, dname, point, job)
                j = Job(kind, label, model, data[dname], settings, fn_params, ctx.lines.get(("jobs", index, None)),
                        extra)
                j.index = index
                j.settings_key = repr(sorted(settings.items(), key=lambda kv: kv[0]))
                j.data_name = dname
                trained = {k: model.train[k] for k in ("arch", "epochs")} if model.train else {}
                j.display = {**trained, "model": model.name, "data": dname, "name": merged["name"],
                             **{k: point[k] for k in point if k not in ("kind", "model", "data", "name")}}
                out.append(j)
    return out


def _json_params(params: dict) -> dict:
    out = {}
    for k, v in params.items():
        if v is inspect.Parameter.empty:
            continue
        out[k] = v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else repr(v)
    return out


def _label(kind, merged, model_name, dname, point, job) -> str:
    varying = [k for k, v in job.items() if isinstance(v, list) and k not in {"model", "data"} | LIST_KEYS]
    parts = [kind, model_name, dname] + [f"{k}={point[k]}" for k in varying]
    if kind in ("attack", "asr-attack") and "attack" not in varying:
        parts.insert(1, str(merged["attack"]))
    if kind == "universal" and "method" not in varying:
        parts.insert(1, str(merged["method"]))
    if merged.get("per_class") and "per_class" not in varying:
        parts.append(f"per_class={merged['per_class']}")
    return " ".join(str(p) for p in parts)


TABLE_KEYS = {"title", "kind", "rows", "columns", "values", "where", "note"}


def _check_table(t: dict, i: int, ctx: _Ctx) -> None:
    for key in t:
        if key not in TABLE_KEYS:
            raise ctx.error(f"tables[{i}]: unknown key '{key}'" + _suggest(key, TABLE_KEYS), "tables", i, key)
    for key in ("title", "rows", "values"):
        if key not in t:
            raise ctx.error(f"tables[{i}] needs {key}", "tables", i)
