"""Character CTC speech recognisers and the small protocol the speech-to-text attacks need.

An attackable recogniser (`Recognizer`) only has to give

- `frame_logits(wav, lengths) -> (logits (B, F, C), frame_lengths (B,))`: unnormalised scores per
  output frame for a batch of 16 kHz waveforms of different lengths (zero padded, `lengths` in samples),
- `blank`: the CTC blank index,
- `encode_text(text) -> list[int]` and `decode_labels(ids) -> str`: the text <-> label mapping,
- `sample_rate`.

`CTCRecognizer` is the built-in model (log-mel -> two strided 1-D convolutions -> 2-layer BiGRU ->
characters), `HFWav2Vec2Recognizer` adapts a Hugging Face `Wav2Vec2ForCTC` folder (``hf`` extra).
`ctc_loss`, `greedy_decode`, `beam_search_decode` and `transcribe` work on any `Recognizer`.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..signal import LogMel, Spectrogram

ALPHABET = " 'abcdefghijklmnopqrstuvwxyz"
_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@runtime_checkable
class Recognizer(Protocol):
    """What an attack needs from a speech recogniser (see module docstring)."""

    sample_rate: int
    blank: int

    def frame_logits(self, wav: torch.Tensor, lengths: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def encode_text(self, text: str) -> list[int]: ...

    def decode_labels(self, ids: Sequence[int]) -> str: ...


class CharVocab:
    """Characters <-> CTC labels; label 0 is the blank, 1.. are `chars`.

    `normalize` lower-cases, spells digits as words, maps anything outside the alphabet to a
    space and collapses runs of spaces, so transcripts from any source compare fairly.
    """

    def __init__(self, chars: str = ALPHABET):
        if len(set(chars)) != len(chars):
            raise ValueError(f"CharVocab: repeated characters in {chars!r}")
        self.chars = chars
        self.blank = 0
        self._index = {c: i + 1 for i, c in enumerate(chars)}

    def __len__(self) -> int:
        return len(self.chars) + 1

    def normalize(self, text: str) -> str:
        text = text.lower()
        text = re.sub(r"\d", lambda m: f" {_NUMBERS[int(m.group())]} ", text)
        text = "".join(c if c in self._index else " " for c in text)
        return re.sub(r" +", " ", text).strip()

    def encode(self, text: str) -> list[int]:
        return [self._index[c] for c in self.normalize(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i - 1] for i in ids if 0 < i <= len(self.chars))


# ----------------------------------------------------------------------------------------------
# Model-independent helpers


def _lengths(wav: torch.Tensor, lengths) -> torch.Tensor:
    if lengths is None:
        return torch.full((wav.shape[0],), wav.shape[-1], dtype=torch.long, device=wav.device)
    return torch.as_tensor(lengths, dtype=torch.long, device=wav.device)


def encode_targets(model: Recognizer, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated CTC targets and their lengths for a list of transcripts."""
    seqs = [model.encode_text(t) for t in texts]
    for t, s in zip(texts, seqs):
        if not s:
            raise ValueError(f"transcript {t!r} has no character the recogniser knows")
    flat = torch.tensor([i for s in seqs for i in s], dtype=torch.long)
    return flat, torch.tensor([len(s) for s in seqs], dtype=torch.long)


def ctc_loss(model: Recognizer, wav: torch.Tensor, lengths, texts: Sequence[str],
             reduction: str = "none") -> torch.Tensor:
    """CTC negative log-likelihood of `texts` given the audio, per utterance by default.

    Utterances whose transcript cannot be aligned (too few frames) get +inf, so callers see it.
    """
    logits, frames = model.frame_logits(wav, _lengths(wav, lengths))
    logp = logits.log_softmax(-1).transpose(0, 1)  # (F, B, C)
    targets, tlen = encode_targets(model, texts)
    return F.ctc_loss(logp, targets.to(logits.device), frames, tlen.to(logits.device),
                      blank=model.blank, reduction=reduction, zero_infinity=False)


