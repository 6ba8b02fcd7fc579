"""Pretrained GE2E speaker encoder (the `resemblyzer` package's `pretrained.pt`) ported to a
differentiable, batched torch module, plus a linear softmax head for closed-set speaker
recognition (as O'Reilly's certified-robustness study did with Deep Speaker).

Encoder (Wan et al. 2018, "Generalized End-to-End Loss for Speaker Verification", as shipped by
resemblyzer 0.1.4): 3-layer LSTM, 256 hidden units, on 40-channel mel *power* energies (not log)
of 16 kHz audio, 25 ms Hann windows (n_fft 400), 10 ms hop, librosa's Slaney mel filters and
zero-padded centred frames. An utterance is cut into partial utterances of 160 frames (1.6 s),
1.3 partials per second, the last kept when it covers >= 75 % (resemblyzer's
`compute_partial_slices`); each partial gives relu(linear(h_last)) / norm, and the utterance
embedding is the normalised mean of the partial embeddings. Before that, resemblyzer raises
quiet audio to -30 dBFS (`normalize_volume(..., increase_only=True)`), reproduced here as a
differentiable gain. Its webrtcvad silence trimming is not: it changes the length and is not
part of the classifier (trim files beforehand if you need it).

Representations for smoothing: "waveform" (model input), "spectrogram" (|STFT| of the
volume-normalised, padded waveform, (B, 201, frames)) and "fbank" (mel power energies fed to the
LSTM, (B, 40, frames)).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..signal import Spectrogram, mel_filterbank
from .base import AudioClassifier

SAMPLE_RATE = 16000
N_FFT = 400                 # 25 ms
HOP = 160                   # 10 ms
N_MELS = 40
PARTIAL_FRAMES = 160        # 1.6 s per partial utterance
HIDDEN = 256
LAYERS = 3
TARGET_DBFS = -30.0


def resemblyzer_weights_path(path: str | os.PathLike | None = None) -> Path:
    """Where `pretrained.pt` is: `path`, $AUDIOADV_RESEMBLYZER_WEIGHTS, or inside the installed
    `resemblyzer` package (located without importing it: its audio module needs librosa)."""
    if path is None:
        path = os.environ.get("AUDIOADV_RESEMBLYZER_WEIGHTS")
    if path is None:
        spec = importlib.util.find_spec("resemblyzer")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("resemblyzer's pretrained.pt not found: install the speaker extra "
                                    "(pip install 'audioadv[speaker]') or set AUDIOADV_RESEMBLYZER_WEIGHTS")
        path = Path(list(spec.submodule_search_locations)[0]) / "pretrained.pt"
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resemblyzer weights file not found: {path}")
    return path


def partial_slices(n_samples: int, rate: float = 1.3, min_coverage: float = 0.75) -> list[tuple[int, int]]:
    """Frame ranges of the partial utterances of an n_samples waveform (resemblyzer's rule)."""
    if not 0 < min_coverage <= 1:
        raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage}")
    n_frames = int(np.ceil((n_samples + 1) / HOP))
    frame_step = int(np.round((SAMPLE_RATE / rate) / HOP))
    if not 0 < frame_step <= PARTIAL_FRAMES:
        raise ValueError(f"partial rate {rate}/s is out of range")
    steps = max(1, n_frames - PARTIAL_FRAMES + frame_step + 1)
    slices = [(i, i + PARTIAL_FRAMES) for i in range(0, steps, frame_step)]
    start, stop = slices[-1][0] * HOP, slices[-1][1] * HOP
    if (n_samples - start) / (stop - start) < min_coverage and len(slices) > 1:
        slices = slices[:-1]
    return slices


class VolumeNorm(nn.Module):
    """Raise each waveform to `target_dbfs` RMS if it is quieter (resemblyzer's normalize_volume
    with increase_only=True), as a differentiable per-example gain max(1, 10^(t/20) / rms)."""

    def __init__(self, target_dbfs: float = TARGET_DBFS):
        super().__init__()
        self.target = 10.0 ** (target_dbfs / 20.0)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        rms = wav.pow(2).mean(dim=-1, keepdim=True).sqrt()
        return wav * (self.target / rms.clamp_min(1e-8)).clamp_min(1.0)


class _Padded(nn.Module):
    """Zero-pad on the right to `total` samples, then N_FFT // 2 on both sides (librosa center)."""

    def __init__(self, total: int):
        super().__init__()
        self.total = total

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        extra = max(0, self.total - wav.shape[-1])
        return nn.functional.pad(wav, (N_FFT // 2, N_FFT // 2 + extra))


class MelEnergies(nn.Module):
    """Mel power energies fb @ |S|^2 of a magnitude spectrogram (librosa.feature.melspectrogram)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("fb", mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS), persistent=False)

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.fb, mag.pow(2))


class GE2EEncoder(nn.Module):
    """resemblyzer's VoiceEncoder network: (B, frames, 40) mel energies -> (B, 256) unit embeddings."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(N_MELS, HIDDEN, LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        raw = torch.relu(self.linear(hidden[-1]))
        return raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def load_pretrained(self, path=None) -> "GE2EEncoder":
        state = torch.load(resemblyzer_weights_path(path), map_location="cpu", weights_only=True)
        state = state.get("model_state", state)
        self.load_state_dict({k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))})
        return self


