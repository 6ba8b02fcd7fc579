"""Model zoo: end-to-end (B, T) waveform -> (B, C) logits classifiers, built by name.

>>> from audioadv import models
>>> net = models.create("sincnet", num_classes=10, input_length=16000)
>>> models.names()

Architectures are those attacked in Abdoli et al., "Universal adversarial audio
perturbations" (1D CNN Rand/Gamma, SincNet, SincNet+VGG, EnvNet-v2, SpchCMD), adapted so that
they train on a CPU in minutes, plus a log-mel 2-D CNN baseline. Checkpoints:
`save_checkpoint` / `load_checkpoint` (safetensors + JSON, never pickle); `load(path)` loads any
saved model (classifier, speaker head, CTC recogniser, Hugging Face Wav2Vec2ForCTC folder).
"""
from __future__ import annotations

from functools import partial
from typing import Callable

from .base import REPRESENTATIONS, AudioClassifier
from .cnn1d import CNN1D
from .envnet import EnvNetV2
from .logmel_cnn import LogMelCNN
from .sincnet import SincNet, SincNetVGG
from .spchcmd import SpchCMD
from .speaker import ResemblyzerSpeaker

_REGISTRY: dict[str, Callable[..., AudioClassifier]] = {}


def register(name: str, factory: Callable[..., AudioClassifier]) -> None:
    """Add an architecture: factory(num_classes, input_length, sample_rate, **hparams) -> AudioClassifier."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = factory


for _name, _factory in [("cnn1d-rand", partial(CNN1D, gammatone=False)),
                        ("cnn1d-gamma", partial(CNN1D, gammatone=True)),
                        ("sincnet", SincNet), ("sincnet-vgg", SincNetVGG), ("envnet-v2", EnvNetV2),
                        ("spchcmd", SpchCMD), ("logmel-cnn", LogMelCNN),
                        ("resemblyzer-speaker", ResemblyzerSpeaker)]:
    register(_name, _factory)

from .av import AVClassifier  # noqa: E402

register("av-commands", AVClassifier)  # dict {"audio", "video"} -> logits (models/av.py)


def names() -> list[str]:
    """Registered architecture names."""
    return sorted(_REGISTRY)


def create(name: str, num_classes: int, input_length: int = 16000, sample_rate: int = 16000,
           **hparams) -> AudioClassifier:
    """Build an untrained model by name; hparams override the architecture's defaults."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(names())}")
    try:
        model = _REGISTRY[name](num_classes, input_length, sample_rate, **hparams)
    except TypeError as exc:
        raise ValueError(f"model {name!r}: bad hyper-parameters {hparams}: {exc}") from None
    model.arch = name
    return model


from .checkpoint import load, load_checkpoint, save_checkpoint  # noqa: E402

__all__ = ["create", "names", "register", "AudioClassifier", "REPRESENTATIONS", "save_checkpoint",
           "load_checkpoint", "load", "CNN1D", "SincNet", "SincNetVGG", "EnvNetV2", "SpchCMD", "LogMelCNN",
           "ResemblyzerSpeaker"]