def greedy_decode(logits: torch.Tensor, frame_lengths: torch.Tensor | None = None,
                  blank: int = 0) -> list[list[int]]:
    """Best path decoding: argmax per frame, merge repeats, drop blanks. Returns label lists."""
    best = logits.argmax(-1).cpu()
    n = frame_lengths.tolist() if frame_lengths is not None else [best.shape[1]] * best.shape[0]
    out = []
    for row, length in zip(best.tolist(), n):
        labels, prev = [], None
        for k in row[:length]:
            if k != prev and k != blank:
                labels.append(k)
            prev = k
        out.append(labels)
    return out


def _logsumexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def beam_search_decode(logits: torch.Tensor, frame_lengths: torch.Tensor | None = None,
                       blank: int = 0, beam_width: int = 8, prune: float = -12.0) -> list[list[int]]:
    """CTC prefix beam search (no language model), one label list per utterance.

    Keeps, per prefix, the log probability of paths ending in a blank and in a non-blank
    (Hannun et al. 2014, Alg. 1 without the LM term); labels whose frame log probability is
    below `prune` are skipped. With beam_width=1 it is close to greedy decoding.
    """
    logp = logits.log_softmax(-1).detach().cpu().double()
    n = frame_lengths.tolist() if frame_lengths is not None else [logp.shape[1]] * logp.shape[0]
    results = []
    for b, length in enumerate(n):
        beams: dict[tuple, tuple[float, float]] = {(): (0.0, -math.inf)}  # prefix -> (p_blank, p_nonblank)
        for t in range(length):
            row = logp[b, t]
            cand = [k for k in range(row.shape[0]) if row[k] > prune or k == blank]
            nxt: dict[tuple, list[float]] = {}
            for prefix, (pb, pnb) in beams.items():
                total = _logsumexp(pb, pnb)
                for k in cand:
                    p = float(row[k])
                    if k == blank:
                        e = nxt.setdefault(prefix, [-math.inf, -math.inf])
                        e[0] = _logsumexp(e[0], total + p)
                        continue
                    new = prefix + (k,)
                    e = nxt.setdefault(new, [-math.inf, -math.inf])
                    if prefix and prefix[-1] == k:
                        e[1] = _logsumexp(e[1], pb + p)       # a repeat needs a blank in between
                        same = nxt.setdefault(prefix, [-math.inf, -math.inf])
                        same[1] = _logsumexp(same[1], pnb + p)
                    else:
                        e[1] = _logsumexp(e[1], total + p)
            ranked = sorted(nxt.items(), key=lambda kv: _logsumexp(*kv[1]), reverse=True)[:beam_width]
            beams = {k: (v[0], v[1]) for k, v in ranked}
        best = max(beams.items(), key=lambda kv: _logsumexp(*kv[1]))[0]
        results.append(list(best))
    return results


@torch.no_grad()
def transcribe(model: Recognizer, wav, lengths=None, *, beam_width: int = 0,
               batch_size: int = 32) -> list[str]:
    """Transcripts of a (B, T) batch, or of a dict of audio-visual inputs (lengths: of the audio), on the
    model's device; greedy decoding unless beam_width > 1."""
    inputs = wav if isinstance(wav, dict) else None
    if inputs is None and wav.dim() == 1:
        wav = wav.unsqueeze(0)
    audio = wav if inputs is None else inputs["audio"]
    lengths = _lengths(audio, lengths)
    dev = next(model.parameters()).device
    out: list[str] = []
    for i in range(0, audio.shape[0], batch_size):
        rows = slice(i, i + batch_size)
        part = audio[rows].to(dev) if inputs is None else {k: v[rows].to(dev) for k, v in inputs.items()}
        logits, frames = model.frame_logits(part, lengths[rows].to(dev))
        if beam_width > 1:
            labels = beam_search_decode(logits, frames, model.blank, beam_width)
        else:
            labels = greedy_decode(logits, frames, model.blank)
        out.extend(model.decode_labels(s) for s in labels)
    return out


