"""Audio-visual models: dict inputs {"audio": (B, T), "video": (B, F, H, W)}.

Convention (what `attacks.msae` and any user model must follow): the model takes one dict of
batched tensors, audio waveforms in [-1, 1] under "audio", grayscale video in [0, 1] under
"video" (frames at `fps`, the same clip as the audio), and returns logits (classifiers) or,
for recognisers, `frame_logits(inputs, lengths) -> (logits (B, F, C), frame_lengths (B,))` with
`lengths` the audio lengths in samples. Every model has `example_inputs(batch_size, seed=0)`
returning a correctly shaped dict.

- `AVClassifier` (`av-commands` in the zoo): late fusion. Audio branch: log-mel 2-D CNN
  (`logmel-cnn`) producing an embedding; video branch: `VideoEncoder` (a 2-D CNN per frame, then
  temporal convolutions) and a linear map of the whole frame sequence; the embeddings are
  concatenated and classified.
  `modalities="audio"` or `"video"` builds the single-modality model of the same recipe (the
  other input is ignored), for the audio-only / video-only comparisons.
- `AVRecognizer`: a character CTC recogniser. Audio branch: the front end and encoder of the
  built-in `models.asr.CTCRecognizer` (log-mel -> convolutions -> BiGRU, 20 ms frames); video
  branch: `VideoEncoder` resampled to the audio frames; fusion per frame (concatenation -> MLP)
  -> characters.
- `fit_av`: trains an AV classifier with `train.fit` through a packing adapter (fit handles
  (B, T) tensors only), with our audio augmentation (random gain, additive white noise at a random
  SNR) applied inside the adapter. `fit_av_recognizer` trains an `AVRecognizer` (a small CTC loop
  reusing `asr_train`'s schedule); `accuracy` / `cer_av` evaluate, optionally at a given SNR.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .logmel_cnn import LogMelCNN

MODALITIES = ("audio", "video")


def _check_inputs(inputs, name: str, need=MODALITIES) -> None:
    if not isinstance(inputs, dict):
        raise TypeError(f"{name}: inputs must be a dict {{'audio': (B, T), 'video': (B, F, H, W)}}, "
                        f"not {type(inputs).__name__}")
    missing = [k for k in need if k not in inputs]
    if missing:
        raise ValueError(f"{name}: inputs lack {', '.join(missing)} (got keys {sorted(inputs)})")
    if "audio" in need and inputs["audio"].dim() != 2:
        raise ValueError(f"{name}: audio must be (B, T), got {tuple(inputs['audio'].shape)}")
    if "video" in need and inputs["video"].dim() != 4:
        raise ValueError(f"{name}: video must be (B, F, H, W), got {tuple(inputs['video'].shape)}")


class VideoEncoder(nn.Module):
    """(B, F, H, W) in [0, 1] -> (B, F, dim): each clip's mean frame is subtracted (the static
    face says who speaks, its motion what is said), a small 2-D CNN embeds every frame keeping a
    coarse 4 x 4 spatial layout, then two temporal convolutions (kernel 3) run over the frames."""

    def __init__(self, dim: int = 64, channels=(16, 32)):
        super().__init__()
        layers, cin = [], 2
        for c in channels:
            layers += [nn.Conv2d(cin, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            cin = c
        self.frame = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(cin * 16, dim), nn.ReLU())
        self.temporal = nn.Sequential(nn.Conv1d(dim, dim, 3, padding=1), nn.ReLU(),
                                      nn.Conv1d(dim, dim, 3, padding=1), nn.ReLU())

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, f, h, w = video.shape
        motion = video - video.mean(1, keepdim=True)
        z = torch.stack([(video - 0.5) * 2, motion * 4], 2).reshape(b * f, 2, h, w)
        z = self.frame(z).reshape(b, f, -1)
        return self.temporal(z.transpose(1, 2)).transpose(1, 2)


class AVClassifier(nn.Module):
    """Late-fusion audio-visual classifier: dict inputs -> (B, num_classes) logits (module docstring)."""

    arch = "av-commands"

    def __init__(self, num_classes: int, input_length: int = 16000, sample_rate: int = 16000, *,
                 frames: int | None = None, size: int = 32, fps: float = 25.0, modalities: str = "audio,video",
                 dim: int = 64, dropout: float = 0.3):
        super().__init__()
        mods = tuple(m.strip() for m in str(modalities).split(",") if m.strip())
        if not mods or any(m not in MODALITIES for m in mods) or len(set(mods)) != len(mods):
            raise ValueError(f"av-commands: modalities must be audio, video or audio,video; got {modalities!r}")
        if num_classes < 2:
            raise ValueError(f"av-commands: num_classes must be >= 2, got {num_classes}")
        self.num_classes, self.input_length, self.sample_rate = int(num_classes), int(input_length), int(sample_rate)
        self.fps, self.size = float(fps), int(size)
        self.frames = int(frames) if frames else int(math.ceil(input_length / sample_rate * fps - 1e-9))
        self.modalities = mods
        self.hparams = {"frames": self.frames, "size": self.size, "fps": self.fps, "modalities": ",".join(mods),
                        "dim": dim, "dropout": dropout}
        width = 0
        if "audio" in mods:
            self.audio = LogMelCNN(dim, input_length, sample_rate, channels=(16, 32, 32), dropout=dropout)
            width += dim
        if "video" in mods:
            self.video = VideoEncoder(dim)
            self.video_time = nn.Linear(self.frames * dim, dim)  # the order of mouth shapes matters
            width += dim
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, num_classes))

    def representations(self) -> list[str]:
        """None: the dict input has no single waveform representation to split at (smoothing)."""
        return []

    def split(self, at: str):
        raise ValueError(f"{self.arch} takes dict inputs and cannot be split at {at!r}")

    def example_inputs(self, batch_size: int = 2, seed: int = 0) -> dict:
        g = torch.Generator().manual_seed(seed)
        audio = (0.1 * torch.randn(batch_size, self.input_length, generator=g)).clamp(-1, 1)
        video = torch.rand(batch_size, self.frames, self.size, self.size, generator=g)
        return {"audio": audio, "video": video}

    def embed(self, inputs: dict) -> torch.Tensor:
        _check_inputs(inputs, self.arch, self.modalities)
        parts = []
        if "audio" in self.modalities:
            parts.append(self.audio(inputs["audio"]))
        if "video" in self.modalities:
            v = inputs["video"]
            if v.shape[1] != self.frames:
                raise ValueError(f"{self.arch}: expected {self.frames} video frames, got {v.shape[1]}")
            parts.append(self.video_time(self.video(v).flatten(1)))
        return torch.cat(parts, 1)

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.head(self.embed(inputs))


class AVRecognizer(nn.Module):
    """Audio-visual character CTC recogniser (module docstring). `frame_logits(inputs, lengths)`
    returns log-probabilities (B, frames, C) and frame lengths, like `models.asr.CTCRecognizer`."""

    def __init__(self, *, size: int = 32, fps: float = 25.0, video_dim: int = 64, fused: int = 192,
                 modalities: str = "audio,video", **asr_kw):
        super().__init__()
        from .asr import CTCRecognizer
        mods = tuple(m.strip() for m in str(modalities).split(",") if m.strip())
        if not mods or any(m not in MODALITIES for m in mods):
            raise ValueError(f"AVRecognizer: modalities must be audio, video or audio,video; got {modalities!r}")
        self.modalities = mods
        self.audio = CTCRecognizer(**asr_kw)  # front end + encoder; its output layer is not used
        self.config = {"architecture": "av-ctc", "size": size, "fps": fps, "video_dim": video_dim, "fused": fused,
                       "modalities": ",".join(mods), "asr": self.audio.config}
        self.vocab, self.blank, self.sample_rate = self.audio.vocab, self.audio.blank, self.audio.sample_rate
        self.size, self.fps = int(size), float(fps)
        self.video = VideoEncoder(video_dim)
        width = (2 * self.audio.gru_fwd[0].hidden_size if "audio" in mods else 0) + (video_dim if "video" in mods else 0)
        self.fuse = nn.Sequential(nn.Linear(width, fused), nn.GELU(), nn.Dropout(asr_kw.get("dropout", 0.1)),
                                  nn.Linear(fused, len(self.vocab)))
        self._captured = None
        self.audio.out.register_forward_hook(lambda mod, args, out: setattr(self, "_captured", args[0]))

    def encode_text(self, text):
        return self.audio.encode_text(text)

    def decode_labels(self, ids):
        return self.audio.decode_labels(ids)

    def normalize_text(self, text):
        return self.audio.normalize_text(text)

    def example_inputs(self, batch_size: int = 2, seed: int = 0, seconds: float = 1.0) -> dict:
        g = torch.Generator().manual_seed(seed)
        t = int(seconds * self.sample_rate)
        f = int(math.ceil(seconds * self.fps - 1e-9))
        return {"audio": (0.1 * torch.randn(batch_size, t, generator=g)).clamp(-1, 1),
                "video": torch.rand(batch_size, f, self.size, self.size, generator=g)}

    def frame_logits(self, inputs: dict, lengths=None):
        _check_inputs(inputs, "AVRecognizer")
        wav, video = inputs["audio"], inputs["video"]
        _, frames = self.audio(wav, lengths)  # runs the encoder; the hook keeps its last features
        a = self._captured  # (B, frames, 2 * hidden)
        n = a.shape[1]
        # audio frame j covers 20 ms from j * 0.02 s: the video frame shown at that time
        hop_s = 2 * self.audio.hop / self.sample_rate
        idx = ((torch.arange(n, device=wav.device) * hop_s) * self.fps).long().clamp(max=video.shape[1] - 1)
        parts = []
        if "audio" in self.modalities:
            parts.append(a)
        if "video" in self.modalities:
            parts.append(self.video(video)[:, idx])
        return self.fuse(torch.cat(parts, -1)).log_softmax(-1), frames

    def forward(self, inputs: dict, lengths=None):
        return self.frame_logits(inputs, lengths)


class _Packed(nn.Module):
    """Adapter for `train.fit`: one (B, T + F*H*W) tensor <-> the AV model's dict input. While
    training it augments the audio part (random gain, white noise at a random SNR), seeded."""

    def __init__(self, net: AVClassifier, seed: int = 0, gain_db: float = 6.0, snr_db=(-5.0, 30.0),
                 noise_prob: float = 0.5):
        super().__init__()
        self.net, self.num_classes = net, net.num_classes
        self.t, self.vshape = net.input_length, (net.frames, net.size, net.size)
        self.g = torch.Generator().manual_seed(seed)
        self.gain_db, self.snr_db, self.noise_prob = gain_db, snr_db, noise_prob

    def representations(self):
        return ["waveform"]

    def forward(self, x):
        audio, video = x[:, :self.t], x[:, self.t:].reshape(len(x), *self.vshape)
        if self.training:
            b, dev = len(audio), audio.device      # drawn on the CPU generator: the same draws on any device
            gain = 10 ** ((torch.rand(b, 1, generator=self.g) * 2 - 1) * self.gain_db / 20)
            audio = audio * gain.to(dev)
            lo, hi = self.snr_db
            snr = lo + (hi - lo) * torch.rand(b, 1, generator=self.g)
            rms = audio.pow(2).mean(1, keepdim=True).sqrt()
            noisy = torch.rand(b, 1, generator=self.g) < self.noise_prob
            noise = torch.randn(audio.shape, generator=self.g) * noisy
            audio = (audio + noise.to(dev) * rms / 10 ** (snr.to(dev) / 20)).clamp(-1, 1)
        return self.net({"audio": audio, "video": video})


def pack(ds) -> "torch.Tensor":
    return torch.cat([ds.waves, ds.video.flatten(1)], 1)


def fit_av(model: AVClassifier, train, val, cfg=None, *, out_dir=None, config: dict | None = None, seed: int = 0,
           progress: bool = False, log=print, device=None, **augment) -> dict:
    """Train an AV classifier on `AVDataset`s with `train.fit` (packing adapter, module docstring).
    `cfg` is a `train.TrainConfig`; its waveform augmentations are replaced by the adapter's
    (keyword arguments of `_Packed`: gain_db, snr_db, noise_prob). With `out_dir` the best weights
    are saved with `save_checkpoint` (loadable with `models.load_checkpoint`)."""
    from dataclasses import replace

    from ..data import AudioDataset
    from ..train import TrainConfig, fit
    from .checkpoint import save_checkpoint

    cfg = replace(cfg or TrainConfig(), gain_db=0.0, shift_ms=0.0, noise_sigma=0.0, seed=seed)
    wrap = _Packed(model, seed=seed, **augment)
    as_audio = lambda d: AudioDataset(pack(d), d.labels, d.classes, d.sample_rate, d.items, d.name)  # noqa: E731
    summary = fit(wrap, as_audio(train), as_audio(val), cfg, progress=progress, log=log, device=device)
    model.eval()
    if out_dir:
        c = dict(config or {})
        c.update(classes=list(train.classes), training={"epochs": cfg.epochs, "lr": cfg.lr, "seed": seed, **augment},
                 metrics={"val_accuracy": summary["best"]["val_accuracy"]})
        save_checkpoint(model, out_dir, c)
    return summary


@torch.no_grad()
def accuracy(model, ds, *, snr_db: float | None = None, seed: int = 0, batch_size: int = 64) -> float:
    """Accuracy of an AV classifier on an `AVDataset`, optionally with white noise added to the audio
    at `snr_db` (per clip, relative to its RMS; seeded)."""
    was = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    ok = 0
    for i in range(0, len(ds), batch_size):
        x = ds.inputs(torch.arange(i, min(i + batch_size, len(ds))))
        if snr_db is not None:
            a = x["audio"]
            rms = a.pow(2).mean(1, keepdim=True).sqrt()
            x["audio"] = (a + torch.randn(a.shape, generator=g) * rms / 10 ** (snr_db / 20)).clamp(-1, 1)
        ok += int((model(x).argmax(1) == ds.labels[i:i + batch_size]).sum())
    model.train(was)
    return ok / len(ds)


def _noisy(audio: torch.Tensor, lengths: torch.Tensor, g: torch.Generator, snr_db) -> torch.Tensor:
    """White noise at `snr_db` (a number or (B,) tensor) relative to each clip's RMS over its length."""
    valid = (torch.arange(audio.shape[1])[None, :] < lengths[:, None]).to(audio.dtype)
    rms = ((audio * valid).pow(2).sum(1, keepdim=True) / lengths[:, None].clamp_min(1)).sqrt()
    snr = torch.as_tensor(snr_db, dtype=audio.dtype).reshape(-1, 1)
    return (audio + torch.randn(audio.shape, generator=g) * rms / 10 ** (snr / 20) * valid).clamp(-1, 1)


