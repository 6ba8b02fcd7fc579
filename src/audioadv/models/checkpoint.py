"""Checkpoints as `model.safetensors` (weights) + `config.json` (how to rebuild the model), and
`load(path)`, the one loader for every kind of saved model.

config.json's `kind` says what a folder holds; every save function writes it:
- "classifier": a zoo classifier (`save_checkpoint`): `arch`, `num_classes`, `classes`,
  `sample_rate`, `input_length`, `hparams` (architecture keyword arguments), plus whatever the
  caller adds (training arguments, metrics);
- "speaker": the same for the speaker head on resemblyzer's encoder (`resemblyzer-speaker`);
- "ctc-recognizer": the character CTC recogniser (`models.asr.save_recognizer`);
- "av-recognizer": the audio-visual CTC recogniser (`models.av.save_av_recognizer`);
- "hf-wav2vec2": a local Hugging Face `Wav2Vec2ForCTC` folder (`save_pretrained`), recognised by
  its own config.json (`architectures` / `model_type`), which has no `kind`.
Folders written before `kind` existed are recognised by their keys (`arch`: classifier,
`architecture`: recogniser). Loading reads tensors with safetensors: no pickle, so a checkpoint
cannot run code.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

WEIGHTS, CONFIG = "model.safetensors", "config.json"
CLASSIFIER, SPEAKER, RECOGNIZER, HF_WAV2VEC2 = "classifier", "speaker", "ctc-recognizer", "hf-wav2vec2"
AV_RECOGNIZER = "av-recognizer"


def write_checkpoint(folder, model, config: dict, metadata: dict | None = None) -> Path:
    """The model's weights as model.safetensors (written under a temporary name, then renamed, so an interrupted
    save leaves the previous file whole) and `config` as config.json, in `folder` (created)."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(out / WEIGHTS)
    (out / CONFIG).write_text(json.dumps(config, indent=2, default=str) + "\n")
    return out


def save_checkpoint(model, out_dir, config: dict | None = None) -> Path:
    """Write model.safetensors and config.json into out_dir (created); returns the folder."""
    cfg = dict(config or {})
    cfg.update(kind=SPEAKER if model.arch == "resemblyzer-speaker" else CLASSIFIER, arch=model.arch, num_classes=model.num_classes, sample_rate=model.sample_rate,
               input_length=model.input_length, hparams=dict(model.hparams))
    cfg.setdefault("classes", [str(i) for i in range(model.num_classes)])
    if len(cfg["classes"]) != model.num_classes:
        raise ValueError(f"save_checkpoint: {len(cfg['classes'])} class names for {model.num_classes} outputs")
    return write_checkpoint(out_dir, model, cfg, metadata={"arch": model.arch})


def _read_json(cfg_path: Path, what: str):
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{what} config not found: {cfg_path}")
    try:
        return json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{cfg_path}: corrupt {what} config (not valid JSON: {exc})") from None


def read_config(path) -> dict:
    """The config.json of a checkpoint folder (or the file itself), with a clear error naming it."""
    p = Path(path)
    cfg_path = p / CONFIG if p.is_dir() else p
    cfg = _read_json(cfg_path, "checkpoint")
    missing = [k for k in ("arch", "num_classes", "input_length") if k not in cfg]
    if missing:
        raise ValueError(f"{cfg_path}: checkpoint config lacks {', '.join(missing)}")
    return cfg