# ----------------------------------------------------------------------------------------------
# The built-in recogniser


class CTCRecognizer(nn.Module):
    """Log-mel -> Conv1d (stride 2) -> Conv1d -> 2-layer bidirectional GRU -> characters.

    Frames are 10 ms (hop 160 at 16 kHz) before the stride, 20 ms after. Features are
    normalised with fixed per-mel statistics (`set_feature_stats`, from the training set), then,
    with feature_norm="utterance" (default), per utterance and mel over its own valid frames, so a
    padded batch and a single utterance give the same frames. `forward(wav, lengths)` returns
    the frame log-probabilities (B, F, C) and frame lengths; `frame_logits` is the same.
    """

    # forward zero-pads every utterance past its own length (attacks then add no padding of their own)
    pads_utterances = True

    def __init__(self, n_mels: int = 40, channels: int = 192, hidden: int = 160, layers: int = 2,
                 alphabet: str = ALPHABET, sample_rate: int = 16000, dropout: float = 0.1,
                 feature_norm: str = "utterance"):
        super().__init__()
        if feature_norm not in ("global", "utterance"):
            raise ValueError(f"CTCRecognizer: feature_norm must be 'global' or 'utterance', got {feature_norm!r}")
        self.config = dict(architecture="ctc-bigru", n_mels=n_mels, channels=channels, hidden=hidden,
                           layers=layers, alphabet=alphabet, sample_rate=sample_rate, dropout=dropout,
                           feature_norm=feature_norm)
        self.feature_norm = feature_norm
        self.vocab = CharVocab(alphabet)
        self.sample_rate, self.blank, self.hop = sample_rate, self.vocab.blank, 160
        self.spectrogram = Spectrogram(n_fft=512, win_length=400, hop_length=self.hop)
        self.logmel = LogMel(sample_rate, 512, n_mels)
        self.register_buffer("feat_mean", torch.zeros(n_mels))
        self.register_buffer("feat_std", torch.ones(n_mels))
        self.conv = nn.Sequential(
            nn.Conv1d(n_mels, channels, 5, stride=2, padding=2), nn.GELU(),
            nn.Conv1d(channels, channels, 3, padding=1), nn.GELU(),
        )
        # Bidirectional GRU layers as pairs of unidirectional GRUs; the backward one reads each
        # utterance reversed within its own length, so padding never leaks into valid frames
        # (exact like packed sequences, about twice as fast on the CPU).
        self.gru_fwd = nn.ModuleList(nn.GRU(channels if i == 0 else 2 * hidden, hidden, batch_first=True)
                                     for i in range(layers))
        self.gru_bwd = nn.ModuleList(nn.GRU(channels if i == 0 else 2 * hidden, hidden, batch_first=True)
                                     for i in range(layers))
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(2 * hidden, len(self.vocab))

    # text <-> labels
    def encode_text(self, text: str) -> list[int]:
        return self.vocab.encode(text)

    def decode_labels(self, ids: Sequence[int]) -> str:
        return self.vocab.decode(ids)

    def normalize_text(self, text: str) -> str:
        return self.vocab.normalize(text)

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """Log-mel features before normalisation, (B, n_mels, frames)."""
        return self.logmel(self.spectrogram(wav))

    @torch.no_grad()
    def set_feature_stats(self, wav: torch.Tensor, lengths=None) -> None:
        """Per-mel mean and std over the valid frames of a batch of training audio."""
        feats = self.features(wav)
        frames = _lengths(wav, lengths) // self.hop + 1
        mask = torch.arange(feats.shape[-1])[None, :] < frames[:, None]
        sel = feats.transpose(1, 2)[mask]  # (N, n_mels)
        self.feat_mean.copy_(sel.mean(0))
        self.feat_std.copy_(sel.std(0).clamp_min(1e-3))

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        frames = lengths // self.hop + 1
        return (frames - 1) // 2 + 1

    def forward(self, wav: torch.Tensor, lengths=None) -> tuple[torch.Tensor, torch.Tensor]:
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        lengths = _lengths(wav, lengths)
        # every utterance is followed by zeros, enough of them for its last frames to read the
        # same input whatever else is in the batch or how far it is padded: half an STFT window
        # (a centred frame reads past the end) and 5 frames (the convolutions' receptive field
        # past the last valid frame, which reads frames that exist only in a padded batch)
        inside = torch.arange(wav.shape[1], device=wav.device)[None, :] < lengths[:, None]
        wav = F.pad(wav * inside, (0, self.spectrogram.n_fft // 2 + 5 * self.hop))
        x = (self.features(wav) - self.feat_mean[:, None]) / self.feat_std[:, None]
        frames = lengths // self.hop + 1
        valid = (torch.arange(x.shape[-1], device=x.device)[None, :] < frames[:, None]).unsqueeze(1).to(x.dtype)
        if self.feature_norm == "utterance":
            # mean / variance per utterance and mel over its own valid frames (after the global
            # scaling), so gain and channel differences between voices cancel out; computed on
            # exactly its own frames (forward and backward), so no rounding depends on the padding
            rows = []
            for b, f in enumerate(frames.clamp(1, x.shape[-1]).tolist()):
                own = x[b, :, :f].contiguous()
                mu = own.sum(-1, keepdim=True) / f
                var = ((own - mu) ** 2).sum(-1, keepdim=True) / f
                rows.append(F.pad((own - mu) / torch.sqrt(var + 1e-2), (0, x.shape[-1] - f)))
            x = torch.stack(rows)
        x = x * valid
        x = self.conv(x).transpose(1, 2)  # (B, F, C)
        out_len = self.frame_lengths(lengths).clamp(1, x.shape[1])
        t = torch.arange(x.shape[1], device=x.device)[None, :]
        rev = torch.where(t < out_len[:, None], out_len[:, None] - 1 - t, t)  # its own inverse
        rev = rev[:, :, None]
        y = x
        for i, (fwd, bwd) in enumerate(zip(self.gru_fwd, self.gru_bwd)):
            if i:
                y = self.drop(y)
            a, _ = fwd(y)
            b, _ = bwd(y.gather(1, rev.expand(-1, -1, y.shape[2])))
            y = torch.cat([a, b.gather(1, rev.expand(-1, -1, b.shape[2]))], dim=2)
        return self.out(self.drop(y[:, :int(out_len.max())])).log_softmax(-1), out_len

    def frame_logits(self, wav: torch.Tensor, lengths=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(wav, lengths)


def save_recognizer(model: CTCRecognizer, folder: str | Path, extra: dict | None = None) -> Path:
    """Write `model.safetensors` and `config.json` (architecture, alphabet, sizes, extra info)."""
    from .checkpoint import RECOGNIZER, write_checkpoint
    return write_checkpoint(folder, model, {"kind": RECOGNIZER, **model.config, **(extra or {})})


def load_recognizer(folder: str | Path, *, frozen: bool = False) -> CTCRecognizer:
    """Load a `CTCRecognizer` saved by `save_recognizer` (safetensors; never unpickles); ``frozen``: weights without
    gradients (an attack needs gradients w.r.t. the input only)."""
    from safetensors.torch import load_file
    folder = Path(folder)
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"speech recogniser checkpoint: missing {p}")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("architecture") != "ctc-bigru":
        raise ValueError(f"{cfg_path}: architecture {cfg.get('architecture')!r} is not 'ctc-bigru'")
    keys = ("n_mels", "channels", "hidden", "layers", "alphabet", "sample_rate", "dropout", "feature_norm")
    cfg.setdefault("feature_norm", "global")  # configs written before the option existed
    model = CTCRecognizer(**{k: cfg[k] for k in keys if k in cfg})
    model.load_state_dict(load_file(str(weights)))
    return model.eval().requires_grad_(not frozen)


def recognizer_card(folder: str | Path) -> str:
    """One line that tells which saved recogniser a report attacked: when its weights were written, its validation
    CER at save and its feature normalisation (from config.json)."""
    import time
    folder = Path(folder)
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime((folder / "model.safetensors").stat().st_mtime))
    return (f"checkpoint written {stamp}, val CER {cfg.get('val_cer', float('nan')):.3f} at save, "
            f"feature_norm {cfg.get('feature_norm', 'global')}")


# ----------------------------------------------------------------------------------------------
# Hugging Face adapter (``pip install audioadv[hf]``)


class HFWav2Vec2Recognizer(nn.Module):
    """A `transformers` `Wav2Vec2ForCTC` plus its vocabulary as a `Recognizer`.

    The input normalisation of `Wav2Vec2FeatureExtractor` (zero mean, unit variance per
    utterance over its valid samples) is done here in torch, so gradients reach the waveform.
    The CTC blank is the tokenizer's pad token and the word delimiter (``|``) maps to a space.
    """

    def __init__(self, model, vocab: dict[str, int], *, blank: int | None = None,
                 word_delimiter: str = "|", do_normalize: bool = True, sample_rate: int = 16000):
        super().__init__()
        self.model = model.eval()
        self.vocab = dict(vocab)
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.blank = int(blank if blank is not None else getattr(model.config, "pad_token_id", 0))
        self.word_delimiter, self.do_normalize, self.sample_rate = word_delimiter, do_normalize, sample_rate
        letters = [t for t in self.vocab if len(t) == 1 and t.isalpha()]
        self._upper = bool(letters) and all(t.isupper() for t in letters)

    @classmethod
    def from_pretrained(cls, folder: str | Path, **kwargs) -> "HFWav2Vec2Recognizer":
        """Load `Wav2Vec2ForCTC` and `vocab.json` from a local folder (no network)."""
        try:
            from transformers import Wav2Vec2ForCTC
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise ImportError("HFWav2Vec2Recognizer needs transformers: pip install 'audioadv[hf]'") from exc
        folder = Path(folder)
        vocab_path = folder / "vocab.json"
        if not vocab_path.is_file():
            raise FileNotFoundError(f"Hugging Face recogniser: missing {vocab_path}")
        vocab = json.loads(vocab_path.read_text())
        model = Wav2Vec2ForCTC.from_pretrained(str(folder), local_files_only=True)
        fe = folder / "preprocessor_config.json"
        if fe.is_file():
            kwargs.setdefault("do_normalize", bool(json.loads(fe.read_text()).get("do_normalize", True)))
        return cls(model, vocab, **kwargs)

    def encode_text(self, text: str) -> list[int]:
        text = re.sub(r" +", " ", text.strip())
        text = text.upper() if self._upper else text.lower()
        ids = []
        for c in text:
            tok = self.word_delimiter if c == " " else c
            if tok in self.vocab:
                ids.append(self.vocab[tok])
        return ids

    def decode_labels(self, ids: Sequence[int]) -> str:
        toks = [self.id_to_token.get(int(i), "") for i in ids if int(i) != self.blank]
        toks = [" " if t == self.word_delimiter else t for t in toks if not (t.startswith("<") and t.endswith(">"))]
        return re.sub(r" +", " ", "".join(toks)).strip().lower()

    def frame_logits(self, wav: torch.Tensor, lengths=None) -> tuple[torch.Tensor, torch.Tensor]:
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        lengths = _lengths(wav, lengths)
        mask = (torch.arange(wav.shape[1], device=wav.device)[None, :] < lengths[:, None]).to(wav.dtype)
        x = wav * mask
        if self.do_normalize:
            n = lengths.to(wav.dtype)[:, None]
            mean = x.sum(1, keepdim=True) / n
            var = ((x - mean) ** 2 * mask).sum(1, keepdim=True) / n
            x = (x - mean) / torch.sqrt(var + 1e-7) * mask
        out = self.model(x, attention_mask=mask.long()).logits
        frames = self.model._get_feat_extract_output_lengths(lengths).long().clamp(1, out.shape[1])
        return out, frames

    def forward(self, wav, lengths=None):
        return self.frame_logits(wav, lengths)