def _lengths_of(ds) -> torch.Tensor:
    return torch.tensor([int(it.get("num_samples", ds.input_length)) for it in ds.items] if ds.items
                        else [ds.input_length] * len(ds), dtype=torch.long)


def fit_av_recognizer(model: AVRecognizer, train, val, *, epochs: int = 20, lr: float = 2e-3, batch_size: int = 16,
                      seed: int = 0, snr_db=(-5.0, 30.0), noise_prob: float = 0.5, log=print, device="cpu") -> dict:
    """Train an `AVRecognizer` on `AVDataset`s with transcripts (`items[i]["text"]`), e.g.
    synth-av-phrases. `asr_train.train_recognizer` builds and feeds a waveform-only model, so this
    is a small loop of its own around the same pieces: `asr_train.one_cycle` learning rate,
    AdamW, CTC loss, gradient clipping at 5, feature statistics from training audio, best
    validation CER kept. Audio augmentation as `fit_av` (white noise at a random SNR on
    `noise_prob` of the clips). Stops after `epochs`. device: where the model trains (noise is drawn on
    the CPU generator, so a seed gives the same draws on any device)."""
    from ..asr_train import one_cycle
    from .asr import encode_targets

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    lens = _lengths_of(train)
    model.audio.set_feature_stats(train.waves, lens)
    dev = torch.device(device)
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = max(1, epochs * math.ceil(len(train) / batch_size))
    step, best, best_cer, history = 0, None, math.inf, []
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(train), generator=g)
        for i in range(0, len(train), batch_size):
            idx = perm[i:i + batch_size]
            n = int(lens[idx].max())
            audio = train.waves[idx, :n]
            lo, hi = snr_db
            snr = lo + (hi - lo) * torch.rand(len(idx), generator=g)
            noisy = torch.rand(len(idx), generator=g) < noise_prob
            audio = torch.where(noisy[:, None], _noisy(audio, lens[idx], g, snr), audio)
            for group in opt.param_groups:
                group["lr"] = one_cycle(step / steps, lr)
            logp, frames = model.frame_logits({"audio": audio.to(dev), "video": train.video[idx].to(dev)},
                                              lens[idx].to(dev))
            tg, tl = encode_targets(model, [train.items[j]["text"] for j in idx.tolist()])
            loss = F.ctc_loss(logp.transpose(0, 1), tg, frames, tl, blank=model.blank, zero_infinity=True)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            step += 1
        v = cer_av(model, val)
        history.append({"epoch": epoch + 1, "loss": float(loss.detach()), "val_cer": v})
        log(f"epoch {epoch + 1}/{epochs}: loss {float(loss.detach()):.3f} val CER {v:.3f}")
        if v < best_cer:
            best_cer, best = v, {k: t.detach().clone() for k, t in model.state_dict().items()}
    if best is not None:
        model.load_state_dict(best)
    model.eval()
    return {"best_val_cer": best_cer, "history": history}


