"""Shared signal math: audibility metrics and differentiable front ends (one place for dB, SNR, STFT)."""
from .metrics import rms, spl, db, db_x, snr, l0, l2, linf, EPS
from .frontends import (
    Spectrogram, LogMel, MeanVarNorm, PowerSpectralDensity,
    mel_filterbank, hz_to_mel, mel_to_hz, frame_count,
)

__all__ = [
    "rms", "spl", "db", "db_x", "snr", "l0", "l2", "linf", "EPS",
    "Spectrogram", "LogMel", "MeanVarNorm", "PowerSpectralDensity",
    "mel_filterbank", "hz_to_mel", "mel_to_hz", "frame_count",
]
