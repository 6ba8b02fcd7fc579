"""Psychoacoustic frequency masking (Qin et al. 2019, Sec. 3.2 and their Appendix), in torch.

Model, per STFT frame of the clean audio x (window 2048, hop 512, Hann scaled by sqrt(8/3)):

1. PSD normalised to a 96 dB sound pressure level: p_bar_x(k) = 96 - max_{k,frames} p_x + p_x(k)
   (`PowerSpectralDensity` + `PowerSpectralDensity.normalize`, Eq. 3-4).
2. Tonal maskers: local maxima of p_bar_x; their power is smoothed with the two neighbouring
   bins, P_TM(k) = 10 log10(10^(p(k-1)/10) + 10^(p(k)/10) + 10^(p(k+1)/10)). Maskers below the
   absolute threshold of hearing are dropped, and of maskers closer than 0.5 Bark only the
   strongest is kept (done here as non-maximum suppression in a +-0.5 Bark window, the
   vectorised form of the reference implementation's pairwise deletion).
3. Each masker at Bark z_m spreads with the two-slope function (Eq. 6-7):
   T(z) = P_TM + Delta_TM + SF(dz), Delta_TM = -6.025 - 0.275 z_m, dz = z - z_m,
   SF = 27 dz for dz <= 0 and (-27 + 0.37 max(P_TM - 40, 0)) dz for dz > 0.
4. Global masking threshold (Eq. 8), in linear power: theta_x(k) = 10^(ATH(k)/10) + sum_m 10^(T_m(k)/10),
   with the absolute threshold of hearing ATH(f) = 3.64 (f/1000)^-0.8 - 6.5 exp(-0.6 (f/1000 - 3.3)^2)
   + 1e-3 (f/1000)^4 - 12 (dB), taken as -inf below 1 Bark as in the reference code. Terms 10^(T_m(k)/10)
   under 2e-38 (-377 dB, below float32's normal range) count as 0.

The perturbation's PSD is normalised with the *clean* audio's maximum (`perturbation_psd`) and the
frequency-masking loss is mean_k,frames relu(p_delta - theta_x) (Eq. 9). Compute the threshold
once per utterance (`masking_threshold`); it is batched and has no gradient.
"""
from __future__ import annotations

import functools
import math

import torch

from .frontends import PowerSpectralDensity

N_FFT, HOP = 2048, 512
TINY = 2e-38           # masking terms below: 0 (the smallest normal float32 is 1.2e-38)
EXP_FLOOR = -87.0      # exp(-87) = 1.6e-38 < TINY, a normal float32


def bark(f: torch.Tensor) -> torch.Tensor:
    """Bark scale of frequency f in Hz: 13 atan(0.00076 f) + 3.5 atan((f / 7500)^2)."""
    f = torch.as_tensor(f, dtype=torch.float64)
    return 13.0 * torch.atan(0.00076 * f) + 3.5 * torch.atan((f / 7500.0) ** 2)


def absolute_threshold_of_hearing(f: torch.Tensor) -> torch.Tensor:
    """Threshold in quiet in dB SPL (Terhardt's formula as in Qin et al.); +inf at 0 Hz."""
    k = torch.as_tensor(f, dtype=torch.float64) / 1000.0
    with torch.no_grad():
        return 3.64 * k.clamp_min(1e-12) ** -0.8 - 6.5 * torch.exp(-0.6 * (k - 3.3) ** 2) + 1e-3 * k ** 4 - 12.0


def _frequencies(sample_rate: int, n_fft: int) -> torch.Tensor:
    return torch.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1, dtype=torch.float64)


