"""Checkpoints as `model.safetensors` (weights) + `config.json` (how to rebuild the model).

config.json holds at least `arch`, `num_classes`, `classes`, `sample_rate`, `input_length` and
`hparams` (architecture keyword arguments), plus whatever the caller adds (training arguments,
metrics). Loading rebuilds the model from the registry and reads tensors with safetensors: no
pickle, so a checkpoint cannot run code.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save_checkpoint(model, out_dir, config: dict | None = None) -> Path:
    """Write model.safetensors and config.json into out_dir (created); returns the folder."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(config or {})
    cfg.update(arch=model.arch, num_classes=model.num_classes, sample_rate=model.sample_rate,
               input_length=model.input_length, hparams=dict(model.hparams))
    cfg.setdefault("classes", [str(i) for i in range(model.num_classes)])
    if len(cfg["classes"]) != model.num_classes:
        raise ValueError(f"save_checkpoint: {len(cfg['classes'])} class names for {model.num_classes} outputs")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"arch": model.arch})
    tmp.replace(out / WEIGHTS)
    (out / CONFIG).write_text(json.dumps(cfg, indent=2, default=str) + "\n")
    return out


def read_config(path) -> dict:
    """The config.json of a checkpoint folder (or the file itself), with a clear error naming it."""
    p = Path(path)
    cfg_path = p / CONFIG if p.is_dir() else p
    if not cfg_path.exists():
        raise FileNotFoundError(f"checkpoint config not found: {cfg_path}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{cfg_path}: corrupt checkpoint config (not valid JSON: {exc})") from None
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