class _Partials(nn.Module):
    """(B, 40, frames) mel energies -> GE2E utterance embedding (normalised mean over partials)."""

    def __init__(self, encoder: GE2EEncoder, slices: list[tuple[int, int]]):
        super().__init__()
        self.encoder, self.slices = encoder, slices

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        b = mel.shape[0]
        parts = torch.stack([mel[:, :, s:e] for s, e in self.slices], dim=1)       # (B, P, 40, 160)
        emb = self.encoder(parts.flatten(0, 1).transpose(1, 2)).view(b, len(self.slices), -1).mean(1)
        return emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)


class ResemblyzerSpeaker(AudioClassifier):
    """`resemblyzer-speaker`: waveforms (B, T) at 16 kHz -> speaker logits, GE2E embedding + linear head.

    `train_encoder=False` keeps the pretrained encoder fixed, so training fits the linear head alone.
    `embed(wav)` gives resemblyzer's utterance embedding of fixed-length clips, `embed_utterance`
    that of one clip of any length; `forward` the head's logits. `pretrained=True` loads
    resemblyzer's `pretrained.pt`; checkpoints carry the encoder weights, so they are rebuilt with
    pretrained=False (recorded in `hparams`) and need no resemblyzer install.
    """

    arch = "resemblyzer-speaker"

    def __init__(self, num_classes: int, input_length: int = 25000, sample_rate: int = SAMPLE_RATE, *,
                 pretrained: bool = True, normalize_volume: bool = True, weights: str | None = None,
                 train_encoder: bool = True):
        super().__init__(num_classes, input_length, sample_rate)
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"resemblyzer-speaker works on {SAMPLE_RATE} Hz audio, not {sample_rate} Hz")
        self.hparams = {"pretrained": False, "normalize_volume": normalize_volume, "train_encoder": train_encoder}
        self.slices = partial_slices(input_length)
        encoder = GE2EEncoder()
        if pretrained:
            encoder.load_pretrained(weights)
        front = nn.Sequential(VolumeNorm() if normalize_volume else nn.Identity(),
                              _Padded(max(input_length, self.slices[-1][1] * HOP)),
                              Spectrogram(n_fft=N_FFT, win_length=N_FFT, hop_length=HOP, power=1.0, center=False))
        self._set_stages([("waveform", front), ("spectrogram", MelEnergies()),
                          ("fbank", nn.Sequential(_Partials(encoder, self.slices), nn.Linear(HIDDEN, num_classes)))])
        if not train_encoder:         # train only the linear head on the pretrained embeddings
            self.freeze_encoder()

    @property
    def encoder(self) -> GE2EEncoder:
        return self.stages[2][0].encoder

    @property
    def head(self) -> nn.Linear:
        return self.stages[2][1]

    def freeze_encoder(self) -> "ResemblyzerSpeaker":
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        return self

    def fbank(self, wav: torch.Tensor) -> torch.Tensor:
        """Mel power energies (B, 40, frames) fed to the LSTM."""
        return self.stages[1](self.stages[0](wav))

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """GE2E utterance embeddings (B, 256) of clips of input_length samples."""
        return self.stages[2][0](self.fbank(wav))

    def embed_from(self, at: str, z: torch.Tensor) -> torch.Tensor:
        """Embeddings from representation `at` (e.g. a noisy one): the model's back half minus the head."""
        names = self.representations()
        if at not in names:
            raise ValueError(f"resemblyzer-speaker has no representation {at!r}; use one of {names}")
        for stage in list(self.stages)[names.index(at):2]:
            z = stage(z)
        return self.stages[2][0](z)

    def embed_utterance(self, wav: torch.Tensor, rate: float = 1.3, min_coverage: float = 0.75) -> torch.Tensor:
        """Embedding of one (T,) utterance of any length (resemblyzer's embed_utterance)."""
        volume, _, stft = self.stages[0]
        slices = partial_slices(wav.shape[-1], rate, min_coverage)
        pad = _Padded(max(wav.shape[-1], slices[-1][1] * HOP))
        mel = self.stages[1](stft(pad(volume(wav.reshape(1, -1)))))
        return _Partials(self.encoder, slices)(mel)[0]

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.shape[-1] != self.input_length:
            raise ValueError(f"resemblyzer-speaker expects {self.input_length} samples, got {wav.shape[-1]} "
                             "(use embed_utterance for other lengths)")
        return super().forward(wav)


def fit_head(model: ResemblyzerSpeaker, embeddings: torch.Tensor, labels: torch.Tensor, *, steps: int = 300,
             lr: float = 0.05, weight_decay: float = 1e-4, seed: int = 0) -> float:
    """Train the linear softmax head on fixed embeddings (full-batch Adam, cross-entropy); the
    encoder is untouched. Returns the final training accuracy."""
    if len(embeddings) != len(labels):
        raise ValueError(f"fit_head: {len(embeddings)} embeddings but {len(labels)} labels")
    torch.manual_seed(seed)
    head = model.head
    head.reset_parameters()
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    emb = embeddings.detach()
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(head(emb), labels).backward()
            opt.step()
    with torch.no_grad():
        return float((head(emb).argmax(1) == labels).float().mean())


__all__ = ["fit_head", "ResemblyzerSpeaker", "GE2EEncoder", "VolumeNorm", "MelEnergies", "partial_slices",
           "resemblyzer_weights_path"]
