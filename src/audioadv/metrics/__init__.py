"""Every metric in one place: transcript error rates (`text`) and the signal metrics of
`audioadv.signal` (re-exported, defined there once: (B, T) -> (B,))."""
from ..signal.metrics import EPS, db, db_x, l0, l2, linf, rms, snr, spl
from .text import cer, edit_distance, wer

__all__ = ["cer", "edit_distance", "wer", "rms", "spl", "db", "db_x", "snr", "l0", "l2", "linf", "EPS"]