@torch.no_grad()
def cer_av(model: AVRecognizer, ds, *, snr_db: float | None = None, seed: int = 0, batch_size: int = 32) -> float:
    """Character error rate (greedy decoding) of an AV recogniser on an `AVDataset` with
    transcripts, optionally with white noise at `snr_db` added to the audio (seeded)."""
    from ..metrics.text import cer
    from .asr import transcribe

    was = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    lens = _lengths_of(ds)
    hyps = []
    for i in range(0, len(ds), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(ds)))
        n = int(lens[idx].max())
        audio = ds.waves[idx, :n]
        if snr_db is not None:
            audio = _noisy(audio, lens[idx], g, snr_db)
        hyps += transcribe(model, {"audio": audio, "video": ds.video[idx]}, lens[idx], batch_size=batch_size)
    model.train(was)
    refs = [model.normalize_text(it["text"]) for it in ds.items]
    return cer(refs, hyps)


def save_av_recognizer(model: AVRecognizer, folder, extra: dict | None = None):
    """Write `model.safetensors` and `config.json` (kind "av-recognizer", the constructor's settings, `extra`)."""
    from .checkpoint import AV_RECOGNIZER, write_checkpoint
    return write_checkpoint(folder, model, {"kind": AV_RECOGNIZER, **model.config, **(extra or {})})


def load_av_recognizer(folder, *, frozen: bool = False) -> AVRecognizer:
    """An `AVRecognizer` saved by `save_av_recognizer` (safetensors; never unpickles)."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("architecture") != "av-ctc":
        raise ValueError(f"{folder / 'config.json'}: architecture {cfg.get('architecture')!r} is not 'av-ctc'")
    asr = {k: v for k, v in cfg.get("asr", {}).items() if k != "architecture"}
    model = AVRecognizer(**{k: cfg[k] for k in ("size", "fps", "video_dim", "fused", "modalities") if k in cfg}, **asr)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval().requires_grad_(not frozen)


__all__ = ["AVClassifier", "AVRecognizer", "save_av_recognizer", "load_av_recognizer", "VideoEncoder", "fit_av", "accuracy", "pack", "MODALITIES",
           "fit_av_recognizer", "cer_av"]