def _bark_window(barks: torch.Tensor, width: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last bin within +-width Bark of each bin (barks increase with the bin)."""
    near = (barks[:, None] - barks[None, :]).abs() < width
    k = torch.arange(barks.shape[0])
    lo = torch.where(near, k[None, :], k.max() + 1).amin(1)
    hi = torch.where(near, k[None, :], -1).amax(1)
    return lo, hi


def _window_max(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """max(x[:, lo[k]:hi[k]+1]) for every k, by a sparse table of power-of-two window maxima."""
    table = [x]
    span = int((hi - lo).max()) + 1
    while 2 ** len(table) <= span:
        prev, step = table[-1], 2 ** (len(table) - 1)
        nxt = prev.clone()
        nxt[:, :-step] = torch.maximum(prev[:, :-step], prev[:, step:])
        table.append(nxt)
    length = hi - lo + 1
    level = torch.floor(torch.log2(length.double())).long()
    stack = torch.stack(table)                                          # (L, n, K)
    left = stack[level, :, lo].T                                        # (n, K)
    right = stack[level, :, hi - 2 ** level + 1].T
    return torch.maximum(left, right)


class MaskingModel:
    """Precomputed frequency tables for one (sample_rate, n_fft); call `threshold(psd_bar)`."""

    _cache: dict = {}

    def __init__(self, sample_rate: int = 16000, n_fft: int = N_FFT, max_maskers: int = 64):
        self.sample_rate, self.n_fft, self.max_maskers = sample_rate, n_fft, max_maskers
        freqs = _frequencies(sample_rate, n_fft)
        self.barks = bark(freqs)
        self.quiet = absolute_threshold_of_hearing(freqs)            # for dropping maskers
        ath = self.quiet.clone()
        ath[self.barks <= 1.0] = -math.inf                           # reference code: no ATH below 1 Bark
        self.ath = ath
        self.window = _bark_window(self.barks)

    @classmethod
    def get(cls, sample_rate: int, n_fft: int) -> "MaskingModel":
        key = (sample_rate, n_fft)
        if key not in cls._cache:
            cls._cache[key] = cls(sample_rate, n_fft)
        return cls._cache[key]

    @torch.no_grad()
    def threshold(self, psd_bar: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """Global masking threshold (linear power) of normalised PSD frames (..., K) in dB."""
        shape = psd_bar.shape
        p = psd_bar.reshape(-1, shape[-1]).double()
        out = torch.empty_like(p)
        for s in range(0, p.shape[0], chunk):
            out[s:s + chunk] = self._frames(p[s:s + chunk])
        return out.reshape(shape).to(psd_bar.dtype)

    def _frames(self, p: torch.Tensor) -> torch.Tensor:
        n, k = p.shape
        dev = p.device
        barks, quiet, ath = self.barks.to(dev), self.quiet.to(dev), self.ath.to(dev)
        # 2. tonal maskers: interior local maxima, power smoothed over the two neighbours
        peak = torch.zeros_like(p, dtype=torch.bool)
        peak[:, 1:-1] = (p[:, 1:-1] > p[:, :-2]) & (p[:, 1:-1] > p[:, 2:])
        lin = 10.0 ** (p / 10.0)
        smooth = lin.clone()
        smooth[:, 1:-1] = lin[:, :-2] + lin[:, 1:-1] + lin[:, 2:]
        p_tm = 10.0 * torch.log10(smooth.clamp_min(1e-30))
        keep = peak & (p_tm >= quiet)
        cand = torch.where(keep, p_tm, torch.full_like(p_tm, -math.inf))
        lo, hi = self.window
        local_max = _window_max(cand, lo.to(dev), hi.to(dev))          # (n, K) max within +-0.5 Bark
        keep = keep & (cand >= local_max)
        # the kept maskers, strongest first (>= 0.5 Bark apart, so ~42 at most up to 8 kHz)
        score = torch.where(keep, p_tm, torch.full_like(p_tm, -math.inf))
        m = max(1, min(self.max_maskers, int(keep.sum(1).max())))
        top, idx = score.topk(m, dim=1)
        valid = torch.isfinite(top)
        z_m = barks[idx].float()                                       # (n, m)
        level = torch.where(valid, top, torch.full_like(top, -400.0)).float()
        # 3. two-slope spreading function, all in float32 (n, m, K): base + 27 min(dz, 0) + upper max(dz, 0),
        # in place (each (n, m, K) temporary would cost a fresh allocation and its page faults)
        dz = barks.float()[None, None, :] - z_m[:, :, None]
        upper = (-27.0 + 0.37 * (level - 40.0).clamp_min(0.0))[:, :, None]
        t = dz.clamp_max(0.0).mul_(27.0).add_((level - 6.025 - 0.275 * z_m)[:, :, None])
        t.add_(dz.clamp_min_(0.0).mul_(upper))
        arg = t.mul_(math.log(10.0) / 10.0)
        # terms under TINY (-377 dB: an empty masker slot, a far bin) count as 0; clamping first keeps exp off its
        # underflow path, ~50x slower per element
        masks = torch.nn.functional.threshold_(arg.clamp_min_(EXP_FLOOR).exp_(), TINY, 0.0).sum(1).double()
        # 4. global threshold, linear power
        return masks + 10.0 ** (ath / 10.0)[None, :]


def masking_threshold(wav: torch.Tensor, sample_rate: int = 16000, n_fft: int = N_FFT,
                      hop_length: int = HOP, lengths: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Global masking threshold of clean audio, (B, n_fft//2+1, frames) in linear power, and
    the per-utterance PSD maximum max p_x in dB (needed to normalise a perturbation's PSD).

    With `lengths`, each utterance's maximum is taken over its own samples only.
    """
    x = wav.unsqueeze(0) if wav.dim() == 1 else wav
    psd_fn = PowerSpectralDensity(n_fft, hop_length).to(x.device)
    with torch.no_grad():
        psd = psd_fn(x)                                                # (B, K, frames) dB
        if lengths is not None:
            frames = frame_mask(lengths, psd.shape[-1], n_fft, hop_length)
            psd_for_max = torch.where(frames[:, None, :], psd, torch.full_like(psd, -math.inf))
        else:
            psd_for_max = psd
        psd_max = psd_for_max.flatten(1).amax(1)
        bar = PowerSpectralDensity.normalize(psd, psd_max)
        theta = MaskingModel.get(sample_rate, n_fft).threshold(bar.transpose(1, 2)).transpose(1, 2)
    if wav.dim() == 1:
        return theta[0], psd_max[0]
    return theta, psd_max


def frame_mask(lengths: torch.Tensor, num_frames: int, n_fft: int = N_FFT, hop_length: int = HOP) -> torch.Tensor:
    """(B, frames) True where a PSD frame (center=False) lies within the utterance.

    Utterances shorter than one window keep their first frame.
    """
    lengths = torch.as_tensor(lengths)
    last = ((lengths - n_fft).clamp_min(0) // hop_length + 1)
    return torch.arange(num_frames, device=lengths.device)[None, :] < last[:, None]


def perturbation_psd(delta: torch.Tensor, psd_max_db: torch.Tensor, n_fft: int = N_FFT,
                     hop_length: int = HOP) -> torch.Tensor:
    """Perturbation PSD normalised with the clean audio's maximum, linear power (B, K, frames):
    10^((96 - max p_x + p_delta) / 10). Differentiable in delta."""
    d = delta.unsqueeze(0) if delta.dim() == 1 else delta
    if d.shape[-1] < n_fft:
        raise ValueError(f"perturbation_psd: the perturbation ({d.shape[-1]} samples) is shorter than one window "
                         f"({n_fft}); pad it first")
    power = _PowerSpectrum.apply(d, _window(n_fft, d.dtype, d.device), hop_length) / n_fft ** 2
    scale = 10.0 ** ((96.0 - torch.as_tensor(psd_max_db, dtype=d.dtype, device=d.device).reshape(-1)) / 10.0)
    return power * scale[:, None, None]


def masking_loss(delta: torch.Tensor, theta: torch.Tensor, psd_max_db: torch.Tensor,
                 lengths: torch.Tensor | None = None, n_fft: int = N_FFT, hop_length: int = HOP) -> torch.Tensor:
    """Frequency-masking loss of Qin et al. (Eq. 9) per utterance: the mean over bins and valid
    frames of relu(p_delta - theta_x). Zero when the perturbation is masked everywhere."""
    p = perturbation_psd(delta, psd_max_db, n_fft, hop_length)
    excess = torch.relu(p - theta)
    if lengths is None:
        return excess.mean(dim=(1, 2))
    frames = frame_mask(lengths, p.shape[-1], n_fft, hop_length).sum(1).clamp_min(1).tolist()
    # each utterance summed over exactly its own frames: the rounding then does not depend on how
    # far the batch is padded (the attacks' results do not depend on their batch)
    return _LeadingSums.apply(excess, frames) / torch.tensor([f * p.shape[1] for f in frames], dtype=p.dtype,
                                                              device=p.device)


class _LeadingSums(torch.autograd.Function):
    """sum(x[b, :, :frames[b]]) per row, each over exactly its own frames: the rounding then does not depend on how
    far the batch is padded (the attacks' results do not depend on their batch). The backward writes the row's
    gradient into its frames in one pass (the autograd of per-row slices would build one full-size gradient per row)."""

    @staticmethod
    def forward(ctx, x, frames):
        ctx.frames, ctx.shape = frames, x.shape
        return torch.stack([x[b, :, :f].contiguous().sum() for b, f in enumerate(frames)])

    @staticmethod
    def backward(ctx, g):
        keep = torch.arange(ctx.shape[-1], device=g.device) < torch.tensor(ctx.frames, device=g.device)[:, None]
        return (g[:, None] * keep).unsqueeze(1).expand(ctx.shape), None


class _PowerSpectrum(torch.autograd.Function):
    """|STFT|^2 (center=False, one-sided), (B, n_fft // 2 + 1, frames), with a hand-written backward: autograd's
    goes through a full-length complex FFT and a generic strided scatter, several times the cost of this one.
    Backward: d|s_k|^2 = 2 Re(conj(s_k) ds_k), and the adjoint of rfft is n * irfft with the bins other than
    0 and n/2 halved; the frames' gradients, windowed, are overlap-added."""

    @staticmethod
    def forward(ctx, x, window, hop):
        s = torch.fft.rfft(x.unfold(-1, window.shape[0], hop) * window, dim=-1)    # (B, frames, K)
        ctx.save_for_backward(s, window)
        ctx.hop, ctx.length = hop, x.shape[-1]
        return (s.real ** 2 + s.imag ** 2).transpose(1, 2)

    @staticmethod
    def backward(ctx, g):
        s, window = ctx.saved_tensors
        n, k = window.shape[0], s.shape[-1]
        weight = torch.full((k,), 2.0 * n, dtype=g.dtype, device=g.device)
        weight[1:k - 1 if n % 2 == 0 else k] = n   # 2 (from |s|^2) x n, halved where irfft counts a bin twice
        frames = torch.fft.irfft(s * (g.transpose(1, 2) * weight), n=n, dim=-1).mul_(window)
        return _overlap_add(frames, ctx.length, ctx.hop), None, None


def _overlap_add(frames: torch.Tensor, length: int, hop: int) -> torch.Tensor:
    """Sum of (B, F, n) frames placed every `hop` samples into (B, length): the adjoint of unfold."""
    b, f, n = frames.shape
    if n % hop:
        return torch.ops.aten.unfold_backward(frames, (b, length), 1, n, hop)
    out = frames.new_zeros(b, length)
    blocks = frames.reshape(b, f, n // hop, hop)
    for j in range(n // hop):                          # n / hop shifted adds of whole frame rows
        out[:, j * hop:j * hop + f * hop].view(b, f, hop).add_(blocks[:, :, j])
    return out


@functools.lru_cache(maxsize=8)
def _window(n_fft: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Qin et al.'s analysis window: Hann scaled by sqrt(8/3)."""
    return torch.hann_window(n_fft, periodic=True, dtype=dtype, device=device) * math.sqrt(8.0 / 3.0)