def load_checkpoint(path, map_location: str = "cpu", *, frozen: bool = False):
    """Rebuild a model from a checkpoint folder (or its model.safetensors); returns (model, config).

    The model is returned in eval mode; `frozen=True` also turns off its parameters' gradients
    (attacks and certification only need gradients with respect to the input). Raises FileNotFoundError / ValueError naming the file
    when a file is missing, corrupt, or does not match the architecture in config.json.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from . import create

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p} (expected a folder with {WEIGHTS} and config.json)")
    folder = p if p.is_dir() else p.parent
    if not folder.exists():
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    cfg = read_config(folder)
    weights = folder / WEIGHTS
    if not weights.exists():
        raise FileNotFoundError(f"checkpoint weights not found: {weights}")
    try:
        state = load_file(str(weights), device=map_location)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{weights}: corrupt or unreadable safetensors file ({exc})") from None
    model = create(cfg["arch"], num_classes=int(cfg["num_classes"]), input_length=int(cfg["input_length"]),
                   sample_rate=int(cfg.get("sample_rate", 16000)), **cfg.get("hparams", {}))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights}: weights do not match architecture {cfg['arch']!r} "
                         f"({str(exc).splitlines()[0]})") from None
    if frozen:
        model.requires_grad_(False)
    return model.eval(), cfg


def checkpoint_kind(cfg: dict) -> str | None:
    """The kind of model a config.json describes (module docstring), None if it names none."""
    if "kind" in cfg:
        return cfg["kind"]
    if "architectures" in cfg or "model_type" in cfg:  # a Hugging Face config.json
        return HF_WAV2VEC2
    if cfg.get("architecture") == "ctc-bigru":
        return RECOGNIZER
    if "arch" in cfg:
        return SPEAKER if cfg["arch"] == "resemblyzer-speaker" else CLASSIFIER
    return None


def _load_classifier(folder: Path, frozen: bool):
    return load_checkpoint(folder, frozen=frozen)


def _load_recognizer(folder: Path, frozen: bool):
    from .asr import load_recognizer
    return load_recognizer(folder, frozen=frozen), json.loads((folder / CONFIG).read_text())


def _load_av_recognizer(folder: Path, frozen: bool):
    from .av import load_av_recognizer
    return load_av_recognizer(folder, frozen=frozen), json.loads((folder / CONFIG).read_text())


def _load_hf(folder: Path, frozen: bool):
    cfg = json.loads((folder / CONFIG).read_text())
    archs = cfg.get("architectures") or []
    if "Wav2Vec2ForCTC" not in archs and cfg.get("model_type") != "wav2vec2":
        raise ValueError(f"{folder / CONFIG}: Hugging Face model {archs or cfg.get('model_type')!r} is not "
                         "supported (only Wav2Vec2ForCTC)")
    if not any((folder / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")):
        raise FileNotFoundError(f"Hugging Face model weights not found in {folder} "
                                "(model.safetensors or pytorch_model.bin)")
    from .asr import HFWav2Vec2Recognizer
    model = HFWav2Vec2Recognizer.from_pretrained(folder)
    if frozen:
        model.requires_grad_(False)
    return model, {**cfg, "kind": HF_WAV2VEC2}


LOADERS = {CLASSIFIER: _load_classifier, SPEAKER: _load_classifier, RECOGNIZER: _load_recognizer,
           AV_RECOGNIZER: _load_av_recognizer, HF_WAV2VEC2: _load_hf}


def load(path, *, frozen: bool = False):
    """Any saved model: (model, config) from a folder (or a file in it) of any kind in the module
    docstring, dispatched on config.json's `kind`. The model is in eval mode; `frozen=True` turns
    off its parameters' gradients. FileNotFoundError for a missing folder, config or weights file,
    ValueError for a config that names no known kind."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model not found: {p} (expected a folder with {CONFIG} and the weights)")
    folder = p if p.is_dir() else p.parent
    cfg_path = folder / CONFIG
    cfg = _read_json(cfg_path, "model")
    kind = checkpoint_kind(cfg) if isinstance(cfg, dict) else None
    if kind not in LOADERS:
        raise ValueError(f"{cfg_path}: unknown model kind {kind!r}; known: {', '.join(sorted(LOADERS))}")
    if kind != HF_WAV2VEC2 and not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"model weights not found: {folder / WEIGHTS}")
    model, cfg = LOADERS[kind](folder, frozen)
    return model, {**cfg, "kind": kind}
