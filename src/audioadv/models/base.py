"""Base class of the zoo: a (B, T) waveform classifier made of named stages.

A model is a chain of stages, each named by the representation it *consumes*:
`"waveform"` (B, T), `"spectrogram"` (B, F, frames, magnitude |STFT|) and `"fbank"`
(B, n_mels, frames, log mel energies). `split(at)` cuts the chain before the stage that
consumes `at`, so that `back(front(x)) == model(x)`; randomized smoothing adds its noise
between the two halves. Raw-waveform models have the single stage `"waveform"`.
"""
from __future__ import annotations

from torch import nn

REPRESENTATIONS = ("waveform", "spectrogram", "fbank")


class _Chain(nn.Module):
    """Runs a list of (shared) modules in order; used for the halves returned by `split`."""

    def __init__(self, modules):
        super().__init__()
        self.parts = nn.ModuleList(modules)

    def forward(self, x):
        for m in self.parts:
            x = m(x)
        return x


class AudioClassifier(nn.Module):
    """(B, T) waveform -> (B, num_classes) logits, built from named stages.

    Subclasses call `_set_stages([(name, module), ...])` in `__init__`; names must follow
    `REPRESENTATIONS` order. `arch`, `num_classes`, `input_length`, `sample_rate` and
    `hparams` (keyword arguments the registry passes back to rebuild the model) are
    recorded for checkpoints.
    """

    arch: str = ""

    def __init__(self, num_classes: int, input_length: int, sample_rate: int = 16000):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"{type(self).__name__}: num_classes must be >= 2, got {num_classes}")
        if input_length < 1:
            raise ValueError(f"{type(self).__name__}: input_length must be positive, got {input_length}")
        self.num_classes, self.input_length, self.sample_rate = int(num_classes), int(input_length), int(sample_rate)
        self.hparams: dict = {}
        self._stage_names: list[str] = []

    def _set_stages(self, stages):
        names = [n for n, _ in stages]
        order = [REPRESENTATIONS.index(n) for n in names]
        if order != sorted(order) or len(set(names)) != len(names):
            raise ValueError(f"stage names {names} must be distinct and follow {REPRESENTATIONS}")
        self._stage_names = names
        self.stages = nn.ModuleList([m for _, m in stages])

    def representations(self) -> list[str]:
        """Representations this model can be split at, in forward order."""
        return list(self._stage_names)

    def split(self, at: str):
        """(front, back) with back(front(x)) == self(x); front maps the waveform to `at`."""
        if at not in self._stage_names:
            raise ValueError(f"{self.arch or type(self).__name__} cannot be split at {at!r}; "
                             f"representations: {', '.join(self._stage_names)}")
        i = self._stage_names.index(at)
        mods = list(self.stages)
        front = _Chain(mods[:i]) if i else nn.Identity()
        return front, _Chain(mods[i:])

    def forward(self, wav):
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        if wav.dim() != 2:
            raise ValueError(f"{self.arch}: expected (B, T) waveforms, got shape {tuple(wav.shape)}")
        x = wav
        for m in self.stages:
            x = m(x)
        return x
